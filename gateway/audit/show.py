"""Reading audit records without SQLite tools: ``safety-gateway audit show|tail``.

``show`` prints the records (optionally since a time, of some kinds) and exits; ``tail`` prints
the same and then follows the database, printing new records as the writer commits them, until
interrupted (SIGINT or SIGTERM: it stops at once and exits 0). Times are ISO 8601 UTC. Each
poll opens a read-only connection of its own, so a live writer is never blocked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from gateway.audit.store import read_records

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

    from gateway.audit.chain import Record

POLL_S = 0.2


def iso_utc(at_s: float) -> str:
    """``at_s`` (UTC seconds since the epoch) as ISO 8601 UTC: ``2023-11-14T22:13:20Z``, with
    milliseconds when the time has a fraction."""
    when = dt.datetime.fromtimestamp(at_s, dt.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond // 1000:03d}"
    return text + "Z"


def parse_time(text: str) -> float:
    """An ISO 8601 time (``2026-12-05T12:00:00Z``, ``2026-12-05 12:00``, a date alone; no
    zone means UTC) or seconds since the epoch, as UTC seconds. Raises ``ValueError``."""
    with contextlib.suppress(ValueError):  # not a number: an ISO 8601 time, below
        return float(text)
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-12-05T12:00:00Z) "
                         "nor seconds since the epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def record_json(rec: Record) -> dict[str, Any]:
    """One record for ``--json``: its fields, ``at`` in ISO 8601 UTC, the payload parsed."""
    try:
        payload: Any = json.loads(rec.payload)
    except (ValueError, TypeError):
        payload = rec.payload
    return {"seq": rec.seq, "at": iso_utc(rec.at_s), "at_s": rec.at_s, "kind": rec.kind,
            "actor": rec.actor, "source": rec.source, "payload": payload, "hash": rec.hash}


def record_line(rec: Record) -> str:
    """One record as one line of text: seq, time, kind, actor@source, payload."""
    who = rec.actor + (f"@{rec.source}" if rec.source else "")
    return f"{rec.seq:>8} {iso_utc(rec.at_s)} {rec.kind:<13} {who:<16} {rec.payload}"


def print_records(records: Iterable[Record], as_json: bool, out: TextIO, since_s: float | None,
                  kinds: tuple[str, ...] | None = None) -> int:
    """Print the records at or after ``since_s`` (of ``kinds``, if given); return the last
    seq seen, printed or not (0 if none)."""
    last = 0
    for rec in records:
        last = rec.seq
        if since_s is not None and rec.at_s < since_s:
            continue
        if kinds is not None and rec.kind not in kinds:
            continue
        out.write((json.dumps(record_json(rec), sort_keys=True) if as_json
                   else record_line(rec)) + "\n")
    out.flush()
    return last


def show(db: str | os.PathLike[str], *, since_s: float | None = None,
         kinds: tuple[str, ...] | None = None, as_json: bool = False,
         out: TextIO | None = None) -> int:
    """Print the records; return the last seq read. Raises
    :class:`~gateway.audit.store.NotAuditDatabase`."""
    return print_records(read_records(db, kinds=kinds), as_json, out or sys.stdout, since_s)


def tail(db: str | os.PathLike[str], *, since_s: float | None = None,
         kinds: tuple[str, ...] | None = None, as_json: bool = False,
         out: TextIO | None = None, stop: threading.Event | None = None) -> None:
    """Print the records, then follow the database until ``stop`` is set (by default, until
    SIGINT or SIGTERM). Raises :class:`~gateway.audit.store.NotAuditDatabase` if the
    database cannot be read at the start; a later read failure (the writer replacing the
    file) is retried at the next poll."""
    from gateway.audit.store import AuditError

    out = out or sys.stdout
    own = stop is None
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if own:
        def handler(signum: int, frame: object) -> None:
            stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        # Every record is read (the kind filter is applied here, not in the query), so that
        # ``last`` is the last seq read whatever its kind, and no record is skipped.
        last = print_records(read_records(db), as_json, out, since_s, kinds)
        while not stop.wait(POLL_S):
            try:
                last = max(last, print_records(read_records(db, first_seq=last + 1), as_json,
                                               out, since_s, kinds))
            except AuditError:
                continue
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)

