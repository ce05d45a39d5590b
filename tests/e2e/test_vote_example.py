"""examples/vote.py: the seed's voting page on the embedding API, over real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from improto.testing import free_port, wait_for_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vote.py"


@pytest.fixture
def vote_server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_votes_are_pushed_to_every_viewer(vote_server):
    page = urllib.request.urlopen(f"http://127.0.0.1:{vote_server}/index", timeout=5).read().decode()
    assert "丑男投票系统" in page and "钢弹" in page and 'id="id_3"' in page
    url = f"ws://127.0.0.1:{vote_server}/message"
    with connect(url) as voter, connect(url) as viewer:
        voter.send("1")
        for ws in (voter, viewer):
            assert json.loads(ws.recv(timeout=5)) == {"cid": "1", "count": 1}
        viewer.send("3")
        for ws in (voter, viewer):
            assert json.loads(ws.recv(timeout=5)) == {"cid": "3", "count": 101}
        voter.send("99")
        error = json.loads(voter.recv(timeout=5))
        assert error["code"] == "bad_message"
        # The barrier: the viewer's next frame is the next good vote, so the
        # bad one sent it nothing.
        voter.send("2")
        assert json.loads(viewer.recv(timeout=5))["cid"] == "2"
