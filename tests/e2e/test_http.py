"""
The HTTP side on a real ``twistd improto``: statuses of the WebSocket and
fixed routes, the browser security headers, and start-up errors that must
be one line (a bad option, a taken port), each with another user's
session that keeps working where there is a server to keep serving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import browser_fixture, rawhttp
from tests.serverproc import ServerProcess, start_server, twistd_path
from tests.wsclient import chatting

TIMEOUT = 5
PAGE = Path(__file__).resolve().parents[2] / "improto" / "web" / "static" / "index.html"

browser = browser_fixture.browser




@pytest.mark.parametrize("path", ["/ws/alice", "/echo", "/ws/"])
def test_a_plain_get_on_a_websocket_route_is_426(server: ServerProcess, path: str) -> None:
    with chatting(server) as still_chatting:
        response = rawhttp.get(server.port, path)
        assert response.status == 426
        assert response.headers["upgrade"].lower() == "websocket"
        assert response.headers["content-type"].startswith("text/plain")
        assert b"WebSocket" in response.body
        response.close()
        still_chatting()


@pytest.mark.parametrize("path", ["/healthz", "/", "/index.html", "/ws", "/metrics"])
def test_an_upgrade_on_a_fixed_route_is_404_not_a_user(server: ServerProcess, path: str) -> None:
    with chatting(server) as still_chatting:
        response = rawhttp.handshake(server.port, path)
        assert response.status == 404
        response.close()
        health = json.loads(rawhttp.get(server.port, "/healthz").body)
        assert health["sessions"] == 2  # alice and bob; nobody called "healthz"
        still_chatting()


def _csp(value: str) -> dict[str, list[str]]:
    directives = {}
    for part in value.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_has_a_strict_hash_based_csp_and_security_headers(server: ServerProcess) -> None:
    with chatting(server) as still_chatting:
        page = rawhttp.get(server.port, "/")
        assert page.status == 200
        assert page.body == PAGE.read_bytes()
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        csp = _csp(page.headers["content-security-policy"])
        html = PAGE.read_text(encoding="utf-8")
        script = re.search(r"<script>(.*?)</script>", html, re.S)
        style = re.search(r"<style>(.*?)</style>", html, re.S)
        assert script and style
        assert csp["script-src"] == [_sha256(script.group(1))]
        assert csp["style-src"] == [_sha256(style.group(1))]
        assert csp["default-src"] == ["'none'"]
        assert csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in csp["script-src"]

        missing = rawhttp.get(server.port, "/nope")
        assert missing.status == 404
        assert _csp(missing.headers["content-security-policy"])["default-src"] == ["'none'"]
        assert missing.headers["x-frame-options"] == "DENY"
        health = rawhttp.get(server.port, "/healthz")
        assert health.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" not in health.headers  # JSON, not HTML
        still_chatting()


def test_the_page_runs_under_its_csp(browser: Any, server: ServerProcess) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(
            "window.violations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page.goto(server.url + "/")
        page.get_by_test_id("nickname-input").fill("csp")
        page.get_by_test_id("connect-button").click()
        page.wait_for_selector("[data-testid=conn-state][data-state=online]",
                               timeout=browser_fixture.TIMEOUT_MS)
        page.wait_for_selector("[data-testid=member] .avatar", timeout=browser_fixture.TIMEOUT_MS)
        assert page.evaluate("() => window.violations") == []
        # The avatar's colour is a style attribute: CSP lets it through.
        colour = page.evaluate(
            "() => getComputedStyle(document.querySelector('[data-testid=member] .avatar'))"
            ".backgroundColor")
        assert colour not in ("", "rgba(0, 0, 0, 0)")
    finally:
        context.close()


def test_static_pages_only_may_not_be_framed(tmp_path: Path) -> None:
    page = tmp_path / "mine.html"
    page.write_text("<html><script>document.title='mine'</script><body>mine</body></html>")
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    (folder / "index.html").write_text("<html>folder</html>")
    (folder / "sub" / "a.txt").write_text("a")
    single = start_server("--static", str(page))
    many = start_server("--static", str(folder))
    try:
        got = rawhttp.get(single.port, "/")
        assert got.body == page.read_bytes()
        assert got.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert got.headers["x-frame-options"] == "DENY"
        for path in ("/", "/index.html"):
            index = rawhttp.get(many.port, path)
            assert index.body == b"<html>folder</html>"
            assert index.headers["content-security-policy"] == "frame-ancestors 'none'"
        file = rawhttp.get(many.port, "/sub/a.txt")
        assert file.body == b"a" and file.headers["x-content-type-options"] == "nosniff"
        listing = rawhttp.get(many.port, "/sub/")
        assert listing.status == 404  # no directory listings
    finally:
        single.stop()
        many.stop()


def _run_twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "improto", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "args, line",
    [
        (["--static", "/nonexistent"], "twistd improto: --static '/nonexistent': no such file or folder"),
        (["--rate", "-1"], "twistd improto: --rate must not be negative (got '-1')"),
        (["--max-groups", "0"], "twistd improto: --max-groups must be a positive integer (got '0')"),
        (["--max-connections-per-ip", "many"], "twistd improto: --max-connections-per-ip must be a number (got 'many')"),
        (["--echo-path", "echo"], "twistd improto: --echo-path must be one path segment like /echo (got 'echo')"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    result = _run_twistd(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [line]
    assert "Usage" not in result.stdout + result.stderr


def test_static_folder_without_index_html_is_one_line(tmp_path: Path) -> None:
    result = _run_twistd(tmp_path, "--static", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"twistd improto: --static {str(tmp_path)!r}: the folder has no index.html"]


def test_a_taken_port_exits_1_with_one_line_and_the_holder_keeps_serving(
    server: ServerProcess, tmp_path: Path
) -> None:
    with chatting(server) as still_chatting:
        result = _run_twistd(tmp_path, "--port", f"tcp:{server.port}:interface=127.0.0.1")
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith(f"twistd improto: could not start on tcp:{server.port}")
        assert "Address already in use" in line
        assert "Traceback" not in result.stdout
        still_chatting()
