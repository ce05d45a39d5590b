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

_log = Logger()


class Presence:
    """Records presence in the backend and announces arrivals and departures."""

    def __init__(self, backend: IBackend) -> None:
        self._backend = backend

    def came_online(self, user: str, exclude: str) -> Deferred[None]:
        return self._added(ONLINE_SCOPE, user, codec.presence("online", user), codec.LOBBY, exclude)

    def went_offline(self, user: str) -> Deferred[None]:
        return self._removed(ONLINE_SCOPE, user, codec.presence("offline", user), codec.LOBBY)

    def joined(self, user: str, group: str, exclude: str) -> Deferred[None]:
        event = codec.presence("join", user, group)
        return self._added(group_scope(group), user, event, group, exclude)

    def left(self, user: str, group: str) -> Deferred[None]:
        return self._removed(group_scope(group), user, codec.presence("leave", user, group), group)

    def members(self, group: str) -> Deferred[list[str]]:
        return self._backend.presence_members(group_scope(group))

    def _added(
        self, scope: str, user: str, event: bytes, group: str, exclude: str
    ) -> Deferred[None]:
        def announce(first_anywhere: bool) -> Deferred[Any] | None:
            return self._announce(group, event, exclude) if first_anywhere else None

        return self._backend.presence_add(scope, user).addCallback(announce)

    def _removed(self, scope: str, user: str, event: bytes, group: str) -> Deferred[None]:
        def announce(gone_everywhere: bool) -> Deferred[Any] | None:
            return self._announce(group, event, None) if gone_everywhere else None

        return self._backend.presence_remove(scope, user).addCallback(announce)

    def _announce(self, group: str, event: bytes, exclude: str | None) -> Deferred[int]:
        envelope = Envelope(
            self._backend.node_id, "", event, audience=Audience.NATIVE, exclude_session=exclude
        )
        return self._backend.publish(group_channel(group), envelope)


def in_background(d: Deferred[Any]) -> None:
    """
    For work no client waits on (announcing presence on connect and
    disconnect): an outage is logged once by the backend itself, anything
    else is a bug worth a traceback.
    """

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
