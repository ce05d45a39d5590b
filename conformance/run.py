"""Run the real Autobahn TestSuite against improto's /echo route and gate it.

For every --backend this starts an improto server (a `twistd improto`
subprocess on a free loopback port; for redis also a private redis-server
unless REDIS_URL is set), waits until the port accepts connections (wstest
writes an empty report and exits 0 if it does not), and runs
`wstest -m fuzzingclient` against ws://127.0.0.1:PORT/echo. The 9.* cases also
run against conformance/baseline_echo.py, a stock Autobahn echo server, so the
gate can print improto/baseline timing ratios. All wstest runs go at the same
time: each client/server pair is a strict ping-pong that keeps about one core
busy, so two backends fill the two CI cores. The baseline starts when improto
reaches its first 9.* case, so both run 9.* under the same load, which keeps
the ratios fair.

Every process started here is stopped again, also on failure or Ctrl-C
(each child also gets SIGKILL if this runner dies: PR_SET_PDEATHSIG).

    python conformance/run.py --backend memory --backend redis \
        [--cases '*'] [--exclude PATTERN] [--report-dir DIR] [--shards N]
        [--server-cmd 'python conformance/baseline_echo.py --port {port}']

Exit status: the gate's (0 pass, 1 fail); 2 for a setup error.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gate  # noqa: E402  (sibling module; conformance/ is not a package)

SPEC_TEMPLATE = HERE / "fuzzingclient.json"
INSTALLER = HERE / "install_wstest.sh"
BASELINE_AGENT = "baseline-autobahn"
DEFAULT_SERVER_CMD = (
    "{twistd} -n --pidfile= improto --port tcp:{port}:interface=127.0.0.1 --backend {backend}"
    # The suite sends thousands of frames a second on /echo (9.*).
    " --rate 0"
)
BASELINE_CMD = "{python} " + shlex.quote(str(HERE / "baseline_echo.py")) + " --port {port}"
PR_SET_PDEATHSIG = 1
#: wstest prints this line when it starts a case (its report comes at the end).
CASE_MARKER = b"Running test case ID "


class SetupError(Exception):
    """Something the run needs is missing; reported without a traceback."""


def log(message: str) -> None:
    print(f"[conformance {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- processes --------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the runner itself dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class Proc:
    """A child in its own process group, with its wall and CPU time."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    cpu_seconds: float | None = None

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> Proc:
        log_file = open(log_path, "wb")
        try:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            log_file.close()
            raise SetupError(f"cannot start {name}: {argv[0]}: {exc.strerror}") from exc
        return cls(name, popen, log_path, log_file)

    def poll(self) -> int | None:
        """Reap the child if it exited, keeping its rusage (Popen drops it)."""
        if self.popen.returncode is None:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.popen.returncode = os.waitstatus_to_exitcode(status)
            self.ended = time.monotonic()
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
            self.log_file.close()
        return self.popen.returncode

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after `grace`."""
        if self.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.poll() is not None:
                    return
                time.sleep(0.05)

    @property
    def wall_seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: Proc, timeout: float) -> None:
    """Block until 127.0.0.1:port accepts a TCP connection.

    Needed because wstest does not wait: against a closed port it writes an
    empty report and exits 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(
                f"{proc.name} exited with {proc.popen.returncode} before listening:\n{proc.tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SetupError(
        f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n{proc.tail()}"
    )


# --- what to run --------------------------------------------------------------------


@dataclass
class Job:
    """One wstest fuzzingclient process against one server."""

    agent: str
    port: int
    cases: list[str]
    outdir: Path
    proc: Proc | None = None
    #: Start only once another job has started this case (see Runner.plan).
    after_case: str | None = None
    argv: list[str] = field(default_factory=list)
    log_path: Path | None = None


def backend_url(backend: str, redis_url: str | None) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "redis":
        assert redis_url is not None
        return redis_url
    raise SetupError(f"unknown backend {backend!r} (memory or redis)")


def twistd_path() -> str:
    """The twistd of this interpreter's environment (the venv improto is in)."""
    local = Path(sys.executable).with_name("twistd")
    return str(local) if local.exists() else (shutil.which("twistd") or "twistd")


def server_argv(template: str, port: int, backend: str) -> list[str]:
    return [
        part.format(port=port, backend=backend, python=sys.executable, twistd=twistd_path())
        for part in shlex.split(template)
    ]


