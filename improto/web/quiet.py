"""
Skip work that stock Autobahn does on every frame and connection for nothing.

Autobahn builds the arguments of its ``log.debug`` calls eagerly, and
txaio's no-op ``debug`` only discards them afterwards: ``hltype()`` of a
bound method costs 3-4 µs (``inspect`` calls and string building),
``pformat`` of ~40 settings about 0.35 ms, ``str()`` of a ``Failure``
about 8 µs. It also fires a "message" event nobody listens to for every
message, and unmasks every client frame with a cffi masker whose set-up
costs ~10 µs whatever the frame's size. These showed up at the top of
profiles of a group broadcast, of private messages and of connection churn
(``benchmarks/profile_improto.py``), so those paths are re-stated here
without that work, each next to the cost it removes (measured with
``benchmarks/micro.py``, Autobahn 26.10, CPython 3.11; the current numbers
are in ``benchmarks/README.md``). Everything else is Autobahn's own.

Semantics are Autobahn's: each re-stated method does exactly what the
stock one does, minus the ``log.debug`` call or the unused event, and
frames are unmasked to the same bytes. When debug logging is on for the
protocol's logger at the moment a connection is made, that connection
uses Autobahn's own methods throughout, so debug output is unchanged too.

Two module globals of ``autobahn.websocket.protocol`` are swapped for the
duration of one call on the reactor thread, and only with debug logging
off: ``pformat`` during ``_connectionMade`` (which runs only Autobahn's
own code), and ``create_xor_masker`` while ``processData`` parses a frame
header (Autobahn's header checks and the ``onMessageBegin`` /
``onMessageFrameBegin`` hooks; never ``onMessage``). Any other code that
happens to use them meanwhile gets an equivalent result (a masker that
produces the same bytes); nothing else is patched.
"""

from __future__ import annotations

from typing import Any

import autobahn.twisted.websocket  # noqa: F401 - selects txaio's Twisted flavour first
import autobahn.websocket.protocol as _ab
import txaio
from autobahn.twisted.util import create_transport_details
from autobahn.util import _is_tls_error, _maybe_tls_reason
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

_OPEN = WebSocketProtocol.STATE_OPEN
_PRE_OPEN = (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING)
_DEBUG_LEVELS = frozenset(("debug", "trace"))


def debug_logging(log: Any) -> bool:
    """Whether a txaio logger emits debug events (unknown loggers: assume so)."""
    return getattr(log, "_log_level", "debug") in _DEBUG_LEVELS


