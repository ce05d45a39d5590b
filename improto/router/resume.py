"""
Replaying history: a session's resume, and a node's repair of holes.

A **resume** sends one session what it missed in some streams, oldest
first, before any live message of those streams: while the replay runs,
live envelopes of those streams wait in the session's :class:`Replay`
(see :func:`improto.router.delivery.deliver`) and are sent afterwards,
minus those the replay already sent. This is exact because the backend
stores and publishes each envelope atomically and the session's
subscriptions are active before the replay reads history: an envelope is
either in what the replay reads or published after, so it is buffered.

A **hole** is a node missing live envelopes, e.g. while its Redis
subscriber connection was reconnecting. :class:`StreamTracker` keeps the
last seq this node delivered per stream; an envelope that skips ahead
makes it fetch the skipped ones from history and deliver them first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import Audience, Envelope, HistoryPage, IBackend
from improto.protocol import streams
from improto.protocol.codec import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from improto.router.delivery import Replies
    from improto.router.sessions import Session

_log = Logger()

#: Most envelopes one hole repair fetches; a longer hole is reported as a gap.
MAX_REPAIR = 1000

FanOut = Callable[[Envelope], None]


@attrs.define(eq=False)
class Replay:
    """
    Live envelopes waiting, per stream, while a session's replay runs; and
    after it, the last seq it sent per stream (its *floor*): a live
    envelope at or below it (one a hole repair of this node delivers late)
    was already sent. A floor goes once a live envelope passes above it,
    since a node delivers each stream in seq order.
    """

    waiting: dict[str, list[Envelope]] = attrs.field(factory=dict)
    floors: dict[str, int] = attrs.field(factory=dict)
    #: Streams resumed on this connection: once each, so that one frame
    #: cannot ask for the same history again and again (``history`` pages it).
    resumed: set[str] = attrs.field(factory=set)

    def hold(self, envelope: Envelope) -> bool:
        """True when ``envelope`` is not for the session now (held or sent)."""
        stream = envelope.stream or ""
        buffered = self.waiting.get(stream)
        if buffered is not None:
            buffered.append(envelope)
            return True
        floor = self.floors.get(stream)
        if floor is None:
            return False
        if (envelope.seq or 0) <= floor:
            return True
        del self.floors[stream]
        return False


def member_of(session: Session, stream: str) -> bool:
    if stream.startswith("group:"):
        return stream[len("group:"):] in session.groups
    return stream == "user:" + session.user


class Resumer:
    """Runs resumes for the sessions of one router."""

    def __init__(self, backend: IBackend, replies: Replies, page_max: int) -> None:
        self._backend = backend
        self._replies = replies
        self._page_max = page_max

    def begin(self, session: Session, names: list[str], request_id: str | None) -> Replay:
        """Start holding live envelopes of ``names``; raises if it may not."""
        for name in names:
            if not member_of(session, name):
                raise ProtocolError(
                    ErrorCode.NOT_A_MEMBER,
                    f"You cannot resume {name!r}: you are not a member of it; join first.",
                    request_id,
                )
        replay = session.replay or Replay()
        busy = [name for name in names if name in replay.resumed]
        if busy:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"Stream {busy[0]!r} was already resumed on this connection; page it with 'history'.",
                request_id,
            )
        for name in names:
            replay.waiting[name] = []
            replay.resumed.add(name)
        session.replay = replay
        return replay

    def run(
        self, session: Session, replay: Replay, positions: dict[str, int],
        request_id: str | None, announce: bool = True,
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run(session, replay, positions, request_id, announce))

    async def _run(
        self, session: Session, replay: Replay, positions: dict[str, int],
        request_id: str | None, announce: bool,
    ) -> None:
        reached: dict[str, int] = {}
        for name, position in positions.items():
            try:
                reached[name] = await self._one(session, name, position, request_id)
            except ProtocolError as e:
                replay.resumed.discard(name)  # a refused resume may be retried
                # Nothing was replayed: no floor, or live messages at or below the
                # refused position (a stream that numbers afresh) would be dropped.
                reached[name] = 0
                self._replies.refuse(session, e)
            except Exception:
                self._replies.failed(Failure(), session, request_id)
            finally:
                reached[name] = self._flush(session, replay, name, reached.get(name, position))
                replay.floors[name] = reached[name]
        if announce:
            self._replies.send(session, streams.resumed(reached, request_id))

    def release(self, session: Session, replay: Replay, name: str) -> None:
        """Stop holding ``name`` without replaying (its position never came)."""
        replay.resumed.discard(name)
        self._flush(session, replay, name, 0)

    async def _one(self, session: Session, name: str, position: int, request_id: str | None) -> int:
        after, first = position, True
        while True:
            page: HistoryPage = await self._backend.history(name, after, self._page_max)
            if first:
                first = False
                if position > page.last_seq:
                    raise ProtocolError(
                        ErrorCode.BAD_RESUME,
                        f"Stream {name!r} has no seq {position}: its last is {page.last_seq}.",
                        request_id,
                    )
                if page.first_seq > position + 1:
                    self._replies.send(session, streams.gap(name, position + 1, page.first_seq - 1))
            for envelope in page.messages:
                seq = envelope.seq or 0
                if seq > after:
                    self._send(session, envelope)
                    after = seq
            if len(page.messages) < self._page_max:
                return after

    def _send(self, session: Session, envelope: Envelope) -> None:
        if envelope.audience is Audience.NATIVE and not session.native:
            return
        self._replies.send(
            session, streams.positioned(envelope.data, envelope.stream or "", envelope.seq or 0)
        )

    def _flush(self, session: Session, replay: Replay, name: str, reached: int) -> int:
        for envelope in replay.waiting.pop(name, []):
            if (envelope.seq or 0) > reached:
                self._send(session, envelope)
                reached = envelope.seq or reached
        return reached


@attrs.define
class _Repair:
    waiting: list[tuple[Envelope, FanOut]]


class StreamTracker:
    """The last seq this node delivered, per stream, and the repair of holes."""

    def __init__(self, backend: IBackend, on_reset: Callable[[str], None]) -> None:
        self._backend = backend
        self._on_reset = on_reset
        self._last: dict[str, int] = {}
        self._repairs: dict[str, _Repair] = {}

    def last(self, stream: str) -> int | None:
        return self._last.get(stream)

    def forget(self, stream: str) -> None:
        """Nobody here holds ``stream`` any more: its next seq starts afresh."""
        self._last.pop(stream, None)

    def receive(self, envelope: Envelope, fan_out: FanOut) -> None:
        stream, seq = envelope.stream, envelope.seq
        if stream is None or seq is None:
            fan_out(envelope)
            return
        repair = self._repairs.get(stream)
        if repair is not None:
            repair.waiting.append((envelope, fan_out))
            return
        last = self._last.get(stream)
        if last is not None and seq <= last:
            # Each envelope reaches a node once, and a repair delivers only
            # below the seq that started it: so the stream was reset (Redis
            # restarted without persistence) and numbers from 1 again.
            _log.warn("The seq of {stream} went back from {last} to {seq}: its history was reset",
                      stream=stream, last=last, seq=seq)
            self._on_reset(stream)
        if last is not None and seq > last + 1:
            self._repairs[stream] = _Repair([(envelope, fan_out)])
            self._repair(stream, last, seq, fan_out)
            return
        self._last[stream] = seq
        fan_out(envelope)

    def _repair(self, stream: str, last: int, upto: int, fan_out: FanOut) -> None:
        want = min(upto - last - 1, MAX_REPAIR)
        d = self._backend.history(stream, last, want)

        def fill(page: HistoryPage) -> None:
            reached = last
            if page.first_seq > last + 1:
                lost_to = min(page.first_seq, upto) - 1
                fan_out(Envelope("", "", streams.gap(stream, last + 1, lost_to), audience=Audience.NATIVE))
                reached = lost_to
            for envelope in page.messages:
                if reached < (envelope.seq or 0) < upto:
                    fan_out(envelope)
                    reached = envelope.seq or reached
            if reached < upto - 1:
                fan_out(Envelope("", "", streams.gap(stream, reached + 1, upto - 1), audience=Audience.NATIVE))
            _log.info(
                "Filled a hole in {stream}: seq {start}..{end} fetched from history",
                stream=stream, start=last + 1, end=upto - 1,
            )

        def failed(failure: Failure) -> None:
            _log.warn("Could not fill a hole in {stream} ({error}); reporting a gap",
                      stream=stream, error=failure.getErrorMessage())
            fan_out(Envelope("", "", streams.gap(stream, last + 1, upto - 1), audience=Audience.NATIVE))

        def done(_: object) -> None:
            repair = self._repairs.pop(stream)
            self._last[stream] = upto - 1
            for envelope, deliver in repair.waiting:
                self.receive(envelope, deliver)

        d.addCallbacks(fill, failed).addBoth(done)
