"""
Whole small data frames read without Autobahn's per-frame state machine.

Autobahn reads every frame through ``processData`` (twice: the header,
then the payload), ``onFrameBegin``, ``onFrameData``, ``onFrameEnd``,
``onMessageBegin``, ``onMessageFrameBegin``/``Data``/``End``,
``onMessageFrame``, ``onMessageEnd``, their Twisted ``_on...`` wrappers,
a masker and a "message" event: some twenty Python calls per frame before
``onMessage``, about a third of a private message's instructions on the
memory backend (``benchmarks/micro.py --instructions --ops private``).

A chat client's messages are single small masked text (or binary) frames.
When a read starts at a frame boundary of an open connection,
:func:`read_whole_frames` takes every such frame it holds whole, checks it
as Autobahn would (FIN set, no RSV bit, opcode 1 or 2, masked, minimal
length, within ``maxFramePayloadSize`` and ``maxMessagePayloadSize``, and
for text, valid and complete UTF-8 by Autobahn's own validator), keeps
Autobahn's counters, unmasks it and calls ``onMessage``. It stops at the
first frame that is anything else (a control frame, a fragment, a frame
with RSV bits or over a limit, bad UTF-8, a frame the read cuts short) or
once the connection is no longer open, and returns where it stopped: the
caller hands the rest to Autobahn, which reads it as before, from that
frame on, and fails every violation with its own close code.

The Autobahn methods this re-states for that one kind of frame are
hash-pinned in ``tests/web/test_reading.py``.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol

from improto.web.framing import unmask

_OPEN = WebSocketProtocol.STATE_OPEN
#: First header byte of an unfragmented text / binary frame without RSV bits.
_TEXT, _BINARY = 0x81, 0x82

#: Autobahn's methods between a read and ``onMessage`` that
#: :func:`read_whole_frames` does not call: a class that overrides any of
#: them reads every frame Autobahn's way.
BYPASSED = (
    "_dataReceived", "consumeData", "processData", "onFrameBegin", "onFrameData", "onFrameEnd",
    "_onMessageBegin", "onMessageBegin", "_onMessageFrameBegin", "onMessageFrameBegin",
    "_onMessageFrameData", "onMessageFrameData", "_onMessageFrameEnd", "onMessageFrameEnd",
    "_onMessageFrame", "onMessageFrame", "_onMessageEnd", "onMessageEnd", "_onMessage",
)
_plain_classes: dict[type, bool] = {}


def _reads_plainly(cls: type) -> bool:
    plain = _plain_classes.get(cls)
    if plain is None:
        plain = _plain_classes[cls] = all(
            getattr(cls, name) is getattr(WebSocketServerProtocol, name) for name in BYPASSED)
    return plain


def can_read_whole_frames(link: Any) -> bool:
    """Whether ``link`` is between frames and messages, with nothing to log or decompress."""
    return (
        _reads_plainly(type(link))
        and link.state == _OPEN
        and not link.data
        and link.current_frame is None
        and not link.inside_message
        and link._perMessageCompress is None
        and link.applyMask
        and not link.failedByMe
        and not link.logOctets
        and not link.logFrames
        and not link.trackedTimings
    )


def read_whole_frames(link: Any, data: bytes) -> int:
    """
    Deliver the whole simple data frames at the start of ``data`` to
    ``link.onMessage``; how many bytes of ``data`` they took. Call only
    when :func:`can_read_whole_frames` and with the read's octets counted.
    """
    size = len(data)
    at = 0
    max_message = link.maxMessagePayloadSize
    max_frame = link.maxFramePayloadSize
    stats = link.trafficStats
    while size - at >= 6:
        first = data[at]
        second = data[at + 1]
        if (first != _TEXT and first != _BINARY) or second < 0x80:
            break
        length = second & 0x7F
        if length < 126:
            start = at + 6
        elif length == 126 and size - at >= 8:
            length = (data[at + 2] << 8) | data[at + 3]
            if length < 126:
                break  # not the minimal encoding: Autobahn fails it
            start = at + 8
        else:
            break
        end = start + length
        if end > size or 0 < max_message < length or 0 < max_frame < length:
            break
        payload = unmask(data[start:end], data[start - 4 : start])
        binary = first == _BINARY
        if not binary and link.utf8validateIncoming:
            validator = link.utf8validator
            validator.reset()
            valid, ended = validator.validate(payload)[:2]
            if not (valid and ended):
                break
        at = end
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if link.autoPingTimeoutCall and link.autoPingRestartOnAnyTraffic:
            link._cancelAutoPingTimeoutCall()
        link.onMessage(payload, binary)
        if link.state != _OPEN or link.failedByMe:
            break
    return at
