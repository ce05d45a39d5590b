"""
Writing broadcast frames to the sockets ourselves where nothing is
buffered: at once (fan-out latency), or once at the end of the reactor's
turn (fan-out throughput).

Twisted's ``transport.write`` only appends to the transport's buffer and
asks the reactor to watch the socket for writability; the bytes leave in
``doWrite`` on the reactor's next turn. A broadcast to 1,000 members thus
queues all 1,000 frames before the first leaves, so every member waits
for the whole loop (and then for its turn among 1,000 ``doWrite`` calls,
each with two ``epoll_ctl`` calls around its ``send``): at 10 messages/s
to 1,000 members p50 was ~20 ms against ~8 ms for the ``websockets``
library, which sends at once when a connection's buffer is empty.

:func:`write` does the same: on a plain TCP connection whose buffer is
empty it hands the bytes to the socket now (``socket.send``) and gives
whatever the kernel did not take to ``transport.write``, so from then on
the connection is Twisted's as before: buffered in order, its producer
paused past ``bufferSize`` (the slow-consumer drop in
:mod:`improto.web.link` still counts from that pause), and an error left
for ``doWrite`` to meet and report as the connection's loss. A frame never
overtakes bytes already buffered: with anything buffered it is written
with ``transport.write`` behind them. Anything that is not a plain
``tcp.Connection`` (TLS, whose bytes must go through the TLS layer, a
wrapper, a test's ``StringTransport``) always gets ``transport.write``.

Only broadcasts (``LinkProtocol.broadcast``: group and private
deliveries) send at once, and only those :class:`Turns` picks: under load
several broadcasts come in one reactor turn, and buffering them lets one
``send`` per member carry them all, which fan-out throughput depends on.
Single frames (acks, errors, pings, handshakes) are written as before.

The broadcasts that do not send at once are not buffered by Twisted
either, where the socket has nothing buffered: :func:`hold` keeps each
member's frames of the turn, and when the turn ends (a ``callLater(0)``,
as the reactor starts its next turn) :func:`flush_held` hands each member's
frames to its socket with one ``send``, as ``doWrite`` would have. Twisted's
buffer would cost each member two ``epoll_ctl`` calls (watch for
writability, then stop) and a ``doWrite`` dispatch per turn: 1,000 of
each per turn of a 1,000-member fan-out. A connection's other writes
(acks, pings, Autobahn's own) first :func:`release` what is held for it,
so nothing overtakes a held frame.

Whether the buffer is empty is not public API: :func:`idle_socket` reads
Twisted's buffer attributes, in this one place, and is pinned by
``tests/web/test_flush.py`` (the reviewed sources of the Twisted methods
that keep those attributes, and their behaviour on a real socket). When
an attribute is missing it answers None: plain ``transport.write``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

#: Whether broadcasts may send at once (False: always ``transport.write``,
#: the benchmarks' "before"; see ``benchmarks/servers/improto_server.py``).
enabled = True


#: Turns of at most one broadcast after a burst before broadcasts send at
#: once again (see :class:`Turns`).
QUIET_TURNS = 4
#: Single-link broadcasts (private messages) per turn that send at once
#: while the server is lightly loaded (see :class:`Turns`).
SINGLES_AT_ONCE = 4


class Turns:
    """
    Which broadcasts send at once.

    To several members: the first of a reactor turn, once the last
    :data:`QUIET_TURNS` turns with such broadcasts had one each. Sending
    at once costs one ``send`` per member per frame; buffering lets
    ``doWrite`` send every frame a member got in one turn with one
    ``send``, which is what fan-out throughput lives on (16 messages in
    flight to 1,000 members arrive 16 to a read). So a broadcast later in
    a turn is buffered, and after a turn of several (a burst) so is every
    broadcast until the server has been quiet for a few turns: with
    a burst's first broadcast sent at once, its members finished that
    message early, the next message came on its own, and the turns
    alternated 16, 1, 16, 1 with every other burst starting with 1,000
    sends (at ~20 µs each on a busy loopback) instead of being buffered.

    To one member (a private message): the first of every turn, and up to
    :data:`SINGLES_AT_ONCE` of a turn when the last turn that had any had
    no more than that. One ``send`` at once is cheaper than Twisted's
    buffered write (which adds two ``epoll_ctl`` calls and a turn), unless
    more frames for the same socket follow in the turn; under load a turn
    carries dozens of private messages and they are buffered as before,
    while at a light rate (2,000 messages/s, two or three to a turn) each
    leaves at once: p50 0.21 -> 0.15 ms, p99 0.50 -> 0.43 ms, throughput
    unchanged (``benchmarks/README.md``). Single-member broadcasts do not
    count towards a burst of fan-outs.

    A turn ends when the reactor runs its timed calls (``callLater(0)``):
    after every event of one ``epoll_wait`` has been handled.
    """

    def __init__(self, clock: Any) -> None:
        #: What the turn's end is scheduled on (also for :func:`hold`).
        self.clock = clock
        #: Fan-outs (broadcasts to several members) and single-member ones in this turn.
        self._count = self._singles = 0
        #: Single-link broadcasts in the last turn that had any.
        self._last_singles = 0
        self._ending = False
        #: Turns with fan-outs, of one each, since the last burst of them.
        self._quiet = QUIET_TURNS

    def direct(self, members: int = 2) -> bool:
        """Called once per broadcast to ``members`` links: whether this one sends at once."""
        if not self._ending:
            self._ending = True
            self.clock.callLater(0, self._turn_ended)
        if members == 1:
            self._singles += 1
            return enabled and (self._singles == 1 or (
                self._singles <= SINGLES_AT_ONCE and self._last_singles <= SINGLES_AT_ONCE))
        self._count += 1
        return enabled and self._count == 1 and self._quiet >= QUIET_TURNS

    def _turn_ended(self) -> None:
        if self._count:
            self._quiet = 0 if self._count > 1 else self._quiet + 1
        if self._singles:
            self._last_singles = self._singles
        self._count = self._singles = 0
        self._ending = False


def idle_socket(transport: Any) -> socket.socket | None:
    """
    The socket of ``transport`` if it is a plain, open TCP connection with
    nothing in Twisted's write buffers (bytes sent on it now are next in
    line), else None. ``FileDescriptor.write`` appends to
    ``_tempDataBuffer`` and counts ``_tempDataLen``; ``doWrite`` moves that
    into ``dataBuffer`` and sends from ``offset``. ``TLS`` is set by
    ``startTLS`` (writes then go through the TLS layer, never to the
    socket directly).
    """
    if not isinstance(transport, tcp.Connection):
        return None
    try:
        if (
            transport.connected
            and not transport.disconnecting
            and not transport.TLS
            and not transport._writeDisconnecting
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
        ):
            return transport.socket
    except AttributeError:
        pass
    return None


def write(transport: Any, data: bytes) -> None:
    """
    ``transport.write(data)``, but on an idle TCP connection
    (:func:`idle_socket`) the socket gets the bytes now and the buffer only
    what the kernel did not take. On any error (``EAGAIN``, ``ENOBUFS``, a
    reset) the whole frame goes to ``transport.write``: ``doWrite`` then
    retries it, or meets the error and reports the connection's loss.
    """
    sock = idle_socket(transport)
    if sock is not None:
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


#: Frames kept for idle sockets until the reactor's turn ends, per
#: transport, in order (see :func:`hold`).
held: dict[Any, list[bytes]] = {}
_flush_scheduled = False


def hold(transport: Any, data: bytes, clock: Any) -> bool:
    """
    Keep ``data`` for ``transport`` until this reactor turn ends, behind
    anything already held for it; False (nothing kept) unless something is
    held for it already or its socket is idle (:func:`idle_socket`): then
    the caller writes as before.
    """
    global _flush_scheduled
    frames = held.get(transport)
    if frames is not None:
        frames.append(data)
        return True
    if not enabled or idle_socket(transport) is None:
        return False
    held[transport] = [data]
    if not _flush_scheduled:
        _flush_scheduled = True
        clock.callLater(0, flush_held)
    return True


def write_now(transport: Any, data: bytes) -> None:
    """:func:`write`, unless frames are held for ``transport``: then behind them."""
    frames = held.get(transport)
    if frames is not None:
        frames.append(data)
    else:
        write(transport, data)


def release(transport: Any) -> None:
    """Write what is held for ``transport`` now: a write that must follow it is next."""
    frames = held.pop(transport, None)
    if frames is not None:
        _write_held(transport, frames)


def flush_held() -> None:
    """The turn has ended: each transport's held frames go out with one ``send``."""
    global _flush_scheduled
    _flush_scheduled = False
    while held:
        _write_held(*held.popitem())


def _write_held(transport: Any, frames: list[bytes]) -> None:
    write(transport, frames[0] if len(frames) == 1 else b"".join(frames))