class QuietLoggingMixin:
    """
    Mix in before ``autobahn.twisted.websocket.WebSocketServerProtocol``.

    Twisted server protocols only: the re-stated methods are those of
    Autobahn's Twisted adapter and of its server protocol.
    """

    # Attributes of Autobahn's protocol that these methods use (Any: the
    # mixin must agree with every base it is combined with).
    state: Any
    send_queue: Any
    transport: Any
    trafficStats: Any
    logOctets: Any
    factory: Any
    log: Any
    peer: Any
    tcpNoDelay: Any
    is_server: Any
    _transport_details: Any
    _listeners: Any
    current_frame: Any
    failedByMe: Any
    message_data: Any
    message_is_binary: Any
    trackedTimings: Any

    #: False until ``connectionMade`` found debug logging off: Autobahn's
    #: own methods (and debug output) until then.
    _quiet = False

    # -- once per connection -----------------------------------------------

    def connectionMade(self) -> None:
        # Stock ends with log.debug(hltype(self.connectionMade), hlval(peer)):
        # ~4.5 µs a connection.
        self._quiet = not debug_logging(self.log)
        if not self._quiet:
            super().connectionMade()  # type: ignore[misc]
            return
        self._transport_details = create_transport_details(self.transport, self.is_server)
        self._transport_details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        self.peer = self._transport_details.peer
        try:
            # As in Autobahn: tcpNoDelay is not set on the protocol yet at
            # this point (it is copied from the factory in _connectionMade),
            # so this raises AttributeError and nothing is set.
            self.transport.setTcpNoDelay(self.tcpNoDelay)
        except:  # noqa: E722 - Autobahn's own bare except, kept as is
            pass
        self._connectionMade()

    def _connectionMade(self) -> None:
        # Server: log.debug(hltype(self._connectionMade), ...) first, ~3.7 µs;
        # base: log.debug(pformat(~40 settings)), ~350 µs. The pformat is a
        # module global of Autobahn's: it is swapped only for this call, on
        # the reactor thread, which runs no code but Autobahn's own.
        if not self._quiet:
            super()._connectionMade()  # type: ignore[misc]
            return
        saved = _ab.pformat
        _ab.pformat = _no_format  # type: ignore[assignment]
        try:
            WebSocketProtocol._connectionMade(self)  # type: ignore[arg-type]
        finally:
            _ab.pformat = saved
        self.factory.countConnections += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Stock: log.debug(hltype(self.connectionLost), hlval(peer)) after,
        # plus str(reason.value) for some reasons: ~4.5 µs a connection.
        if not self._quiet:
            super().connectionLost(reason)  # type: ignore[misc]
            return
        if not isinstance(reason.value, ConnectionDone) and _is_tls_error(reason.value):
            self.log.error(_maybe_tls_reason(reason.value))
        self._connectionLost(reason)

    def _connectionLost(self, reason: Any) -> None:
        # Server: log.debug(hltype(...), hlval(reason)) first; hlval of a
        # Failure formats its traceback: ~12 µs a connection.
        if not self._quiet:
            super()._connectionLost(reason)  # type: ignore[misc]
            return
        WebSocketProtocol._connectionLost(self, reason)  # type: ignore[arg-type]
        self.factory.countConnections -= 1

    # -- once per read -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Stock: log.debug(hltype(self.dataReceived), hlval(peer),
        # hlval(len(data))) on every read: ~5 µs a read (one per inbound
        # message at chat rates).
        if not self._quiet:
            super().dataReceived(data)  # type: ignore[misc]
            return
        self._dataReceived(data)  # type: ignore[attr-defined]

    # -- once per frame in --------------------------------------------------------

    def processData(self) -> bool:
        # Unmasking: for every masked frame, Autobahn's NVX (cffi) masker
        # costs ~10 µs to create and apply whatever the size (an import
        # statement, three cffi allocations, two copies); plain integer XOR
        # does a chat-sized frame in ~3 µs and is as fast up to ~1 KiB. The
        # masker is made by a module global of Autobahn's, in the call that
        # parses a frame header; only for that call (which runs Autobahn's
        # header checks and the onMessageBegin/onMessageFrameBegin hooks,
        # never onMessage) it is swapped for one that returns the integer
        # masker for frames up to _SMALL_FRAME bytes and Autobahn's own
        # otherwise. Both give the same bytes; only the speed differs.
        if not self._quiet or self.current_frame is not None:
            return super().processData()  # type: ignore[misc,no-any-return]
        saved = _ab.create_xor_masker
        _ab.create_xor_masker = _create_xor_masker
        try:
            return super().processData()  # type: ignore[misc,no-any-return]
        finally:
            _ab.create_xor_masker = saved

    # -- once per message in ---------------------------------------------------

    def onMessageEnd(self) -> None:
        # Stock fires the "message" event for every message even when no
        # listener was ever added (``.on("message", ...)``): a Deferred, a
        # closure and add_callbacks, ~3 µs a message. Same code, minus that
        # when there are no listeners (checked after onMessage, which may
        # add one, as stock would then fire it).
        if not self._quiet or self._listeners is not None:
            super().onMessageEnd()  # type: ignore[misc]
            return
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(payload, self.message_is_binary)  # type: ignore[attr-defined]
            if self._listeners is not None:
                self._fire_message(payload)
        self.message_data = None

    def _fire_message(self, payload: bytes) -> None:
        f = self.fire("message", payload, is_binary=self.message_is_binary)  # type: ignore[attr-defined]

        def error(f: Any) -> None:
            self.log.error("Firing signal 'message' failed: {fail}", fail=f)

        txaio.add_callbacks(f, None, error)  # type: ignore[attr-defined]

    # -- once per frame out -----------------------------------------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Stock: log.debug(hltype(self.sendData), hlval(peer),
        # hlval(len(data))) for every frame written: ~4 µs a frame, the
        # biggest cost of a group broadcast that writes one prepared frame
        # to every member.
        if chopsize or sync or self.send_queue or not self._quiet:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
            return
        self.transport.write(data)
        state = self.state
        if state == _OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif state in _PRE_OPEN:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)  # type: ignore[attr-defined]


def _no_format(obj: object) -> str:
    return ""


#: Largest frame unmasked with integer XOR (above it, Autobahn's NVX masker
#: is as fast or faster).
_SMALL_FRAME = 512
_stock_create_xor_masker = _ab.create_xor_masker


class _IntXorMasker:
    """Autobahn's masker interface (pointer/reset/process), by integer XOR."""

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        if not n:
            return b""
        offset = self._ptr & 3
        stream = (self._mask * ((n + offset + 3) // 4 + 1))[offset : offset + n]
        self._ptr += n
        return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    if length is not None and length <= _SMALL_FRAME and len(mask) == 4:
        return _IntXorMasker(mask)
    return _stock_create_xor_masker(mask, length)
