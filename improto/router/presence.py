"""
Presence announcements: "alice is online", "bob joined room1".

Whether a user is the first (or last) anywhere in the cluster is the
backend's answer; this module only turns that answer into a native-only
presence frame on the right group channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, FirstError, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import (
    Audience,
    BackendUnavailable,
    Envelope,
    IAnnouncingPresence,
    IBackend,
    IImmediateBackend,
)
from improto.protocol import codec
from improto.router.channels import ONLINE_SCOPE, group_channel, group_scope
from improto.router.settled import done, then

_log = Logger()


class Presence:
    """
    Records presence in the backend and announces arrivals and departures.

    Each call returns a Deferred of its work, or None when the work is
    done already: on a backend that answers at once
    (:class:`IImmediateBackend`, the memory backend) every call is, and
    costs no Deferred (four per connection: online, lobby join and leave,
    offline). There an announcement that no node could hear
    (``nobody_hears(channel)``) is not even encoded. A backend that can
    change presence and announce it in one round trip
    (:class:`IAnnouncingPresence`, standalone Redis) is asked to; on any
    other, the announcement is published once the change is confirmed.
    """

    def __init__(self, backend: IBackend, nobody_hears: Callable[[str], bool] | None = None) -> None:
        self._backend = backend
        self._now: IImmediateBackend | None = IImmediateBackend(backend, None)
        self._announcing: IAnnouncingPresence | None = IAnnouncingPresence(backend, None)
        self._nobody_hears = nobody_hears or (lambda channel: False)

    def came_online(self, user: str, exclude: str) -> Deferred[None] | None:
        return self._record(True, ONLINE_SCOPE, codec.LOBBY, "online", user, None, exclude)

    def went_offline(self, user: str) -> Deferred[None] | None:
        return self._record(False, ONLINE_SCOPE, codec.LOBBY, "offline", user, None, None)

    def joined(self, user: str, group: str, exclude: str) -> Deferred[None] | None:
        return self._record(True, group_scope(group), group, "join", user, group, exclude)

    def left(self, user: str, group: str) -> Deferred[None] | None:
        return self._record(False, group_scope(group), group, "leave", user, group, None)

    def members(self, group: str) -> Deferred[list[str]]:
        return self._backend.presence_members(group_scope(group))

    def _record(
        self, add: bool, scope: str, group: str, event: str, user: str, named: str | None,
        exclude: str | None,
    ) -> Deferred[Any] | None:
        """
        Add ``user`` to (or remove it from) ``scope``, and publish ``event``
        on ``group``'s channel if the backend says this was the user's first
        arrival (or last departure) anywhere; the frame is encoded only then.
        """
        now = self._now
        if now is None:
            announcing = self._announcing
            if announcing is not None:
                # One call; the frame is encoded whether or not it is sent.
                change = announcing.presence_add_announcing if add else announcing.presence_remove_announcing
                return change(scope, user, group_channel(group), self._envelope(event, user, named, exclude))
            call = self._backend.presence_add if add else self._backend.presence_remove
            return then(call(scope, user), self._announce, group, event, user, named, exclude)
        try:
            changed = now.presence_add_now(scope, user) if add else now.presence_remove_now(scope, user)
            if changed:
                channel = group_channel(group)
                if not self._nobody_hears(channel):
                    now.publish_now(channel, self._envelope(event, user, named, exclude))
        except BackendUnavailable:
            return fail()
        return None

    def _announce(
        self, changed: bool, group: str, event: str, user: str, named: str | None,
        exclude: str | None,
    ) -> Deferred[int] | None:
        if not changed:
            return None
        return self._backend.publish(group_channel(group), self._envelope(event, user, named, exclude))

    def _envelope(self, event: str, user: str, named: str | None, exclude: str | None) -> Envelope:
        return Envelope(
            self._backend.node_id, "", codec.presence(event, user, named),
            audience=Audience.NATIVE, exclude_session=exclude,
        )


def in_background(d: Deferred[Any] | None) -> None:
    """
    For work no client waits on (announcing presence on connect and
    disconnect): an outage is logged once by the backend itself, anything
    else is a bug worth a traceback.
    """

    if d is None or done(d):
        return

    def report(failure: Failure) -> None:
        failure = first_error(failure)
        if not failure.check(BackendUnavailable):
            _log.failure("Background backend call failed", failure)

    d.addErrback(report)


def first_error(failure: Failure) -> Failure:
    """Unwrap gatherResults' FirstError so callers see the real failure."""
    if isinstance(failure.value, FirstError):
        sub_failure: Failure = failure.value.subFailure
        return sub_failure
    return failure
