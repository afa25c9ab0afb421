"""The running gateway's log lines: one line per record, always.

Log collectors (journald, syslog, a file tailed into a SIEM) cut records at newlines. Some of
what the gateway logs spans lines: a traceback from ``logger.exception``, and the protocol
libraries' own errors (pymodbus appends a dump of the recent frames, one per line, to a
transaction error). Cut at those newlines, a single fault would become a dozen "records", most
without a level or a logger, and the one-line-per-fault rule of the fault log would mean
nothing. Some logged text also comes from the network (a client's user name, a peer's
address): with a newline in it, a hostile client could write a line of its own into the log.

:class:`OneLineFormatter` writes every record as one line of printable text: a backslash is
written as two, a newline as backslash-n, a carriage return as backslash-r, a tab as
backslash-t, and any other control character as backslash-x and two hex digits, so that the
original text can be recovered exactly (:func:`unescape`).
"""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f]")
_UNESCAPE = re.compile(r"\\(?:([\\nrt])|x([0-9a-f]{2}))")
_UNNAMED = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return _NAMED.get(ch) or f"\\x{ord(ch):02x}"


def _unescape(match: re.Match[str]) -> str:
    named, code = match.groups()
    return _UNNAMED[named] if named else chr(int(code, 16))


class OneLineFormatter(logging.Formatter):
    """``logging.Formatter`` whose output is one line of printable text (module docstring)."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        # The whole line is escaped: logging.Formatter joins the message, the traceback and
        # the stack with newlines, and only those can hold control characters.
        return _ESCAPE.sub(_escape, super().format(record))


def unescape(text: str) -> str:
    """The text that :class:`OneLineFormatter` escaped (for tools that read the log)."""
    return _UNESCAPE.sub(_unescape, text)


def configure(level: int, process: str = "") -> None:
    """Log to stderr at ``level``, one line per record; the protocol libraries at WARNING.
    ``process`` names a child process (the communications process logs ``process=comms``
    after the logger), so that one stream interleaving both still tells them apart.

    asyncua and pymodbus log every node they create and every frame at INFO/DEBUG: that would
    bury the gateway's own fault lines. Their warnings and errors still show.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(
        FORMAT.replace(" %(message)s", f" process={process} %(message)s") if process
        else FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
