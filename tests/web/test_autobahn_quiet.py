"""
improto/web/quiet.py stops Autobahn from formatting debug-log text nobody
logs. These tests pin what it relies on in the installed Autobahn (so that
an upgrade that changes it fails here, loudly, instead of silently costing
or breaking something), and that with it no debug text is formatted while
debug logging is off and the same text is logged while it is on.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import pprint
import sys
import textwrap
from collections.abc import Callable, Collection, Iterator
from types import CodeType
from typing import Any

import autobahn
import autobahn.util
import pytest
import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

import improto.web.link  # noqa: F401 - installs the mitigation, as the server does
from improto.web import quiet
from tests import wsframes

REVIEW = (
    f"Autobahn {autobahn.__version__} changed what improto/web/quiet.py relies on: "
    "re-review it (and docs/upstream/) against this version"
)
LOG_METHODS = {"debug", "info", "warn", "error", "critical", "failure", "trace"}
#: The only pformat call that is not an argument of a log call (of a dict).
NOT_LOGGED = {("autobahn.websocket.protocol", "pformat", "Timings.__str__")}
#: sha256 of the source of the functions whose result memo_hltype remembers
#: (their text must depend on the function or class alone), as reviewed.
#: sha256 of Autobahn's sendData, whose open-connection path LinkProtocol.sendData
#: re-states without the log.debug call, as reviewed.
REVIEWED_SEND_DATA = "5dcca425b048b07eb27d56a625a790d7a8e48fbe958753074cb1e55e174b2423"
#: sha256 of Autobahn's sendPreparedMessage, whose uncompressed branch
#: LinkProtocol._broadcast re-states, as reviewed.
REVIEWED_SEND_PREPARED = "207ccbb3f0d5085cf619f0ac6552e0c2257f3b2761e62c7130df827667622f10"
REVIEWED_HLTYPE = "243cd21fc85579c400326e837d9a1f94322139fab494b1fbcb37654dcd285199"


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class LenientTransport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


@pytest.fixture
def factory() -> WebSocketServerFactory:
    factory = WebSocketServerFactory(reactor=MemoryReactorClock())
    factory.protocol = Echo
    return factory


@pytest.fixture
def stock() -> Iterator[None]:
    was_installed = quiet.installed()
    quiet.uninstall()
    try:
        yield
    finally:
        if was_installed:
            quiet.install()


@pytest.fixture
def debug_logging() -> Iterator[None]:
    txaio.set_global_log_level("debug")
    try:
        yield
    finally:
        txaio.set_global_log_level("info")


def a_connection(factory: WebSocketServerFactory, reason: Failure) -> StringTransport:
    """Handshake, a frame in and out, a client close, then the TCP loss."""
    protocol = factory.buildProtocol(None)
    transport = LenientTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(wsframes.handshake("/"))
    protocol.dataReceived(wsframes.client_frame(b"hello"))
    protocol.dataReceived(wsframes.client_frame((1000).to_bytes(2, "big"), opcode=8))
    protocol.connectionLost(reason)
    return transport


#: The code that formats Autobahn's debug text.
FORMATTERS = {
    autobahn.util.hltype.__code__,
    autobahn.util.hlval.__code__,
    autobahn.util._qn.__code__,
    pprint.pformat.__code__,
}


def calls_to(
    codes: Collection[CodeType], action: Callable[[], object], log_level: str | None = None
) -> list[str]:
    """
    Names of the calls of any of ``codes`` while ``action()`` runs (with
    txaio's log level at ``log_level`` meanwhile, then back to "info").
    """
    called: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in codes:
            called.append(frame.f_code.co_qualname)

    if log_level is not None:
        txaio.set_global_log_level(log_level)
    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
        if log_level is not None:
            txaio.set_global_log_level("info")
    return called


def formatting_calls(factory: WebSocketServerFactory) -> list[str]:
    """Names of the debug-text formatters called during a_connection()."""
    return calls_to(FORMATTERS, lambda: a_connection(factory, Failure(ConnectionLost())))


# -- what quiet.py relies on ---------------------------------------------------------------


def test_the_helpers_it_rebinds_are_autobahns_own(stock) -> None:
    for module_name, names in quiet.PATCHED.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(module, name, None) is quiet.STOCK[name], f"{module_name}.{name}: {REVIEW}"
    assert str(inspect.signature(autobahn.util.hltype)) == "(obj)", REVIEW
    assert str(inspect.signature(autobahn.util.hlval)) == "(val, color='white', bold=True)", REVIEW


def hltype_source_hash() -> str:
    source = "".join(inspect.getsource(f) for f in (autobahn.util.hltype, autobahn.util._qn))
    return hashlib.sha256(source.encode()).hexdigest()


def test_hltype_is_the_reviewed_one() -> None:
    assert hltype_source_hash() == REVIEWED_HLTYPE, REVIEW


def test_remembered_hltype_texts_are_autobahns() -> None:
    class Sub(Echo):
        pass

    for obj in (Echo().sendData, Sub().sendData, Echo().onMessage, Sub, quiet.install, 42):
        assert quiet.memo_hltype(obj) == autobahn.util.hltype(obj)
        assert quiet.memo_hltype(obj) == autobahn.util.hltype(obj)


def _enclosing_calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call, list[ast.AST]]]:
    """(qualified def name, call, ancestors) for every call in ``tree``."""

    def walk(node: ast.AST, scope: list[str], ancestors: list[ast.AST]) -> Iterator[Any]:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [*scope, child.name]
            if isinstance(child, ast.Call):
                yield ".".join(inner), child, ancestors
            yield from walk(child, inner, [*ancestors, child])

    yield from walk(tree, [], [])


def _is_log_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LOG_METHODS
        and isinstance(node.func.value, ast.Attribute | ast.Name)
        and (getattr(node.func.value, "attr", None) or getattr(node.func.value, "id", None)) == "log"
    )


def test_every_pformat_and_hlval_is_a_log_argument() -> None:
    """A lazy result is only right where a log observer renders it; a new
    call elsewhere (its result used as a str) must be re-reviewed."""
    found = set()
    for module_name, names in quiet.PATCHED.items():
        lazy = {"pformat", "hlval"} & set(names)
        source = textwrap.dedent(inspect.getsource(importlib.import_module(module_name)))
        for scope, call, ancestors in _enclosing_calls(ast.parse(source)):
            if not (isinstance(call.func, ast.Name) and call.func.id in lazy):
                continue
            if any(_is_log_call(a) for a in ancestors):
                continue
            site = (module_name, call.func.id, scope)
            assert site in NOT_LOGGED, f"{call.func.id}() at {module_name}:{call.lineno} ({scope}) is not a log argument: {REVIEW}"
            found.add(site)
    assert found == NOT_LOGGED, f"pinned call sites are gone: {NOT_LOGGED - found}: {REVIEW}"


def test_install_leaves_a_helper_it_does_not_know_and_says_so(stock, monkeypatch, caplog_events):
    import autobahn.twisted.websocket as module

    foreign = lambda obj: ""  # noqa: E731
    monkeypatch.setattr(module, "hltype", foreign)
    assert quiet.install() == ["autobahn.twisted.websocket.hltype"]
    assert module.hltype is foreign and not quiet.installed()
    assert any("quiet.py knows" in e.get("log_format", "") for e in caplog_events)


def test_send_data_is_the_reviewed_one() -> None:
    from autobahn.websocket.protocol import WebSocketProtocol

    source = inspect.getsource(WebSocketProtocol.sendData)
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED_SEND_DATA, (
        f"{REVIEW}: Autobahn's sendData changed; LinkProtocol.sendData re-states its "
        "open-connection path"
    )


def autobahn_send_data_calls(debug: bool) -> tuple[int, bytes, int]:
    """Calls of Autobahn's sendData for one text frame to an open improto
    connection, and what was written and counted."""
    from autobahn.websocket.protocol import WebSocketProtocol

    protocol, transport = _chat_connection("/ws/alice")
    transport.clear()
    counted = protocol.trafficStats.outgoingOctetsWireLevel
    calls = calls_to({WebSocketProtocol.sendData.__code__},
                     lambda: protocol.send_frame(b"hello", False), "debug" if debug else "info")
    return len(calls), transport.value(), protocol.trafficStats.outgoingOctetsWireLevel - counted


def test_send_prepared_message_is_the_reviewed_one() -> None:
    from autobahn.websocket.protocol import WebSocketProtocol

    source = inspect.getsource(WebSocketProtocol.sendPreparedMessage)
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED_SEND_PREPARED, (
        f"{REVIEW}: Autobahn's sendPreparedMessage changed; LinkProtocol._broadcast re-states "
        "its branch for an uncompressed link"
    )


def broadcast_calls(debug: bool) -> tuple[int, list[bytes]]:
    """Calls of Autobahn's sendData and sendPreparedMessage for one broadcast to
    two open improto connections, and what each was sent."""
    from autobahn.websocket.protocol import WebSocketProtocol

    links = [_chat_connection(f"/ws/{name}") for name in ("alice", "bob")]
    for _, transport in links:
        transport.clear()
    codes = {WebSocketProtocol.sendData.__code__, WebSocketProtocol.sendPreparedMessage.__code__}
    protocols = [p for p, _ in links]
    calls = calls_to(codes, lambda: type(protocols[0]).broadcast(protocols, b"hi", False),
                     "debug" if debug else "info")
    return len(calls), [t.value() for _, t in links]


def test_a_broadcast_writes_without_autobahns_send_data_unless_debugging() -> None:
    fast, debugging = broadcast_calls(False), broadcast_calls(True)
    assert (fast[0], debugging[0]) == (0, 2)
    assert fast[1] == debugging[1] == [bytes((0x81, 2)) + b"hi"] * 2


def test_an_open_connection_writes_without_autobahns_send_data_unless_debugging() -> None:
    fast, debugging = autobahn_send_data_calls(False), autobahn_send_data_calls(True)
    quiet.uninstall()
    try:
        stock = autobahn_send_data_calls(False)
    finally:
        quiet.install()
    assert (fast[0], debugging[0], stock[0]) == (0, 1, 1)
    assert fast[1:] == debugging[1:] == stock[1:] == (bytes((0x81, 5)) + b"hello", 7)


# -- what it does ------------------------------------------------------------------------


def test_stock_autobahn_formats_debug_text_with_debug_logging_off(factory, stock) -> None:
    """The detector of the next test sees stock Autobahn's eager formatting
    (so that test can fail: it does, with quiet.uninstall())."""
    formatting_calls(factory)
    called = formatting_calls(factory)
    assert "hltype" in called and "pformat" in called


def test_with_debug_logging_off_no_debug_text_is_formatted(factory) -> None:
    formatting_calls(factory)  # hltype's texts are remembered from the first connection
    assert formatting_calls(factory) == [], "Autobahn formats debug text nobody logs"


def _debug_texts(factory: WebSocketServerFactory) -> list[str]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        a_connection(factory, Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if getattr(e.get("log_level"), "name", "") == "debug"]


def test_with_debug_logging_on_the_same_text_is_logged(factory, debug_logging) -> None:
    assert quiet.installed()
    lazy = _debug_texts(factory)
    quiet.uninstall()
    try:
        eager = _debug_texts(factory)
    finally:
        quiet.install()
    assert lazy == eager
    assert any("WebSocketProtocol.sendData> sent" in text for text in lazy)
    assert any("('openHandshakeTimeout', 5, 'WebSocketServerFactory')" in text for text in lazy)


def test_timings_still_format_as_text() -> None:
    from autobahn.websocket.protocol import Timings

    timings = Timings()
    timings.track("onOpen")
    assert str(timings) == pprint.pformat(timings._timings)
    assert "onOpen" in str(timings)


def test_lazy_text_renders_like_the_helper() -> None:
    settings = [("openHandshakeTimeout", 5, "WebSocketServerFactory")] * 3
    text, eager = quiet.lazy_pformat(settings), pprint.pformat(settings)
    assert isinstance(text, quiet.LazyText)
    assert (str(text), f"{text}", f"{text:>80}", repr(text)) == (eager, eager, f"{eager:>80}", repr(eager))
    assert quiet.lazy_pformat({"a": 1}) == pprint.pformat({"a": 1})
    reason = Failure(ConnectionLost())
    assert f"{quiet.lazy_hlval(reason)}" == autobahn.util.hlval(reason)
    assert str(quiet.lazy_hlval(7, color="red", bold=False)) == autobahn.util.hlval(7, color="red", bold=False)


# -- the small-frame masker (improto.web.framing.create_xor_masker) -------------------------

#: sha256 of Autobahn's ObservableMixin.on/fire, which LinkProtocol.fire relies on
#: (``on`` the only way to add a listener; with none, ``fire`` returns a fired
#: Deferred of []), as reviewed.
REVIEWED_OBSERVABLE = "4affe79834103602bab6df44bd9350a4bf928059e6a4bbca4dee1e137f1f0c74"
MASKER_METHODS = {"process", "pointer", "reset"}


def test_the_integer_masker_matches_autobahns_across_split_reads() -> None:
    import os
    import random

    from autobahn.websocket.xormasker import create_xor_masker

    from improto.web.framing import SMALL_FRAME, IntXorMasker
    from improto.web.framing import create_xor_masker as ours_for

    rng = random.Random(1)
    for _ in range(1500):
        mask, size = os.urandom(4), rng.randint(0, SMALL_FRAME + 50)
        data = os.urandom(size)
        cuts = sorted(rng.sample(range(size + 1), min(3, size + 1)))
        pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, size], strict=True)]
        stock, ours = create_xor_masker(mask, size), ours_for(mask, size)
        assert isinstance(ours, IntXorMasker) == (size <= SMALL_FRAME)
        assert b"".join(map(stock.process, pieces)) == b"".join(map(ours.process, pieces))
        assert stock.pointer() == ours.pointer() == size
        ours.reset()
        assert ours.pointer() == 0


def _masker_uses() -> tuple[list[ast.Call], set[str]]:
    """Autobahn's protocol module: its create_xor_masker calls, and every
    method called on an attribute or name whose name ends in masker."""
    import autobahn.websocket.protocol as module

    tree = ast.parse(inspect.getsource(module))
    calls, methods = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "create_xor_masker":
                calls.append(node)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name):
            owner = getattr(node.value, "attr", None) or getattr(node.value, "id", "")
            if owner.endswith("masker"):
                methods.add(node.attr)
    return calls, methods


def test_autobahn_makes_maskers_as_reviewed() -> None:
    """framing.create_xor_masker takes (mask, length) and its masker has only
    the three methods Autobahn calls on maskers."""
    calls, methods = _masker_uses()
    assert len(calls) == 4, REVIEW
    assert all(len(c.args) == 2 and not c.keywords for c in calls), REVIEW
    assert {"process", "pointer"} <= methods <= MASKER_METHODS, f"Autobahn calls {methods} on maskers: {REVIEW}"
    assert str(inspect.signature(quiet.STOCK["create_xor_masker"])) == "(mask, length=None)", REVIEW


def test_small_client_frames_are_unmasked_without_autobahns_masker() -> None:
    """Through a whole connection: the echo is right and only the large frame
    used Autobahn's masker (the detector can fail: it counts the large one)."""
    from improto.web.framing import SMALL_FRAME

    stock_masker = quiet.STOCK["create_xor_masker"]
    factory = WebSocketServerFactory(reactor=MemoryReactorClock())
    factory.protocol = Echo
    protocol = factory.buildProtocol(None)
    transport = LenientTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(wsframes.handshake("/"))
    transport.clear()
    small, large = b"hello, world" * 3, b"x" * (SMALL_FRAME + 1)

    def receive_both() -> None:
        protocol.dataReceived(wsframes.client_frame(small))
        protocol.dataReceived(wsframes.client_frame(large))

    calls = calls_to({stock_masker.__code__}, receive_both)
    assert len(calls) == 1
    echoed = transport.value()
    assert echoed.startswith(bytes((0x81, len(small))) + small)
    assert echoed.endswith(large)


# -- the "message" event (LinkProtocol.fire) -------------------------------------------------


def test_observable_mixin_is_the_reviewed_one() -> None:
    from autobahn.util import ObservableMixin

    source = "".join(inspect.getsource(f) for f in (ObservableMixin.on, ObservableMixin.fire))
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED_OBSERVABLE, REVIEW


def test_autobahn_fires_the_message_event_through_fire() -> None:
    from autobahn.websocket.protocol import WebSocketProtocol

    tree = ast.parse(textwrap.dedent(inspect.getsource(WebSocketProtocol.onMessageEnd)))
    fired = [
        c for c in ast.walk(tree)
        if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "fire"
        and isinstance(c.func.value, ast.Name) and c.func.value.id == "self"
    ]
    assert [c.args[0].value for c in fired if isinstance(c.args[0], ast.Constant)] == ["message"], REVIEW


def _chat_connection(path: str) -> tuple[Any, StringTransport]:
    from improto.backends.memory import MemoryBackend
    from improto.router import Router
    from improto.settings import Settings
    from improto.web.chat import ChatServerFactory

    backend = MemoryBackend()
    backend.start()
    factory = ChatServerFactory(Router(backend), Settings(), MemoryReactorClock())
    protocol = factory.buildProtocol(None)
    transport = LenientTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(wsframes.handshake(path))
    return protocol, transport


def test_with_no_listener_fire_returns_autobahns_result_without_a_new_deferred() -> None:
    protocol, _ = _chat_connection("/ws/alice")
    first, second = protocol.fire("message", b"x", is_binary=False), protocol.fire("message", b"y")
    assert first is second
    results: list[Any] = []
    first.addCallback(results.append)
    assert results == [[]]


def test_a_message_listener_is_called_as_on_stock_autobahn() -> None:
    protocol, _ = _chat_connection("/ws/alice")
    heard: list[tuple[bytes, bool]] = []
    protocol.on("message", lambda payload, is_binary: heard.append((payload, is_binary)))
    protocol.dataReceived(wsframes.client_frame(b'{"msg": "hi"}'))
    assert heard == [(b'{"msg": "hi"}', False)]


def test_errbacks_on_the_shared_result_are_skipped_as_twisted_would() -> None:
    from improto.web.link import _NO_LISTENERS

    heard: list[Any] = []
    assert _NO_LISTENERS.addErrback(heard.append) is _NO_LISTENERS
    _NO_LISTENERS.addCallback(lambda result: heard.append(result) or result)
    assert len(heard) == 1 and heard[0] is _NO_LISTENERS.result  # no errback ran, result kept


#: sha256 of Autobahn's WebSocketAdapterProtocol.dataReceived (a log.debug call and
#: self._dataReceived(data)), which LinkProtocol.dataReceived re-states, as reviewed.
REVIEWED_DATA_RECEIVED = "7997f762de21843361fe9d6bc8df40f6517cafe310d76eb61b292aa8cecf9661"


def test_data_received_is_the_reviewed_one() -> None:
    from autobahn.twisted.websocket import WebSocketAdapterProtocol

    source = inspect.getsource(WebSocketAdapterProtocol.dataReceived)
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED_DATA_RECEIVED, (
        f"{REVIEW}: Autobahn's dataReceived changed; LinkProtocol.dataReceived re-states it"
    )


@pytest.mark.parametrize("debug", [False, True])
def test_reads_skip_autobahns_data_received_unless_debugging(debug: bool) -> None:
    from autobahn.twisted.websocket import WebSocketAdapterProtocol

    protocol, transport = _chat_connection("/ws/alice")
    heard: list[tuple[bytes, bool]] = []
    protocol.on("message", lambda payload, is_binary: heard.append((payload, is_binary)))
    calls = calls_to({WebSocketAdapterProtocol.dataReceived.__code__},
                     lambda: protocol.dataReceived(wsframes.client_frame(b'{"msg": "hi"}')),
                     "debug" if debug else "info")
    assert heard == [(b'{"msg": "hi"}', False)]
    assert len(calls) == (1 if debug else 0)


#: sha256 of Autobahn's WebSocketProtocol._connectionMade and of
#: WebSocketServerProtocol's (a log.debug call, that one, and the factory's
#: connection count), which LinkProtocol._connectionMade re-states (less
#: what they do for nothing), as reviewed.
#: And of WebSocketServerProtocol._connectionLost (the same, undone), which
#: LinkProtocol._connectionLost re-states.
REVIEWED_SERVER_CONNECTION_LOST = "1b616e8fc259d995cfa7bbc7a0dd8423c3cc821027c3881d683633a9b6013efb"
REVIEWED_SERVER_CONNECTION_MADE = "213dadb6d12d3d482c041df7230067083cf5047489dadf823314ea96a0d1914f"
REVIEWED_CONNECTION_MADE = "7ac58d8bb6c3c752dc6753e09d2358573a2a47da90275e962830af0600fdf077"


def test_connection_made_is_the_reviewed_one() -> None:
    from autobahn.websocket.protocol import WebSocketProtocol

    source = inspect.getsource(WebSocketProtocol._connectionMade)
    server = inspect.getsource(WebSocketServerProtocol._connectionMade)
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED_CONNECTION_MADE, (
        f"{REVIEW}: Autobahn's _connectionMade changed; LinkProtocol._connectionMade re-states it"
    )
    assert hashlib.sha256(server.encode()).hexdigest() == REVIEWED_SERVER_CONNECTION_MADE, (
        f"{REVIEW}: Autobahn's WebSocketServerProtocol._connectionMade changed; "
        "LinkProtocol._connectionMade re-states it"
    )
    lost = inspect.getsource(WebSocketServerProtocol._connectionLost)
    assert hashlib.sha256(lost.encode()).hexdigest() == REVIEWED_SERVER_CONNECTION_LOST, (
        f"{REVIEW}: Autobahn's WebSocketServerProtocol._connectionLost changed; "
        "LinkProtocol._connectionLost re-states it"
    )


def _set_by_autobahns_connection_made() -> set[str]:
    """Every self.<name> = ... in Autobahn's _connectionMade, read off its source."""
    from autobahn.websocket.protocol import WebSocketProtocol

    tree = ast.parse(textwrap.dedent(inspect.getsource(WebSocketProtocol._connectionMade)))
    return {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name) and node.value.id == "self"
    }


