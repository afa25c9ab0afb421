"""Communications: drafts rendered from the incident's facts, approvals recorded with the
text's sha256, templates checked, and the drafts H4's evidence bundle takes."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest

from gateway.audit.store import verify
from gateway.incident.cli import add_parser
from gateway.incident.comms import Audience, bundle_drafts, render_draft, text_sha256
from gateway.incident.model import fold
from gateway.incident.store import incident_records, load_incident
from tests.incident.rig import Rig


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", *argv])
    return int(args.func(args))


@pytest.fixture
def db(tmp_path):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.manager.danger_limits = {"level": (0.0, 5.0)}
    rig.to_auto()
    rig.hijack()
    rig.good(15)
    rig.close()
    return str(rig.db), rig.manager.incidents[0].id


@pytest.mark.parametrize("audience", [a.value for a in Audience])
def test_each_draft_is_rendered_from_the_incident_facts(db, audience, capsys):
    path, ident = db
    assert cli("draft", ident, "--for", audience, "--db", path) == 0
    text = capsys.readouterr().out
    assert text.startswith("> DRAFT, not sent. Approve with: safety-gateway incidents "
                           f"approve-draft {ident} --for {audience}")
    inc = load_incident(path, ident)
    for fact in (ident, "2023-11-14 22:13:23.000Z",  # detected, contained
                 "fallback control",  # the process impact
                 "50.0% of the span from it (level = 2.5)",
                 "by 2023-11-15 22:13:23.000Z"):  # the next update: the early warning's due
        assert fact in text, fact
    if audience in ("regulator", "internal"):  # the playbook's word on the plant's SIS
        assert "never replaces, bypasses or resets the plant's safety instrumented" in text
    if audience != "customers":  # the customers are told less
        assert "envelope.gross" in text and "high" in text
        assert "- fallback: applied" in text
    assert inc.approvals == ()


def test_a_draft_is_edited_then_approved_and_the_approval_recorded(db, tmp_path, capsys):
    path, ident = db
    out = tmp_path / "regulator.md"
    assert cli("draft", ident, "--for", "regulator", "--db", path, "--out", str(out),
               "--next-update", "tomorrow 10:00 UTC") == 0
    assert "approve-draft" in capsys.readouterr().out
    text = out.read_text().replace("## Suspected cause", "## Suspected cause (edited)")
    assert "tomorrow 10:00 UTC" in text
    out.write_text(text)
    assert cli("approve-draft", ident, "--for", "regulator", "--file", str(out),
               "--by", "erin", "--db", path) == 0
    assert f"sha256 {hashlib.sha256(text.encode()).hexdigest()}" in capsys.readouterr().out
    (approval,) = load_incident(path, ident).approvals
    assert (approval.audience, approval.who, approval.text) == ("regulator", "erin", text)
    assert approval.sha256 == text_sha256(text)
    assert approval.source.startswith("cli@")
    assert incident_records(path, ident)[-1].actor == "erin"
    assert verify(path).ok
    # Without --file, the draft as it renders now is what is approved.
    assert cli("approve-draft", ident, "--for", "board", "--by", "erin", "--db", path,
               "--json") == 0
    data = json.loads(capsys.readouterr().out)
    board = data["approvals"][1]
    assert board["audience"] == "board" and board["text"].startswith("> DRAFT")
    assert board["sha256"] == text_sha256(board["text"])
    assert cli("show", ident, "--db", path) == 0
    assert "regulator  by erin at" in capsys.readouterr().out
    # The bundle's drafts: each audience now, and each approved text with who and sha256.
    files = bundle_drafts(load_incident(path, ident), now_wall_s=1_700_000_100.0)
    assert sorted(files) == ["drafts/board.approved-1.md", "drafts/board.md",
                             "drafts/customers.md", "drafts/internal.md",
                             "drafts/regulator.approved-1.md", "drafts/regulator.md"]
    assert files["drafts/regulator.approved-1.md"].endswith(text)
    assert f"sha256 {approval.sha256}" in files["drafts/regulator.approved-1.md"]


def test_bad_templates_and_inputs_are_refused_clearly(db, tmp_path, capsys):
    path, ident = db
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "board.md").write_text("Dear board, $severity $sevrity\n")
    assert cli("draft", ident, "--for", "board", "--db", path, "--templates",
               str(folder)) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'board.md'}: unknown placeholder(s) sevrity; known: incident" in err
    assert cli("draft", ident, "--for", "regulator", "--db", path, "--templates",
               str(folder)) == 2
    assert "cannot read the regulator template" in capsys.readouterr().err
    (folder / "internal.md").write_text("costs $5\n")
    assert cli("draft", ident, "--for", "internal", "--db", path, "--templates",
               str(folder)) == 2
    assert "write $$ for a dollar sign" in capsys.readouterr().err
    empty = tmp_path / "empty.md"
    empty.write_text("  \n")
    assert cli("approve-draft", ident, "--for", "board", "--file", str(empty), "--by", "erin",
               "--db", path) == 2
    assert cli("draft", "INC-nope", "--for", "board", "--db", path) == 1
    with pytest.raises(SystemExit):
        cli("draft", ident, "--for", "press", "--db", path)
    assert load_incident(path, ident).approvals == ()


def test_an_approval_whose_text_was_altered_is_not_folded(db):
    path, ident = db
    inc = load_incident(path, ident)
    text = render_draft(inc, "internal", now_wall_s=0.0)
    payloads = [json.loads(r.payload) for r in incident_records(path, ident)]
    approved = {"incident": ident, "action": "draft_approved", "audience": "internal",
                "who": "erin", "sha256": text_sha256(text), "text": text, "wall_s": 1.0}
    assert fold([*payloads, approved])[ident].approvals[0].text == text
    with pytest.raises(ValueError, match="does not match its sha256"):
        fold([*payloads, {**approved, "text": text + "!"}])
