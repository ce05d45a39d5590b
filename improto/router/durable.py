"""
Durable messaging: sends stored in history, history requests, resume and
the offline inbox. See docs/protocol.md, "History, resume and the inbox".

Streams are named like channels: ``group:<g>`` holds a group's messages,
``user:<u>`` the private messages to ``u`` and copies of those ``u`` sent.
The inbox is the private stream: a private message to a user who is
offline but connected (natively) within ``inbox_ttl`` is stored there and
acked ``"status": "stored"``; on its next connection without a resume
position the user gets what its stream received after the cursor written
when its last native session here closed (the highest seq of that stream
this node delivered), unless its ``?resume=`` names its private stream. With ``Retention.size == 0`` none of this runs and
sends take the plain at-most-once path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from improto.backends.interface import (
    Appended,
    Audience,
    Envelope,
    IImmediateBackend,
    IPrivateBackend,
)
from improto.backends.private import send_private_in_steps
from improto.protocol import codec, streams
from improto.protocol.codec import ErrorCode, ProtocolError
from improto.router.channels import group_channel, user_channel
from improto.router.presence import in_background
from improto.router.resume import Resumer, StreamTracker, member_of
from improto.router.sessions import Session

if TYPE_CHECKING:
    from improto.router.router import Router


@attrs.frozen
class Durability:
    """The router's side of history (the backend's is its ``Retention``)."""

    #: Most messages one history page or resume page holds.
    history_page_max: int = 100
    #: Seconds after a user's last native connection during which private
    #: messages to it are stored rather than refused.
    inbox_ttl: float = 7 * 86400.0
    #: Seconds during which a retried send (same user, same ``id``) is acked
    #: with the first one's seq and not delivered again.
    idempotency_window: float = 300.0


class DurableMessages:
    def __init__(self, router: Router, settings: Durability) -> None:
        self._router = router
        self._backend = router.backend
        #: The backend, if it answers at once (see :mod:`.inbound`), else None.
        self._now: IImmediateBackend | None = IImmediateBackend(router.backend, None)
        self._private: IPrivateBackend | None = IPrivateBackend(router.backend, None)
        self._replies = router.replies
        self.settings = settings
        self.tracker = StreamTracker(router.backend, self._reset)
        self.resumer = Resumer(router.backend, router.replies, settings.history_page_max)

    @property
    def enabled(self) -> bool:
        return bool(self._backend.retention.enabled)

    def _reset(self, stream: str) -> None:
        """A stream numbers afresh: what sessions' floors say no longer holds."""
        for session in self._router.sessions.values():
            if session.replay is not None:
                session.replay.floors.pop(stream, None)

    # -- connections ----------------------------------------------------------

    def connected(self, session: Session, resume: str | None) -> None:
        """A chat session opened: start its resume (``?resume=``) or inbox."""
        if not self.enabled:
            if resume:
                self._replies.refuse(session, ProtocolError(
                    ErrorCode.BAD_RESUME, "This server keeps no history; there is nothing to resume."))
            return
        if not session.native:
            if resume:
                self._replies.refuse(session, ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"Resuming needs the {codec.NATIVE_SUBPROTOCOL} subprotocol."))
            return
        positions: dict[str, int] = {}
        if resume is not None:
            try:
                positions = streams.parse_resume_param(resume).streams
            except ProtocolError as e:
                self._replies.refuse(session, e)
        inbox = user_channel(session.user)
        # The inbox runs unless the resume names the private stream itself.
        replay = None if inbox in positions else self.resumer.begin(session, [inbox], None)
        if positions:
            self.resume(session, positions, None)
        if replay is None:
            in_background(self._backend.mark_seen(session.user, 0, self.settings.inbox_ttl))
            return

        def start(cursor: int | None) -> Deferred[None] | None:
            # Seen from now on; read first, so a first connection replays nothing.
            in_background(self._backend.mark_seen(session.user, 0, self.settings.inbox_ttl))
            if cursor is None:
                self.resumer.release(session, replay, inbox)
                return None
            return self.resumer.run(session, replay, {inbox: cursor}, None, announce=False)

        def failed(_: Any) -> None:
            self.resumer.release(session, replay, inbox)

        in_background(self._backend.last_seen(session.user).addCallbacks(start, failed))

    def disconnected(self, session: Session) -> None:
        if self.enabled and session.native and session.is_person:
            cursor = self.tracker.last(user_channel(session.user)) or 0
            in_background(self._backend.mark_seen(session.user, cursor, self.settings.inbox_ttl))

    def resume(self, session: Session, positions: dict[str, int], request_id: str | None) -> None:
        if not self.enabled:
            self._replies.refuse(session, ProtocolError(
                ErrorCode.BAD_RESUME, "This server keeps no history; there is nothing to resume.",
                request_id))
            return
        try:
            replay = self.resumer.begin(session, list(positions), request_id)
        except ProtocolError as e:
            self._replies.refuse(session, e)
            return
        in_background(self.resumer.run(session, replay, positions, request_id))

    # -- sends ------------------------------------------------------------------

    def _key(self, session: Session, request_id: str | None) -> str | None:
        return None if request_id is None else f"{session.user}\n{request_id}"

    def _acked(self, session: Session, request_id: str | None, stream: str, appended: Appended) -> None:
        if request_id is not None and session.native:
            self._replies.send(
                session, streams.ack(request_id, stream, appended.seq, appended.receivers == 0))

    def send_to_group(self, session: Session, group: str, envelope: Envelope, request_id: str | None) -> None:
        stream = group_channel(group)
        d = self._backend.append(
            stream, stream, envelope, self._key(session, request_id), self.settings.idempotency_window)
        d.addCallbacks(
            lambda appended: self._acked(session, request_id, stream, appended),
            self._replies.failed, errbackArgs=(session, request_id),
        )

    def send_to_user(
        self, session: Session, to: str, envelope: Envelope, request_id: str | None,
        live: Callable[[int], None], copy_only_elsewhere: bool = False,
    ) -> None:
        """
        Store and deliver a private message to a user seen within the inbox
        lifetime, with a copy in the sender's stream (its other devices and
        its own resume see it too). Anyone else gets it live if online, and
        ``live`` is called with the number of nodes it reached (0: refused);
        ``copy_only_elsewhere``: no session here wants the sender's live copy
        (see :class:`~improto.backends.interface.IPrivateBackend`).
        """
        stream = user_channel(to)
        to_someone_else = to != session.user
        copy_stream = user_channel(session.user) if to_someone_else else None
        only_if_seen = to if to_someone_else else None
        key = self._key(session, request_id)
        window = self.settings.idempotency_window
        if self._now is None:
            answer = _PrivateAnswer(self, session, stream, request_id, live)
            if self._private is not None:
                self._private.send_private_to(
                    answer, stream, envelope, copy_stream, only_if_seen, key, window, copy_only_elsewhere)
            else:
                send_private_in_steps(
                    self._backend, stream, envelope, copy_stream, only_if_seen, key, window, copy_only_elsewhere,
                ).addCallbacks(answer.callback, answer.errback)
            return
        try:
            result = self._now.send_private_now(
                stream, envelope, copy_stream, only_if_seen, key, window, copy_only_elsewhere)
        except Exception:
            self._replies.failed(Failure(), session, request_id)
            return
        self._private_sent(result, session, stream, request_id, live)

    def _private_sent(
        self, result: Appended | int, session: Session, stream: str, request_id: str | None,
        live: Callable[[int], None],
    ) -> None:
        if isinstance(result, int):
            live(result)
        else:
            self._acked(session, request_id, stream, result)

    # -- history requests ---------------------------------------------------------

    def _fitting(self, frames: list[bytes], overhead: int, oldest_first: bool) -> list[bytes]:
        """
        As many of a page's ``frames`` as fit in one frame of the client's
        (``RouterLimits.max_frame_size``), from the end nearest the position
        asked for (``after``: the oldest; ``before``: the newest), which the
        client pages on from. At least one: a stored message always fits.
        """
        budget = self._router.limits.max_frame_size - overhead
        ordered = frames if oldest_first else frames[::-1]
        kept = 1
        used = len(ordered[0])
        while kept < len(ordered) and used + len(ordered[kept]) <= budget:
            used += len(ordered[kept])
            kept += 1
        return ordered[:kept] if oldest_first else ordered[:kept][::-1]

    def history(self, session: Session, command: streams.History) -> None:
        stream = command.stream or user_channel(session.user)
        limit = command.limit or self.settings.history_page_max
        problem = None
        if not self.enabled:
            problem = ProtocolError(ErrorCode.BAD_MESSAGE, "This server keeps no history.", command.id)
        elif not member_of(session, stream):
            problem = ProtocolError(
                ErrorCode.NOT_A_MEMBER, f"You are not a member of {stream!r}; join it first.", command.id)
        elif limit > self.settings.history_page_max:
            problem = ProtocolError(
                ErrorCode.TOO_LARGE,
                f"A history page holds at most {self.settings.history_page_max} messages.", command.id)
        if problem is not None:
            self._replies.refuse(session, problem)
            return
        if command.after is not None:
            d = self._backend.history(stream, command.after, limit)
        else:
            before = command.before if command.before is not None else streams.MAX_SEQ + 1
            d = self._backend.history(stream, 0, limit, before)

        def answer(page: Any) -> None:
            frames = [
                streams.positioned(e.data, stream, e.seq or 0)
                for e in page.messages if e.audience is Audience.ALL or session.native
            ]
            reply = streams.history_reply(stream, frames, page.first_seq, page.last_seq, command.id)
            if len(reply) > self._router.limits.max_frame_size:
                frames = self._fitting(frames, len(reply) - sum(map(len, frames)), command.after is not None)
                reply = streams.history_reply(stream, frames, page.first_seq, page.last_seq, command.id)
            self._replies.send(session, reply)

        d.addCallbacks(answer, self._replies.failed, errbackArgs=(session, command.id))


@attrs.define
class _PrivateAnswer:
    """
    Where a private send's outcome goes (an
    :class:`~improto.backends.interface.Answer`): the sender's ack, ``live``
    for a message published live, or an error frame. One small object per
    message costs less than a Deferred and the callbacks added to it
    (``benchmarks/micro.py --instructions --ops redis-private``).
    """

    messages: DurableMessages
    session: Session
    stream: str
    request_id: str | None
    live: Callable[[int], None]

    def callback(self, result: Appended | int) -> None:
        self.messages._private_sent(result, self.session, self.stream, self.request_id, self.live)

    def errback(self, fail: Failure) -> None:
        self.messages._replies.failed(fail, self.session, self.request_id)
