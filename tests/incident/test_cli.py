"""``safety-gateway incidents``: output and exit codes (0 ok, 1 not found/failed, 2 bad input)."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.store import verify
from gateway.incident.cli import add_parser
from gateway.incident.model import ChecklistPhase, Phase
from gateway.incident.store import load_incident
from tests.incident.rig import Rig


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", *argv])
    return int(args.func(args))


@pytest.fixture
def db(tmp_path):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.to_auto()
    rig.hijack()
    rig.good(15)
    rig.close()
    return rig.db, rig.manager.incidents[0].id


def test_list_and_show(db, capsys):
    path, ident = db
    assert cli("list", "--db", str(path)) == 0
    out = capsys.readouterr().out
    assert ident in out and "contained" in out and "envelope.gross" in out
    assert cli("list", "--db", str(path), "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == ident and row["phase"] == "contained"
    assert row["flight_recorder_stored"] is True
    assert cli("show", ident, "--db", str(path)) == 0
    out = capsys.readouterr().out
    for needle in ("trigger   envelope.gross", "timeline:", "checklist", "forensics:",
                   "safety-gateway audit verify"):
        assert needle in out
    assert cli("show", ident, "--db", str(path), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == ident and data["problems"] == []


def test_note_ack_check_resolve(db, capsys):
    path, ident = db
    assert cli("note", ident, "pump stopped by the AI", "--by", "alice", "--db", str(path)) == 0
    assert "phase investigating" in capsys.readouterr().out
    assert cli("ack", ident, "--by", "bob", "--db", str(path)) == 0
    assert cli("check", ident, "forensics", "0", "--by", "bob", "--db", str(path)) == 0
    capsys.readouterr()
    # 1 of 16 checklist items done and no review: resolving is refused (exit 3), saying what
    # is open, and the incident stays open.
    assert cli("resolve", ident, "--by", "alice", "--summary", "rolled back to v2",
               "--db", str(path)) == 3
    err = capsys.readouterr().err
    assert "cannot be resolved: 15 required checklist item(s) open: detection 0: confirm " \
        "the trip on the dashboard" in err
    assert ", and no post-incident review recorded (an administrator may force it" in err
    assert load_incident(path, ident).phase is Phase.INVESTIGATING
    # An administrator forces it, with a reason: recorded, with what was open.
    assert cli("resolve", ident, "--by", "alice", "--summary", "rolled back to v2",
               "--force", "--db", str(path)) == 2  # a reason is required
    assert cli("resolve", ident, "--by", "alice", "--summary", "rolled back to v2",
               "--force", "--reason", "drill over; review next week", "--db", str(path),
               "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["phase"] == "resolved"
    inc = load_incident(path, ident)
    assert inc.phase is Phase.RESOLVED
    assert [n.who for n in inc.notes] == ["alice", "bob"]
    assert inc.notes[0].source.startswith("cli@")
    assert inc.checklist_of(ChecklistPhase.FORENSICS)[0].done
    assert verify(path).ok
    # Resolving twice is refused.
    assert cli("resolve", ident, "--by", "alice", "--summary", "again", "--db", str(path)) == 1
    assert "already resolved" in capsys.readouterr().err


def test_export(db, tmp_path, capsys):
    path, ident = db
    assert cli("export", ident, "--out", str(tmp_path / "ev"), "--db", str(path),
               "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chain_ok"] is True
    assert "report.md" in out["files"] and "manifest.json" in out["files"]
    assert cli("export", ident, "--out", str(tmp_path / "ev"), "--db", str(path)) == 1
    assert "exists" in capsys.readouterr().err
    assert cli("export", ident, "--out", str(tmp_path / "ev"), "--db", str(path),
               "--force") == 0


@pytest.mark.parametrize("argv", [
    ["show", "INC-nope"],
    ["note", "INC-nope", "x", "--by", "a"],
    ["resolve", "INC-nope", "--by", "a", "--summary", "x"],
    ["export", "INC-nope", "--out", "OUT"],
])
def test_unknown_incident_is_exit_1(db, tmp_path, capsys, argv):
    path, _ = db
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert cli(*argv, "--db", str(path)) == 1
    err = capsys.readouterr().err
    assert "INC-nope" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_is_exit_2_with_one_line(db, tmp_path, capsys):
    path, ident = db
    cases = [
        ["list", "--db", str(tmp_path / "missing.db")],
        ["note", ident, "  ", "--by", "alice", "--db", str(path)],
        ["note", ident, "x", "--by", " ", "--db", str(path)],
        ["resolve", ident, "--by", "alice", "--summary", " ", "--db", str(path)],
        ["check", ident, "lunch", "0", "--by", "alice", "--db", str(path)],
    ]
    not_audit = tmp_path / "not.db"
    not_audit.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    cases.append(["list", "--db", str(not_audit)])
    for argv in cases:
        assert cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert load_incident(path, ident).notes == ()


def test_writing_while_a_gateway_holds_the_database_is_refused(db, capsys):
    path, ident = db
    gateway_log = AuditLog(path)  # the running gateway's writer
    try:
        assert cli("note", ident, "x", "--by", "alice", "--db", str(path)) == 1
        err = capsys.readouterr().err
        assert "running gateway" in err and "--via ENDPOINT" in err
        # Reading still works beside it.
        assert cli("show", ident, "--db", str(path)) == 0
    finally:
        assert gateway_log.close()
    assert cli("note", ident, "x", "--by", "alice", "--db", str(path)) == 0


def test_the_top_level_command_line_can_register_it():
    parser = argparse.ArgumentParser(prog="safety-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["incidents", "list", "--db", "x.db"])
    assert callable(args.func)
