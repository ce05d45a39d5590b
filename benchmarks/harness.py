"""
Starting and stopping the servers under test, and the seeds' own venv.

Servers run on CPU 0 and the load generator on CPU 1 when the machine has
two or more CPUs (``os.sched_setaffinity``), so that each side has a core
and the server's numbers are its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import improto
    from improto.testing import free_port as free_port  # run.py and profile_improto.py use it
    from improto.testing import stop_process, wait_for_port
except ImportError:
    sys.exit(
        "improto is not importable by this Python. Install it (not editable) first:\n"
        f"    {sys.executable} -m pip install {Path(__file__).resolve().parent.parent} websockets"
    )

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEED_DIR = HERE / "seed_servers"
SEED_REQUIREMENTS = SEED_DIR / "requirements.txt"

SERVER_CPU = 0
CLIENT_CPU = 1


def cache_dir() -> Path:
    return Path(os.environ.get("IMPROTO_CACHE") or Path.home() / ".cache" / "improto")


_CAN_PIN = (
    hasattr(os, "sched_setaffinity")
    and {SERVER_CPU, CLIENT_CPU} <= set(os.sched_getaffinity(0))
)


def can_pin() -> bool:
    """Whether there are two CPUs to give the server and the load one each."""
    return _CAN_PIN


#: Niceness for the servers and the load generator (see ``boost``).
BOOST_NICE = -10


def boost(enable: bool = True) -> str:
    """
    Give the benchmark (this process and the servers it starts from now on)
    priority over other work on the machine, where allowed (root).

    Linux groups processes by session for CPU sharing ("autogroup"), so a
    plain nice value only ranks processes within their own session: this
    forks, the child starts a new session (its own autogroup) and sets both
    the autogroup's and its own nice value to -10, and the parent only
    waits for the child and exits with its status (forwarding Ctrl-C).
    Returns a description of what it could do (in the child).
    """
    if not enable:
        return "normal priority (--no-boost)"
    if os.environ.get("IMPROTO_BENCH_SESSION") != "1" and hasattr(os, "fork"):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            _wait_for_child(pid)  # never returns
        os.environ["IMPROTO_BENCH_SESSION"] = "1"
        with contextlib.suppress(OSError):
            os.setsid()
    done = []
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(BOOST_NICE))
        done.append(f"own autogroup at nice {BOOST_NICE}")
    except OSError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, BOOST_NICE)
        done.append(f"nice {BOOST_NICE}")
    except (OSError, AttributeError):
        pass
    return ", ".join(done) if done else "normal priority (not allowed to raise it)"


def _wait_for_child(pid: int) -> None:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)
    os._exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 1)


def raise_open_files(need: int) -> int:
    """
    Raise this process's soft limit on open files (inherited by the servers)
    towards ``need``; returns the limit now in force.
    """
    try:
        import resource
    except ImportError:
        return need
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_self_to_client_cpu() -> None:
    if can_pin():
        os.sched_setaffinity(0, {CLIENT_CPU})


def pin_to_server_cpu() -> None:
    """The servers' CPU (also the preexec_fn of servers; the boost is inherited)."""
    if can_pin():
        os.sched_setaffinity(0, {SERVER_CPU})


class MachineLoad:
    """What else the machine was doing: load average, and CPU steal/others' use."""

    def __init__(self) -> None:
        self.load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.stat0 = self._stat()

    @staticmethod
    def _stat() -> list[int] | None:
        try:
            with open("/proc/stat") as f:
                return [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    def describe(self) -> str:
        parts = []
        if self.load0 is not None:
            parts.append(f"load average {self.load0:.2f} at start, {os.getloadavg()[0]:.2f} at end")
        stat1 = self._stat()
        if self.stat0 and stat1 and len(stat1) > 7:
            d = [b - a for a, b in zip(self.stat0, stat1, strict=False)]
            total = sum(d[:8]) or 1
            parts.append(f"CPU steal {100 * d[7] / total:.1f}%")
        return "; ".join(parts)


# -- the seeds' venv ------------------------------------------------------------------


def seed_python(log: Callable[[str], object] = print) -> Path:
    """
    The interpreter of a venv with the seeds' pinned Flask/gevent stack,
    created on first use under the cache dir (and re-created when
    ``seed_servers/requirements.txt`` changes).
    """
    venv = cache_dir() / "seed-venv"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.sha256"
    want = hashlib.sha256(SEED_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    log(f"creating the seeds' venv in {venv} (Flask 1.1.4, gevent-websocket; once) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(SEED_REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(want + "\n")
    return python


# -- servers --------------------------------------------------------------------------


class Server:
    """
    One server process. ``cpus``: the CPUs it may run on (default: the
    server CPU; ``None``: wherever the scheduler puts it).
    """

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path,
                 cpus: set[int] | None | str = "server") -> None:
        self.cpus = cpus
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONUNBUFFERED", None)  # the seeds print a lot: keep stdout buffered
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(), env=env, preexec_fn=self._pin,
        )
        log.close()
        try:
            wait_for_port(self.port, self.proc, timeout)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.name}: {e}; log:\n{self.tail()}") from None

    def _pin(self) -> None:
        if self.cpus == "server":
            pin_to_server_cpu()
        elif isinstance(self.cpus, set) and can_pin():
            os.sched_setaffinity(0, self.cpus)
        elif self.cpus is None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def improto_argv(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(HERE / "servers" / "improto_server.py"), "127.0.0.1",
            str(port), *extra]


def stock_autobahn_argv(port: int) -> list[str]:
    return [sys.executable, str(HERE / "servers" / "stock_autobahn.py"), "127.0.0.1", str(port)]


def redis_argv(port: int, workdir: Path) -> list[str]:
    """A private, non-persistent redis-server on ``port`` (loopback only)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", ""]


def seed_argv(python: Path, script: str, port: int) -> list[str]:
    return [str(python), str(SEED_DIR / script), "127.0.0.1", str(port)]


def check_improto() -> str:
    """
    Where the improto under test comes from; warns when the installed copy
    differs from this working tree (the benchmark measures what is installed).
    """
    installed = Path(improto.__file__).resolve().parent
    if installed == (REPO / "improto").resolve():
        return f"{installed} (the working tree)"
    source = REPO / "improto"
    stale = [
        str(name) for name in (p.relative_to(source) for p in sorted(source.rglob("*.py")))
        if not (installed / name).exists()
        or (installed / name).read_bytes() != (source / name).read_bytes()
    ]
    note = f"{installed}"
    if stale:
        note += (" -- WARNING: differs from the working tree in " + ", ".join(stale)
                 + f"; reinstall: {sys.executable} -m pip install --no-deps --force-reinstall {REPO}")
    return note
