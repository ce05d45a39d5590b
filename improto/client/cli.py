"""``improto-chat URL``: options, the URL and the token, then the shell."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from improto.client.backoff import Backoff
from improto.client.state import ChatState
from improto.protocol.codec import NATIVE_SUBPROTOCOL

#: RFC 7230 tchar: what a subprotocol entry may consist of.
_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="improto-chat",
        description="A terminal chat client for improto's native dialect. Type /help once connected.",
    )
    p.add_argument("url", help="the chat URL with your nickname, e.g. ws://127.0.0.1:8080/ws/alice")
    p.add_argument(
        "--token", default=os.environ.get("IMPROTO_TOKEN"),
        help="an access token (default: $IMPROTO_TOKEN), sent as ?token= and as the "
        "subprotocol bearer.TOKEN",
    )
    p.add_argument(
        "--max-backoff", type=float, default=30.0, metavar="SECONDS",
        help="the longest wait between reconnect attempts (default: 30)",
    )
    return p


def connection_target(url: str, token: str | None) -> tuple[str, list[str]]:
    """The URL to dial and the subprotocols to offer, the token in both."""
    subprotocols = [NATIVE_SUBPROTOCOL]
    if not token:
        return url, subprotocols
    if not _TOKEN_CHARS.fullmatch(token):
        raise ValueError("the token has characters a WebSocket subprotocol cannot carry")
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query))), [*subprotocols, f"bearer.{token}"]


def nickname_of(url: str) -> str:
    return unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2]) or "?"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        parser().error("the URL must look like ws://HOST:PORT/ws/NICKNAME")
    try:
        url, subprotocols = connection_target(args.url, args.token)
    except ValueError as e:
        parser().error(str(e))
    # Imported here so that --help works without a terminal or the extra installed.
    from improto.client.shell import Shell

    state = ChatState(nickname_of(args.url), parts.netloc, backoff=Backoff(cap=args.max_backoff))
    return asyncio.run(Shell(state, url, subprotocols).run())