def shard(cases: Sequence[str], shards: int) -> list[list[str]]:
    """Deal cases round-robin so every shard gets a fair share of the heavy
    12.*/13.* cases (neighbouring cases cost about the same)."""
    return [list(cases[i::shards]) for i in range(shards) if cases[i::shards]]


def write_spec(job: Job, report_dir: Path) -> Path:
    spec = json.loads(SPEC_TEMPLATE.read_text())
    spec["outdir"] = "./" + str(job.outdir.relative_to(report_dir))
    spec["servers"] = [
        dict(spec["servers"][0], agent=job.agent, url=f"ws://127.0.0.1:{job.port}/echo")
    ]
    # Explicit ids, not patterns: shards and the gate agree on exactly which ran.
    spec["cases"] = job.cases
    spec["exclude-cases"] = []
    path = (
        report_dir / f"{job.outdir.relative_to(report_dir).as_posix().replace('/', '.')}.spec.json"
    )
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def find_wstest(explicit: str | None) -> str:
    """--wstest, $WSTEST, or whatever the (idempotent) installer prints."""
    if explicit or os.environ.get("WSTEST"):
        return explicit or os.environ["WSTEST"]
    log("locating wstest via conformance/install_wstest.sh")
    out = subprocess.run(["bash", str(INSTALLER)], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise SetupError("conformance/install_wstest.sh failed")
    return out.stdout.strip().splitlines()[-1]


# --- the run ------------------------------------------------------------------------


class Runner:
    """Owns every process of one run so all of them can be stopped."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report_dir: Path = args.report_dir.resolve()
        self.servers: list[Proc] = []
        self.jobs: list[Job] = []

    def start_server(self, name: str, argv: list[str], port: int) -> Proc:
        log(f"starting {name}: {shlex.join(argv)}")
        proc = Proc.start(name, argv, self.report_dir / f"{name}.server.log")
        self.servers.append(proc)
        wait_for_port(port, proc, self.args.startup_timeout)
        log(f"{name} listening on 127.0.0.1:{port}")
        return proc

    def redis_url(self) -> str:
        if os.environ.get("REDIS_URL"):
            return os.environ["REDIS_URL"]
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        port = free_port()
        # Private and throw-away: loopback only, nothing written to disk.
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.report_dir)]
        self.start_server("redis", argv, port)
        return f"redis://127.0.0.1:{port}/0"

    def plan(self, cases: list[str]) -> None:
        """Start the servers and lay out the wstest jobs."""
        redis = self.redis_url() if "redis" in self.args.backend else None
        for backend in self.args.backend:
            agent = f"improto-{backend}"
            port = free_port()
            template = self.args.server_cmd or DEFAULT_SERVER_CMD
            self.start_server(agent, server_argv(template, port, backend_url(backend, redis)), port)
            parts = shard(self.cases_for(backend, cases), self.args.shards)
            for i, part in enumerate(parts, 1):
                outdir = self.report_dir / agent / (f"shard-{i}" if len(parts) > 1 else "")
                self.jobs.append(Job(agent, port, part, outdir))
        baseline_cases = gate.select_cases(
            gate.read_case_list(gate.CASES_FILE.read_text()), self.args.baseline_cases
        )
        if baseline_cases:
            port = free_port()
            self.start_server(BASELINE_AGENT, server_argv(BASELINE_CMD, port, "memory://"), port)
            # The baseline waits until improto reaches its first case, so that its
            # 9.* cases run under the same CPU contention as improto's.
            first = baseline_cases[0] if baseline_cases[0] in cases else None
            outdir = self.report_dir / BASELINE_AGENT
            self.jobs.append(Job(BASELINE_AGENT, port, baseline_cases, outdir, after_case=first))

    def run_jobs(self, wstest: str) -> None:
        """Run every wstest concurrently, wait for all, then log their costs."""
        for job in self.jobs:
            # wstest only adds files: a stale index.json must not pass the gate.
            shutil.rmtree(job.outdir, ignore_errors=True)
            job.outdir.mkdir(parents=True)
            spec = write_spec(job, self.report_dir)
            job.argv = [wstest, "-m", "fuzzingclient", "-s", spec.name]
            job.log_path = spec.with_suffix("").with_suffix(".wstest.log")
        self.wait_jobs()
        for job in self.jobs:
            if job.proc is None:
                log(f"wstest {job.agent}: never started")
                continue
            job.proc.stop()
            log(
                f"{job.proc.name}: exit {job.proc.popen.returncode}, "
                f"{job.proc.wall_seconds:.0f}s wall, {job.proc.cpu_seconds or 0:.0f}s CPU"
            )

    def start_due_jobs(self) -> None:
        """Start the jobs not started yet: at once without `after_case`, else
        once a running job has started that case (or none is left running)."""
        for job in self.jobs:
            if job.proc is None and job.after_case is None:
                self.start_job(job)
        running = [j for j in self.jobs if j.proc is not None and j.proc.poll() is None]
        for job in self.jobs:
            if job.proc is None and job.after_case is not None:
                marker = CASE_MARKER + job.after_case.encode() + b" "
                if not running or any(marker in self._log_bytes(j) for j in running):
                    self.start_job(job)

    def start_job(self, job: Job) -> None:
        assert job.log_path is not None
        name = f"wstest {job.outdir.relative_to(self.report_dir)}"
        log(f"{name}: {len(job.cases)} cases")
        job.proc = Proc.start(name, job.argv, job.log_path, cwd=self.report_dir)

    def wait_jobs(self) -> None:
        """Poll the wstest processes, printing progress, until done or timed out."""
        deadline = time.monotonic() + self.args.timeout
        last_progress = time.monotonic()
        self.start_due_jobs()
        # Poll every job each round (no short-circuit) so finished ones are reaped on time.
        while [j for j in self.jobs if j.proc is None or j.proc.poll() is None]:
            if time.monotonic() > deadline:
                log(
                    f"timeout after {self.args.timeout:.0f}s: stopping wstest, which writes its "
                    "report only at the end (the gate will fail on the missing reports)"
                )
                for job in self.jobs:
                    log(f"  {self.progress(job)}, last case started: {self.last_case(job)}")
                return
            if time.monotonic() - last_progress >= self.args.progress_every:
                last_progress = time.monotonic()
                log("progress: " + ", ".join(self.progress(j) for j in self.jobs))
            time.sleep(0.5)
            self.start_due_jobs()

    @staticmethod
    def _log_bytes(job: Job) -> bytes:
        if job.proc is None:
            return b""
        try:
            return job.proc.log_path.read_bytes()
        except OSError:
            return b""

    @classmethod
    def progress(cls, job: Job) -> str:
        done = cls._log_bytes(job).count(CASE_MARKER)
        return f"{job.proc.name if job.proc else job.agent} {done}/{len(job.cases)}"

    @classmethod
    def last_case(cls, job: Job) -> str:
        """The case a (possibly hung) wstest was running, from its log."""
        text = cls._log_bytes(job)
        at = text.rfind(CASE_MARKER)
        if at < 0:
            return "none"
        return text[at + len(CASE_MARKER) :].split(b" ", 1)[0].decode(errors="replace")

    def stop_all(self) -> None:
        for job in self.jobs:
            if job.proc is not None:
                job.proc.stop()
        for proc in reversed(self.servers):
            proc.stop()
            if proc.cpu_seconds is not None:
                log(f"{proc.name}: {proc.cpu_seconds:.0f}s CPU over {proc.wall_seconds:.0f}s")

    def cpu_summary(self, wall: float) -> str:
        """CPU the run used, which on a busy machine says more than wall time:
        on an otherwise idle machine the run needs about cpu / cores seconds."""
        procs = [j.proc for j in self.jobs if j.proc is not None] + self.servers
        cpu = sum(p.cpu_seconds or 0.0 for p in procs)
        cores = os.cpu_count() or 1
        return (
            f"{wall:.0f}s wall, {cpu:.0f}s CPU in wstest and servers "
            f"(= {cpu / wall:.2f} cores busy on average; {cores} cores here)"
        )

    def excludes_for(self, backend: str) -> list[str]:
        """--exclude plus this backend's own --exclude-on patterns."""
        own = [pat for name, pat in self.args.exclude_on if name == backend]
        return list(self.args.exclude) + own

    def cases_for(self, backend: str, cases: list[str]) -> list[str]:
        excluded = set(gate.select_cases(cases, self.excludes_for(backend)))
        return [case for case in cases if case not in excluded]

    def judge(self, cases: list[str]) -> int:
        """Run the gate once per backend (each has its own case selection);
        the baseline's 9.* ratios are printed with the first."""
        status = 0
        for i, backend in enumerate(self.args.backend):
            status = max(status, self.judge_backend(backend, with_baseline=i == 0))
        return status

    def judge_backend(self, backend: str, with_baseline: bool) -> int:
        agent = f"improto-{backend}"
        jobs = [j for j in self.jobs if j.agent == agent]
        if with_baseline:
            jobs += [j for j in self.jobs if j.agent == BASELINE_AGENT]
        gate_args = [arg for job in jobs for arg in ("--report", str(job.outdir))]
        gate_args += ["--agent", agent]
        gate_args += [arg for pat in self.args.cases for arg in ("--cases", pat)]
        gate_args += [arg for pat in self.excludes_for(backend) for arg in ("--exclude", pat)]
        if with_baseline and any(job.agent == BASELINE_AGENT for job in jobs):
            gate_args += ["--baseline-agent", BASELINE_AGENT]
            gate_args += [
                arg for pat in self.args.baseline_cases for arg in ("--baseline-cases", pat)
            ]
        log("gate: python conformance/gate.py " + shlex.join(gate_args))
        return gate.main(gate_args)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Autobahn TestSuite conformance run for improto.")
    p.add_argument(
        "--backend",
        action="append",
        choices=["memory", "redis"],
        help="improto backend to test; repeat for several (default: memory)",
    )
    p.add_argument("--cases", action="append", help="wstest case patterns (default: '*', all 517)")
    p.add_argument("--exclude", action="append", default=[], help="case patterns to leave out")
    p.add_argument(
        "--exclude-on",
        action="append",
        default=[],
        metavar="BACKEND=PATTERN",
        help="leave PATTERN out on one backend only, e.g. redis=12.* (repeatable)",
    )
    p.add_argument(
        "--baseline-cases",
        action="append",
        help="cases for the stock Autobahn baseline (default: '9.*'; 'none' to skip)",
    )
    p.add_argument(
        "--report-dir", type=Path, default=HERE / "reports", help="default: conformance/reports"
    )
    p.add_argument(
        "--server-cmd",
        help="server command template instead of twistd improto; "
        "placeholders {port} {backend} {python} {twistd}",
    )
    p.add_argument(
        "--shards", type=int, default=1, help="concurrent wstest processes per backend (default 1)"
    )
    p.add_argument("--wstest", help="wstest launcher (default: $WSTEST or install_wstest.sh's)")
    p.add_argument(
        "--timeout", type=float, default=70 * 60, help="seconds for all wstest runs (default 4200)"
    )
    p.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds for a server to listen"
    )
    p.add_argument(
        "--progress-every", type=float, default=60.0, help="seconds between progress lines"
    )
    args = p.parse_args(argv)
    args.backend = args.backend or ["memory"]
    args.cases = args.cases or ["*"]
    args.baseline_cases = (
        [] if args.baseline_cases == ["none"] else (args.baseline_cases or ["9.*"])
    )
    if args.shards < 1:
        p.error("--shards must be >= 1")
    pairs = []
    for item in args.exclude_on:
        backend, sep, pattern = item.partition("=")
        if not sep or backend not in ("memory", "redis") or not pattern:
            p.error(f"--exclude-on wants BACKEND=PATTERN, got {item!r}")
        pairs.append((backend, pattern))
    args.exclude_on = pairs
    return args


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (CI cancelling) and SIGINT both unwind into the cleanup.

    SIGINT is set explicitly because a runner started in the background of a
    non-interactive shell inherits it ignored."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    runner = Runner(args)
    runner.report_dir.mkdir(parents=True, exist_ok=True)
    cases = gate.select_cases(
        gate.read_case_list(gate.CASES_FILE.read_text()), args.cases, args.exclude
    )
    if not cases:
        log(f"no case matches {args.cases} minus {args.exclude}")
        return 2
    started = time.monotonic()
    try:
        wstest = find_wstest(args.wstest)
        runner.plan(cases)
        runner.run_jobs(wstest)
    except SetupError as exc:
        log(f"setup error: {exc}")
        return 2
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'SIGINT'}): stopping every process of this run")
        return 130
    finally:
        runner.stop_all()
    log("all wstest runs done: " + runner.cpu_summary(time.monotonic() - started))
    status = runner.judge(cases)
    log("reports (open index.html inside):")
    for job in runner.jobs:
        print(f"  {job.outdir}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
