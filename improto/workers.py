"""
``twistd -n improto --workers N``: one listening socket, N worker processes.

How it works. The parent (the twistd process) listens on ``--port`` itself,
then stops reading that socket: it never accepts a connection. It spawns N
children (``python -m improto.workers``), each with the listening socket as
its fd 3, its own copy of the improto options and its own backend node id.
Each child adopts fd 3 (``reactor.adoptStreamPort``) and runs the ordinary
:class:`~improto.service.ImprotoService`, so a worker is an ordinary node
of a Redis cluster: workers deliver to one another through the backend,
which is why ``--workers`` > 1 refuses ``memory://``. The parent only
supervises: a worker that dies is logged once and restarted after a backoff
(doubling from :data:`FIRST_DELAY` to :data:`MAX_DELAY`, reset once a
worker has lived :data:`STEADY` seconds); SIGTERM to the parent sends
SIGTERM to every worker, each closes its WebSockets with 1001 as a single
node does, and the parent exits 0 once all have exited. Workers log JSON
events on stdout; the parent re-emits them through its own log, tagged
``[worker N]`` (``log_system``) and ``improto_worker``, so ``--logfile``
and friends apply to all. A worker whose parent vanishes (SIGKILL) sees EOF
on its stdin and stops: no orphan keeps the port.

Why one shared socket rather than one ``SO_REUSEPORT`` socket per worker:
the parent holds the socket for its whole life, so the port keeps
listening (connections wait in the kernel's backlog) while a worker
restarts or while all of them are down; with ``SO_REUSEPORT`` the
connections queued on a dying worker's socket are reset, and any process
of the same user could bind the port and take a share of the traffic.
``SO_REUSEPORT`` spreads connections evenly by a hash of the 4-tuple,
whereas a shared accept queue hands each connection to whichever worker
wakes first, so an idle worker takes more: a fair trade for a chat server
whose cost is per message, not per connection. It is also portable.

Why not twistd in each worker: twistd would want its own pidfile, logfile
and reactor choice per child (``--pidfile``/``--logfile`` would collide),
and its ``--reactor`` is not passed on: workers use the default reactor
(epoll on Linux). ``ssl:`` ports are refused with ``--workers`` > 1
(terminate TLS in front of the workers, e.g. at the load balancer): the
listening socket is plain TCP, and the TLS context would have to be rebuilt
from the endpoint's private attributes in every worker. ``--metrics
ENDPOINT`` is refused too (each worker would try to listen on it): use
``--metrics main``, and each worker answers with its own counters.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from typing import Any

from twisted.application import service
from twisted.internet import abstract, fdesc
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

#: The fd a worker finds the listening socket on.
LISTEN_FD = 3
#: Seconds before the first restart of a worker that died; doubled per death.
FIRST_DELAY = 0.25
MAX_DELAY = 10.0
#: A worker that lived this long resets its backoff.
STEADY = 30.0


def check_workers(workers: int, backend_scheme: str, port: str, metrics: str | None = None) -> None:
    """Raise ValueError (one line) when ``--workers`` cannot work with these options."""
    if workers <= 1:
        return
    if backend_scheme == "memory":
        raise ValueError("--workers needs a shared backend: --backend redis://...")
    if metrics not in (None, "main"):
        # Every worker would listen on that one endpoint; all but one would fail.
        raise ValueError("--workers with --metrics: use --metrics main (each worker reports its own)")
    if not isinstance(serverFromString(None, port), (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        raise ValueError(
            f"--workers needs a tcp: or tcp6: --port (got {port!r}); terminate TLS in front of the workers"
        )


def worker_node_id(worker: int, base: str | None = None) -> str:
    """A node id per worker incarnation: a restarted worker must not inherit a dead one's presence."""
    prefix = (base or "")[:40] or uuid.uuid4().hex[:8]
    return f"{prefix}.w{worker}.{uuid.uuid4().hex[:6]}"


class _NeverAccept(Factory):
    """The parent's factory: it stops reading the socket at once, so this never builds."""

    protocol = Protocol


