"""
Server frames that change no client state, as display lines; sans IO.

A message, a private message, a presence event or a who answer only needs
showing, so these are plain functions of the frame, the user and the time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from improto.client.render import Kind, Line, show_value


def message(frame: dict[str, Any], user: str, at: datetime) -> Line:
    head = f"[{frame.get('group')}] {frame.get('sender')}"
    return Line(at, Kind.CHAT, show_value(frame.get("msg")), head)


def private(frame: dict[str, Any], user: str, at: datetime) -> Line:
    sender = frame.get("sender")
    # From another of the user's own devices: say to whom it went.
    where = f"[private → {frame.get('to')}]" if sender == user else "[private]"
    return Line(at, Kind.CHAT, show_value(frame.get("msg")), f"{where} {sender}")


def presence(frame: dict[str, Any], user: str, at: datetime) -> Line:
    who, group = frame.get("user"), frame.get("group")
    text = {
        "join": f"{who} joined {group}",
        "leave": f"{who} left {group}",
        "online": f"{who} is online",
        "offline": f"{who} went offline",
    }.get(str(frame.get("event")), f"{who}: {frame.get('event')} {group or ''}".rstrip())
    return Line(at, Kind.INFO, text)


def who(frame: dict[str, Any], user: str, at: datetime) -> Line:
    users = [str(u) for u in frame.get("users", [])]
    group = frame.get("group")
    if not users:
        return Line(at, Kind.INFO, f"nobody is in {group}")
    return Line(at, Kind.INFO, f"in {group} ({len(users)}): {', '.join(users)}")


#: Frame type -> its line, for the frames that only need showing.
SHOWN = {"message": message, "private": private, "presence": presence}
