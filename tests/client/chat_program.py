"""How the tests start ``improto-chat``: the installed console script when there is one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def chat_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment for running the client with ``args``."""
    script = Path(sys.executable).with_name("improto-chat")
    if script.exists():
        return [str(script), *args], {}
    # An editable or source checkout: no console script, so the module, from this tree.
    assert not os.environ.get("IMPROTO_NO_SKIPS"), f"no console script {script}; is the wheel installed?"
    return [sys.executable, "-m", "improto.client", *args], {"PYTHONPATH": str(ROOT)}