def _state(link: Any, name: str) -> Any:
    """What a connection's attribute says, comparable between two connections."""
    value = getattr(link, name, "(not set)")  # serverConnectionDropTimeoutCall: clients only
    if name == "trafficStats":
        return vars(value)
    if name == "utf8validator":
        return type(value), value.validate("héllo".encode())
    if name == "send_queue":
        return list(value)
    if name.endswith("Call"):
        return value is not None
    return value


def test_a_new_connection_reads_as_on_autobahns_own_connection_made() -> None:
    """
    The lean ``_connectionMade`` (quiet, debug logging off) leaves every
    attribute Autobahn's sets, and every option it copies, reading as
    Autobahn's own does (which runs while debug logging is on), before the
    handshake and after it.
    """
    names = _set_by_autobahns_connection_made() | {"state", "send_queue", "utf8validator"}
    assert {"wasClean", "openHandshakeTimeoutCall", "trafficStats"} <= names  # the parse works
    lean, _ = _chat_connection("/ws/alice")
    txaio.set_global_log_level("debug")
    try:
        own, _ = _chat_connection("/ws/carol")  # a request as long as alice's
    finally:
        txaio.set_global_log_level("info")
    assert "wasClean" not in vars(lean) and "wasClean" in vars(own)  # the two paths ran
    assert lean.factory.countConnections == own.factory.countConnections == 1
    options = set(type(lean).CONFIG_ATTRS)
    for name in sorted(names | options):
        assert _state(lean, name) == _state(own, name), name


@pytest.mark.parametrize("debug", [False, True])
def test_a_lost_connection_is_uncounted_and_closed_as_on_autobahns_own(debug: bool) -> None:
    protocol, _ = _chat_connection("/ws/alice")
    txaio.set_global_log_level("debug" if debug else "info")
    try:
        protocol.dataReceived(wsframes.client_frame((1000).to_bytes(2, "big"), opcode=8))
        protocol.connectionLost(Failure(ConnectionDone()))
    finally:
        txaio.set_global_log_level("info")
    assert protocol.factory.countConnections == 0
    assert protocol.state == WebSocketServerProtocol.STATE_CLOSED and protocol.wasClean
