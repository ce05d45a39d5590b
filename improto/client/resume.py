"""
Resuming a conversation after a reconnect, sans IO.

The server numbers every stream's messages (``group:dev``, ``user:alice``)
and, given the last seq a client saw per stream, replays exactly what it
missed before live traffic (docs/protocol.md, "History, resume and the
inbox"). ``Resume`` remembers those seqs, names them on every reconnect
(``?resume=`` for the streams a fresh connection is in, a ``resume``
frame for each group once it is re-joined), drops anything it has shown
already, turns ``gap``/``resumed``/``bad_resume`` into readable lines,
and resends what a lost connection never confirmed under the same id:
the server acks a repeated id with the first one's seq instead of
delivering it twice.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from improto.client.render import Kind, Line, show_value
from improto.protocol.codec import LOBBY

Frame = dict[str, Any]

#: Own sends remembered to drop their replayed copies; old ones are forgotten.
_OWN_LIMIT = 500
_STREAM_IN_REASON = re.compile(r"Stream '([^']+)'")


def group_stream(group: str) -> str:
    return f"group:{group}"


def _where(stream: str) -> str:
    return stream.partition(":")[2] if stream.startswith("group:") else "your private messages"


def with_resume(url: str, positions: dict[str, int]) -> str:
    """``url`` with ``resume=`` naming ``positions`` (replacing any), every other parameter kept."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "resume"]
    if positions:
        query.append(("resume", ",".join(f"{name}:{seq}" for name, seq in sorted(positions.items()))))
    # ':' and ',' are legal in a query; keeping them readable helps whoever reads a server log.
    return urlunsplit(parts._replace(query=urlencode(query, safe=":,")))


@attrs.define
class Resume:
    """The last seq seen per stream, and what a reconnect does with it."""

    user: str = ""
    clock: Callable[[], datetime] = datetime.now
    #: The highest seq shown per stream: what a resume asks to continue after.
    last: dict[str, int] = attrs.Factory(dict)
    #: Seqs of this client's own acked sends above ``last`` (a replay would show them again).
    _own: dict[str, set[int]] = attrs.Factory(dict)
    #: (to, text) of own acked privates: their copies in our own stream come back on a replay.
    _own_private: list[tuple[str, str]] = attrs.Factory(list)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    # --- the URL and the frames a reconnect sends ------------------------

    def url(self, base: str) -> str:
        """The URL for the next connection: resume the streams a fresh connection is in."""
        fresh = {
            name: seq for name, seq in self.last.items()
            if name == group_stream(LOBBY) or name.startswith("user:")
        }
        return with_resume(base, fresh)

    def on_welcome(self, welcome: Frame, reconnect: bool) -> list[Frame]:
        """A ``resume`` frame for groups the server kept us in (a URL names only the lobby)."""
        self.user = str(welcome.get("user", self.user))
        groups = [g for g in welcome.get("groups", []) if isinstance(g, str) and g != LOBBY]
        return self._resume_frames(groups)

    def on_joined(self, group: str) -> list[Frame]:
        """A re-join was acked: now the group's stream may be resumed."""
        return self._resume_frames([group])

    def _resume_frames(self, groups: list[str]) -> list[Frame]:
        positions = {
            group_stream(g): self.last[group_stream(g)] for g in groups if group_stream(g) in self.last
        }
        if not positions:
            return []
        return [{"type": "resume", "streams": positions, "id": f"r{next(self._ids)}"}]

    def on_lost(self, requests: list[Frame]) -> list[Frame]:
        """Resend every unconfirmed message: same id, so the server delivers it at most once."""
        return list(requests)

    # --- frames from the server ------------------------------------------

    def on_frame(self, frame: Frame) -> list[Line] | None:
        """Lines if this frame is handled here (none: a duplicate); None: ``ChatState``'s."""
        kind = frame.get("type")
        if kind in ("message", "private"):
            return None if self._fresh(frame) else []
        if kind == "ack":
            self._acked(frame)
            return None
        if kind == "gap":
            return [self._gap(frame)]
        if kind == "resumed":
            self._resumed(frame)
            return []
        if kind == "error" and frame.get("code") == "bad_resume":
            return [self._bad_resume(frame)]
        return None

    def _fresh(self, frame: Frame) -> bool:
        """Note the frame's seq; False if it was shown already."""
        stream, seq = frame.get("stream"), frame.get("seq")
        if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return True  # unnumbered (no history on the server): nothing to compare
        if seq <= self.last.get(stream, 0):
            return False
        mine = seq in self._own.get(stream, ())
        self._advance(stream, seq)
        if mine:
            return False
        if frame.get("type") == "private" and frame.get("sender") == self.user:
            key = (str(frame.get("to")), show_value(frame.get("msg")))
            if key in self._own_private:  # the copy of a private we sent and saw acked
                self._own_private.remove(key)
                return False
        return True

    def _advance(self, stream: str, seq: int) -> None:
        self.last[stream] = seq
        own = self._own.get(stream)
        if own is None:
            return
        # Own sends right after ``seq`` are shown already: skip past them.
        while seq + 1 in own:
            seq += 1
            self.last[stream] = seq
        own.difference_update(range(0, seq + 1))
        if not own:
            del self._own[stream]

    def _acked(self, frame: Frame) -> None:
        stream, seq = frame.get("stream"), frame.get("seq")
        if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return
        if seq <= self.last.get(stream, -1):
            return
        if stream.startswith("group:") and stream in self.last and seq == self.last[stream] + 1:
            self._advance(stream, seq)
        else:
            self._own.setdefault(stream, set()).add(seq)

    def note_private(self, to: str, msg: Any) -> None:
        """An own private was acked: its copy in our stream is not news to us."""
        self._own_private.append((to, show_value(msg)))
        del self._own_private[:-_OWN_LIMIT]

    def _gap(self, frame: Frame) -> Line:
        stream = str(frame.get("stream", "?"))
        first, last = frame.get("from_seq"), frame.get("to_seq")
        if isinstance(last, int) and not isinstance(last, bool):
            self.last[stream] = max(self.last.get(stream, 0), last)
        where = _where(stream)
        if isinstance(first, int) and isinstance(last, int) and last > first:
            return self._info(f"{last - first + 1} messages in {where} were lost (seq {first}-{last})")
        if isinstance(first, int) and first == last:
            return self._info(f"1 message in {where} was lost (seq {first})")
        return self._info(f"some messages in {where} were lost")

    def _resumed(self, frame: Frame) -> None:
        streams = frame.get("streams")
        if not isinstance(streams, dict):
            return
        for name, seq in streams.items():
            if isinstance(seq, int) and not isinstance(seq, bool) and seq < self.last.get(name, 0):
                # The stream numbers afresh (its history was lost): what we saw no longer counts.
                self._forget(name)
                self.last[name] = seq

    def _bad_resume(self, frame: Frame) -> Line:
        """The server's history restarted (a memory backend restarted): start the stream afresh."""
        found = _STREAM_IN_REASON.search(str(frame.get("reason", "")))
        if found:
            self._forget(found.group(1))
            return self._info(f"the server no longer has the history of {_where(found.group(1))}; "
                              "nothing to catch up on")
        for name in list(self.last):
            self._forget(name)
        return self._info("the server keeps no history; nothing to catch up on")

    def _forget(self, stream: str) -> None:
        self.last.pop(stream, None)
        self._own.pop(stream, None)

    def _info(self, text: str) -> Line:
        return Line(self.clock(), Kind.INFO, text)
