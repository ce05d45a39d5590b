"""The origin rule and the counters of improto.web.limits, without sockets."""

from __future__ import annotations

import pytest

from improto.web.limits import ConnectionCounter, OncePerKey
from improto.web.origins import OriginPolicy, can_match, parse_origin, same_origin
from improto.web.resources import page_csp


@pytest.mark.parametrize(
    "origin, host, same",
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://chat.example", "chat.example", True),
        ("http://chat.example", "chat.example", True),
        ("https://chat.example:443", "chat.example", True),
        ("http://chat.example:8080", "chat.example", False),
        ("http://CHAT.example:8080", "chat.EXAMPLE:8080", True),
        ("http://[::1]:8080", "[::1]:8080", True),
        ("http://chat.example.evil", "chat.example", False),
        ("http://chat.example", None, False),
        ("chrome-extension://chat.example", "chat.example", False),
    ],
)
def test_same_origin(origin: str, host: str | None, same: bool) -> None:
    parsed = parse_origin(origin)
    assert parsed is not None
    assert same_origin(parsed, host) is same


def test_no_origin_and_own_origin_are_allowed_by_default() -> None:
    policy = OriginPolicy()
    assert policy.allows(None, "chat.example")
    assert policy.allows("https://chat.example", "chat.example")
    assert not policy.allows("https://evil.example", "chat.example")
    assert not policy.allows("null", "chat.example")
    assert not policy.allows("not an origin", "chat.example")


@pytest.mark.parametrize(
    "pattern, origin, allowed",
    [
        ("http://good.example", "http://good.example", True),
        ("http://good.example", "http://good.example:80", True),
        ("http://good.example:80", "http://good.example", True),
        ("http://good.example", "http://good.example:8080", False),
        ("http://good.example", "https://good.example", False),
        ("HTTP://Good.Example", "http://good.example", True),
        ("https://*.good.example", "https://a.good.example", True),
        ("https://*.good.example", "https://good.example.evil", False),
        ("http://localhost:*", "http://localhost:5000", True),
        ("*", "https://anything.example", True),
        ("*", "null", False),
        ("null", "null", True),
    ],
)
def test_patterns_match_what_users_write(pattern: str, origin: str, allowed: bool) -> None:
    assert OriginPolicy([pattern]).allows(origin, "server.example") is allowed


@pytest.mark.parametrize(
    "pattern, possible",
    [
        ("http://good.example", True),
        ("https://*.good.example", True),
        ("*", True),
        ("null", True),
        ("*.good.example", True),
        ("good.example", False),
        ("http://good.example/", False),
        ("http://good.example/chat", False),
        ("https://*.good.example/", False),
        ("http://good example", False),
        ("http://good.example?x", False),
        ("http://good.example:port", False),
    ],
)
def test_patterns_that_can_never_match_are_found(pattern: str, possible: bool) -> None:
    assert can_match(pattern) is possible
    assert (pattern in OriginPolicy([pattern]).never_matching) is (not possible)


def test_connection_counter_counts_per_key_and_forgets_empty_keys() -> None:
    counter = ConnectionCounter(2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(2):
        counter.release("a")
    counter.release("b")
    assert len(counter) == 0
    unlimited = ConnectionCounter(0)
    assert all(unlimited.acquire("x") for _ in range(1000))
    assert unlimited.count("x") == 1000


def test_once_per_key_is_bounded() -> None:
    seen = OncePerKey(size=3)
    assert seen.first("a") and not seen.first("a")
    for key in "bcd":
        assert seen.first(key)
    assert len(seen) == 3
    assert seen.first("a")  # forgotten, so told again: bounded memory wins


def test_page_csp_hashes_inline_script_and_style_only() -> None:
    page = (b"<html><head><style>b{}</style><script src=x.js></script></head>"
            b"<body><script>go()</script></body></html>")
    csp = page_csp(page).decode()
    # sha256 of "go()" and of "b{}"; the src= script is not inline.
    assert "script-src 'sha256-" in csp and csp.count("'sha256-") == 2
    assert "'unsafe-inline'" not in csp.split("style-src-attr")[0]
    other = page_csp(page.replace(b"go()", b"evil()")).decode()
    assert other != csp
