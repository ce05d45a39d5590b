"""
Profile the improto server under load, on stock Autobahn and as shipped.

    python benchmarks/profile_improto.py [--quick] [--top 20] [--only fanout,churn,private]
        [--variants stock-autobahn,improto] [--profiler auto|py-spy|cprofile] [--keep DIR]

For each scenario and variant the server runs as deployed (``twistd -n
improto``, pinned to CPU 0), the load generator drives it from CPU 1, and
the functions with the most CPU time are printed per operation (delivered
frame, connection, private message):

* ``stock-autobahn``: ``improto.web.quiet`` undone (``quiet.uninstall()``,
  ``servers/improto_server.py --stock-autobahn``): the same server,
  backpressure and all, with Autobahn's eager debug-log formatting ("before");
* ``improto``: the server as shipped ("after").

Profilers: ``py-spy`` (sampling from outside the process: no overhead in
the server, times are unbiased; ``pip install py-spy``) is used when it is
installed, else ``cprofile`` (deterministic: exact calls per operation, but
it adds about a microsecond to every Python call on this machine, which
inflates functions that are called often). The summary at the end of each
block adds up what Autobahn spends on debug-log arguments that are never
logged (and on the "message" event nobody listens to, which improto no
longer avoids).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import loadgen  # noqa: E402

#: (file fragment, function) -> label: code that only builds debug-log
#: arguments that are never logged, or fires events nobody listens to.
KNOWN_COSTS = {
    ("autobahn/util.py", "hltype"): "hltype() args of log.debug",
    ("autobahn/util.py", "hlval"): "hlval() args of log.debug",
    ("pprint.py", "pformat"): "pformat() args of log.debug",
    ("autobahn/util.py", "fire"): "fire('message'), no listeners",
    ("twisted/python/failure.py", "__str__"): "str(Failure) args of log.debug",
}

PARAMS = {
    "fanout": dict(receivers=200, probes=10, rate=50.0, latency_seconds=0.5, blast=1500,
                   blast_timeout=30.0),
    "churn": dict(concurrency=30, duration=5.0, latency_seconds=0.5),
    "private": dict(pairs=50, window=8, duration=5.0, latency_seconds=0.5),
}
QUICK = {
    "fanout": dict(receivers=100, probes=10, rate=50.0, latency_seconds=0.5, blast=500,
                   blast_timeout=20.0),
    "churn": dict(concurrency=30, duration=2.0, latency_seconds=0.5),
    "private": dict(pairs=25, window=8, duration=2.0, latency_seconds=0.5),
}
RUNNERS: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
    "fanout": loadgen.fanout, "churn": loadgen.churn, "private": loadgen.private,
}
OP_NAMES = {"fanout": "delivered frame", "churn": "connection", "private": "private message"}


def py_spy_path() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no profile was written to {path}")
        time.sleep(0.1)


def short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# -- py-spy ------------------------------------------------------------------------------


def parse_py_spy(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """Self and total samples per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = []
        for frame in stack.split(";"):
            # "func (path/file.py:123)" -> "func (path/file.py)"
            name, _, where = frame.partition(" (")
            file_part = where.rsplit(":", 1)[0] if ":" in where else where.rstrip(")")
            frames.append(f"{name} ({file_part})")
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count
    return own, total, samples


def report_py_spy(raw: Path, ops: float, cpu_s: float, top: int) -> str:
    own, total, samples = parse_py_spy(raw)
    if not samples:
        return "  no samples"
    us = cpu_s / ops * 1e6
    lines = [
        f"  server CPU {cpu_s:.2f}s = {us:.2f} µs per op; {samples} samples",
        f"  {'self %':>6} {'total %':>7} {'self µs/op':>10}  function",
    ]
    for func, n in own.most_common(top):
        lines.append(f"  {100 * n / samples:6.1f} {100 * total[func] / samples:7.1f} "
                     f"{us * n / samples:10.3f}  {func}")
    known = []
    for func, n in total.items():
        name, _, where = func.partition(" (")
        for (path_part, fname), label in KNOWN_COSTS.items():
            if path_part in where and fname == name.rsplit(".", 1)[-1]:
                known.append((n, label))
    lines.append("  debug-log arguments and unused events (inclusive):")
    if known:
        for n, label in sorted(known, reverse=True):
            lines.append(f"    {100 * n / samples:5.1f} %  {us * n / samples:8.3f} µs/op  {label}")
    else:
        lines.append("    none sampled")
    return "\n".join(lines)


# -- cProfile -----------------------------------------------------------------------------