class Worker(ProcessProtocol):
    """One worker process: re-emits its log, and tells the supervisor when it ends."""

    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.pid: int | None = None
        self.started_at = 0.0
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.started_at = self.supervisor.reactor.seconds()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._partial:
            return
        *lines, self._partial[childFD] = (self._partial[childFD] + data).split(b"\n")
        for line in lines:
            self._emit(line.decode("utf-8", "replace"), childFD)

    def _emit(self, line: str, fd: int) -> None:
        if not line.strip():
            return
        event: dict[str, Any] | None = None
        if fd == 1:
            try:
                event = eventFromJSON(line)
            except (ValueError, TypeError, KeyError):
                event = None
        if not isinstance(event, dict):
            # stderr (or a line that is not an event): kept as text.
            event = {
                "log_format": "{line}", "line": line, "log_namespace": "improto.workers",
                "log_level": LogLevel.warn if fd == 2 else LogLevel.info,
                "log_time": self.supervisor.reactor.seconds(),
            }
        event["log_system"] = f"worker {self.number}"
        event["improto_worker"] = self.number
        globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._emit(rest.decode("utf-8", "replace"), fd)
        self._partial = {1: b"", 2: b""}
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class Supervisor(service.Service):
    """The parent of ``--workers`` N: listens, spawns, restarts, stops."""

    name = "improto"

    def __init__(self, argv: list[str], workers: int, port: str, reactor: Any, grace: float = 3.0) -> None:
        self.argv = argv
        self.workers = workers
        self.description = port
        self.reactor = reactor
        self.grace = grace
        self.port: IListeningPort | None = None
        self.running_workers: dict[int, Worker] = {}
        self._delays: dict[int, float] = {}
        self._pending: dict[int, Any] = {}
        self._incarnation: dict[int, int] = {}

    def startService(self) -> None:
        super().startService()
        from improto.service import _tell_the_terminal

        results: list[Any] = []
        serverFromString(self.reactor, self.description).listen(_NeverAccept()).addBoth(results.append)
        if not results or isinstance(results[0], Failure):
            error = results[0].getErrorMessage() if results else "listen did not finish"
            _tell_the_terminal(f"twistd improto: could not start on {self.description}: {error}")
            raise SystemExit(1)
        self.port = results[0]
        self.port.stopReading()  # type: ignore[union-attr]
        address: Any = self.port.getHost()
        self._family = socket.AF_INET6 if address.type == "TCP6" else socket.AF_INET
        _log.info(
            "improto supervisor listening on {host}:{port} ({description}) for {workers} workers",
            host=address.host, port=address.port, description=self.description, workers=self.workers,
        )
        for number in range(1, self.workers + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._pending.pop(number, None)
        incarnation = self._incarnation[number] = self._incarnation.get(number, 0) + 1
        worker = Worker(self, number)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        args = [sys.executable, "-m", "improto.workers", str(number), str(int(self._family)), *self.argv]
        fd = self.port.fileno()  # type: ignore[union-attr]
        self.reactor.spawnProcess(
            worker, sys.executable, args, env=env, childFDs={0: "w", 1: "r", 2: "r", LISTEN_FD: fd}
        )
        self.running_workers[number] = worker
        _log.info("worker {worker} started, pid {pid} (start {incarnation})",
                  worker=number, pid=worker.pid, incarnation=incarnation)

    def worker_ended(self, worker: Worker, reason: Failure) -> None:
        if self.running_workers.get(worker.number) is worker:
            del self.running_workers[worker.number]
        how = _how_it_ended(reason)
        if not self.running:
            _log.info("worker {worker} (pid {pid}) {how}", worker=worker.number, pid=worker.pid, how=how)
            return
        lived = self.reactor.seconds() - worker.started_at
        delay = FIRST_DELAY if lived >= STEADY else self._delays.get(worker.number, FIRST_DELAY)
        self._delays[worker.number] = min(delay * 2, MAX_DELAY)
        _log.warn(
            "worker {worker} (pid {pid}) {how} after {lived:.1f}s; restarting it in {delay:g}s",
            worker=worker.number, pid=worker.pid, how=how, lived=lived, delay=delay,
        )
        self._pending[worker.number] = self.reactor.callLater(delay, self._spawn, worker.number)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            # twistd re-raises the signal that stopped it once the services
            # have stopped; a supervisor whose workers all stopped cleanly
            # exits 0, which is what process managers and scripts check.
            self.reactor._exitSignal = None
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.running_workers.values())
        for worker in workers:
            _signal(worker, signal.SIGTERM)
        # Past the workers' own grace for 1001 goodbyes, stragglers are killed.
        kill = self.reactor.callLater(self.grace + 10.0, _signal_all, workers, signal.SIGKILL)
        done = DeferredList([w.ended for w in workers])

        def close(_: object) -> Any:
            if kill.active():
                kill.cancel()
            _log.info("all {count} workers stopped", count=len(workers))
            return self.port.stopListening() if self.port is not None else None

        return done.addCallback(close)


def _signal_all(workers: list[Worker], sig: int) -> None:
    for worker in workers:
        _signal(worker, sig)


def _signal(worker: Worker, sig: int) -> None:
    try:
        worker.transport.signalProcess(sig)  # type: ignore[union-attr]
    except Exception:  # already gone
        pass


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    sig = getattr(value, "signal", None)
    if sig:
        return f"was killed by signal {signal.Signals(sig).name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


# -- the worker side: ``python -m improto.workers NUMBER FAMILY IMPROTO-ARGS...``


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """Listening means adopting the socket the parent passed as ``fd``."""

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        try:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        except Exception:
            return fail()
        os.close(self.fd)  # the port holds its own duplicate
        return succeed(port)


class _ParentWatch(abstract.FileDescriptor):
    """Stdin is a pipe from the parent: EOF means the parent is gone, so stop."""

    def __init__(self, reactor: Any, on_gone: Any) -> None:
        super().__init__(reactor)
        self._on_gone = on_gone
        fdesc.setNonBlocking(0)

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Any:
        return fdesc.readFromFD(0, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        _log.warn("the supervisor is gone; stopping")
        self._on_gone()


def _base_node_id(url: str) -> str | None:
    if not url.startswith("redis:"):
        return None
    from improto.backends.redis.options import parse_redis_url

    return parse_redis_url(url)[1].get("node_id")


def main(argv: list[str]) -> None:
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    number, family, rest = int(argv[0]), int(argv[1]), argv[2:]
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout, "")], redirectStandardIO=False)
    from twisted.internet import reactor

    from improto import tap

    options = tap.Options()
    options.parseOptions(rest)  # checked by the parent already; a SystemExit says why
    node_id = worker_node_id(number, _base_node_id(options["backend"]))
    endpoint = AdoptedEndpoint(reactor, LISTEN_FD, family)
    improto = tap.build_service(options, endpoint=endpoint, node_id=node_id)
    improto.startService()  # SystemExit(1) with one line when it cannot start
    reactor.addSystemEventTrigger("before", "shutdown", improto.stopService)
    watch = _ParentWatch(reactor, reactor.stop)
    watch.startReading()
    # Stopping anyway: the reactor's own disconnect at shutdown is no news.
    reactor.addSystemEventTrigger("before", "shutdown", watch.stopReading)
    reactor.run()
    # The service has stopped; tearing the interpreter down takes seconds
    # on a loaded machine and adds nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
