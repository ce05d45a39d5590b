"""
Presence announcements: "alice is online", "bob joined room1".

Whether a user is the first (or last) anywhere in the cluster is the
backend's answer; this module only turns that answer into a native-only
presence frame on the right group channel.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, FirstError
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import Audience, BackendUnavailable, Envelope, IBackend
from improto.protocol import codec
from improto.router.channels import ONLINE_SCOPE, group_channel, group_scope
from improto.router.settled import done, then

_log = Logger()


class Presence:
    """Records presence in the backend and announces arrivals and departures."""

    def __init__(self, backend: IBackend) -> None:
        self._backend = backend

    def came_online(self, user: str, exclude: str) -> Deferred[None]:
        added = self._backend.presence_add(ONLINE_SCOPE, user)
        return then(added, self._announce, codec.LOBBY, "online", user, None, exclude)

    def went_offline(self, user: str) -> Deferred[None]:
        removed = self._backend.presence_remove(ONLINE_SCOPE, user)
        return then(removed, self._announce, codec.LOBBY, "offline", user, None, None)

    def joined(self, user: str, group: str, exclude: str) -> Deferred[None]:
        added = self._backend.presence_add(group_scope(group), user)
        return then(added, self._announce, group, "join", user, group, exclude)

    def left(self, user: str, group: str) -> Deferred[None]:
        removed = self._backend.presence_remove(group_scope(group), user)
        return then(removed, self._announce, group, "leave", user, group, None)

    def members(self, group: str) -> Deferred[list[str]]:
        return self._backend.presence_members(group_scope(group))

    def _announce(
        self, changed: bool, group: str, event: str, user: str, named: str | None,
        exclude: str | None,
    ) -> Deferred[int] | None:
        """
        Publish the event on ``group``'s channel if the backend says this was
        the user's first arrival (or last departure) anywhere; the frame is
        encoded only then.
        """
        if not changed:
            return None
        envelope = Envelope(
            self._backend.node_id, "", codec.presence(event, user, named),
            audience=Audience.NATIVE, exclude_session=exclude,
        )
        return self._backend.publish(group_channel(group), envelope)


def in_background(d: Deferred[Any]) -> None:
    """
    For work no client waits on (announcing presence on connect and
    disconnect): an outage is logged once by the backend itself, anything
    else is a bug worth a traceback.
    """

    if done(d):
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
