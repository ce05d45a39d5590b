"""
The hook for resuming a conversation after a reconnect.

The server has no history or resume yet, so the default does nothing: a
reconnected client re-joins its groups and whatever was said meanwhile is
not shown. When the server grows it, a ``Resume`` subclass is where the
client asks for what it missed (e.g. ``{"type": "resume", "since": ...}``
after the welcome), handles the frames that answer it, and decides about
requests the lost connection never confirmed (resend them under the same
id, if the server deduplicates by id).
"""

from __future__ import annotations

from typing import Any

from improto.client.render import Line


class Resume:
    """No resume: the hook points ``ChatState`` calls, all doing nothing."""

    def on_frame(self, frame: dict[str, Any]) -> None:
        """Every frame the server sent, before it is shown: e.g. note the last message seen."""

    def on_welcome(self, welcome: dict[str, Any], reconnect: bool) -> list[dict[str, Any]]:
        """Frames to send right after a welcome (before the re-joins)."""
        return []

    def on_unknown(self, frame: dict[str, Any]) -> list[Line] | None:
        """Lines for a frame type ``ChatState`` does not know (e.g. history); None: not ours."""
        return None

    def on_lost(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of the requests a lost connection never confirmed, those to resend after
        the next welcome. Without server-side deduplication a resend may deliver twice,
        so none are."""
        return []
