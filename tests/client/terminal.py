"""
A real terminal for tests: the program runs on a pty, and pyte (a VT100
emulator) keeps the screen it draws, so a test reads what a user would see.

pyte answers the program's cursor-position requests (prompt_toolkit sends
them) through ``write_process_input``, as a terminal would.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import threading
import time
from collections.abc import Callable, Sequence

import pyte

#: Long enough for a loaded 2-core machine; tests poll, never sleep.
DEADLINE = 30.0


class _Screen(pyte.Screen):
    def __init__(self, columns: int, lines: int, answer: Callable[[str], None]) -> None:
        super().__init__(columns, lines)
        self._answer = answer

    def write_process_input(self, data: str) -> None:
        self._answer(data)


class Terminal:
    """``argv`` on a ``columns`` x ``lines`` pty, its output fed to a pyte screen."""

    def __init__(
        self, argv: Sequence[str], columns: int = 80, lines: int = 24,
        env: dict[str, str] | None = None, cwd: str | None = None,
    ) -> None:
        self.columns, self.lines = columns, lines
        self._lock = threading.Lock()
        self._screen = _Screen(columns, lines, self._write)
        self._stream = pyte.Stream(self._screen)
        #: Every row that ever scrolled off the top, so nothing printed is missed.
        self.history: list[str] = []
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec the program on the pty
            try:
                if cwd:
                    os.chdir(cwd)
                os.execvpe(argv[0], list(argv), {**os.environ, "TERM": "xterm", **(env or {})})
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self._screen.index = self._indexed(self._screen.index)  # type: ignore[method-assign]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.exit_status: int | None = None

    def _indexed(self, index: Callable[[], None]) -> Callable[[], None]:
        def keep_top_row() -> None:
            if self._screen.cursor.y == self._screen.lines - 1:
                self.history.append(self._screen.display[0].rstrip())
            index()
        return keep_top_row

    def _write(self, data: str) -> None:
        try:
            os.write(self.fd, data.encode())
        except OSError:
            pass

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._stream.feed(data.decode("utf-8", errors="replace"))

    def screen(self) -> list[str]:
        with self._lock:
            return [row.rstrip() for row in self._screen.display]

    def text(self) -> str:
        """Everything printed so far: the scrolled-off rows, then the screen."""
        with self._lock:
            rows = list(self.history) + [row.rstrip() for row in self._screen.display]
        return "\n".join(rows)

    def type(self, text: str) -> None:
        self._write(text)

    def line(self, text: str) -> None:
        self._write(text + "\r")

    def wait_for(self, predicate: Callable[[str], bool], what: str, deadline: float = DEADLINE) -> str:
        """Poll the screen until ``predicate(text)``; fail with the screen if it never holds."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.text()
            if predicate(text):
                return text
            if self.poll() is not None and not predicate(self.text()):
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {what}; the terminal shows:\n{self.text()}")

    def wait_text(self, needle: str, deadline: float = DEADLINE) -> str:
        """Wait for ``needle``, matched with white space collapsed so a wrapped row still matches."""
        wanted = " ".join(needle.split())
        return self.wait_for(lambda text: wanted in " ".join(text.split()), repr(needle), deadline)

    def poll(self) -> int | None:
        if self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
        return self.exit_status

    def wait_exit(self, deadline: float = DEADLINE) -> int:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            status = self.poll()
            if status is not None:
                return status
            time.sleep(0.05)
        raise AssertionError(f"the program did not exit; the terminal shows:\n{self.text()}")

    def close(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.wait_exit(10)
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        try:
            os.close(self.fd)
        except OSError:
            pass
