"""The wheel carries the twistd dropin the right way, and twistd finds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.serverproc import start_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_the_dropin_but_not_a_plugins_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(".git", ".tox", "build", "dist", "*.egg-info", "__pycache__", "reports"),
    )
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist")],
        cwd=source, check=True, capture_output=True, timeout=300,
    )
    [wheel] = (tmp_path / "dist").glob("improto-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/improto_twistd.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert "improto/web/static/index.html" in names
    assert not any(name.startswith(("tests/", "conformance/", "benchmarks/")) for name in names)


def test_dropin_does_not_import_the_reactor() -> None:
    code = (
        "import sys; import twisted.plugins.improto_twistd; "
        "print('twisted.internet.reactor' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd="/")
    assert out.stdout.strip() == "False"


def test_twistd_runs_improto_on_the_asyncio_reactor_too() -> None:
    server = start_server(twistd_args=("--reactor=asyncio",))
    try:
        with connect(f"{server.ws}/ws/a") as a, connect(f"{server.ws}/ws/b") as b:
            a.send("hello from asyncio")
            assert "hello from asyncio" in b.recv(timeout=5)
    finally:
        server.stop()
    assert "AsyncioSelectorReactor" in server.log()
