"""
Building and running the compiled load generator (``loadgen_c/wsload.c``).

The binary is built once per source version with the machine's C compiler
(``$CC``, else ``gcc``/``cc``) into the cache dir, so a run never measures a
stale build. Each run is one ``wsload`` process whose JSON result is
returned as a dict; it is killed if it outlives its own time limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness

SOURCE = harness.HERE / "loadgen_c" / "wsload.c"


class BuildError(RuntimeError):
    pass


def compiler() -> str | None:
    for cc in (os.environ.get("CC"), "gcc", "cc"):
        if cc and shutil.which(cc):
            return cc
    return None


def binary() -> Path:
    """The built generator, compiled now if this source was not built before."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = harness.cache_dir() / f"wsload-{digest}"
    if out.exists():
        return out
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler (gcc) found: install gcc to build benchmarks/loadgen_c")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run([cc, "-O2", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{cc} failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)
    return out


def _argv(mode: str, ports: list[int], prefix: str, pids: list[int], opts: dict[str, Any],
          cap: float | None) -> list[str]:
    argv = [str(binary()), mode, "-p", ",".join(map(str, ports)), "-x", prefix]
    for key, value in opts.items():
        argv += [f"-{key}", str(value)]
    for pid in pids:
        argv += ["-s", str(pid)]
    if cap:
        argv += ["-C", f"{cap:.3f}"]
    return argv


def _preexec(cpus: set[int] | None) -> Callable[[], None]:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and harness.can_pin():
            os.sched_setaffinity(0, cpus if cpus is not None else range(os.cpu_count() or 1))

    return pin


def run(mode: str, ports: list[int], prefix: str, pids: list[int], opts: dict[str, Any],
        cpus: set[int] | None, cap: float | None = None) -> dict[str, Any]:
    """One measuring run (fanout, private, handshake); the generator's JSON."""
    limit = float(opts.get("T", 120))
    proc = subprocess.run(
        _argv(mode, ports, prefix, pids, opts, cap), capture_output=True, text=True,
        timeout=limit + 15, preexec_fn=_preexec(cpus),
    )
    return parse(proc.stdout, proc.stderr)


def parse(stdout: str, stderr: str = "") -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    for ln in lines:
        if ln.startswith('{"error"'):
            return json.loads(ln)
    if not lines:
        return {"error": f"no result from wsload: {(stderr or stdout).strip()[-300:]}"}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"error": f"unreadable result from wsload: {lines[-1][:200]}"}


@contextlib.contextmanager
def holding(ports: list[int], prefix: str, connections: int, cpus: set[int] | None,
            timeout: float = 90.0) -> Iterator[Callable[[], float]]:
    """
    ``wsload hold``: 10 warm connections are open on entry; calling the
    yielded function opens ``connections`` more and returns the seconds that
    took; leaving closes them all.
    """
    proc = subprocess.Popen(
        _argv("hold", ports, prefix, [], {"n": connections, "T": timeout}, None),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_preexec(cpus),
    )
    assert proc.stdin is not None and proc.stdout is not None

    def expect(word: str) -> str:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith(word):
            rest = line + proc.stdout.read()  # type: ignore[union-attr]
            raise RuntimeError(parse(rest).get("error") or f"wsload hold: {rest[:300]!r}")
        return line

    def open_all() -> float:
        proc.stdin.write("go\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return float(expect("ready").split()[1])

    try:
        expect("warm")
        yield open_all
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.write("quit\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
