"""
Logs for machines: one JSON object a line.

    twistd --logger improto.logs.json_observer -n improto ...

twistd calls :func:`json_observer` for its log observer (``--logger``
replaces ``--logfile``), so every event, twistd's own start-up lines and
improto's included, is written to standard output as one line with the
stable fields ``time`` (ISO 8601, UTC), ``level``, ``namespace`` and
``text`` (the formatted message), then the event's own fields that JSON
can carry (``failure`` events add ``traceback``). docs/operations.md
describes the format.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

#: The fields every line has, in this order.
STABLE_FIELDS = ("time", "level", "namespace", "text")
#: Legacy-log fields that repeat what ``text`` says, or twistd internals.
_SKIPPED = frozenset(("message", "format", "isError", "log_legacy", "why"))


def event_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one event: the stable fields, then its serialisable own fields."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _iso(when),
        # LogLevel's constants are NamedConstants, not LogLevel instances.
        "level": getattr(level, "name", "info") if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in _SKIPPED:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        record[key] = value
    return record


def _iso(when: Any) -> str:
    if not isinstance(when, (int, float)):
        return ""
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_line(event: dict[str, Any]) -> str:
    return json.dumps(event_record(event), ensure_ascii=False, separators=(",", ":")) + "\n"


def json_file_observer(stream: IO[str]) -> ILogObserver:
    """JSON lines to ``stream``."""
    return FileLogObserver(stream, event_line)


def json_observer() -> ILogObserver:
    """
    The ``twistd --logger`` factory: JSON lines to the process's real
    standard output (twistd points ``sys.stdout`` at the log itself).
    """
    return json_file_observer(sys.__stdout__ or sys.stdout)
