"""
A private message's send made of plain :class:`IBackend` calls.

:class:`~improto.backends.interface.IPrivateBackend` lets a backend do
it in one round trip; this is the same thing for every other backend
(Redis Cluster, where the recipient's and the sender's streams live in
different slots and no one script may touch both) and the reference for
what ``send_private`` means.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from improto.backends.interface import Appended, Envelope, IBackend, for_natives


def send_private_in_steps(
    backend: IBackend, stream: str, envelope: Envelope, copy_stream: str | None,
    only_if_seen: str | None, idempotency_key: str | None = None, idempotency_ttl: float = 0,
    copy_only_elsewhere: bool = False,
) -> Deferred[Appended | int]:
    return Deferred.fromCoroutine(_in_steps(
        backend, stream, envelope, copy_stream, only_if_seen, idempotency_key, idempotency_ttl, copy_only_elsewhere))


async def _in_steps(
    backend: IBackend, stream: str, envelope: Envelope, copy_stream: str | None,
    only_if_seen: str | None, idempotency_key: str | None, idempotency_ttl: float, copy_only_elsewhere: bool,
) -> Appended | int:
    if only_if_seen is not None and await backend.last_seen(only_if_seen) is None:
        receivers: int = await backend.publish(stream, envelope)
        # copy_only_elsewhere is a hint: plain IBackend calls cannot tell
        # whether another node subscribes, so the copy is published anyway.
        if receivers and copy_stream is not None:
            await backend.publish(copy_stream, for_natives(envelope))
        return receivers
    appended: Appended = await backend.append(stream, stream, envelope, idempotency_key, idempotency_ttl)
    if copy_stream is not None and not appended.duplicate:
        await backend.append(copy_stream, copy_stream, for_natives(envelope))
    return appended
