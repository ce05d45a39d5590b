"""
``twistd -n improto --workers 2 --backend redis://...``: one port, two
worker processes behind it, supervised by the twistd process. Real
sockets, a real private Redis; which worker answered is read from the
welcome frame (its session id starts with the worker's node id,
``<base>.w<N>.<incarnation>``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.test_cluster import backend_url, recv_json, recv_kind
from tests.serverproc import ServerProcess, start_server, twistd_path

NATIVE = ["improto.v1"]
DEADLINE = 20.0


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def listening_workers(server: ServerProcess) -> set[int]:
    return {int(n) for n in re.findall(r"\[worker (\d+)\] improto listening on", server.log())}


def worker_pids(server: ServerProcess, number: int) -> list[int]:
    return [int(p) for p in re.findall(rf"worker {number} started, pid (\d+)", server.log())]


def node_of(welcome: dict) -> str:
    assert welcome["type"] == "welcome"
    return welcome["session"].rsplit("-", 1)[0]


def worker_of(node: str) -> int:
    match = re.fullmatch(r"[A-Za-z0-9]+\.w(\d+)\.[0-9a-f]+", node)
    assert match, node
    return int(match.group(1))


def open_native(stack: ExitStack, server: ServerProcess, nick: str) -> tuple[Any, str]:
    ws = stack.enter_context(connect(server.ws_url(nick), subprotocols=NATIVE, open_timeout=10))
    return ws, node_of(recv_json(ws))


def open_on_both(stack: ExitStack, server: ServerProcess, count: int = 40) -> list[tuple[Any, str]]:
    """``count`` connections (more if needed, up to 3x) until both workers hold some."""
    opened: list[tuple[Any, str]] = []
    while len(opened) < count or len({worker_of(n) for _, n in opened}) < 2:
        assert len(opened) < 3 * count, f"all {len(opened)} connections went to one worker"
        opened.append(open_native(stack, server, f"u{len(opened)}"))
    return opened


@pytest.fixture
def workers(redis_url: str, redis_prefix: str) -> Iterator[ServerProcess]:
    url = backend_url(redis_url, redis_prefix, heartbeat_interval=0.5, heartbeat_ttl=2)
    server = start_server("--workers", "2", "--backend", url, "--rate", "0")
    try:
        wait_until(lambda: listening_workers(server) == {1, 2}, "both workers to listen")
        yield server
    finally:
        server.stop()


def test_both_workers_accept_and_deliver_to_each_other(workers) -> None:
    with ExitStack() as stack:
        opened = open_on_both(stack, workers)
        by_worker = {worker_of(node): ws for ws, node in opened}
        assert len({node for _, node in opened}) == 2  # one node id per worker
        a, b = by_worker[1], by_worker[2]
        for i, ws in enumerate((a, b)):
            ws.send(json.dumps({"type": "join", "group": "dev", "id": f"j{i}"}))
            assert recv_kind(ws, "ack")["id"] == f"j{i}"
        a.send(json.dumps({"type": "send", "group": "dev", "msg": "from worker 1", "id": "m"}))
        assert recv_kind(a, "ack")["id"] == "m"
        got = recv_kind(b, "message")
        assert (got["group"], got["msg"]) == ("dev", "from worker 1")


def test_healthz_answers_on_every_worker(workers) -> None:
    seen: set[int] = set()

    def ask() -> bool:
        # A fresh connection each time, so the accepting worker varies.
        with urllib.request.urlopen(f"{workers.http}/healthz", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "ok" and body["backend"]["state"] == "ok"
        seen.add(worker_of(body["node"]))
        return seen == {1, 2}

    wait_until(ask, "/healthz answered by both workers")


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(workers) -> None:
    (victim,) = worker_pids(workers, 1)
    old_incarnations = set(re.findall(r"node [A-Za-z0-9]+\.w1\.([0-9a-f]+) connected", workers.log()))
    assert len(old_incarnations) == 1
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(workers, 1)) == 2, "worker 1 to be restarted")
    # The port served throughout: worker 2 answers while worker 1 comes back.
    with ExitStack() as stack:
        open_native(stack, workers, "during")
    wait_until(lambda: len(re.findall(r"\[worker 1\] improto listening on", workers.log())) == 2,
               "the new worker 1 to listen")
    restarted = worker_pids(workers, 1)[1]
    assert restarted != victim and os.path.exists(f"/proc/{restarted}")
    log = workers.log()
    assert log.count(f"worker 1 (pid {victim}) was killed by signal SIGKILL") == 1
    assert log.count("restarting it in") == 1
    assert "Traceback" not in log
    # The new worker 1 accepts connections under a new node id.
    with ExitStack() as stack:
        nodes = {n for _, n in open_on_both(stack, workers, 10)}
    assert {worker_of(n) for n in nodes} == {1, 2}
    assert not any(n.split(".")[2] == before for n in nodes for before in old_incarnations)


def test_sigterm_closes_every_client_with_1001_and_exits_0(workers) -> None:
    with ExitStack() as stack:
        opened = open_on_both(stack, workers, 10)
        pids = worker_pids(workers, 1) + worker_pids(workers, 2)
        assert workers.stop(signal.SIGTERM, timeout=30) == 0
        for ws, _ in opened:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    for pid in pids:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), f"worker pid {pid} to be gone")
    log = workers.log()
    assert "all 2 workers stopped" in log
    assert "Traceback" not in log


def test_workers_with_the_memory_backend_fail_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "improto", "--workers", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1
    assert output == "twistd improto: --workers needs a shared backend: --backend redis://..."


def test_workers_on_a_tls_port_fail_in_one_line(tmp_path, redis_url) -> None:
    from tests.e2e.test_end_to_end import self_signed_certificate

    key, cert = self_signed_certificate(tmp_path)
    port = f"ssl:8443:privateKey={key}:certKey={cert}"
    result = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "improto", "--workers", "2", "--backend", redis_url, "--port", port],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1
    assert output.count("\n") == 0 and "Traceback" not in output
    assert output.startswith("twistd improto: --workers needs a tcp: or tcp6: --port")


def test_check_workers_refuses_what_cannot_be_shared() -> None:
    from improto.workers import check_workers

    check_workers(1, "memory", "ssl:8443:privateKey=/nonexistent.pem")  # one process: anything goes
    check_workers(2, "redis", "tcp:8080", "main")
    check_workers(2, "redis", "tcp6:8080:interface=\\:\\:1")
    for args, fragment in [
        ((2, "memory", "tcp:8080"), "shared backend"),
        ((2, "redis", "tcp:8080", "tcp:9100"), "--metrics main"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            check_workers(*args)
