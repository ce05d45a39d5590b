"""
Delivery: envelopes from the backend to local connections, and the replies
(acks, errors) the router sends a client itself.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import Audience, BackendUnavailable, Envelope
from improto.protocol import codec, streams
from improto.protocol.codec import ErrorCode, ProtocolError
from improto.router.observer import NO_METRICS, Observer
from improto.router.sessions import Session, SessionLink, SessionTable

_log = Logger()
#: The ``Session.logged`` key of unexpected errors (no error code of its own).
_INTERNAL = "internal"


def send_each(links: Sequence[SessionLink], data: bytes, binary: bool) -> None:
    """The plain broadcast, for links that have nothing smarter."""
    for link in links:
        link.send_frame(data, binary)


def deliver(sessions: Collection[Session], envelope: Envelope, table: SessionTable) -> int:
    """
    Hand ``envelope`` to every one of ``sessions`` it is meant for. Links of
    one class get it through that class's ``broadcast``, so a frame is
    encoded (and compressed) once for all of them, not once per member.
    A stored envelope reaches native sessions with its ``stream`` and
    ``seq`` (spliced in once) and seed sessions unchanged; a session whose
    resume of that stream runs gets it afterwards (see :mod:`.resume`).
    Returns how many links it was handed to.
    """
    native_only = envelope.audience is Audience.NATIVE
    if native_only and not table.native_count:
        return 0
    if len(sessions) == 1:
        for only in sessions:
            return _deliver_one(only, envelope, native_only)
    stored = envelope.seq is not None
    by_class: dict[type, list[SessionLink]] = {}
    #: Native links of a stored envelope: they get it with its position.
    positioned: dict[type, list[SessionLink]] = {}
    exclude = envelope.exclude_session
    for s in sessions:
        if s.id == exclude or (native_only and not s.native):
            continue
        if stored and s.native:
            if s.replay is not None and s.replay.hold(envelope):
                continue
            groups = positioned
        else:
            groups = by_class
        link = s.link
        # get, not setdefault: no new empty list per member.
        links = groups.get(type(link))
        if links is None:
            links = groups[type(link)] = []
        links.append(link)
    handed = _broadcast(by_class, envelope.data, envelope.binary)
    if positioned:
        data = streams.positioned(envelope.data, envelope.stream or "", envelope.seq or 0)
        handed += _broadcast(positioned, data, envelope.binary)
    return handed


def _deliver_one(s: Session, envelope: Envelope, native_only: bool) -> int:
    """:func:`deliver` to one session (a user's only connection, the common
    private message): the same choices, without the grouping by class."""
    if s.id == envelope.exclude_session or (native_only and not s.native):
        return 0
    data = envelope.data
    if envelope.seq is not None and s.native:
        if s.replay is not None and s.replay.hold(envelope):
            return 0
        data = streams.positioned(data, envelope.stream or "", envelope.seq)
    link = s.link
    broadcast = getattr(type(link), "broadcast", None)
    if broadcast is None:
        link.send_frame(data, envelope.binary)
    else:
        broadcast([link], data, envelope.binary)
    return 1


def _broadcast(by_class: dict[type, list[SessionLink]], data: bytes, binary: bool) -> int:
    for link_class, links in by_class.items():
        broadcast = getattr(link_class, "broadcast", None)
        if broadcast is None:
            send_each(links, data, binary)
        else:
            broadcast(links, data, binary)
    return sum(map(len, by_class.values()))


class Replies:
    """
    What the router itself says to one client: acks for native requests,
    and error frames, each error code logged once per session rather than
    once per frame (a flood of bad frames must not flood the log).
    """

    def __init__(self, metrics: Observer = NO_METRICS) -> None:
        self._metrics = metrics

    def send(self, session: Session, data: bytes) -> None:
        if not session.closed:
            session.link.send_frame(data, False)

    def ack(self, session: Session, request_id: str | None) -> None:
        if request_id is not None and session.native:
            self.send(session, codec.ack(request_id))

    def refuse(self, session: Session, error: ProtocolError) -> None:
        if self._first(session, error.code.value):
            _log.info(
                "Refused a frame from {user!r} (session {session}): {code}: {reason} "
                "(further {code} errors of this session are not logged)",
                user=session.user,
                session=session.id,
                code=error.code.value,
                reason=error.reason,
            )
        self._metrics.error_sent(error.code.value)
        # Echo connections are no seed page: a plain error frame.
        self.send(session, codec.error(error, session.native or session.echo))

    def failed(self, failure: Failure, session: Session | None, request_id: str | None) -> None:
        """A backend call failed: tell the client instead of dropping its message."""
        if failure.check(BackendUnavailable):
            reason = "The message service is temporarily unavailable; the message was not delivered."
        else:
            if session is None or self._first(session, _INTERNAL):
                _log.failure("Backend call failed", failure)
            reason = "Internal error in the message service; the message was not delivered."
        if session is not None:
            self.refuse(session, ProtocolError(ErrorCode.BACKEND_UNAVAILABLE, reason, request_id))

    def internal_error(self, session: Session, request_id: str | None) -> None:
        """
        Handling a frame raised: a bug. Called from an ``except`` block; the
        traceback is logged once per session, and the client gets its answer.
        """
        if self._first(session, _INTERNAL):
            _log.failure(
                "Internal error handling a frame from {user!r} (session {session}); "
                "further internal errors of this session are not logged",
                user=session.user,
                session=session.id,
            )
        reason = "Internal error in the message service; the message was not delivered."
        self.refuse(session, ProtocolError(ErrorCode.BACKEND_UNAVAILABLE, reason, request_id))

    @staticmethod
    def _first(session: Session, key: str) -> bool:
        """True the first time ``key`` is seen for ``session``: log once, not per frame."""
        if key in session.logged:
            return False
        session.logged = session.logged | {key}
        return True
