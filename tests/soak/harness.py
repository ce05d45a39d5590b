"""
The soak's conductor, in the pytest process: servers, file descriptors,
RSS sampling, the worker processes and their barriers, the flush, and the
state checks once everyone has left.

The phases: every worker connects its clients (observers join their
groups) -> ``go``: the load runs for ``seconds`` -> each worker waits for
the answers to everything it sent and reports ``quiet`` -> the harness
publishes a flush marker to every observed group and observer (after all
acked messages, so an observer holding its markers holds everything) ->
``flush``: workers wait for the markers, close every connection and
report -> the harness checks the servers hold nothing any more.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import re
import resource
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import attrs
from websockets.sync.client import connect

from tests.serverproc import ServerProcess, twistd_path
from tests.soak.clients import NATIVE, Stats
from tests.soak.load import LoadConfig, run_worker

#: What every soak server runs with; per-IP limits found in --help are added.
#: History and idempotency keys age out within the first third of the load
#: (the warm-up), so a flat RSS afterwards means no leak, not a history that
#: is still filling up (the memory backend keeps it in the server's RSS).
SERVER_ARGS: tuple[str, ...] = ("--rate", "0", "--history-age", "20", "--idempotency-window", "20")
MIB = 1024 * 1024


def log(line: str) -> None:
    print(f"[soak] {line}", flush=True)


# -- servers -------------------------------------------------------------------


def server_args(connections: int) -> list[str]:
    """
    :data:`SERVER_ARGS`, plus a generous value for every connection limit
    that ``twistd improto --help`` lists (e.g. a per-IP limit: every soak
    client comes from 127.0.0.1), so a build without such options works too.
    """
    help_text = subprocess.run(
        [twistd_path(), "-n", "improto", "--help"],
        cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=60,
    ).stdout
    args = list(SERVER_ARGS)
    for option in sorted(set(re.findall(r"--((?:max-)?[a-z-]*(?:per-ip|connections)[a-z-]*)", help_text))):
        args += [f"--{option}", str(connections * 4)]
    return args


@contextmanager
def enough_file_descriptors(needed: int) -> Iterator[int]:
    """Raise this process's soft RLIMIT_NOFILE (servers and workers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if target < needed:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} < {needed}; raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield target
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_files_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return 1 << 62 if value == "unlimited" else int(value)
    raise RuntimeError(f"no open-files limit for {pid}")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(node: ServerProcess) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{node.http}/healthz", timeout=10) as response:
            return json.load(response)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        return json.load(e)  # type: ignore[no-any-return]


# -- RSS over time -------------------------------------------------------------


@attrs.define
class Sampler:
    """Every ``interval`` s: each node's VmRSS and sessions, printed as a line."""

    nodes: list[ServerProcess]
    interval: float
    label: str
    #: (seconds since start, phase, rss per node, sessions per node)
    samples: list[tuple[float, str, list[float], list[int]]] = attrs.field(factory=list)
    phase: str = "ramp"
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def sample(self, started: float) -> None:
        rss = [rss_mib(n.process.pid) for n in self.nodes]
        sessions = []
        for node in self.nodes:
            try:
                sessions.append(int(health(node).get("sessions", -1)))
            except Exception:  # a swamped server: the RSS sample still counts
                sessions.append(-1)
        t = time.monotonic() - started
        self.samples.append((t, self.phase, rss, sessions))
        nodes = "  ".join(f"node{i} rss {r:6.1f} MiB sessions {s:5d}"
                          for i, (r, s) in enumerate(zip(rss, sessions, strict=True)))
        log(f"{self.label} t={t:5.0f}s {self.phase:5s} {nodes}")

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample(started)
            except Exception as e:  # e.g. a node that died: say so, keep sampling the rest
                log(f"{self.label} sample failed: {e!r}")
            self._stop.wait(self.interval)

    def load_series(self, node: int) -> list[float]:
        return [rss[node] for _, phase, rss, _ in self.samples if phase == "load"]


