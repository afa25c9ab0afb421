"""The chain: record hashing, canonical payloads, and ``verify`` catching every kind of
tampering done with a raw SQLite connection (triggers dropped first, as an attacker would)."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import struct
from typing import TYPE_CHECKING, Any

import pytest

from gateway.audit import (
    AuditLog,
    ExportedHead,
    NotAuditDatabase,
    Problem,
    Record,
    canonical_payload,
    export_head,
    read_records,
    record_hash,
    verify,
    verify_records,
)
from gateway.audit.chain import genesis_hash

if TYPE_CHECKING:
    from pathlib import Path

N = 12


def _make_db(path: Path, n: int = N) -> Path:
    clock = iter(1_700_000_000.0 + 0.5 * k for k in range(10_000))
    with AuditLog(path, clock=lambda: next(clock)) as audit:
        for k in range(n):
            audit.append("decision", {"cycle": k, "command": [1.0 * k, 2.0], "mode": "AUTO"})
        assert audit.flush(10)
    return path


@pytest.fixture
def db(tmp_path):
    return _make_db(tmp_path / "audit.db")


def _raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for name in ("records_no_update", "records_no_delete", "meta_no_insert", "meta_no_update",
                 "meta_no_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def _row(conn: sqlite3.Connection, seq: int) -> Any:
    return conn.execute("SELECT seq, at_s, kind, actor, source, payload, prev_hash, hash "
                        "FROM records WHERE seq = ?", (seq,)).fetchone()


# ---------------------------------------------------------------- encoding


def test_record_hash_follows_the_documented_encoding():
    prev = "ab" * 32
    fields = [b"decision", b"alice", b"10.0.0.7:5020", b'{"x":1}']
    expected = hashlib.sha256(
        b"safety-gateway/audit/record/v1\x00" + struct.pack(">qd", 7, 1.5)
        + b"".join(struct.pack(">I", len(f)) for f in fields) + b"".join(fields)
        + bytes.fromhex(prev)).hexdigest()
    assert record_hash(7, 1.5, "decision", "alice", "10.0.0.7:5020", '{"x":1}', prev) == expected


def test_field_boundaries_are_unambiguous():
    prev = "0" * 64
    assert (record_hash(1, 0.0, "note", "ab", "c", "{}", prev)
            != record_hash(1, 0.0, "note", "a", "bc", "{}", prev))
    assert (record_hash(1, 0.0, "note", "", "", "{}", prev)
            != record_hash(2, 0.0, "note", "", "", "{}", prev))


def test_canonical_payload_is_sorted_compact_and_finite():
    text = canonical_payload({"b": 1, "a": [math.nan, math.inf, -math.inf, 0.5],
                              "c": {"y": True, "x": None}, "é": "ü"})
    assert text == ('{"a":["nan","inf","-inf",0.5],"b":1,"c":{"x":null,"y":true},'
                    '"\\u00e9":"\\u00fc"}')
    assert json.loads(text)["a"][3] == 0.5


def test_canonical_payload_converts_numpy_and_rejects_the_unknown():
    np = pytest.importorskip("numpy")
    assert canonical_payload({"v": np.array([1.0, np.nan]), "s": np.float32(0.5),
                              "i": np.int64(3)}) == '{"i":3,"s":0.5,"v":[1.0,"nan"]}'
    with pytest.raises(TypeError):
        canonical_payload({"o": object()})


def test_exported_head_round_trips_and_checks_its_fields():
    head = ExportedHead(5, "a" * 64, 1.5, "db")
    assert ExportedHead.loads(head.dumps()) == head
    for bad in ('{"seq": -1, "hash": "' + "a" * 64 + '"}', '{"seq": 1, "hash": "xyz"}',
                '{"hash": "' + "a" * 64 + '"}', "[1]", "not json"):
        with pytest.raises(ValueError, match="head"):
            ExportedHead.loads(bad)


# ---------------------------------------------------------------- verify, untouched


def test_intact_chain_verifies(db):
    result = verify(db)
    assert result.ok, result.message
    assert result.records == N
    assert result.last_seq == N
    records = list(read_records(db))
    assert [r.seq for r in records] == list(range(1, N + 1))
    assert records[-1].hash == result.last_hash
    assert records[0].data() == {"cycle": 0, "command": [0.0, 2.0], "mode": "AUTO"}
    assert records[1].at_s == 1_700_000_000.5


def test_first_record_links_to_the_header(db):
    conn = sqlite3.connect(db)
    header = dict(conn.execute("SELECT key, value FROM meta"))
    first = _row(conn, 1)
    conn.close()
    assert first[6] == genesis_hash(header)
    assert header["format"] == "safety-gateway-audit"


def test_triggers_refuse_update_and_delete(db):
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET payload = '{}' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM records WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="fixed at creation"):
        conn.execute("UPDATE meta SET value = 'x' WHERE key = 'db_id'")
    with pytest.raises(sqlite3.IntegrityError, match="fixed at creation"):
        conn.execute("INSERT INTO meta VALUES ('extra', 'x')")
    conn.close()
    assert verify(db).ok


# ---------------------------------------------------------------- tampering


def test_edit_of_one_payload_byte_is_caught(db):
    conn = _raw(db)
    payload = _row(conn, 5)[5]
    conn.execute("UPDATE records SET payload = ? WHERE seq = 5",
                 (payload.replace('"cycle":4', '"cycle":5'),))
    conn.close()
    result = verify(db)
    assert not result.ok
    assert (result.problem, result.broken_seq) == (Problem.EDITED, 5)
    assert "seq 5" in result.message
    assert result.records == 4


@pytest.mark.parametrize(("column", "value"), [("at_s", 1.0), ("kind", "note"),
                                                ("actor", "mallory"), ("source", "x")])
def test_edit_of_any_field_is_caught(db, column, value):
    conn = _raw(db)
    conn.execute(f"UPDATE records SET {column} = ? WHERE seq = 3", (value,))
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.EDITED, 3)


def test_edit_with_the_hash_recomputed_breaks_the_next_link(db):
    conn = _raw(db)
    seq, at_s, kind, actor, source, _, prev, _ = _row(conn, 5)
    payload = '{"forged":true}'
    conn.execute("UPDATE records SET payload = ?, hash = ? WHERE seq = 5",
                 (payload, record_hash(seq, at_s, kind, actor, source, payload, prev)))
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.REORDERED, 6)


def test_delete_is_caught(db):
    conn = _raw(db)
    conn.execute("DELETE FROM records WHERE seq = 5")
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.DELETED, 5)
    assert "deleted" in result.message


def test_delete_of_the_first_records_is_caught(db):
    conn = _raw(db)
    conn.execute("DELETE FROM records WHERE seq <= 2")
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.DELETED, 1)


def test_reorder_is_caught(db):
    conn = _raw(db)
    a, b = _row(conn, 4), _row(conn, 7)
    for target, source in ((4, b), (7, a)):
        conn.execute("UPDATE records SET at_s=?, kind=?, actor=?, source=?, payload=?, "
                     "prev_hash=?, hash=? WHERE seq=?", (*source[1:], target))
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.REORDERED, 4)


def test_insert_is_caught(db):
    conn = _raw(db)
    # Make room at seq 5 (negate first: seq is the primary key), then forge a record that
    # links correctly to seq 4.
    conn.execute("UPDATE records SET seq = -(seq + 1) WHERE seq >= 5")
    conn.execute("UPDATE records SET seq = -seq WHERE seq < 0")
    prev = _row(conn, 4)[7]
    payload = '{"forged":true}'
    conn.execute("INSERT INTO records VALUES (5, 1.0, 'operator', 'mallory', '', ?, ?, ?)",
                 (payload, prev, record_hash(5, 1.0, "operator", "mallory", "", payload, prev)))
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.REORDERED, 6)


def test_truncation_is_caught_only_with_an_exported_head(db):
    head = export_head(db)
    assert head.seq == N
    conn = _raw(db)
    conn.execute("DELETE FROM records WHERE seq > ?", (N - 3,))
    conn.close()
    assert verify(db).ok  # a shorter chain is still a chain
    result = verify(db, head=head)
    assert (result.problem, result.broken_seq) == (Problem.TRUNCATED, N)
    assert f"ends at seq {N - 3}" in result.message
    # An older head is still there: truncation after it is not detectable with it.
    older = ExportedHead(N - 3, result.last_hash, 0.0, head.db_id)
    assert verify(db, head=older).ok


def test_rewriting_the_whole_tail_is_caught_by_the_exported_head(db):
    head = export_head(db)
    conn = _raw(db)
    prev = _row(conn, 4)[7]
    for seq in range(5, N + 1):
        _, at_s, kind, actor, source, _, _, _ = _row(conn, seq)
        payload = f'{{"rewritten":{seq}}}'
        digest = record_hash(seq, at_s, kind, actor, source, payload, prev)
        conn.execute("UPDATE records SET payload=?, prev_hash=?, hash=? WHERE seq=?",
                     (payload, prev, digest, seq))
        prev = digest
    conn.close()
    assert verify(db).ok  # self-consistent: only the exported head shows it
    result = verify(db, head=head)
    assert (result.problem, result.broken_seq) == (Problem.HEAD_MISMATCH, N)


def test_edited_header_is_caught(db):
    conn = _raw(db)
    conn.execute("UPDATE meta SET value = 'forged' WHERE key = 'db_id'")
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.HEADER, 1)


def test_head_of_another_database_is_refused(db, tmp_path):
    other = export_head(_make_db(tmp_path / "other.db"))
    result = verify(db, head=other)
    assert result.problem is Problem.OTHER_DATABASE


def test_malformed_field_is_named(db):
    conn = _raw(db)
    conn.execute("UPDATE records SET at_s = 'yesterday' WHERE seq = 2")
    conn.close()
    result = verify(db)
    assert (result.problem, result.broken_seq) == (Problem.MALFORMED, 2)


def test_verify_reports_bad_input(tmp_path):
    with pytest.raises(NotAuditDatabase, match="no such file"):
        verify(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(NotAuditDatabase):
        verify(junk)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(NotAuditDatabase, match="not an audit database"):
        verify(other)


def test_excerpt_verifies_from_its_own_anchor(db):
    records = list(read_records(db, first_seq=4, last_seq=8))
    assert [r.seq for r in records] == [4, 5, 6, 7, 8]
    assert verify_records(records, None).ok
    forged = Record(**{**records[2].to_json(), "payload": "{}"})
    result = verify_records([*records[:2], forged, *records[3:]], None)
    assert (result.problem, result.broken_seq) == (Problem.EDITED, 6)
    assert not verify_records([records[0], records[2]], None).ok
