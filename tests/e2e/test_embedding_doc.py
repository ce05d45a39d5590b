"""docs/embedding.md's program runs as written, and chats over real sockets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from websockets.sync.client import connect

from tests.serverproc import free_port, wait_for_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def test_the_documented_program_serves_chat_and_publishes(tmp_path: Path) -> None:
    [program] = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    script = tmp_path / "embed.py"
    script.write_text(program)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(script), f"tcp:{port}:interface=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        url = f"ws://127.0.0.1:{port}/chat"
        with connect(f"{url}/alice") as alice, connect(f"{url}/bob") as bob:
            bob.send(json.dumps({"username": "bob", "msg": "hi"}))
            seen: set[str] = set()
            wanted = {"message:hi", "notice:deploy at 5pm", "notice:your build passed"}
            while not wanted <= seen:
                frame = json.loads(alice.recv(timeout=5))
                seen.add(f"{frame.get('type')}:{frame.get('msg')}")
            assert "message:hi" in seen
    finally:
        process.terminate()
        process.wait(10)
