"""The audit log with its writer in a child process (``AuditProcess``): a real child, real
pipes, a real SQLite database. What reaches the chain is what ``AuditLog`` would have written;
the control side never blocks, not even on a stalled child; the death of either process loses
nothing silently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from typing import Any

import pytest

from gateway.audit import AuditError, AuditLog, read_records, verify
from gateway.audit.process import AuditProcess, _frame
from gateway.audit.store import AuditInUse

from .test_log import (
    FAST,
    Alarms,
    append_three,
    check_rejects_bugs,
    check_three,
    payloads,
    wait_for,
)


def test_records_reach_the_chain_in_order_with_the_appenders_times(tmp_path):
    path = tmp_path / "audit.db"
    clock = iter([100.0, 101.0, 102.0])
    with AuditProcess(path, clock=lambda: next(clock), options=FAST) as audit:
        assert audit.stats()["pid"] != os.getpid()
        head = append_three(audit)
        assert audit.exported_head().seq == 3
    check_three(path, head)


def test_bugs_are_raised_in_the_caller_not_in_the_child(tmp_path):
    with AuditProcess(tmp_path / "audit.db", options=FAST) as audit:
        check_rejects_bugs(audit)
        audit.append("note", {"fine": True})
        assert audit.flush(10)
    assert payloads(tmp_path / "audit.db") == [{"fine": True}]


def test_payloads_a_pipe_cannot_carry_are_stored_as_the_log_would_store_them(tmp_path):
    class Opaque:  # a local class: pickle cannot carry it, JSON cannot write it
        def __repr__(self) -> str:
            return "<opaque>"

    thing = Opaque()
    batch: list[dict[str, Any]] = [
        {"x": float("nan"), "y": [float("-inf")]},
        types.MappingProxyType({"read_only": 1.5}),  # type: ignore[list-item]
        {"thing": thing},
        {"inner": types.MappingProxyType({"a": 1})},
    ]
    direct, relayed = tmp_path / "direct.db", tmp_path / "relayed.db"
    with AuditLog(direct, **FAST) as audit:
        for payload in batch:
            audit.append("note", payload)
    with AuditProcess(relayed, options=FAST) as remote:
        remote.idle()  # from now on the records go in one message, pickled together
        for payload in batch:
            remote.append("note", payload)
        assert remote.flush(10)
    assert payloads(relayed) == payloads(direct)
    assert payloads(relayed)[2]["unserialisable_payload"] == "{'thing': <opaque>}"


def test_files_the_log_refuses_are_refused_with_its_reasons(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    with pytest.raises(AuditError) as direct:
        AuditLog(text)
    with pytest.raises(AuditError) as relayed:
        AuditProcess(text)
    assert str(relayed.value) == str(direct.value)
    assert text.read_text() == "not a database\n"

    path = tmp_path / "audit.db"
    with AuditLog(path, **FAST):
        started = time.monotonic()
        with pytest.raises(AuditInUse, match="already open for writing"):
            AuditProcess(path, in_use_wait_s=0.3)
        assert time.monotonic() - started >= 0.3  # it waited for the other writer first


def test_a_writer_still_closing_is_waited_for(tmp_path):
    # A gateway restarted at once after a crash: its old writer still holds the database.
    path = tmp_path / "audit.db"
    old = AuditLog(path, **FAST)
    old.append("note", {"n": 1})
    opened: list[AuditProcess] = []
    starting = threading.Thread(target=lambda: opened.append(
        AuditProcess(path, in_use_wait_s=20.0, options=FAST)))
    starting.start()
    time.sleep(0.5)
    assert not opened  # still waiting for the old writer
    assert old.close()
    starting.join(30)
    (audit,) = opened
    audit.append("note", {"n": 2})
    assert audit.close()
    assert payloads(path) == [{"n": 1}, {"n": 2}]
    assert verify(path).ok


def test_the_childs_alarms_reach_the_parent(tmp_path):
    alarms = Alarms()
    # A free-space threshold no disk meets: the child's writer raises the low-space alarm.
    with AuditProcess(tmp_path / "audit.db", options={**FAST, "min_free_bytes": 1 << 62},
                      **alarms.kwargs()) as audit:
        audit.append("note", {"n": 1})
        assert wait_for(lambda: alarms.raised, 10)
        assert "audit storage nearly full" in alarms.raised[0]
        assert wait_for(lambda: audit.alarm is not None, 10)
        assert "nearly full" in str(audit.alarm)
    kinds = [(r.kind, r.data().get("alarm")) for r in read_records(tmp_path / "audit.db")]
    assert ("alarm", "audit_storage_low") in kinds


def test_a_dead_writer_raises_the_alarm_and_is_replaced_without_losing_later_records(
        tmp_path):
    alarms = Alarms()
    path = tmp_path / "audit.db"
    audit = AuditProcess(path, options=FAST, **alarms.kwargs())
    audit.idle()
    audit.append("note", {"n": 0})
    assert audit.flush(10)
    first_pid = audit.stats()["pid"]
    os.kill(first_pid, signal.SIGKILL)
    assert wait_for(lambda: alarms.raised, 10)
    assert "exited unexpectedly (exit code -9)" in alarms.raised[0]
    for n in range(1, 6):  # while it is down: held, never raised, never blocking
        audit.append("note", {"n": n})
        audit.idle()
    assert wait_for(lambda: alarms.cleared, 20)
    assert "restarted" in alarms.cleared[0]
    assert audit.stats()["pid"] != first_pid
    assert audit.alarm is None
    audit.append("note", {"n": 6})
    assert audit.flush(10)
    assert audit.lost == 0
    assert not audit.close()  # records the dead child held may be missing: not "all written"
    records = list(read_records(path))
    assert verify(path).ok
    assert [r.data()["n"] for r in records if r.kind == "note"] == list(range(7))
    (restart,) = [r.data() for r in records if r.kind == "alarm"]
    assert restart["alarm"] == "audit_writer_restarted"
    assert restart["exit_code"] == -9
    assert [r.kind for r in records].index("alarm") == 1  # before what was held meanwhile


def test_a_writer_that_cannot_be_restarted_is_retried_until_it_can(tmp_path, caplog):
    # The child dies, and the database cannot be opened for a while (here: moved away and a
    # stranger's file in its place). Restarts fail and are retried with backoff; what is
    # appended meanwhile is held, and written once a child opens the database again.
    alarms = Alarms()
    path = tmp_path / "audit.db"
    aside = tmp_path / "aside"
    aside.mkdir()
    audit = AuditProcess(path, options=FAST, **alarms.kwargs())
    audit.idle()
    audit.append("note", {"n": 0})
    assert audit.flush(10)
    os.kill(audit.stats()["pid"], signal.SIGKILL)
    assert wait_for(lambda: alarms.raised, 10)
    moved = [f for f in tmp_path.iterdir() if f.name.startswith("audit.db")]
    for f in moved:
        f.rename(aside / f.name)
    path.write_text("not a database\n")
    for n in range(1, 4):
        audit.append("note", {"n": n})
        audit.idle()

    def refusals() -> int:
        return sum("could not be restarted" in r.getMessage() for r in caplog.records)

    assert wait_for(lambda: refusals() >= 2, 20)  # 0.2 s, then 0.4 s later
    assert not alarms.cleared
    assert audit.alarm is not None
    assert "audit.db: not an audit database" in caplog.text  # the child's reason, relayed
    path.unlink()
    for f in moved:
        (aside / f.name).rename(f)
    audit.append("note", {"n": 4})
    audit.idle()
    assert wait_for(lambda: alarms.cleared, 30)
    assert audit.alarm is None
    audit.append("note", {"n": 5})
    assert audit.flush(10)
    assert audit.lost == 0
    assert not audit.close()
    records = list(read_records(path))
    assert verify(path).ok
    assert [r.data()["n"] for r in records if r.kind == "note"] == list(range(6))
    (restart,) = [r.data() for r in records if r.kind == "alarm"]
    assert restart["alarm"] == "audit_writer_restarted" and restart["restarts"] == 1


def test_a_failure_inside_the_writer_is_logged_as_one_record_and_the_writer_replaced(
        tmp_path, caplog):
    # A bug in the child (here: a message it does not understand, written to its pipe as
    # only a bug in this module could): its traceback reaches the gateway's log as one
    # record of the gateway.audit.process logger, not as loose lines on stderr.
    alarms = Alarms()
    path = tmp_path / "audit.db"
    audit = AuditProcess(path, options=FAST, **alarms.kwargs())
    audit.append("note", {"n": 0})
    assert audit.flush(10)
    first_pid = audit.stats()["pid"]

    def inject(message: object) -> None:
        with audit._lock:
            os.set_blocking(audit._wfd, True)
            os.write(audit._wfd, _frame(message))
            os.set_blocking(audit._wfd, False)

    # In one of its threads first (a flush with a timeout that is not a number): logged as
    # one record, and the writer goes on.
    inject(("flush", 99, "soon"))
    assert wait_for(lambda: any("thread" in r.getMessage() and "failed" in r.getMessage()
                                and "TypeError" in r.getMessage() for r in caplog.records))
    assert not alarms.raised
    audit.append("note", {"n": 1})
    assert audit.flush(10)
    inject(42)
    assert wait_for(lambda: alarms.raised, 10)
    assert "exit code 3" in alarms.raised[0]
    (failed,) = [r for r in caplog.records if "audit writer process failed" in r.getMessage()]
    assert failed.levelname == "ERROR" and failed.name == "gateway.audit.process"
    assert "TypeError" in failed.getMessage()  # the child's traceback, in the one record
    assert wait_for(lambda: alarms.cleared, 20)
    assert audit.stats()["pid"] != first_pid
    audit.append("note", {"n": 2})
    assert audit.flush(10)
    audit.close()
    assert [r.data()["n"] for r in read_records(path) if r.kind == "note"] == [0, 1, 2]
    assert verify(path).ok


def test_a_stalled_writer_never_blocks_appends_and_the_loss_is_in_the_chain(tmp_path):
    path = tmp_path / "audit.db"
    audit = AuditProcess(path, max_buffer_bytes=256 << 10, options=FAST)
    audit.idle()
    pid = audit.stats()["pid"]
    blob = "x" * 8000
    os.kill(pid, signal.SIGSTOP)
    slowest = 0.0
    try:
        # ~8 MB: more than the pipe and the parent's bound together.
        for n in range(1000):
            started = time.monotonic()
            audit.append("decision" if n % 2 else "note", {"n": n, "blob": blob})
            audit.idle()
            slowest = max(slowest, time.monotonic() - started)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert slowest < 0.5  # a blocking write would hang here until the child resumed
    lost = audit.lost
    assert lost > 0
    assert not audit.close(timeout_s=30)
    records = list(read_records(path))
    assert verify(path).ok
    # One gap record wherever records are missing (while notes still fit and decisions did
    # not, each kept note sits between two gaps); together they count every lost record.
    gaps = [r.data() for r in records if r.kind == "alarm"]
    assert gaps
    assert sum(g["lost_records"] for g in gaps) == lost
    by_kind = [g["lost_by_kind"] for g in gaps]
    assert sum(k.get("decision", 0) for k in by_kind) > sum(k.get("note", 0) for k in by_kind)
    kept = [r.data()["n"] for r in records if r.kind in ("note", "decision")]
    assert len(kept) + lost == 1000
    assert kept == sorted(kept)  # nothing reordered around the gap


def test_records_sent_before_the_appender_dies_are_written(tmp_path):
    path = tmp_path / "audit.db"
    script = textwrap.dedent(f"""
        import os
        from gateway.audit.process import AuditProcess, _frame
        audit = AuditProcess({str(path)!r})
        for n in range(500):
            audit.append("note", {{"n": n}})
            if n % 50 == 49:
                audit.idle()
        print(audit.stats()["pid"], flush=True)
        os._exit(0)  # no close(), no atexit: as if killed
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert int(done.stdout.strip()) != done.returncode  # the writer's pid was printed
    # The orphaned writer commits what it had received, then exits on its own.
    assert wait_for(lambda: len(list(read_records(path))) == 500, 20)
    assert [r.data()["n"] for r in read_records(path)] == list(range(500))
    assert verify(path).ok
