"""
Browser helpers: headless Chromium driven by Playwright, a module-wide
``twistd improto`` (from :mod:`tests.serverproc`), and a tiny page server.

Use it from another test module with::

    from tests import browser_fixture

    improto_server = browser_fixture.improto_server   # a module-scoped fixture

    def test_something(improto_server):
        improto_server.url      # "http://127.0.0.1:PORT"
        improto_server.ws_url("alice")

or call :func:`tests.serverproc.start_server` directly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.serverproc import ServerProcess, serving

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Upper bound for every wait in the browser tests, in milliseconds.
TIMEOUT_MS = 10_000

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser fixture reports it as a failure
    Page = Any  # type: ignore[misc,assignment]
    expect = None  # type: ignore[assignment]
else:
    expect.set_options(timeout=TIMEOUT_MS)


RunningServer = ServerProcess


@pytest.fixture(scope="module")
def improto_server() -> Iterator[ServerProcess]:
    """
    One ``twistd improto`` per test module; fails the module if it dies.
    It allows the pages of :func:`serve_pages` (another loopback origin,
    ``http://127.0.0.1:<their port>``), as a real deployment would list the
    sites whose pages may connect.
    """
    yield from serving("--allowed-origins", f"http://{HOST}:*")


def serve_pages(pages: dict[str, bytes], host: str = HOST) -> tuple[str, Callable[[], None]]:
    """
    Serve ``{"/path.html": body}`` as HTML from a thread on ``host``; returns
    ``(base_url, shutdown)``. A real loopback origin, unlike a routed page:
    Chromium's local-network checks block a routed page's loopback WebSockets.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = pages.get(self.path.split("?", 1)[0])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="serve_pages", daemon=True)
    thread.start()

    def shutdown() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

    return f"http://{host}:{httpd.server_address[1]}", shutdown


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless; fails (never skips) when it is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get update && apt-get install -y chromium). "
            "Do not use 'playwright install'; it cannot download here.",
            pytrace=False,
        )
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the whole module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The browser tests need the 'playwright' package (pip install playwright).",
                    pytrace=False)
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
