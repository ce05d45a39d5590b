"""
The client's state, sans IO: server frames and typed lines in, display
lines and request frames out. ``shell`` feeds it from the socket and the
prompt; the tests feed it directly.

Requests carry ids; a message stays *pending* (in the toolbar) until its
ack, and only then enters the scrollback, so what the scrollback shows as
sent was taken by the server. An error for the id marks it failed; a
connection lost before either resends it, under the same id, after the
reconnect (the server deduplicates by id).
"""

from __future__ import annotations

import enum
import itertools
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from improto.client import commands as cmd
from improto.client import display
from improto.client.backoff import FINAL_CLOSE_CODES, Backoff, is_final_close
from improto.client.render import Kind, Line, show_value, width_of
from improto.client.resume import Resume
from improto.protocol.codec import LOBBY, MAX_GROUP_LENGTH, ProtocolError, check_name

Frame = dict[str, Any]


class Status(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: Lost; waiting out the backoff before the next attempt.
    WAITING = "waiting"
    #: Refused for good (authentication, a bad nickname): no more attempts.
    CLOSED = "closed"


@attrs.frozen
class Effects:
    """What one event asks of the shell."""

    lines: list[Line] = attrs.Factory(list)
    frames: list[Frame] = attrs.Factory(list)
    quit: bool = False
    #: After a close: seconds until the next attempt; None: do not retry.
    retry_in: float | None = None


@attrs.define
class Pending:
    request: Frame
    at: datetime
    #: Sent by the client itself (a re-join), so success is not announced.
    quiet: bool = False


@attrs.define
class ChatState:
    user: str
    server: str
    clock: Callable[[], datetime] = datetime.now
    monotonic: Callable[[], float] = time.monotonic
    backoff: Backoff = attrs.Factory(Backoff)
    resume: Resume = attrs.Factory(Resume)
    status: Status = Status.CONNECTING
    session: str | None = None
    #: The groups this client is in (the server's view once acks are in), in join order.
    groups: dict[str, None] = attrs.Factory(dict)
    current: str | None = None
    pending: dict[str, Pending] = attrs.Factory(dict)
    welcomed: bool = False
    retry_at: float | None = None
    closed_because: str = ""
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    def __attrs_post_init__(self) -> None:
        self.resume.clock = self.clock
        self.resume.user = self.user

    # --- the connection -------------------------------------------------

    def url(self, base: str) -> str:
        """Where the next attempt dials: ``base`` plus the resume of what was seen."""
        return self.resume.url(base)

    def connecting(self) -> Effects:
        self.status = Status.CONNECTING
        self.retry_at = None
        if self.welcomed or self.backoff.attempt:
            return Effects()
        return Effects([self._info(f"connecting to {self.server} as {self.user}")])

    def on_closed(self, code: int | None, reason: str, final: bool = False) -> Effects:
        """The connection ended (``code`` None: it never opened)."""
        lines = []
        lost = {
            key: pending for key, pending in self.pending.items()
            if pending.request["type"] in ("send", "private") and not pending.quiet
        }
        resend = {request["id"] for request in self.resume.on_lost([p.request for p in lost.values()])}
        self.pending = {key: pending for key, pending in lost.items() if key in resend}
        for key, pending in lost.items():
            if key not in resend:
                lines.append(self._sent_line(pending, note="? not confirmed: the connection was lost"))
        if code is None:
            what = reason
        else:
            meaning = FINAL_CLOSE_CODES.get(code, "")
            what = ", ".join(part for part in (f"close {code}", meaning, reason) if part)
        if final or is_final_close(code):
            self.status = Status.CLOSED
            self.closed_because = what
            lines.append(self._error(f"connection refused for good ({what}); not retrying"))
            return Effects(lines)
        delay = self.backoff.next_delay()
        self.status = Status.WAITING
        self.retry_at = self.monotonic() + delay
        event = "could not connect" if code is None else "disconnected"
        lines.append(self._info(
            f"{event} ({what}); retrying in {delay:.1f} s (attempt {self.backoff.attempt})"
        ))
        return Effects(lines, retry_in=delay)

    # --- frames from the server -----------------------------------------

    def on_frame(self, text: str) -> Effects:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            return Effects([self._error(f"the server sent a frame that is not a JSON object: {text[:60]}")])
        handled = self.resume.on_frame(frame)
        if handled is not None:  # a duplicate, a gap, the end of a resume
            return Effects(handled)
        kind = str(frame.get("type"))
        if kind in display.SHOWN:
            return Effects([display.SHOWN[kind](frame, self.user, self.clock())])
        handler = {
            "welcome": self._welcome, "ack": self._ack, "error": self._server_error,
            "who": self._who,
        }.get(kind)
        if handler is None:
            return Effects()
        return handler(frame)

    def _welcome(self, frame: Frame) -> Effects:
        reconnect = self.welcomed
        self.welcomed = True
        self.status = Status.CONNECTED
        self.backoff.reset()
        self.user = str(frame.get("user", self.user))
        self.session = str(frame.get("session", ""))
        there = [g for g in frame.get("groups", []) if isinstance(g, str)]
        frames = list(self.resume.on_welcome(frame, reconnect))
        if not reconnect:
            self.groups = dict.fromkeys(there)
            self.current = LOBBY if LOBBY in self.groups else next(iter(self.groups), None)
            line = self._info(
                f"connected as {self.user}; in {', '.join(self.groups) or 'no group'}."
                " /help lists the commands."
            )
            return Effects([line], frames)
        wanted = list(self.groups)
        rejoin = [g for g in wanted if g not in there]
        frames += [self._request({"type": "join", "group": g}, quiet=True) for g in rejoin]
        frames += [
            self._request({"type": "leave", "group": g}, quiet=True) for g in there if g not in wanted
        ]
        # Unconfirmed sends kept from the lost connection go again, under their ids.
        resent = [p.request for p in self.pending.values() if not p.quiet and p.request.get("id")
                  and p.request["type"] in ("send", "private")]
        frames += resent
        text = f"reconnected as {self.user}"
        if rejoin:
            text += f"; re-joining {', '.join(rejoin)}"
        if resent:
            text += f"; resending {len(resent)} unconfirmed"
        return Effects([self._info(text)], frames)

    def _ack(self, frame: Frame) -> Effects:
        pending = self.pending.pop(str(frame.get("id")), None)
        if pending is None:
            return Effects()
        request = pending.request
        match request["type"]:
            case "send" | "private":
                note = ""
                if request["type"] == "private":
                    self.resume.note_private(request["to"], request["msg"])
                    if frame.get("status") == "stored":
                        note = f"✓ stored for {request['to']} (offline)"
                return Effects([self._sent_line(pending, note=note)])
            case "join":
                self.groups[request["group"]] = None
                if pending.quiet:  # a re-join: catch up on what it said meanwhile
                    return Effects(frames=self.resume.on_joined(request["group"]))
                self.current = request["group"]
                return Effects([self._info(f"joined {request['group']}; now talking in it")])
            case "leave":
                return Effects([] if pending.quiet else [self._info(self._drop(request["group"]))])
        return Effects()

    def _server_error(self, frame: Frame) -> Effects:
        code, reason = frame.get("code", "?"), show_value(frame.get("reason", ""))
        pending = self.pending.pop(str(frame.get("id")), None) if "id" in frame else None
        if pending is None:
            return Effects([self._error(f"{code}: {reason}")])
        request = pending.request
        match request["type"]:
            case "send" | "private":
                return Effects([self._sent_line(pending, note=f"✗ failed: {code}: {reason}")])
            case "join" | "leave" if pending.quiet or code == "not_a_member":
                # A failed re-join, or a leave of a group the server says we are not in:
                # either way we are not in it.
                self._drop(request["group"])
        verb = {"join": "join", "leave": "leave", "who": "list"}[request["type"]]
        return Effects([self._error(f"could not {verb} {request['group']}: {code}: {reason}")])

    def _who(self, frame: Frame) -> Effects:
        self.pending.pop(str(frame.get("id")), None)
        return Effects([display.who(frame, self.user, self.clock())])

    # --- lines the user typed -------------------------------------------

    def on_input(self, text: str) -> Effects:
        command = cmd.parse(text)
        match command:
            case None:
                return Effects()
            case cmd.Invalid(problem):
                return Effects([self._error(problem)])
            case cmd.Help():
                return Effects([self._info(line) for line in cmd.HELP])
            case cmd.Quit():
                return Effects(quit=True)
            case cmd.SwitchTo(group):
                if group not in self.groups:
                    return Effects([self._error(f"you are not in {group}; /join {group} first")])
                self.current = group
                return Effects([self._info(f"now talking in {group}")])
        if self.status is not Status.CONNECTED:
            return Effects([self._error(f"not connected ({self.status.value}); nothing was sent")])
        try:
            return self._request_for(command)
        except ProtocolError as e:
            return Effects([self._error(e.reason)])

    def _request_for(self, command: cmd.Command) -> Effects:
        match command:
            case cmd.Say(text):
                if self.current is None:
                    return Effects([self._error("you are in no group; /join GROUP first")])
                return self._send({"type": "send", "group": self.current, "msg": text})
            case cmd.PrivateMessage(to, text):
                return self._send({"type": "private", "to": check_name(to), "msg": text})
            case cmd.Join(group):
                check_name(group, "group name", MAX_GROUP_LENGTH)
                if group in self.groups:
                    self.current = group
                    return Effects([self._info(f"already in {group}; now talking in it")])
                return self._send({"type": "join", "group": group})
            case cmd.Leave(group) | cmd.WhoIs(group):
                group = group or self.current
                if group is None:
                    return Effects([self._error("which group? you are in none")])
                kind = "leave" if isinstance(command, cmd.Leave) else "who"
                return self._send({"type": kind, "group": group})
        raise AssertionError(command)

    def _send(self, frame: Frame) -> Effects:
        return Effects(frames=[self._request(frame)])

    def _request(self, frame: Frame, quiet: bool = False) -> Frame:
        frame = {**frame, "id": f"c{next(self._ids)}"}
        self.pending[frame["id"]] = Pending(frame, self.clock(), quiet)
        return frame

    def _drop(self, group: str) -> str:
        """Forget ``group``; the notice, saying where the user talks now."""
        self.groups.pop(group, None)
        if self.current == group:
            self.current = LOBBY if LOBBY in self.groups else next(iter(self.groups), None)
            return f"left {group}; now talking in {self.current or 'no group (/join one)'}"
        return f"left {group}"

    # --- what the shell shows besides the scrollback --------------------

    def prompt(self) -> str:
        return f"{self.current or '-'}> "

    def toolbar(self, width: int = 80) -> str:
        match self.status:
            case Status.CONNECTED:
                parts = [f"online as {self.user}", f"in {' '.join(self.groups) or '-'}"]
            case Status.CONNECTING:
                parts = [f"connecting to {self.server}"]
            case Status.WAITING:
                left = max(0.0, (self.retry_at or 0) - self.monotonic())
                parts = [f"offline: retry {self.backoff.attempt} in {left:.0f} s"]
            case Status.CLOSED:
                parts = [f"closed: {self.closed_because}"]
        shown = [p for p in self.pending.values() if not p.quiet]
        if shown:
            first = shown[0].request
            parts.append(f"{len(shown)} pending: {show_value(first.get('msg', first.get('group')))}")
        text = " | ".join(parts)
        while width_of(text) > width - 1:
            text = text[:-2] + "…"
        return text

    def _sent_line(self, pending: Pending, note: str = "") -> Line:
        request = pending.request
        where = request.get("group") or f"private → {request.get('to')}"
        return Line(pending.at, Kind.CHAT, show_value(request["msg"]), f"[{where}] {self.user}", note)

    def _info(self, text: str) -> Line:
        return Line(self.clock(), Kind.INFO, text)

    def _error(self, text: str) -> Line:
        return Line(self.clock(), Kind.ERROR, text)
