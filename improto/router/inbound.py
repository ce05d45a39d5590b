"""
Inbound: what each client frame asks for, and the answer it gets.

One :class:`Inbound` per router. It charges every frame to the sender's
rate limit (echo connections included), checks its size, decodes it, and
routes the command to the backend; every request ends in exactly one ack
or one error frame for a native client.

A backend that answers at once (:class:`IImmediateBackend`, the memory
backend) is called without Deferreds on the private path: the same calls,
the same continuations, one Deferred and its callbacks fewer per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from improto.backends.interface import Audience, Envelope, IImmediateBackend, for_natives
from improto.protocol import codec, streams
from improto.protocol.codec import ErrorCode, ProtocolError
from improto.router.channels import echo_channel, group_channel, user_channel
from improto.router.sessions import Session

if TYPE_CHECKING:
    from improto.router.router import Router


class Inbound:
    """Handles the frames of local sessions on behalf of a :class:`Router`."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._backend = router.backend
        #: The backend, if it answers at once (else None: Deferreds).
        self._now: IImmediateBackend | None = IImmediateBackend(router.backend, None)
        self._limits = router.limits
        self._replies = router.replies

    def text(self, session: Session, text: str, size: int) -> None:
        # Every frame costs a token before any work is done on it, so a
        # flood of frames that are refused (too large, undecodable) is
        # throttled like a flood of good ones.
        if session.bucket.rate > 0 and not self._take_token(session, text):  # rate 0: no limit
            return
        if session.echo:
            self._echo(session, text.encode("utf-8"), binary=False)
            return
        if size > self._limits.max_message_size:
            self._replies.refuse(
                session,
                ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"Message of {size} bytes is over the limit of "
                    f"{self._limits.max_message_size} bytes; it was not delivered.",
                    codec.request_id_of(text),
                ),
            )
            return
        try:
            command = codec.decode(text, native=session.native)
        except ProtocolError as e:
            self._replies.refuse(session, e)
            return
        if command.native:
            # A client on a seed route that speaks the native dialect gets
            # native replies (acks, presence), and is held to it, from now on.
            self._router.became_native(session)
        try:
            self._dispatch(session, command)
        except Exception:
            # A bug, not the client's fault: one traceback per session, an
            # answer for the request, and the connection lives on.
            self._replies.internal_error(session, getattr(command, "id", None))

    def binary(self, session: Session, data: bytes) -> None:
        if not self._take_token(session, None):
            return
        if session.echo:
            self._echo(session, data, binary=True)
            return
        self._replies.refuse(
            session,
            ProtocolError(
                ErrorCode.BINARY_NOT_SUPPORTED,
                "Binary frames are not supported on chat connections; send JSON text.",
            ),
        )

    def _take_token(self, session: Session, text: str | None) -> bool:
        """Charge one frame to the session's rate limit; refuse it if over."""
        if session.bucket.take(self._router.clock()):
            return True
        self._router.metrics.rate_limited()
        self._replies.refuse(
            session,
            ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"Too many messages: at most {self._limits.rate:g} a second; "
                "this one was not delivered.",
                None if text is None or session.echo else codec.request_id_of(text),
            ),
        )
        return False

    def _dispatch(self, session: Session, command: codec.Command) -> None:
        match command:
            case codec.SendToGroup():
                self._send_to_group(session, command)
            case codec.SendToUser():
                self._send_to_user(session, command)
            case codec.Join():
                self._join(session, command)
            case codec.Leave():
                self._leave(session, command)
            case codec.Who():
                self._who(session, command)
            case streams.History():
                self._router.durable.history(session, command)
            case streams.Resume():
                self._router.durable.resume(session, command.streams, command.id)

    def _echo(self, session: Session, data: bytes, binary: bool) -> None:
        envelope = Envelope(self._backend.node_id, session.id, data, binary)
        self._router.metrics.message_in("echo")
        d = self._backend.publish(echo_channel(session.id), envelope)
        d.addErrback(self._replies.failed, session, None)

    def _ack_when_done(self, d: Deferred[Any] | None, session: Session, request_id: str | None) -> None:
        """
        End a request in an ack once ``d`` fires (at once for None: done
        already), or in an error frame if it fails.
        """
        if d is None:
            self._replies.ack(session, request_id)
            return
        d.addCallbacks(
            lambda _: self._replies.ack(session, request_id),
            self._replies.failed,
            errbackArgs=(session, request_id),
        )

    def _send_to_group(self, session: Session, command: codec.SendToGroup) -> None:
        if command.group not in session.groups:
            self._replies.refuse(
                session,
                ProtocolError(
                    ErrorCode.NOT_A_MEMBER,
                    f"You are not a member of group '{command.group}'; join it first.",
                    command.id,
                ),
            )
            return
        envelope = Envelope(
            self._backend.node_id,
            session.id,
            codec.group_message(command.group, session.user, command.msg),
            exclude_session=session.id,
        )
        self._router.metrics.message_in("group")
        if self._router.durable.enabled:
            self._router.durable.send_to_group(session, command.group, envelope, command.id)
            return
        d = self._backend.publish(group_channel(command.group), envelope)
        self._ack_when_done(d, session, command.id)

    def _send_to_user(self, session: Session, command: codec.SendToUser) -> None:
        data = codec.private_message(session.user, command.to, command.msg)
        envelope = Envelope(self._backend.node_id, session.id, data, False, Audience.ALL, session.id)
        self._router.metrics.message_in("private")
        if self._router.durable.enabled:
            self._router.durable.send_to_user(
                session, command.to, envelope, command.id,
                lambda receivers: self._answer_live(receivers, session, command),
                self._no_copy_wanted_here(session))
            return
        self._publish_private(session, command, envelope)

    def _publish_private(self, session: Session, command: codec.SendToUser, envelope: Envelope) -> None:
        """The live-only path: delivered to whoever is online now, or refused."""
        channel = user_channel(command.to)
        if self._now is not None:
            try:
                receivers = self._now.publish_now(channel, envelope)
            except Exception:
                self._replies.failed(Failure(), session, command.id)
                return
            self._delivered(receivers, session, command, envelope)
            return
        self._backend.publish(channel, envelope).addCallbacks(
            self._delivered, self._replies.failed,
            callbackArgs=(session, command, envelope), errbackArgs=(session, command.id),
        )

    def _answer_live(self, receivers: int, session: Session, command: codec.SendToUser) -> None:
        """A private message published live reached ``receivers`` nodes: ack, or refuse if none."""
        if receivers == 0:
            self._replies.refuse(
                session,
                ProtocolError(
                    ErrorCode.UNKNOWN_USER,
                    f"User '{command.to}' is not online; the message was not delivered.",
                    command.id,
                ),
            )
        else:
            self._replies.ack(session, command.id)

    def _delivered(
        self, receivers: int, session: Session, command: codec.SendToUser, envelope: Envelope
    ) -> None:
        if receivers and command.to != session.user:
            # The sender's other devices see what was sent from this one.
            channel = user_channel(session.user)
            if self._now is None:
                self._backend.publish(channel, for_natives(envelope)).addErrback(
                    self._replies.failed, None, None)
            elif not self._reaches_nobody(session, channel):
                try:
                    self._now.publish_now(channel, for_natives(envelope))
                except Exception:
                    self._replies.failed(Failure(), None, None)
        self._answer_live(receivers, session, command)

    def _reaches_nobody(self, session: Session, channel: str) -> bool:
        """
        Whether the sender's copy (native sessions of the sender but this
        one) would reach nobody: only this node subscribes to the sender's
        channel (it does, while ``session`` is open) and no other native
        session of the sender is here. Asked of an immediate backend only;
        a live publish stores nothing, so a skipped one changes nothing.
        """
        now = self._now
        return now is not None and now.subscribers_now(channel) == 1 and self._no_copy_wanted_here(session)

    def _no_copy_wanted_here(self, session: Session) -> bool:
        """No other native session of the sender is on this node (the copy's audience)."""
        for other in self._router.sessions_of(session.user):
            if other.native and other is not session:
                return False
        return True

    def _join(self, session: Session, command: codec.Join) -> None:
        if command.group in session.groups:
            self._replies.ack(session, command.id)
            return
        if session.allowed_groups is not None and command.group not in session.allowed_groups:
            self._replies.refuse(session, ProtocolError(
                ErrorCode.NOT_ALLOWED, f"You may not join group '{command.group}'.", command.id))
            return
        if len(session.groups) >= self._limits.max_groups:
            self._replies.refuse(
                session,
                ProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    f"A connection may be in at most {self._limits.max_groups} groups.",
                    command.id,
                ),
            )
            return
        d = self._router.join_group(session, command.group)
        self._ack_when_done(d, session, command.id)

    def _leave(self, session: Session, command: codec.Leave) -> None:
        if command.group not in session.groups:
            self._replies.refuse(
                session,
                ProtocolError(
                    ErrorCode.NOT_A_MEMBER,
                    f"You are not a member of group '{command.group}'.",
                    command.id,
                ),
            )
            return
        d = self._router.leave_group(session, command.group)
        self._ack_when_done(d, session, command.id)

    def _who(self, session: Session, command: codec.Who) -> None:
        d = self._router.presence.members(command.group)
        d.addCallbacks(
            lambda users: self._replies.send(
                session, codec.who(command.group, users, command.id, self._limits.max_frame_size)),
            self._replies.failed,
            errbackArgs=(session, command.id),
        )
