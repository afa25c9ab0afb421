"""History sources: the historian CSV format (times, missing cells, errors as file:line), the
flight recording and audit database readers, joining and splitting."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pytest

import gateway.envelope
from gateway.audit import AuditLog
from gateway.commissioning.sources import (
    HistoryError,
    join,
    load_history,
    read_any,
    read_csv,
)
from gateway.config import load_config
from gateway.forensics.recorder import FlightRecorder, RecordingInfo, write_jsonl
from gateway.runtime.records import Records
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Decision, Snapshot
from tests.commissioning.conftest import WATER

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site




SITE = load_config(WATER)


def write(tmp_path: Path, text: str, name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_times_missing_cells_and_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, "time,level,drain_valve\n"
                           "2026-12-05T10:00:00Z,2.5,false\n"
                           "2026-12-05 10:00:01,,true\n"          # no zone: UTC
                           "2026-12-05T11:00:02+01:00,nan,\n")    # 10:00:02 UTC
    h = read_csv(path)
    t0 = datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC).timestamp()
    assert h.time_s.tolist() == [t0, t0 + 1, t0 + 2]
    assert h.names == ("level", "drain_valve")
    assert h.values[0].tolist() == [2.5, 0.0]
    assert math.isnan(h.values[1, 0]) and h.values[1, 1] == 1.0
    assert np.isnan(h.values[2]).all()
    seconds = read_csv(write(tmp_path, "time_s,level\n0,1\n0.5,2\n", "s.csv"))
    assert seconds.time_s.tolist() == [0.0, 0.5]


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("", 1, "empty file"),
    ("when,level\n0,1\n", 1, "first column must be the time"),
    ("time\n0\n", 1, "no tag columns"),
    ("time,level,level\n0,1,2\n", 1, "appears twice"),
    ("time,level\n0,1\n1,2,3\n", 3, "3 cells, the header has 2"),
    ("time,level\n0,1\n1,2\n2,high\n", 4, "column 'level': 'high' is not a finite number"),
    ("time,level\n0,1\n1,inf\n", 3, "column 'level': inf is not a finite number"),
    ("time,level\n0,1\n1,-Infinity\n", 3, "column 'level': -inf is not a finite number"),
    ("time,level\n0,1\n1,2\n1,3\n", 4, "does not increase"),
    ("time,level\nyesterday,1\n", 2, "neither seconds nor an ISO 8601"),
])
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, line: int,
                                       fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(HistoryError) as err:
        read_csv(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert fragment in str(err.value)


def test_csv_without_rows_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no data rows"):
        read_csv(write(tmp_path, "time,level\n"))
    with pytest.raises(HistoryError, match="cannot read"):
        load_history([tmp_path / "nope.csv"], SITE)
    with pytest.raises(HistoryError, match="no history source"):
        load_history([], SITE)


def test_join_takes_the_union_of_columns_and_refuses_overlaps(tmp_path: Path) -> None:
    a = write(tmp_path, "time,level\n0,1\n2,3\n", "a.csv")
    b = write(tmp_path, "time,drain_valve\n1,0\n3,1\n", "b.csv")
    h = load_history([a, b], SITE)
    assert h.time_s.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert h.names == ("level", "drain_valve")
    assert np.array_equal(h.values, np.array([[1, np.nan], [np.nan, 0], [3, np.nan],
                                              [np.nan, 1]]), equal_nan=True)
    with pytest.raises(HistoryError, match="same time"):
        join([read_csv(a), read_csv(a)])


def test_split_keeps_the_last_fraction_of_the_span_apart(tmp_path: Path) -> None:
    h = read_csv(write(tmp_path, "time,level\n" + "".join(f"{t},{t}\n" for t in range(101))))
    first, held = h.split(0.25)
    assert first.time_s[-1] == 75.0 and held.time_s[0] == 76.0
    assert first.n_samples + held.n_samples == 101
    with pytest.raises(ValueError, match="holdout"):
        h.split(1.0)


def _steps(site: Site, n: int) -> list[tuple[float, Snapshot, Decision]]:
    """``n`` supervisor steps on a fixed snapshot whose level moves a little each step."""
    env = gateway.envelope.compile(site)
    initial = np.array([40.0, 30.0, 0.0])
    sup = Supervisor(site, env, initial, 0.0)
    out = []
    for k in range(n):
        now = 0.1 * (k + 1)
        snap = Snapshot(np.array([2.5 + 0.001 * k, 0.02, 0.004, float(k)]),
                        np.array([True, True, k % 7 != 3, True]), np.zeros(4))
        out.append((now, snap, sup.step(snap, None, now)))
    return out


def test_flight_recording_gives_readings_and_written_commands(tmp_path: Path,
                                                              water_site: Site) -> None:
    steps = _steps(water_site, 30)
    info = RecordingInfo.of(water_site, 0.0, np.array([40.0, 30.0, 0.0]))
    rec = FlightRecorder(60.0, 0.1, info)
    for now, snap, decision in steps:
        rec.record_cycle(now, snap, None, None, decision)
    path = tmp_path / "rec.jsonl"
    write_jsonl(path, rec.frames(), info)
    h = read_any(path, SITE)
    assert h.names == ("level", "inflow_rate", "demand", "uptime_s", "inflow_valve",
                       "outflow_pump", "drain_valve")
    assert h.time_s.tolist() == [now for now, _, _ in steps]
    for row, (_, snap, decision) in zip(h.values, steps, strict=True):
        expected_sensors = np.where(snap.good, snap.sensors, np.nan)
        assert np.array_equal(row[:4], expected_sensors, equal_nan=True)
        assert row[4:].tolist() == decision.command.tolist()


def test_bad_recording_is_a_located_error(tmp_path: Path) -> None:
    path = write(tmp_path, '{"format": "something-else", "version": 1}\n', "r.jsonl")
    with pytest.raises(HistoryError, match=rf"^{path}:1: "):
        read_any(path, SITE)


def test_audit_database_gives_the_decision_records(tmp_path: Path, water_site: Site) -> None:
    steps = _steps(water_site, 250)
    db = tmp_path / "audit.db"
    with AuditLog(db) as audit:
        records = Records(water_site, audit)
        for _, snap, decision in steps:
            records.cycle(snap, None, None, decision)
    h = read_any(db, SITE)
    # The payload's keys are sorted (canonical JSON); the sensors come back in site order.
    assert h.names == ("level", "inflow_rate", "demand", "uptime_s", "drain_valve",
                       "inflow_valve", "outflow_pump")
    order = [2, 0, 1]
    by_time = {now: (snap, decision) for now, snap, decision in steps}
    # The bad demand reading every 7th step takes the site to SAFE_STOP: from then on every
    # cycle is non-nominal and recorded (the first three were nominal and not sampled).
    assert h.n_samples == 247
    assert int(np.isnan(h.values[:, 2]).sum()) == sum(
        1 for now, snap, _ in steps if now in set(h.time_s.tolist()) and not snap.good[2])
    for t, row in zip(h.time_s.tolist(), h.values, strict=True):
        snap, decision = by_time[t]
        assert np.array_equal(row[:4], np.where(snap.good, snap.sensors, np.nan),
                              equal_nan=True)
        command = decision.command.tolist()
        assert row[4:].tolist() == [command[i] for i in order]


def test_not_an_audit_database(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(HistoryError, match=str(path)):
        read_any(path, SITE)
