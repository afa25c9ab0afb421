"""Plant history behind one small interface: a time series of tag values.

A :class:`History` is what every reader returns: strictly increasing times in seconds, one
column per tag in engineering units (the site's units, after scale and offset), NaN where a
tag has no reading at that time. For actuators the column is the command written to the
device (what the envelope judges), where the source knows it.

Readers (all read only):

* historian CSV (:func:`read_csv`): the format is documented in docs/commissioning.md;
* the gateway's flight recordings, JSON lines (:func:`read_recording`, through
  :func:`gateway.forensics.recorder.read_jsonl`): every cycle's snapshot and written command;
* the gateway's audit database (:func:`read_audit`, through
  :func:`gateway.audit.store.read_records`): the ``decision`` records (every cycle that
  differed from nominal and one nominal cycle in ``audit.sample_every_n``);
* a capture of Modbus/TCP traffic (:func:`gateway.commissioning.pcap.read_pcap`).

:func:`load_history` picks the reader by content and joins several sources into one history.
Every problem is a :class:`HistoryError` whose message names the file (and the line, for
text formats); nothing here raises anything else for bad input.
"""

from __future__ import annotations

import csv
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy.typing as npt

    from gateway.config.schema import Site

    F64 = npt.NDArray[np.float64]

__all__ = ["History", "HistoryError", "Recorded", "join", "load_history", "read_audit", "read_csv",
           "read_recording"]

# Cells that mean "no reading at this time" in a historian export.
MISSING = frozenset({"", "nan", "NaN", "NAN", "na", "NA", "n/a", "N/A", "null", "NULL", "None"})
_TRUE = frozenset({"true", "True", "TRUE", "on", "ON"})
_FALSE = frozenset({"false", "False", "FALSE", "off", "OFF"})
TIME_COLUMNS = ("time", "timestamp", "time_s")


class HistoryError(ValueError):
    """A history source that cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class Recorded:
    """What a flight recording holds beyond tag values, row for row with its history: the
    AI's proposal of each cycle (``proposals``, shape (n, len(actuators)), in the recording's
    ``actuators`` order, NaN rows where there was none), why there was none when the AI said
    so (``anomalies``, :class:`gateway.control.proposal.ProposalAnomaly` values, else None),
    and the mode each cycle ended in (``modes``, :class:`gateway.supervisor.modes.Mode`
    values)."""

    actuators: tuple[str, ...]
    proposals: F64
    anomalies: tuple[str | None, ...]
    modes: tuple[str, ...]

    def rows(self, rows: slice) -> Recorded:
        return Recorded(self.actuators, self.proposals[rows], self.anomalies[rows],
                        self.modes[rows])


@dataclass(frozen=True)
class History:
    """Tag values over time.

    ``time_s``: shape (n,), strictly increasing seconds (since the epoch for sources with wall
    clock times, else since an arbitrary origin). ``names``: the column names, tag names of
    the site. ``values``: shape (n, len(names)), engineering units, NaN where a tag has no
    reading at that time. ``sources``: the files it came from, for provenance. ``recorded``:
    the proposals and modes of a single flight recording (None for other sources, and for
    several sources joined).
    """

    time_s: F64
    names: tuple[str, ...]
    values: F64
    sources: tuple[str, ...]
    recorded: Recorded | None = None

    def __post_init__(self) -> None:
        n = self.time_s.shape[0]
        if self.values.shape != (n, len(self.names)):
            raise ValueError(f"values must have shape ({n}, {len(self.names)}), "
                             f"not {self.values.shape}")
        if n > 1 and not bool(np.all(np.diff(self.time_s) > 0)):
            raise ValueError("time_s must be strictly increasing")

    @property
    def n_samples(self) -> int:
        return int(self.time_s.shape[0])

    def column(self, name: str) -> F64:
        """The column of ``name`` (KeyError if the history has none)."""
        return self.values[:, self.names.index(name)]

    def split(self, fraction: float) -> tuple[History, History]:
        """The history cut in time: the first ``1 - fraction`` of its span and the rest (the
        held-back part). ValueError unless 0 <= fraction < 1."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"holdout fraction must be in [0, 1), not {fraction}")
        if self.n_samples == 0 or fraction == 0.0:
            return self, self._rows(slice(0, 0))
        t0, t1 = float(self.time_s[0]), float(self.time_s[-1])
        cut = int(np.searchsorted(self.time_s, t1 - fraction * (t1 - t0), side="right"))
        return self._rows(slice(0, cut)), self._rows(slice(cut, None))

    def _rows(self, rows: slice) -> History:
        return History(self.time_s[rows], self.names, self.values[rows], self.sources,
                       None if self.recorded is None else self.recorded.rows(rows))