def rss_growth(series: list[float]) -> tuple[float, float]:
    """Medians of the second and last thirds of a load-phase RSS series."""
    third = len(series) // 3
    return statistics.median(series[third : 2 * third]), statistics.median(series[2 * third :])


# -- the run ---------------------------------------------------------------------


@attrs.define
class SoakResult:
    stats: Stats
    reports: list[dict[str, Any]]
    sampler: Sampler
    server_cpu: list[float]
    load_seconds: float


class Workers:
    """The load processes and the barriers between them and the harness."""

    def __init__(self, cfg: LoadConfig) -> None:
        context = multiprocessing.get_context("spawn")
        self.outbox = context.Queue()
        self.events = {name: context.Event() for name in ("go", "flush")}
        self.processes = [
            context.Process(target=run_worker, args=(cfg, k, self.outbox, self.events), daemon=True)
            for k in range(cfg.workers)
        ]

    def start(self) -> None:
        for p in self.processes:
            p.start()

    def collect(self, kind: str, timeout: float) -> dict[int, Any]:
        """One ``kind`` message from each worker, or fail with what went wrong."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.processes):
            try:
                message = self.outbox.get(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [p.exitcode for p in self.processes if p.exitcode is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"waiting for {kind!r}: workers exited {dead} or timed out") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
            assert message[0] == kind, message
            got[message[1]] = message[2]
        return got

    def stop(self) -> None:
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)


def flush(cfg: LoadConfig, node: ServerProcess) -> None:
    """A marker after everything acked, to every observed group and observer."""
    groups = sorted({g for slot in range(cfg.observers) for g in cfg.observer_groups(slot)})
    with connect(f"{node.ws}/ws/soak-flusher", subprotocols=[NATIVE], open_timeout=30) as ws:  # type: ignore[list-item]
        requests: list[dict[str, Any]] = []
        for group in groups:
            requests.append({"type": "join", "group": group})
            requests.append({"type": "send", "group": group, "msg": {"id": f"flush.{group}"}})
        for name in cfg.observer_names():
            requests.append({"type": "private", "to": name, "msg": {"id": f"flush.{name}"}})
        for i, request in enumerate(requests):
            ws.send(json.dumps({**request, "id": str(i)}))
        answered: set[str] = set()
        while len(answered) < len(requests):
            frame = json.loads(ws.recv(timeout=60))
            if frame["type"] in ("ack", "error"):
                assert frame["type"] == "ack", f"flush refused: {frame}"
                answered.add(frame["id"])


def run_soak(cfg: LoadConfig, nodes: list[ServerProcess], label: str, interval: float) -> SoakResult:
    sampler = Sampler(nodes, interval, label)
    workers = Workers(cfg)
    sampler.start()
    try:
        workers.start()
        ready = workers.collect("ready", timeout=120 + cfg.connections / 10)
        log(f"{label} connected {sum(ready.values())} of {cfg.connections}; load for {cfg.seconds:g} s")
        cpu_before = [cpu_seconds(n.process.pid) for n in nodes]
        started = time.monotonic()
        sampler.phase = "load"
        workers.events["go"].set()
        quiet = workers.collect("quiet", timeout=cfg.seconds + 180)
        load_seconds = time.monotonic() - started
        server_cpu = [cpu_seconds(n.process.pid) - b for n, b in zip(nodes, cpu_before, strict=True)]
        sampler.phase = "drain"
        log(f"{label} quiet after {load_seconds:.0f} s; load-generator CPU "
            f"{', '.join(f'{c:.1f} s' for c in quiet.values())}; server CPU "
            f"{', '.join(f'{c:.1f} s' for c in server_cpu)}")
        flush(cfg, nodes[0])
        workers.events["flush"].set()
        reports = list(workers.collect("result", timeout=300).values())
        sampler.phase = "left"
    finally:
        workers.stop()
        sampler.stop()
    total = Stats()
    for report in reports:
        stats: Stats = report["stats"]
        total.counts.update(stats.counts)
        total.acked += stats.acked
        total.refused |= stats.refused
        total.sent |= stats.sent
        total.delivered |= stats.delivered
        total.names |= stats.names
        total.groups |= stats.groups
        for kind, examples in stats.examples.items():
            total.examples.setdefault(kind, []).extend(examples)
    return SoakResult(total, reports, sampler, server_cpu, load_seconds)


def observer_mismatches(result: SoakResult) -> list[str]:
    """Each observer got exactly the acked messages of its groups and to it."""
    expected: dict[str, set[str]] = {}
    by_target: dict[tuple[str, str], list[str]] = {}
    for msg_id, where, target in result.stats.acked:
        by_target.setdefault((where, target), []).append(msg_id)
    problems = []
    for report in result.reports:
        for name, (key, groups, got) in report["observed"].items():
            want = set(by_target.get(("private", name), []))
            for group in groups:
                want |= {m for m in by_target.get(("group", group), []) if not m.startswith(key + ".")}
            expected[name] = want
            if got != want:
                problems.append(f"{name}: {len(want - got)} missing (e.g. {sorted(want - got)[:3]}), "
                                f"{len(got - want)} unexpected (e.g. {sorted(got - want)[:3]})")
    if not any(expected.values()):
        problems.append("no observer was sent anything: nothing was checked")
    return problems


def poll(what: str, problem: Callable[[], Any], timeout: float = 60) -> None:
    """Call ``problem()`` until it returns nothing; fail with what it last said."""
    deadline = time.monotonic() + timeout
    while True:
        value = problem()
        if not value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(0.2)


def counts_left(nodes: list[ServerProcess]) -> Callable[[], Any]:
    """Each node's router counts, unless every one of them is zero."""

    def problem() -> Any:
        state = [health(n).get("router") for n in nodes]
        return None if all(s and not any(s.values()) for s in state) else state

    return problem


