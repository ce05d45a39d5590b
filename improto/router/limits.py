"""What one connection may do: the router's limits, in one place."""

from __future__ import annotations

import attrs


@attrs.frozen
class RouterLimits:
    """
    The per-connection limits the router enforces. The web layer derives its
    frame-size limits from :attr:`max_message_size` (through the router), so
    each number is configured once.
    """

    #: Longest text frame, in bytes, accepted on a chat route. Frames up to
    #: :attr:`max_frame_size` get a ``too_large`` error; longer ones close
    #: the connection with 1009, as RFC 6455 asks.
    max_message_size: int = 64 * 1024
    #: Sustained frames per second per connection (0 disables the limit).
    rate: float = 20.0
    #: Frames a connection may send at once before the rate applies.
    burst: float = 40.0
    #: Groups one connection may be a member of at once.
    max_groups: int = 256

    @property
    def max_frame_size(self) -> int:
        """
        The largest frame a chat route reads, and the largest the router
        writes to one (Autobahn holds frames sent to the same limit, and a
        client may well hold us to it too): four times
        :attr:`max_message_size`, with room for an error frame (some
        400 bytes at most) however small that is. Replies that list things
        (a history page, ``who``) are cut to fit.
        """
        return max(4 * self.max_message_size, self.max_message_size + 1024)