# --------------------------------------------------------------------------- CSV

def parse_time(text: str) -> float:
    """Seconds for one cell of the time column: a number (seconds, e.g. since the epoch), or an
    ISO 8601 date and time (``2026-12-05T10:00:00Z``, ``2026-12-05 10:00:00.250+01:00``; no
    zone means UTC). ValueError otherwise."""
    text = text.strip()
    value = _number(text)
    if value is not None:
        if not math.isfinite(value):
            raise ValueError(f"time {text!r} is not finite")
        return value
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"time {text!r} is neither seconds nor an ISO 8601 date and time "
                         "(e.g. 2026-12-05T10:00:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _number(text: str) -> float | None:
    """``float``'s own grammar (1e3, nan, inf), or None when the text is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _cell(text: str) -> float:
    if text in MISSING:
        return math.nan
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    value = float(text)
    if math.isnan(value):
        return math.nan
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return value


def read_csv(path: Path) -> History:
    """Read a historian export: a header row whose first column is the time (``time``,
    ``timestamp`` or ``time_s``) and whose other columns are tag names, then one row per time.

    Raises :class:`HistoryError` (``file:line: ...``) for an unreadable file, a missing or
    repeated column name, a row of the wrong length, a cell that is not a number (or empty /
    ``nan`` for a missing reading, ``true``/``false`` for a coil), or a time that does not
    increase.
    """
    name = str(path)
    try:
        src = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise HistoryError(f"{name}: cannot read: {exc.strerror or exc}") from None
    times: list[float] = []
    lines: list[int] = []
    chunks: list[npt.NDArray[np.float64]] = []
    rows: list[list[float]] = []
    tags: list[str] = []
    with src:
        reader = csv.reader(src)
        try:
            header = next(reader, None)
            if header is None:
                raise HistoryError(f"{name}:1: empty file (expected a header row: time,tag,...)")
            header = [h.strip() for h in header]
            if not header or header[0].lower() not in TIME_COLUMNS:
                raise HistoryError(f"{name}:1: the first column must be the time, named one of "
                                   f"{', '.join(TIME_COLUMNS)}; found {header[0]!r}")
            tags = header[1:]
            if not tags:
                raise HistoryError(f"{name}:1: no tag columns after the time column")
            seen: set[str] = set()
            for tag in tags:
                if not tag:
                    raise HistoryError(f"{name}:1: a column has no name")
                if tag in seen:
                    raise HistoryError(f"{name}:1: column {tag!r} appears twice")
                seen.add(tag)
            width = len(header)
            last = -math.inf
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != width:
                    raise HistoryError(f"{name}:{line}: {len(row)} cells, the header has {width}")
                try:
                    t = parse_time(row[0])
                except ValueError as exc:
                    raise HistoryError(f"{name}:{line}: {exc}") from None
                if not t > last:
                    raise HistoryError(f"{name}:{line}: time {row[0].strip()!r} does not "
                                       "increase (rows must be in time order, one per time)")
                last = t
                try:
                    # The fast path, float() in C: numbers and "nan". Anything else (an empty
                    # cell, NA, true/false, or an error) takes the cell-by-cell path.
                    values = list(map(float, row[1:]))
                except ValueError:
                    values = _cells(name, line, tags, row[1:])
                times.append(t)
                lines.append(line)
                rows.append(values)
                if len(rows) == _CHUNK:  # bounded memory: a day of 100 tags as floats, not lists
                    chunks.append(np.array(rows, dtype=np.float64))
                    rows = []
        except csv.Error as exc:
            raise HistoryError(f"{name}:{reader.line_num}: not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise HistoryError(f"{name}: not UTF-8 text: {exc.reason}") from None
    if rows:
        chunks.append(np.array(rows, dtype=np.float64))
    if not chunks:
        raise HistoryError(f"{name}: no data rows after the header")
    table = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    infinite = np.isinf(table)
    if infinite.any():
        r, c = (int(i) for i in np.argwhere(infinite)[0])
        raise HistoryError(f"{name}:{lines[r]}: column {tags[c]!r}: {float(table[r, c])!r} is "
                           "not a finite number (leave the cell empty for a missing reading)")
    return History(np.array(times, dtype=np.float64), tuple(tags), table, (name,))


_CHUNK = 4096


def _cells(name: str, line: int, tags: Sequence[str], cells: Sequence[str]) -> list[float]:
    values: list[float] = []
    for tag, cell in zip(tags, cells, strict=True):
        try:
            values.append(_cell(cell.strip()))
        except ValueError:
            raise HistoryError(f"{name}:{line}: column {tag!r}: {cell.strip()!r} is not a "
                               "finite number (leave the cell empty for a missing reading)"
                               ) from None
    return values


# --------------------------------------------------------------------------- flight recordings

def read_recording(path: Path) -> History:
    """A flight recording (JSON lines, :mod:`gateway.forensics.recorder`): per cycle, the
    sensors the supervisor was given (NaN where a reading was of bad quality) and the command
    it decided (what was written). HistoryError for a file that is not a recording, or one
    without its header (the tag names)."""
    from gateway.forensics.recorder import RecordingError, read_jsonl

    try:
        rec = read_jsonl(path)
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except RecordingError as exc:
        raise HistoryError(str(exc)) from None
    if rec.info is None:
        raise HistoryError(f"{path}: a flight recording without its header line: the tag "
                           "names are unknown")
    if not rec.frames:
        raise HistoryError(f"{path}: the recording holds no cycles")
    names = (*rec.info.sensor_names, *rec.info.actuator_names)
    n_a = len(rec.info.actuator_names)
    times: list[float] = []
    rows: list[npt.NDArray[np.float64]] = []
    proposals: list[npt.NDArray[np.float64]] = []
    modes: list[str] = []
    anomalies: list[str | None] = []
    none = np.full(n_a, np.nan)
    last = -math.inf
    for frame in rec.frames:
        if not frame.now_s > last:
            continue  # a repeated step time: the first cycle at that time stands
        last = frame.now_s
        sensors = np.where(frame.snapshot.good, frame.snapshot.sensors, np.nan)
        times.append(frame.now_s)
        rows.append(np.concatenate([sensors, frame.decision.command]))
        values = frame.proposal.values if frame.proposal is not None else None
        proposals.append(np.asarray(values, dtype=np.float64)
                         if values is not None and np.shape(values) == (n_a,) else none)
        anomaly = frame.proposal.anomaly if frame.proposal is not None else None
        anomalies.append(None if anomaly is None else str(anomaly.value))
        modes.append(str(frame.decision.mode.value))
    return History(np.array(times), names, np.vstack(rows), (str(path),),
                   Recorded(tuple(rec.info.actuator_names), np.vstack(proposals),
                            tuple(anomalies), tuple(modes)))


# --------------------------------------------------------------------------- audit database

def read_audit(path: Path, sensor_order: Sequence[str]) -> History:
    """The ``decision`` records of an audit database (:mod:`gateway.audit.store`): the
    sampled and the non-nominal cycles, each with its sensors and written command. Only a
    sample of the cycles, so rates and steps between them are not per cycle: prefer a
    recording or a historian export for those (the report says how thin the data is).

    ``sensor_order`` is the site's sensor order: a record's payload is canonical JSON (its
    keys sorted), and its reading qualities (``good``) are listed in the site's order.
    HistoryError for a file that is not an audit database, one without decision records, or
    records whose sensors are not ``sensor_order``'s."""
    from gateway.audit.store import AuditError, read_records

    times: list[float] = []
    rows: list[list[float]] = []
    order = tuple(sensor_order)
    actuator_names: tuple[str, ...] | None = None
    last = -math.inf
    try:
        for record in read_records(path, kinds=("decision",)):
            try:
                data = record.data()
                at_s = float(data["at_s"])
                sensors: dict[str, float] = data["sensors"]
                command: dict[str, float] = data["command"]
                good = list(data.get("good") or [True] * len(sensors))
                if set(sensors) != set(order) or len(good) != len(order):
                    raise ValueError(f"its sensors {sorted(sensors)} are not the site's "
                                     f"{sorted(order)}")
                if actuator_names is None:
                    actuator_names = tuple(sorted(command))
                if tuple(sorted(command)) != actuator_names:
                    raise ValueError("the actuators changed within the database")
                row = [float(sensors[n]) if g else math.nan
                       for n, g in zip(order, good, strict=True)]
                row += [float(command[n]) for n in actuator_names]
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise HistoryError(f"{path}: audit record {record.seq}: not a decision "
                                   f"record of this site ({exc})") from None
            if not at_s > last:
                continue
            last = at_s
            times.append(at_s)
            rows.append(row)
    except AuditError as exc:
        raise HistoryError(f"{path}: {exc}") from None
    except sqlite3.Error as exc:
        raise HistoryError(f"{path}: cannot read the audit database: {exc}") from None
    if not rows or actuator_names is None:
        raise HistoryError(f"{path}: the audit database holds no decision records")
    return History(np.array(times), (*order, *actuator_names), np.array(rows), (str(path),))