def presence_left(node: ServerProcess, groups: set[str], names: list[str]) -> list[str]:
    """
    Presence as clients see it, on any backend: ``who`` of every group used
    is empty, and a probe with a used nickname is announced online again
    (it would not be if the backend still had that user online).
    """
    problems = []
    with connect(f"{node.ws}/ws/soak-watcher", subprotocols=[NATIVE], open_timeout=30) as ws:  # type: ignore[list-item]
        json.loads(ws.recv(timeout=30))  # welcome
        ordered = sorted(groups | {"lobby"})
        for i, group in enumerate(ordered):
            ws.send(json.dumps({"type": "who", "group": group, "id": str(i)}))
        answers: dict[str, list[str]] = {}
        while len(answers) < len(ordered):
            frame = json.loads(ws.recv(timeout=60))
            if frame["type"] == "who":
                answers[frame["group"]] = frame["users"]
        for group, users in answers.items():
            if users != (["soak-watcher"] if group == "lobby" else []):
                problems.append(f"who {group}: {users}")
        for name in names:
            # online (unless the backend still has the user), join lobby;
            # then leave lobby, offline.
            with connect(f"{node.ws}/ws/{quote(name, safe='')}", open_timeout=30):
                first = json.loads(ws.recv(timeout=30))
            if first != {"type": "presence", "event": "online", "user": name}:
                problems.append(f"probe {name} was not announced online: {first}")
            while json.loads(ws.recv(timeout=30)) != {"type": "presence", "event": "offline", "user": name}:
                pass
    return problems


def summary(result: SoakResult) -> str:
    counts = result.stats.counts
    lines = [f"{k} {v}" for k, v in sorted(counts.items())]
    for r in result.reports:
        lines.append(f"worker cpu {r['cpu']:.1f} s, loop lag p99 {r['lag_p99'] * 1000:.0f} ms, "
                     f"max {r['lag_max'] * 1000:.0f} ms, max rss {r['max_rss_kib'] / 1024:.0f} MiB")
    return "\n".join(lines)


def violations(stats: Stats) -> Counter[str]:
    return Counter({k: v for k, v in stats.counts.items() if k.startswith("violation.")})
