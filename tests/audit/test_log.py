"""The writer: append/flush/acknowledge, reopening, refusing files it must not write, real
storage faults (a file-size limit makes SQLite's writes fail with a real I/O error; the file
deleted; the file replaced), the memory bound and its gap record, head export to real sinks,
and the ``audit`` commands."""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.server
import json
import os
import resource
import signal
import socket
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from gateway.audit import (
    AuditError,
    AuditLog,
    Kind,
    export_head,
    parse_sink,
    read_records,
    verify,
)
from gateway.audit.cli import add_parser
from gateway.audit.export import FileSink, HeadSink, HttpSink, PrintSink, SyslogSink

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

FAST: dict[str, Any] = {"flush_interval_s": 0.01, "retry_initial_s": 0.01, "retry_max_s": 0.05}


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


@contextlib.contextmanager
def disk_full(limit_bytes: int = 4096) -> Iterator[None]:
    """Every write past ``limit_bytes`` into any file of this process fails (EFBIG): SQLite
    reports a real I/O error, as on a full or failing disk. Works as root, unlike chmod."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


class Alarms:
    def __init__(self) -> None:
        self.raised: list[str] = []
        self.cleared: list[str] = []

    def kwargs(self) -> dict[str, Any]:
        return {"on_alarm": self.raised.append, "on_clear": self.cleared.append}


def payloads(path: Path, kind: str | None = None) -> list[Any]:
    return [r.data() for r in read_records(path) if kind is None or r.kind == kind]


# ---------------------------------------------------------------- normal operation


def append_three(audit: Any) -> tuple[int, str]:
    """Three records of known kinds, actors and sources (an idle() between the first two),
    flushed; the head after them. ``audit`` is an AuditLog or an AuditProcess whose clock
    gives 100, 101, 102."""
    audit.append("decision", {"cycle": 1})
    audit.idle()
    audit.append(Kind.OPERATOR, {"action": "reset", "result": "ok"}, actor="alice",
                 source="10.0.0.7:51000")
    audit.append("incident.note", {"text": "x"})  # a module's own kind
    assert audit.flush(10)
    assert audit.acknowledged_seq == 3
    assert audit.alarm is None
    head: tuple[int, str] = audit.head()
    return head


def check_three(path: Path, head: tuple[int, str]) -> None:
    """The database holds append_three's records, times and all, and its chain ends at
    ``head``."""
    records = list(read_records(path))
    assert [(r.seq, r.at_s, r.kind, r.actor, r.source) for r in records] == [
        (1, 100.0, "decision", "gateway", ""),
        (2, 101.0, "operator", "alice", "10.0.0.7:51000"),
        (3, 102.0, "incident.note", "gateway", "")]
    result = verify(path)
    assert result.ok
    assert (result.last_seq, result.last_hash) == head == (3, records[-1].hash)


def test_append_flush_and_acknowledge(tmp_path):
    path = tmp_path / "audit.db"
    clock = iter([100.0, 101.0, 102.0])
    with AuditLog(path, clock=lambda: next(clock), **FAST) as audit:
        assert audit.head()[0] == 0
        head = append_three(audit)
        assert audit.pending == 0
    check_three(path, head)


def check_rejects_bugs(audit: Any) -> None:
    """A bad kind, payload or actor raises at once, in the caller (AuditLog or
    AuditProcess)."""
    with pytest.raises(ValueError, match="lowercase name"):
        audit.append("Bad Kind", {})
    with pytest.raises(TypeError, match="mapping"):
        audit.append("note", [1, 2])
    with pytest.raises(TypeError, match="actor"):
        audit.append("note", {}, actor=None)


def test_append_rejects_bugs_at_once(tmp_path):
    with AuditLog(tmp_path / "audit.db", **FAST) as audit:
        check_rejects_bugs(audit)


def test_unserialisable_payload_is_recorded_not_lost(tmp_path):
    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST) as audit:
        audit.append("note", {"thing": object(), "x": float("nan")})
        audit.append("note", {"x": float("nan"), "y": [float("-inf")]})
        assert audit.flush(10)
    first, second = payloads(path)
    assert "unserialisable_payload" in first
    assert "object" in first["error"] or "object" in first["unserialisable_payload"]
    assert second == {"x": "nan", "y": ["-inf"]}
    assert verify(path).ok


def test_oversized_payload_is_cut_and_says_so(tmp_path):
    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST) as audit:
        audit.append("note", {"blob": "x" * (2 << 20)})
        assert audit.flush(10)
    (record,) = payloads(path)
    assert record["original_chars"] > 2 << 20
    assert len(record["truncated_payload"]) == 4096


def test_reopen_continues_the_chain(tmp_path):
    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST) as audit:
        for k in range(5):
            audit.append("decision", {"k": k})
        assert audit.flush(10)
        head = audit.head()
    with AuditLog(path, **FAST) as audit:
        assert audit.head() == head
        assert audit.acknowledged_seq == 5
        assert audit.exported_head().seq == 5
        for k in range(5, 10):
            audit.append("decision", {"k": k})
        assert audit.flush(10)
    assert verify(path).records == 10
    assert [p["k"] for p in payloads(path)] == list(range(10))
    records = list(read_records(path, first_seq=5, last_seq=6))
    assert records[1].prev_hash == records[0].hash == head[1]


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST), pytest.raises(AuditError, match="already open"):
        AuditLog(path, **FAST)


def test_files_that_are_not_audit_databases_are_refused_untouched(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 200)
    with pytest.raises(AuditError, match="not an audit database"):
        AuditLog(junk, **FAST)
    assert junk.read_bytes() == b"not a database" * 200
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(AuditError, match="not an audit database"):
        AuditLog(other, **FAST)
    conn = sqlite3.connect(other)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_a_broken_tail_is_refused(tmp_path):
    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST) as audit:
        for k in range(3):
            audit.append("decision", {"k": k})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("UPDATE records SET payload = '{}' WHERE seq = 3")
    conn.close()
    with pytest.raises(AuditError, match="tail is broken"):
        AuditLog(path, **FAST)


# ---------------------------------------------------------------- storage faults


def test_disk_failure_keeps_control_going_and_records_the_fault(tmp_path):
    path = tmp_path / "audit.db"
    alarms = Alarms()
    audit = AuditLog(path, **FAST, **alarms.kwargs())
    try:
        for k in range(10):
            audit.append("decision", {"k": k})
        assert audit.flush(10)
        with disk_full():
            slowest = 0.0
            # What is timed is waiting on the disk. A full collection of pytest's own heap
            # took 670 ms here after the adapter tests and once made an append look slow
            # (0.56 s in CI), so the cycle collector stays off while appending.
            gc.disable()
            try:
                t0 = time.perf_counter()
                for k in range(10, 2010):
                    t1 = time.perf_counter()
                    audit.append("decision", {"k": k, "command": [1.0, 2.0, 3.0]})
                    slowest = max(slowest, time.perf_counter() - t1)
                    if k % 100 == 0:
                        time.sleep(0.002)  # a control loop, not a tight burst
                appending_s = time.perf_counter() - t0
            finally:
                gc.enable()
            assert wait_for(lambda: audit.alarm is not None)
            assert not audit.flush(0.2)  # nothing can be acknowledged...
            assert audit.pending == 2000  # ...and nothing is lost
            assert audit.acknowledged_seq == 10
            time.sleep(0.3)  # many retries meanwhile: still one alarm
            assert len(alarms.raised) == 1
            assert "audit storage failing" in alarms.raised[0]
            alarm = audit.alarm or ""
            assert "disk I/O error" in alarm or "full" in alarm
        # Appending never waited on the disk (generous bounds: shared, noisy machine).
        assert appending_s < 2.0
        assert slowest < 0.5
        assert audit.flush(10)
        assert wait_for(lambda: audit.alarm is None)
        assert len(alarms.cleared) == 1
        assert len(alarms.raised) == 1
    finally:
        assert audit.close()
    result = verify(path)
    assert result.ok
    records = list(read_records(path))
    decisions = [r.data()["k"] for r in records if r.kind == "decision"]
    assert decisions == list(range(2010))
    faults = [r.data() for r in records if r.kind == "alarm"]
    assert len(faults) == 1
    assert faults[0]["alarm"] == "audit_storage_fault"
    assert faults[0]["state"] == "recovered"
    assert faults[0]["records_lost_in_episode"] == 0
    assert faults[0]["attempts"] >= 2
    assert "disk I/O error" in faults[0]["first_error"] or "full" in faults[0]["first_error"]


def test_beyond_the_bound_records_are_counted_and_the_gap_is_in_the_chain(tmp_path):
    path = tmp_path / "audit.db"
    alarms = Alarms()
    audit = AuditLog(path, max_pending=64, **FAST, **alarms.kwargs())
    try:
        audit.append("decision", {"k": -1})
        assert audit.flush(10)
        with disk_full():
            audit.append("decision", {"k": 0})
            assert wait_for(lambda: audit.alarm is not None)
            for k in range(1, 100):
                audit.append("decision", {"k": k})
            assert audit.lost == 100 - 56  # decisions may use 7/8 of the room
            for k in range(3):  # operator actions still fit in the room kept for them
                audit.append("operator", {"action": "ack", "n": k}, actor="alice")
            assert audit.lost == 44
            assert wait_for(lambda: audit.alarm is not None and "lost" in audit.alarm)
        assert audit.flush(10)
        audit.append("decision", {"k": 100})
        assert audit.flush(10)
        assert wait_for(lambda: audit.alarm is None)
        assert len(alarms.raised) == 1
        assert len(alarms.cleared) == 1
    finally:
        assert not audit.close()  # records were lost: close says so
    assert verify(path).ok
    records = list(read_records(path))
    kinds = [(r.kind, r.data()) for r in records]
    gap_at = next(i for i, (kind, data) in enumerate(kinds)
                  if kind == "alarm" and data["alarm"] == "audit_records_lost")
    gap = kinds[gap_at][1]
    assert gap["lost_records"] == 44
    assert gap["lost_by_kind"] == {"decision": 44}
    assert gap["first_lost_at_s"] <= gap["last_lost_at_s"]
    # The gap record sits exactly where the records are missing.
    assert kinds[gap_at - 1] == ("decision", {"k": 55})
    assert kinds[gap_at + 1][0] == "operator"
    decisions = [data["k"] for kind, data in kinds if kind == "decision"]
    assert decisions == [-1, *range(56), 100]
    fault = next(data for kind, data in kinds
                 if kind == "alarm" and data["alarm"] == "audit_storage_fault")
    assert fault["records_lost_in_episode"] == 44


def test_deleted_database_is_continued_in_a_new_one(tmp_path):
    path = tmp_path / "audit.db"
    alarms = Alarms()
    with AuditLog(path, **FAST, **alarms.kwargs()) as audit:
        for k in range(5):
            audit.append("decision", {"k": k})
        assert audit.flush(10)
        old_head = audit.exported_head()
        os.unlink(path)
        for k in range(5, 8):
            audit.append("decision", {"k": k})
        assert audit.flush(10)
        assert wait_for(lambda: audit.alarm is None)
        new_head = audit.exported_head()
    assert len(alarms.raised) == 1
    assert "gone" in alarms.raised[0]
    assert new_head.db_id != old_head.db_id
    result = verify(path)
    assert result.ok
    conn = sqlite3.connect(path)
    header = dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()
    assert header["continues_db_id"] == old_head.db_id
    assert header["continues_seq"] == "5"
    assert header["continues_hash"] == old_head.hash
    records = list(read_records(path))
    assert [r.data()["k"] for r in records if r.kind == "decision"] == [5, 6, 7]
    fault = next(r.data() for r in records if r.kind == "alarm")
    assert fault["database"]["lost_db_id"] == old_head.db_id
    assert fault["database"]["last_acknowledged_seq"] == 5


def test_replaced_database_is_not_written(tmp_path):
    path = tmp_path / "audit.db"
    alarms = Alarms()
    audit = AuditLog(path, **FAST, **alarms.kwargs())
    for k in range(3):
        audit.append("decision", {"k": k})
    assert audit.flush(10)
    junk = tmp_path / "junk"
    junk.write_bytes(b"someone else's file" * 100)
    os.replace(junk, path)
    audit.append("decision", {"k": 3})
    assert not audit.flush(0.5)
    assert wait_for(lambda: audit.alarm is not None and "not an audit database" in audit.alarm)
    assert path.read_bytes() == b"someone else's file" * 100
    t0 = time.monotonic()
    assert not audit.close(timeout_s=0.3)  # gives up, says so, in bounded time
    assert time.monotonic() - t0 < 3.0
    assert len(alarms.raised) == 1
    assert path.read_bytes() == b"someone else's file" * 100


def test_a_missing_folder_is_created_at_start(tmp_path):
    path = tmp_path / "reports" / "site" / "audit.db"
    alarms = Alarms()
    with AuditLog(path, **FAST, **alarms.kwargs()) as audit:
        audit.append("config_load", {"sha256": "ab" * 32})
        assert audit.flush(10)
    assert alarms.raised == []
    assert [r.kind for r in read_records(path)] == ["config_load"]


def test_unopenable_at_start_raises_the_alarm_and_recovers(tmp_path):
    folder = tmp_path / "not-yet"
    folder.write_text("a file where the folder should be")  # the folder cannot be created
    alarms = Alarms()
    audit = AuditLog(folder / "audit.db", **FAST, **alarms.kwargs())
    try:
        audit.append("config_load", {"sha256": "ab" * 32})
        assert wait_for(lambda: audit.alarm is not None)
        with pytest.raises(RuntimeError):
            audit.exported_head()
        folder.unlink()
        folder.mkdir()
        assert audit.flush(10)
        assert wait_for(lambda: audit.alarm is None)
    finally:
        assert audit.close()
    kinds = [r.kind for r in read_records(folder / "audit.db")]
    assert kinds == ["config_load", "alarm"]


# ---------------------------------------------------------------- head export


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self):
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        return


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_periodic_head_export_to_file_http_and_syslog(tmp_path):
    path = tmp_path / "audit.db"
    heads = tmp_path / "heads.jsonl"
    _Collector.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5.0)
    broken = f"http://127.0.0.1:{_refused_port()}/heads"
    sinks: list[HeadSink] = [
        FileSink(heads), HttpSink(f"http://127.0.0.1:{server.server_port}/heads"),
        SyslogSink(udp.getsockname()), HttpSink(broken, timeout_s=1.0)]
    try:
        with AuditLog(path, export_every_s=0.05, head_sinks=sinks, **FAST) as audit:
            for k in range(20):
                audit.append("decision", {"k": k})
            assert audit.flush(10)
            assert wait_for(lambda: heads.exists() and json.loads(
                heads.read_text().splitlines()[-1])["seq"] == 20)
            assert wait_for(lambda: f"http:{broken}" in audit.export_faults)
            audit.append("mode", {"to": "MANUAL"})
        # close() exported the final head
        last = json.loads(heads.read_text().splitlines()[-1])
        assert last == export_head(path).to_json()
        assert last["seq"] == 21
        assert verify(path, head=export_head(path)).ok
        assert wait_for(lambda: any(json.loads(b)["seq"] == 21 for b in _Collector.bodies))
        message = udp.recv(4096).decode()
        assert "safety-gateway-audit" in message
        assert '"hash": "' in message
    finally:
        server.shutdown()
        server.server_close()
        udp.close()


def test_parse_sink():
    assert isinstance(parse_sink("print"), PrintSink)
    assert parse_sink("file:/tmp/h.jsonl").name == "file:/tmp/h.jsonl"
    assert parse_sink("syslog:logs.example:514").name == "syslog:logs.example:514"
    assert parse_sink("syslog:/dev/log").name == "syslog:/dev/log"
    assert parse_sink("http:http://h:8080/x").name == "http:http://h:8080/x"
    assert parse_sink("https://h/x").name == "http:https://h/x"
    for bad in ("nowhere", "syslog:host", "syslog:host:99999", "ftp:x", "http:ftp://x"):
        with pytest.raises(ValueError, match="head sink"):
            parse_sink(bad)


# ---------------------------------------------------------------- the audit commands


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST) as audit:
        for k in range(8):
            audit.append("decision", {"k": k})
    return path


def test_cli_verify_intact(db, capsys):
    assert _cli(["audit", "verify", str(db)]) == 0
    assert "chain intact: 8 records" in capsys.readouterr().out
    assert _cli(["audit", "verify", str(db), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert result["last_seq"] == 8


def test_cli_verify_broken_names_the_record(db, capsys):
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DELETE FROM records WHERE seq = 4")
    conn.close()
    assert _cli(["audit", "verify", str(db)]) == 1
    err = capsys.readouterr().err
    assert "BROKEN at seq 4 (deleted)" in err
    assert _cli(["audit", "verify", "--json", str(db)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["broken_seq"], out["problem"]) == (False, 4, "deleted")


def test_cli_verify_with_an_exported_head_catches_truncation(db, tmp_path, capsys):
    heads = tmp_path / "heads.jsonl"
    assert _cli(["audit", "head", str(db), "--to", f"file:{heads}"]) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["seq"] == 8
    assert heads.read_text().strip() == line
    assert _cli(["audit", "verify", str(db), "--head", str(heads)]) == 0
    assert _cli(["audit", "verify", str(db), "--head", line]) == 0
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DELETE FROM records WHERE seq > 6")
    conn.close()
    capsys.readouterr()
    assert _cli(["audit", "verify", str(db), "--head", str(heads)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert _cli(["audit", "head", str(db), "--to", f"file:{heads}"]) == 0  # a shorter chain


def test_cli_bad_input_is_one_line(db, tmp_path, capsys):
    cases = [["audit", "verify", str(tmp_path / "missing.db")],
             ["audit", "verify", str(db), "--head", "{not json"],
             ["audit", "verify", str(db), "--head", str(tmp_path / "no-heads")],
             ["audit", "head", str(db), "--to", "ftp:x"],
             ["audit", "head", str(tmp_path / "missing.db")]]
    for argv in cases:
        assert _cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err
    # A file that exists but is not an audit database is BROKEN (1), not bad input (issue 16):
    # a monitor that watches for 1 must see it. Still one line, no traceback.
    junk = tmp_path / "junk.db"
    junk.write_text("hello")
    assert _cli(["audit", "verify", str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BROKEN" in err and "Traceback" not in err


def test_cli_head_reports_a_failing_sink(db, capsys):
    url = f"http://127.0.0.1:{_refused_port()}/h"
    assert _cli(["audit", "head", str(db), "--to", f"http:{url}"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["seq"] == 8  # printed all the same
    assert url in captured.err


def test_moved_database_keeps_its_records_and_a_new_one_continues(tmp_path):
    path = tmp_path / "audit.db"
    moved = tmp_path / "audit.db.1"
    with AuditLog(path, **FAST) as audit:
        for k in range(5):
            audit.append("decision", {"k": k})
        assert audit.flush(10)
        old_head = audit.exported_head()
        os.rename(path, moved)  # e.g. a careless rotation while the gateway runs
        audit.append("decision", {"k": 5})
        assert audit.flush(10)
    # The moved file holds every record committed to it, without its WAL.
    assert not (tmp_path / "audit.db.1-wal").exists()
    result = verify(moved, head=old_head)
    assert result.ok, result.message
    assert result.last_seq == 5
    assert verify(path).ok
    assert [p["k"] for p in payloads(path, "decision")] == [5]


def test_low_free_space_raises_the_alarm_before_the_disk_is_full(tmp_path):
    path = tmp_path / "audit.db"
    alarms = Alarms()
    with AuditLog(path, min_free_bytes=2**62, **FAST, **alarms.kwargs()) as audit:
        audit.append("decision", {"k": 0})
        assert audit.flush(10)
        assert wait_for(lambda: audit.alarm is not None)
        assert "nearly full" in alarms.raised[0]
        assert audit.flush(10)  # records are still written
    low = [r.data() for r in read_records(path) if r.kind == "alarm"]
    assert low[0]["alarm"] == "audit_storage_low"
    assert low[0]["state"] == "raised"
    assert low[0]["threshold_bytes"] == 2**62


def test_syslog_to_a_unix_socket_and_its_failures(tmp_path):
    from gateway.audit import ExportedHead
    from gateway.audit.export import ExportError

    head = ExportedHead(3, "c" * 64, 12.5, "db")
    address = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(5.0)
    sink = SyslogSink(address)
    try:
        sink.send(head)
        message = server.recv(4096).decode()
        assert message.startswith("<")  # a syslog priority
        assert head.dumps() in message
    finally:
        sink.close()
        server.close()
    missing = SyslogSink(str(tmp_path / "nobody-listens.sock"))
    with pytest.raises(ExportError, match="nobody-listens"):
        missing.send(head)


def test_print_sink(capsys):
    from gateway.audit import ExportedHead

    head = ExportedHead(1, "d" * 64, 0.0)
    PrintSink().send(head)
    assert json.loads(capsys.readouterr().out) == head.to_json()


def test_a_broken_clock_does_not_block_the_log(tmp_path):
    path = tmp_path / "audit.db"
    readings = iter([float("nan"), float("inf"), 5.0])
    with AuditLog(path, clock=lambda: next(readings, 6.0), **FAST) as audit:
        for k in range(3):
            audit.append("note", {"k": k})
        assert audit.flush(10)
    assert [r.at_s for r in read_records(path)] == [0.0, 0.0, 5.0]
    assert verify(path).ok


def test_idle_starts_a_due_batch_and_appends_then_leave_it_to_idle(tmp_path):
    # A control loop that calls idle() at the end of each cycle: the writer's batch runs then,
    # not after the cycle's first append (which would interrupt the rest of the cycle).
    flush = 0.4
    with AuditLog(tmp_path / "a.db", flush_interval_s=flush) as audit:
        audit.idle()
        audit.append("event", {"n": 0})
        # The batch falls due: the writer now waits for the producer (internal flag, read
        # only to know when; it then goes ahead by itself one interval later).
        assert wait_for(lambda: audit._kick, timeout_s=5 * flush)
        audit.append("event", {"n": 1})  # an append no longer starts it ...
        time.sleep(0.1 * flush)
        assert audit.acknowledged_seq == 0
        audit.idle()  # ... the end of the cycle does, well before the interval is up
        assert wait_for(lambda: audit.acknowledged_seq == 2, timeout_s=0.5 * flush)
        # Without a hint, a due batch still goes ahead by itself.
        audit.append("event", {"n": 2})
        assert wait_for(lambda: audit.acknowledged_seq == 3, timeout_s=5 * flush)