# --------------------------------------------------------------------------- any source

def _kind(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(b"SQLite format 3"):
        return "audit"
    from gateway.commissioning.pcap import is_pcap

    if is_pcap(head):
        return "pcap"
    if head.lstrip().startswith(b"{"):
        return "recording"
    return "csv"


def read_any(path: Path, site: Site) -> History:
    """Read ``path`` with the reader its content asks for: an SQLite file is an audit
    database, a pcap or pcapng file a capture of Modbus traffic
    (:func:`gateway.commissioning.pcap.read_pcap`), a file starting with ``{`` a flight
    recording, anything else a CSV export. ``site`` says what the tags are."""
    kind = _kind(path)
    if kind == "audit":
        return read_audit(path, [t.name for t in site.sensors])
    if kind == "pcap":
        from gateway.commissioning.pcap import read_pcap

        return read_pcap(path, site)
    if kind == "recording":
        return read_recording(path)
    return read_csv(path)


def join(histories: Iterable[History]) -> History:
    """Several histories as one: the union of their columns (NaN where a source has none),
    rows in time order. HistoryError if two sources have a reading at the same time (the same
    file given twice, or overlapping exports)."""
    parts = list(histories)
    if len(parts) == 1:
        return parts[0]
    names: list[str] = []
    for part in parts:
        names += [n for n in part.names if n not in names]
    n = sum(p.n_samples for p in parts)
    times = np.empty(n)
    values = np.full((n, len(names)), np.nan)
    row = 0
    for part in parts:
        cols = [names.index(c) for c in part.names]
        times[row:row + part.n_samples] = part.time_s
        values[row:row + part.n_samples, cols] = part.values
        row += part.n_samples
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    if n > 1 and not bool(np.all(np.diff(times) > 0)):
        at = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise HistoryError(f"{', '.join(s for p in parts for s in p.sources)}: two sources "
                           f"have readings at the same time ({times[at]!r} s): overlapping "
                           "histories cannot be joined")
    return History(times, tuple(names), values, tuple(s for p in parts for s in p.sources))


def load_history(paths: Sequence[str | Path], site: Site) -> History:
    """Read every source and join them (see :func:`read_any` and :func:`join`)."""
    if not paths:
        raise HistoryError("no history source given")
    return join(read_any(Path(p), site) for p in paths)