def report_cprofile(path: Path, ops: float, top: int) -> str:
    st = pstats.Stats(str(path))
    entries = []
    total = 0.0
    for func, (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        entries.append((tt, ct, nc, func))
        total += tt
    entries.sort(reverse=True)
    lines = [f"  total profiled time {total:.2f}s = {total / ops * 1e6:.2f} µs per op "
             "(cProfile overhead included)",
             f"  {'own µs/op':>9} {'cum µs/op':>9} {'calls/op':>8}  function"]
    for tt, ct, nc, (filename, line, name) in entries[:top]:
        where = f"{short(filename)}:{line}({name})" if line else name
        lines.append(f"  {tt / ops * 1e6:9.3f} {ct / ops * 1e6:9.3f} {nc / ops:8.2f}  {where}")
    known = []
    for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        for (path_part, fname), label in KNOWN_COSTS.items():
            if name == fname and path_part in filename:
                known.append((ct, nc, label))
    lines.append("  debug-log arguments and unused events (cumulative):")
    if known:
        for ct, nc, label in sorted(known, reverse=True):
            lines.append(f"    {ct / ops * 1e6:8.3f} µs/op  {nc / ops:6.2f} calls/op  {label}")
    else:
        lines.append("    none called")
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------


def profile_one(scenario: str, variant: str, profiler: str, p: dict[str, Any], outdir: Path,
                top: int, clock: str) -> str:
    port = harness.free_port()
    base = outdir / f"{scenario}-{variant}"
    extra = ["--stock-autobahn"] if variant == "stock-autobahn" else []
    prof = base.with_suffix(".prof")
    raw = base.with_suffix(".pyspy.txt")
    if profiler == "cprofile":
        extra += ["--profile", str(prof), "--profile-clock", clock]
    server = harness.Server(f"improto[{variant}]", harness.improto_argv(port, *extra), port,
                            base.with_suffix(".log"))
    spy = None
    with harness.running(server):
        pid = server.pid
        assert pid is not None
        if profiler == "cprofile":
            os.kill(pid, signal.SIGUSR1)
        else:
            spy = subprocess.Popen(
                [py_spy_path() or "py-spy", "record", "--pid", str(pid), "--rate", "400",
                 "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            time.sleep(1.0)  # py-spy attaches
        cpu0 = loadgen.server_cpu_seconds(pid) or 0.0
        result = asyncio.run(RUNNERS[scenario](port, "/ws/{}".format, pid, **p))
        cpu_s = (loadgen.server_cpu_seconds(pid) or 0.0) - cpu0
        if profiler == "cprofile":
            os.kill(pid, signal.SIGUSR2)
            wait_for_file(prof)
        else:
            assert spy is not None
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            if not raw.exists():
                return f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"
    if "error" in result:
        return f"ERROR {result['error']}"
    ops = float(result["ops"])
    head = (f"per {OP_NAMES[scenario]}, {ops:,.0f} ops; "
            f"{result['throughput']:,.0f} {result['unit']} while profiled")
    if profiler == "cprofile":
        return head + "\n" + report_cprofile(prof, ops, top)
    return head + "\n" + report_py_spy(raw, ops, cpu_s, top)


def main() -> None:
    parser = argparse.ArgumentParser(description="profile improto under load")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--only", default="fanout,churn,private")
    parser.add_argument("--variants", default="stock-autobahn,improto")
    parser.add_argument("--profiler", choices=["auto", "py-spy", "cprofile"], default="auto")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="wall",
                        help="cProfile's clock (cpu costs ~2 µs a call here)")
    parser.add_argument("--keep", metavar="DIR", help="keep profiles and logs in DIR")
    parser.add_argument("--no-boost", action="store_true", help="see run.py --no-boost")
    args = parser.parse_args()
    profiler = args.profiler
    if profiler == "auto":
        profiler = "py-spy" if py_spy_path() else "cprofile"
    if profiler == "py-spy" and not py_spy_path():
        sys.exit(f"py-spy is not installed: {sys.executable} -m pip install py-spy")
    print(f"improto under test: {harness.check_improto()}", flush=True)
    priority = harness.boost(not args.no_boost)
    print(f"profiler: {profiler}; {priority}; load average {os.getloadavg()[0]:.2f}", flush=True)
    harness.pin_self_to_client_cpu()
    outdir = Path(args.keep or tempfile.mkdtemp(prefix="improto-prof-"))
    outdir.mkdir(parents=True, exist_ok=True)
    table = QUICK if args.quick else PARAMS
    for scenario in args.only.split(","):
        for variant in args.variants.split(","):
            text = profile_one(scenario, variant, profiler, table[scenario], outdir, args.top,
                               args.clock)
            print(f"\n== {scenario} / {variant}: {text}", flush=True)
    if not args.keep:
        shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    main()
