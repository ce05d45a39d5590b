"""
End-to-end helpers: a real ``twistd improto`` subprocess, and headless
Chromium driven by Playwright.

The server is started with the ``twistd`` script that sits next to
``sys.executable`` (the test virtualenv's), from a temporary directory,
listening on a free port of 127.0.0.1 that we pick ourselves.

Use it from another test module with::

    from tests import browser_fixture

    improto_server = browser_fixture.improto_server   # a module-scoped fixture

    def test_something(improto_server):
        improto_server.url      # "http://127.0.0.1:PORT"
        improto_server.ws_url("alice")

or call :func:`start_server` / :func:`stop_server` directly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import attrs
import pytest

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Upper bound for every wait in the browser tests, in milliseconds.
TIMEOUT_MS = 10_000


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the server may still race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def twistd_script() -> str:
    """The ``twistd`` of the Python running the tests."""
    script = Path(sys.executable).with_name("twistd")
    if not script.exists():
        raise RuntimeError(
            f"No twistd next to {sys.executable}; install Twisted and improto "
            "(not editable: twistd cannot see an editable install's plugin) in this environment."
        )
    return str(script)


def _read_log(process: subprocess.Popen[bytes]) -> str:
    log_path = getattr(process, "log_path", None)
    if not log_path:
        return ""
    try:
        return Path(log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(
    *extra_args: str, port: int | None = None, host: str = HOST, timeout: float = 10.0
) -> tuple[str, subprocess.Popen[bytes]]:
    """
    Start ``twistd -n improto`` on ``host:port`` (a free port if None) with
    ``extra_args`` appended, and wait until ``/healthz`` answers 200.

    Returns ``(base_url, process)``; the process has a ``log_path``
    attribute (its stdout and stderr). Raises RuntimeError, with the log,
    if the server exits or does not answer in ``timeout`` seconds.
    """
    chosen = port if port is not None else free_port(host)
    workdir = tempfile.mkdtemp(prefix="improto-e2e-")
    log_path = os.path.join(workdir, "twistd.log")
    command = [
        twistd_script(), "-n", "--pidfile=", "improto",
        "--port", f"tcp:{chosen}:interface={host}", *extra_args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    url = f"http://{host}:{chosen}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"twistd exited with {process.returncode} before listening:\n"
                f"$ {' '.join(command)}\n{_read_log(process)}"
            )
        if _healthy(url):
            return url, process
        time.sleep(0.05)
    stop_server(process)
    raise RuntimeError(
        f"twistd did not answer on {url}/healthz within {timeout:g} s:\n{_read_log(process)}"
    )


def stop_server(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM (a clean twistd shutdown), then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return int(process.returncode)


@attrs.define
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def host_port(self) -> str:
        return self.url.split("://", 1)[1]

    def ws_url(self, nickname: str, prefix: str = "/ws/") -> str:
        return f"ws://{self.host_port}{prefix}{quote(nickname, safe='')}"

    def log(self) -> str:
        return _read_log(self.process)


@pytest.fixture(scope="module")
def improto_server() -> Iterator[RunningServer]:
    """One ``twistd improto`` per test module; fails the module if it dies."""
    url, process = start_server()
    server = RunningServer(url, process)
    try:
        yield server
    finally:
        died = process.poll() is not None
        stop_server(process)
    if died:
        pytest.fail(f"the improto server died during the tests:\n{server.log()}")


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless; fails (never skips) when it is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get update && apt-get install -y chromium). "
            "Do not use 'playwright install'; it cannot download here.",
            pytrace=False,
        )
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the whole module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The browser tests need the 'playwright' package (pip install playwright).",
                    pytrace=False)
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
