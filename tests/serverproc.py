"""
Run ``twistd -n improto`` as a real subprocess, the way users run it.

The server runs from a temporary directory outside the checkout, so it
uses the installed package and its twistd dropin, not the source tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest

from improto.testing import free_port, stop_process, wait_for_port


def twistd_path() -> str:
    candidate = Path(sys.executable).with_name("twistd")
    if not candidate.exists():
        raise RuntimeError(f"no twistd next to {sys.executable}; install the test dependencies")
    return str(candidate)


@attrs.define
class ServerProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.http

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ws_url(self, nickname: str, prefix: str = "/ws/") -> str:
        return f"{self.ws}{prefix}{quote(nickname, safe='')}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        return stop_process(self.process, sig, timeout)


def start_server(
    *args: str,
    port: int | None = None,
    endpoint: str = "tcp:{port}:interface=127.0.0.1",
    env: dict[str, str] | None = None,
    twistd_args: tuple[str, ...] = (),
) -> ServerProcess:
    """Start improto with ``args`` after ``improto``; returns once it listens."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="improto-server-"))
    log_path = workdir / "server.log"
    command = [
        twistd_path(), "-n", "--pidfile=", *twistd_args, "improto",
        "--port", endpoint.format(port=port), *args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(port, process, log_path)
    try:
        wait_for_port(port, process)
    except RuntimeError as e:
        server.stop()
        raise RuntimeError(f"{e}\n--- server log ---\n{server.log()}") from None
    return server


def serving(*args: str, **kwargs: Any) -> Iterator[ServerProcess]:
    """
    A generator for fixtures: :func:`start_server`, yield it, stop it, and
    fail the test if the server died meanwhile (a crash must not pass as a
    refusal the test expected).
    """
    server = start_server(*args, **kwargs)
    try:
        yield server
    finally:
        died = server.process.poll() is not None
        server.stop()
    if died:
        pytest.fail(f"the improto server died during the tests:\n{server.log()}")


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    running = start_server("--rate", "0")
    try:
        yield running
    finally:
        running.stop()
