"""
The IO around ``ChatState``: one websockets connection at a time (retried
with the state's backoff) and a prompt_toolkit prompt, both on one asyncio
loop. ``patch_stdout`` makes what is printed scroll above the prompt
instead of through it. Nothing here decides anything the state could.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Sequence
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from improto.client.backoff import FINAL_HTTP_STATUSES
from improto.client.render import format_line
from improto.client.state import ChatState, Effects, Status


class Shell:
    def __init__(self, state: ChatState, url: str, subprotocols: Sequence[str]) -> None:
        self.state = state
        self.url = url
        self.subprotocols = list(subprotocols)
        self.ws: ClientConnection | None = None
        self.quitting = False
        self._sending: set[asyncio.Future[None]] = set()
        self.session: PromptSession[str] = PromptSession(
            message=lambda: state.prompt(),
            bottom_toolbar=lambda: state.toolbar(self.columns()),
            # The toolbar counts down to the next reconnect attempt.
            refresh_interval=0.5,
            # What was typed leaves the screen: a message shows once, when the server took it.
            erase_when_done=True,
        )

    def columns(self) -> int:
        try:
            return self.session.app.output.get_size().columns
        except Exception:  # no terminal yet (or any more)
            return shutil.get_terminal_size().columns

    def apply(self, effects: Effects) -> None:
        # One column spare: a row that ends exactly at the edge makes some
        # terminals wrap an empty row after it.
        width = self.columns() - 1
        for line in effects.lines:
            for row in format_line(line, width):
                print(row, flush=True)
        if self.ws is not None and effects.frames:
            # One task per batch, so a batch (the re-joins) goes out in order.
            task = asyncio.ensure_future(self._send(self.ws, effects.frames))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self.session.app.invalidate()

    async def _send(self, ws: ClientConnection, frames: list[dict[str, Any]]) -> None:
        try:
            for frame in frames:
                await ws.send(json.dumps(frame, ensure_ascii=False))
        except ConnectionClosed:
            pass  # the reader sees the close and marks what was pending

    async def connection_loop(self) -> None:
        """Connect, read until the close, wait out the backoff; until a final refusal."""
        while True:
            self.apply(self.state.connecting())
            code, reason, final = await self._one_connection()
            if self.quitting:
                return
            effects = self.state.on_closed(code, reason, final)
            self.apply(effects)
            if effects.retry_in is None:
                return
            await asyncio.sleep(effects.retry_in)

    async def _one_connection(self) -> tuple[int | None, str, bool]:
        try:
            ws = await connect(
                self.state.url(self.url), subprotocols=self.subprotocols,  # type: ignore[arg-type]
                proxy=None, open_timeout=10, max_size=None,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            return None, f"HTTP {status} {e.response.reason_phrase}", status in FINAL_HTTP_STATUSES
        except ConnectionRefusedError:
            return None, "connection refused", False
        except (OSError, InvalidHandshake, TimeoutError) as e:
            return None, str(e) or type(e).__name__, False
        self.ws = ws
        try:
            async for text in ws:
                if isinstance(text, str):
                    self.apply(self.state.on_frame(text))
        except ConnectionClosed:
            pass
        finally:
            self.ws = None
        return ws.close_code, ws.close_reason or "", False

    async def run(self) -> int:
        """The prompt until /quit, Ctrl-D or a final refusal; the exit status."""
        with patch_stdout(raw=True):
            connection = asyncio.create_task(self.connection_loop())
            connection.add_done_callback(lambda _: self._exit_prompt())
            try:
                while not connection.done():
                    try:
                        line = await self.session.prompt_async()
                    except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C, or a final refusal
                        break
                    effects = self.state.on_input(line)
                    self.apply(effects)
                    if effects.quit:
                        break
            finally:
                # Close first (1000, so the server sees a clean goodbye), then stop the reader.
                self.quitting = True
                if self.ws is not None:
                    await self.ws.close()
                connection.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connection  # a bug in it surfaces here rather than vanishing
        return 1 if self.state.status is Status.CLOSED else 0

    def _exit_prompt(self) -> None:
        if self.session.app.is_running:
            self.session.app.exit(exception=EOFError)
