"""Issue 16, item 7: the audit trail cannot lose its tail silently.

A signed head is exported beside the database (and to configured sinks) periodically and at
every clean stop, and ``audit verify`` checks it by default; a database that cannot be read is
BROKEN (exit 1), not bad input; unclean ends are listed; an unusable audit path is refused by
``check`` and stops ``run`` (exit 3); ``audit show|tail`` read records without SQLite tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.audit import AuditLog, record_hash
from gateway.cli import main
from gateway.runtime.durable import Previous

if TYPE_CHECKING:
    from collections.abc import Callable

FAST: dict[str, Any] = {"flush_interval_s": 0.01, "retry_initial_s": 0.01, "retry_max_s": 0.05}
ROOT = Path(__file__).resolve().parents[2]
WATER = ROOT / "configs" / "water_tank.yaml"


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def sg(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_db(path: Path, n: int, **options: Any) -> Path:
    with AuditLog(path, **FAST, **options) as audit:
        for k in range(n):
            audit.append("decision", {"k": k})
    return path


def tamper(db: Path, *sql: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    for name in ("records_no_delete", "records_no_update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in sql:
        conn.execute(statement)
    conn.close()


def head_file(db: Path) -> Path:
    return db.with_name(db.name + ".head.json")


# ------------------------------------------------------------------ 1. the signed head


def test_clean_stop_exports_a_signed_head_beside_the_database(tmp_path):
    db = make_db(tmp_path / "audit.db", 8)
    data = json.loads(head_file(db).read_text())
    assert data["head"]["seq"] == 8
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit.signed_head import signed_bytes
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(data["public_key"]))
    key.verify(bytes.fromhex(data["signature"]), signed_bytes(data))  # raises if forged
    # The private key is a file of its own, readable by its owner only.
    key_file = db.with_name(db.name + ".head-key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key_file.read_bytes()
    pub = db.with_name(db.name + ".head-key.pub")
    assert data["public_key"] in pub.read_text()


def test_deleting_the_tail_is_broken_without_passing_a_head(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 20)
    tamper(db, "DELETE FROM records WHERE seq > 10")
    code, _, err = sg(capsys, "audit", "verify", str(db))
    assert code == 1, err
    assert "truncated" in err
    assert "seq 20" in err


def test_rewriting_a_record_and_rehashing_after_it_is_broken(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 12)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")
    rows = conn.execute("SELECT seq, at_s, kind, actor, source, payload, prev_hash FROM records "
                        "WHERE seq >= 5 ORDER BY seq").fetchall()
    prev = rows[0][6]
    for seq, at_s, kind, actor, source, payload, _ in rows:
        if seq == 5:
            payload = json.dumps({"k": 999}, separators=(",", ":"))
        digest = record_hash(seq, at_s, kind, actor, source, payload, prev)
        conn.execute("UPDATE records SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (payload, prev, digest, seq))
        prev = digest
    conn.close()
    code, _, err = sg(capsys, "audit", "verify", str(db))
    assert code == 1, err
    assert "head_mismatch" in err


def test_a_forged_head_file_is_broken(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 6)
    tamper(db, "DELETE FROM records WHERE seq > 3")
    data = json.loads(head_file(db).read_text())
    data["head"]["seq"] = 3  # the attacker shortens the head to match: the signature breaks
    head_file(db).write_text(json.dumps(data))
    code, _, err = sg(capsys, "audit", "verify", str(db))
    assert code == 1, err
    assert "signature" in err


def test_a_head_signed_by_another_key_is_broken(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 6)
    pinned = db.with_name(db.name + ".head-key.pub").read_text()
    other = make_db(tmp_path / "other.db", 6)
    # Replace the whole database and head by another gateway's (or the attacker's own key).
    db.unlink()
    other.rename(db)
    head_file(other).rename(head_file(db))
    db.with_name(db.name + ".head-key.pub").write_text(pinned)
    code, _, err = sg(capsys, "audit", "verify", str(db))
    assert code == 1, err
    assert "key" in err


def test_a_head_older_than_the_chain_is_reported_not_broken(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 5)
    old = head_file(db).read_text()
    make_db(db, 3)  # a second run appends 3 more (and exports seq 8 at its stop)
    head_file(db).write_text(old)
    code, out, err = sg(capsys, "audit", "verify", str(db))
    assert code == 0, err
    assert "records after seq 5" in out + err
    assert "not covered" in out + err


def test_a_missing_head_file_is_a_warning_or_broken_when_required(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 5)
    head_file(db).unlink()
    code, _, err = sg(capsys, "audit", "verify", str(db))
    assert code == 0
    assert "warning" in err and "no exported head" in err
    code, _, err = sg(capsys, "audit", "verify", str(db), "--require-head")
    assert code == 1
    assert "no exported head" in err


def test_the_head_is_exported_periodically_and_to_a_sink_directory(tmp_path):
    db = tmp_path / "audit.db"
    sink = tmp_path / "elsewhere"
    sink.mkdir()
    with AuditLog(db, **FAST, export_every_s=0.05, head_dirs=[sink]) as audit:
        for k in range(4):
            audit.append("decision", {"k": k})
        assert wait_for(lambda: head_file(db).exists()
                        and json.loads(head_file(db).read_text())["head"]["seq"] == 4)
        copy = sink / "audit.db.head.json"
        assert wait_for(lambda: copy.exists()
                        and json.loads(copy.read_text())["head"]["seq"] == 4)
    # The sink's copy verifies the database as well as the one beside it.
    assert main(["audit", "verify", str(db), "--head-file", str(copy)]) == 0


# ------------------------------------------------------------------ 2. broken is exit 1


def test_a_truncated_database_file_is_broken_not_bad_input(tmp_path, capsys):
    db = make_db(tmp_path / "audit.db", 300)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    code, _, err = sg(capsys, "audit", "verify", str(db))
    assert code == 1, err
    assert "BROKEN" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_garbled_database_is_broken_and_a_missing_one_is_bad_input(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + os.urandom(2000))
    code, _, err = sg(capsys, "audit", "verify", str(junk))
    assert code == 1 and "BROKEN" in err, err
    code, _, err = sg(capsys, "audit", "verify", str(tmp_path / "missing.db"))
    assert code == 2 and "no such file" in err, err
    code, _, err = sg(capsys, "audit", "head", str(junk))  # the head of a garbled database
    assert code == 1 and "BROKEN" in err, err


# ------------------------------------------------------------------ 3. unclean ends


def test_verify_lists_unclean_ends_with_their_windows(tmp_path, capsys):
    db = tmp_path / "audit.db"
    with AuditLog(db, **FAST) as audit:
        audit.append("config_load", {"site": "t"})
        audit.append("decision", {"k": 1})
        # The record the runtime writes at the start after an unclean end.
        previous = Previous(False, last_seq=7, last_at_s=1_700_000_000.0,
                            last_kind="decision", run_seq=1)
        audit.append("unclean_end", previous.unclean_window(1_700_000_060.0))
    code, out, _ = sg(capsys, "audit", "verify", str(db))
    assert code == 0
    assert "unclean end" in out
    assert "after seq 7" in out
    assert "2023-11-14T22:13:20Z" in out  # the window's times, ISO 8601 UTC
    assert "2023-11-14T22:14:20Z" in out
    code, out, _ = sg(capsys, "audit", "verify", str(db), "--json")
    ends = json.loads(out)["unclean_ends"]
    assert [(e["seq"], e["after_seq"]) for e in ends] == [(3, 7)]


# ------------------------------------------------------------------ 4. unusable audit path


def site_with_audit(tmp_path: Path, audit_yaml: str) -> Path:
    text = WATER.read_text(encoding="utf-8")
    old = "audit:\n  path: ../reports/water_tank_audit.db\n  sample_every_n: 100\n"
    assert old in text
    path = tmp_path / "site.yaml"
    path.write_text(text.replace(old, audit_yaml), encoding="utf-8")
    return path


def test_check_refuses_an_audit_path_that_cannot_be_written(tmp_path, capsys):
    site = site_with_audit(tmp_path, "audit:\n  path: /proc/self/audit.db\n")
    before = set(tmp_path.iterdir())
    code, _, err = sg(capsys, "check", str(site))
    assert code == 2, err
    line = next(n for n, t in enumerate(site.read_text().splitlines(), 1)
                if "/proc/self/audit.db" in t)
    assert f"{site}:{line}: audit.path:" in err
    assert set(tmp_path.iterdir()) == before  # the probe leaves nothing behind


def test_check_accepts_a_path_whose_folder_can_be_created_and_leaves_no_junk(tmp_path,
                                                                            capsys):
    site = site_with_audit(tmp_path, "audit:\n  path: deep/er/audit.db\n")
    code, _, err = sg(capsys, "check", str(site))
    assert code == 0, err
    assert not (tmp_path / "deep").exists()


def test_run_exits_3_rather_than_control_without_audit(tmp_path, capsys):
    site = site_with_audit(tmp_path, "audit:\n  path: /proc/self/audit.db\n")
    code, _, err = sg(capsys, "run", str(site))
    assert code == 3, err
    reason = [ln for ln in err.splitlines() if "audit" in ln and "/proc/self" in ln]
    assert len(reason) == 1, err


def test_audit_section_settings_are_validated(tmp_path, capsys):
    site = site_with_audit(tmp_path, "audit:\n  path: a.db\n  head_export_s: 0\n")
    code, _, err = sg(capsys, "check", str(site))
    assert code == 2 and "audit.head_export_s" in err, err
    site = site_with_audit(tmp_path, "audit:\n  path: /proc/self/audit.db\n  required: false\n"
                                     "  head_export_s: 5\n  head_sinks: [/tmp]\n")
    code, _, err = sg(capsys, "check", str(site))
    assert code == 0, err
    assert "warning" in err and "audit" in err


# ------------------------------------------------------------------ 5. show and tail


def test_show_filters_by_kind_and_time_and_prints_json(tmp_path, capsys):
    db = tmp_path / "audit.db"
    times = iter([1_700_000_000.0, 1_700_000_010.0, 1_700_000_020.0, 1_700_000_030.0])
    with AuditLog(db, **FAST, clock=lambda: next(times)) as audit:
        audit.append("config_load", {"site": "t"})
        audit.append("mode", {"to": "auto"})
        audit.append("decision", {"k": 1})
        audit.append("mode", {"to": "manual"})
    code, out, _ = sg(capsys, "audit", "show", str(db))
    assert code == 0
    assert len(out.splitlines()) == 4
    assert "2023-11-14T22:13:20" in out and "config_load" in out
    code, out, _ = sg(capsys, "audit", "show", str(db), "--kind", "mode", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in rows] == [2, 4]
    assert rows[1]["payload"] == {"to": "manual"}
    assert rows[1]["at"] == "2023-11-14T22:13:50Z"
    code, out, _ = sg(capsys, "audit", "show", str(db), "--since", "2023-11-14T22:13:35Z",
                      "--json")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [3, 4]
    code, _, err = sg(capsys, "audit", "show", str(db), "--since", "yesterday-ish")
    assert code == 2 and "--since" in err


def test_tail_follows_new_records_and_stops_cleanly_on_sigint(tmp_path):
    db = make_db(tmp_path / "audit.db", 2)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with subprocess.Popen([sys.executable, "-m", "gateway.cli", "audit", "tail", str(db),
                           "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            seen = [json.loads(proc.stdout.readline())["seq"] for _ in range(2)]
            assert seen == [1, 2]
            with AuditLog(db, **FAST) as audit:
                audit.append("operator", {"action": "reset"}, actor="alice")
            line = json.loads(proc.stdout.readline())
            assert (line["seq"], line["kind"], line["actor"]) == (3, "operator", "alice")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = proc.stderr.read()
    assert code == 0, err
    assert "Traceback" not in err


def test_head_file_contents_are_bound_to_the_database(tmp_path):
    db = make_db(tmp_path / "audit.db", 3)
    data = json.loads(head_file(db).read_text())
    conn = sqlite3.connect(db)
    db_id = conn.execute("SELECT value FROM meta WHERE key = 'db_id'").fetchone()[0]
    last = conn.execute("SELECT hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()[0]
    conn.close()
    assert data["head"]["db_id"] == db_id
    assert data["head"]["hash"] == last
    assert data["key_id"] == hashlib.sha256(bytes.fromhex(data["public_key"])).hexdigest()[:16]


# ------------------------------------------------------------------ 4b. the gateway at start


def _gateway(db: Path, *, required: bool) -> Any:
    from dataclasses import replace

    from tests.runtime.test_restart import Clock, make, site_on_free_ports

    site = site_on_free_ports()
    site = replace(site, audit=replace(site.audit, required=required))
    return make(site, db, Clock(1000.0), Clock(1_700_000_000.0))


def test_the_gateway_does_not_control_with_an_unusable_audit_database(tmp_path):
    import asyncio

    from gateway.audit import AuditError

    junk = tmp_path / "audit.db"
    junk.write_text("not a database")

    async def scenario() -> None:
        gw = _gateway(junk, required=True)
        try:
            with pytest.raises(AuditError, match="not an audit database"):
                await gw.open()
            assert gw.supervisor is None  # no control cycle can run
        finally:
            await gw.close()

    asyncio.run(scenario())


def test_audit_not_required_is_itself_an_alarm_in_the_chain(tmp_path):
    import asyncio

    from gateway.audit import read_records

    db = tmp_path / "audit.db"

    async def scenario() -> None:
        gw = _gateway(db, required=False)
        await gw.open()
        await gw.close()

    asyncio.run(scenario())
    alarms = [r for r in read_records(db, kinds=("alarm",)) if "audit.required" in r.payload]
    assert len(alarms) == 1
