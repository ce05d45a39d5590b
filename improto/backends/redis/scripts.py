"""
Lua scripts run by SHA, and many callers' calls of one script sent as one.

A script call costs Redis far more than the work in it (finding the script,
setting up Lua, the reply) and costs improto a packed command, a reply to
parse and a Deferred chain. Calls made in one reactor turn (private
messages, presence changes of the connections that one turn accepts) are
therefore merged into one call of a script that loops over them
(:class:`ScriptBatch`), whose reply holds one answer per caller. A caller
still gets its own answer (a Deferred, or an object of its own: see
:class:`~improto.backends.interface.Answer`), and its own error: each
script runs every part under ``pcall``, so a part that Redis refuses
fails alone, as it would in a script of its own.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from improto.backends.interface import Answer, BackendUnavailable
from improto.backends.redis.client import RedisReplyError, RespConnection, as_unavailable, pack


@attrs.frozen
class Script:
    """A Lua script run by SHA, sent in full only when Redis lacks it."""

    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    def load(self, conn: RespConnection) -> Deferred[Any]:
        return conn.execute(b"SCRIPT", b"LOAD", self.source)

    def run(self, conn: RespConnection, keys: list[bytes], args: list[bytes | str | int]) -> Deferred[Any]:
        d = conn.execute(b"EVALSHA", self.sha, len(keys), *keys, *args)

        def maybe_unknown(failure: Any) -> Any:
            failure.trap(RedisReplyError)
            if not _noscript(failure):
                return failure
            return self.evaluate(conn, keys, args)

        return d.addErrback(maybe_unknown)

    def evaluate(self, conn: RespConnection, keys: list[bytes], args: list[bytes | str | int]) -> Deferred[Any]:
        """Run the script sent in full: after ``NOSCRIPT`` (Redis lost it, ``SCRIPT FLUSH``)."""
        return conn.execute(b"EVAL", self.source, len(keys), *keys, *args)


#: Lua: the text of an error ``pcall`` caught (``redis.call`` raises a table
#: with the reply's text in ``err``); what a batch's failed part answers.
ERROR_TEXT = """
local function error_text(e)
  if type(e) == 'table' then e = e.err end
  return tostring(e)
end
"""


def _noscript(failure: Failure) -> bool:
    return failure.check(RedisReplyError) is not None and str(failure.value).startswith("NOSCRIPT")


class ScriptBatch:
    """
    The calls of :attr:`script` made in one reactor turn, sent as one.

    A subclass names the script (whose ``KEYS`` and ``ARGV`` are the
    parts' keys and arguments one after the other, behind ``ARGV`` common
    to all) and turns a part's answer into what its caller gets
    (:meth:`answer`). :meth:`join` adds a part to the batch still open
    at the end of the connection's pipeline or starts one there, so
    commands still reach Redis in the order callers issued them.
    """

    script: ClassVar[Script]
    #: Said in the error of a failed call: "Redis refused <what>".
    what: ClassVar[str]
    #: Keys and arguments of each part (after the common arguments).
    keys_per_part: ClassVar[int]
    args_per_part: ClassVar[int]
    #: Parts per call at most; a turn with more starts another.
    LIMIT: ClassVar[int] = 256

    def __init__(self, common: list[bytes | str | int]) -> None:
        self.common = common
        self.keys: list[bytes] = []
        self.args: list[bytes | str | int] = list(common)
        self.waiting: list[Answer[Any]] = []

    @classmethod
    def join(
        cls, conn: RespConnection, common: list[bytes | str | int],
        keys: list[bytes], args: list[bytes | str | int], answer: Answer[Any],
    ) -> None:
        """
        Add a part to this turn's open batch (with the same ``common``), or
        to a new one; its outcome goes to ``answer``.
        """
        batch = conn.tail_batch(cls)
        if batch is not None and batch.common == common and len(batch.waiting) < cls.LIMIT:
            batch._add(keys, args, answer)
            return
        batch = cls(common)
        batch._add(keys, args, answer)
        conn.execute_batch(batch).addCallbacks(batch._answered, batch._refused, errbackArgs=(conn,))

    @classmethod
    def joined(
        cls, conn: RespConnection, common: list[bytes | str | int],
        keys: list[bytes], args: list[bytes | str | int],
    ) -> Deferred[Any]:
        """:meth:`join`, answered by a new Deferred."""
        d: Deferred[Any] = Deferred()
        cls.join(conn, common, keys, args, d)
        return d

    def _add(self, keys: list[bytes], args: list[bytes | str | int], answer: Answer[Any]) -> None:
        self.keys += keys
        self.args += args
        self.waiting.append(answer)

    def pack(self) -> bytes:
        try:
            return self._evalsha()
        except Exception:
            # An argument hiredis cannot encode (a str that is not valid
            # Unicode): its part fails alone, now; the rest is still sent,
            # since a reply is awaited for this command.
            self._drop_unsendable()
            return self._evalsha()

    def _evalsha(self) -> bytes:
        return pack(b"EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    def _drop_unsendable(self) -> None:
        nk, na, common = self.keys_per_part, self.args_per_part, len(self.common)
        keys: list[bytes] = []
        args = list(self.common)
        waiting = []
        for i, d in enumerate(self.waiting):
            part_keys = self.keys[i * nk : (i + 1) * nk]
            part_args = self.args[common + i * na : common + (i + 1) * na]
            try:
                pack(*part_keys, *part_args)
            except Exception:
                d.errback(Failure())
                continue
            keys += part_keys
            args += part_args
            waiting.append(d)
        self.keys, self.args, self.waiting = keys, args, waiting

    def answer(self, d: Answer[Any], reply: list[Any], index: int) -> None:
        """Give ``d`` the answer of part ``index`` in the script's ``reply``."""
        raise NotImplementedError

    def refuse(self, d: Answer[Any], error: bytes) -> None:
        """Fail ``d``: Redis refused a command of its part."""
        d.errback(Failure(BackendUnavailable(f"Redis refused {self.what}: {error.decode('utf-8', 'replace')}")))

    def _refused(self, failure: Failure, conn: RespConnection) -> None:
        if _noscript(failure):
            self.script.evaluate(conn, self.keys, self.args).addCallbacks(self._answered, self._failed)
            return
        self._failed(failure)

    def _failed(self, failure: Failure) -> None:
        failure = as_unavailable(failure, self.what)
        for d in self.waiting:
            d.errback(failure)

    def _answered(self, reply: list[Any]) -> None:
        for index, d in enumerate(self.waiting):
            self.answer(d, reply, index)
