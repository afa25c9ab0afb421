"""The running gateway's log lines: one line per record, the original text recoverable."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from gateway.runtime.logs import FORMAT, OneLineFormatter, unescape

PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=[A-Z]+ logger=\S+ ")
# What pymodbus logs when an answer's transaction id does not match (its frame dump).
PYMODBUS_ERROR = ("ERROR: request ask for transaction_id=565 but got id=564, Skipping.\n"
                  ">>>>> recv: 0x2 0x2f 0x0 0x0 0x0 0x6 0x1 0x10 extra data: \n"
                  ">>>>> send: 0x2 0x30 0x0 0x0 0x0 0xb 0x1 0x10 0x0 0x0")


def _record(message: str, *, exc: bool = False, stack: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("gateway.runtime", logging.ERROR, __file__, 1, message, None,
                               exc_info)
    if stack:
        record.stack_info = "Stack (most recent call last):\n  File x\n    y()"
    return record


def test_a_multiline_library_error_with_a_traceback_is_one_line_that_reads_back():
    record = _record(PYMODBUS_ERROR, exc=True, stack=True)
    plain = logging.Formatter(FORMAT).format(record)
    line = OneLineFormatter().format(record)
    assert plain.count("\n") >= 5  # what the standard formatter would have written
    assert "\n" not in line and "\r" not in line
    assert PREFIX.match(line), line
    assert "transaction_id=565" in line and "ValueError: bad\\nvalue" in line
    assert unescape(line) == plain


def test_a_hostile_client_cannot_write_a_line_of_its_own():
    user = "eve\n2026-11-26 21:00:00,000 level=INFO logger=gateway.runtime fault=x cleared\r"
    line = OneLineFormatter().format(_record(f"login refused for user {user}"))
    assert len(line.splitlines()) == 1
    assert line.count("level=") == 2  # the forged one is inside the message, on our line
    assert line.endswith("cleared\\r")


@given(st.text())
def test_any_message_is_one_printable_line_and_reads_back_exactly(text):
    line = OneLineFormatter("%(message)s").format(_record(text))
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in line)
    assert unescape(line) == text


def test_the_configured_process_logs_one_line_per_record():
    code = (
        "import logging\n"
        "from gateway.runtime import logs\n"
        "logs.configure(logging.INFO)\n"
        "log = logging.getLogger('gateway.runtime')\n"
        "log.info('started')\n"
        f"logging.getLogger('pymodbus.logging').error({PYMODBUS_ERROR!r})\n"
        "logging.getLogger('pymodbus.logging').info('hidden: below WARNING')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    log.exception('handler raised')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    lines = out.stderr.splitlines()
    assert len(lines) == 3, out.stderr
    assert all(PREFIX.match(line) for line in lines), out.stderr
    assert "logger=pymodbus.logging" in lines[1] and "ZeroDivisionError" in lines[2]
