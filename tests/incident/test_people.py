"""People in the playbook: contacts, severity rules, danger limits; located config errors;
severity classified from trigger and consequence, and raised by an operator."""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import replace

import pytest

from gateway.audit.store import verify
from gateway.config import ConfigError
from gateway.incident.cli import add_parser
from gateway.incident.model import Phase, fold
from gateway.incident.people import (
    Consequence,
    ContactRole,
    PeoplePlan,
    Severity,
    SeverityFacts,
    SeverityRule,
)
from gateway.incident.playbook import DEFAULT_PLAYBOOK, load_playbook
from gateway.incident.store import incident_records, load_incident
from tests.incident.rig import Rig


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", *argv])
    return int(args.func(args))


def test_the_default_playbook_names_every_role_with_a_way_to_reach_them():
    book = load_playbook(DEFAULT_PLAYBOOK)
    people = book.people
    assert {c.role for c in people.contacts.values()} == set(ContactRole)
    for contact in people.contacts.values():
        assert contact.reach and all(h in book.hooks for h in contact.reach)
        assert contact.hours  # when they can be reached
    assert set(people.escalation) == set(Severity)
    for steps in people.escalation.values():
        assert steps[0].after_s == 0  # someone is told at once, whatever the severity
    names = {o.name: o for o in people.obligations}
    assert names["early_warning"].within_s == 24 * 3600
    assert names["notification"].within_s == 72 * 3600


BAD = """\
name: bad
hooks:
  ops_log: {kind: log}
contacts:
  boss:
    role: emperor
    reach: [ops_log]
  lead:
    role: shift_lead
    reach: [pager]
severity:
  default: urgent
  rules:
    - name: nothing
      level: high
      when: {}
    - name: margin
      level: high
      when: {margin_below: 2}
escalation:
  high:
    - {after_min: 0, notify: [nobody]}
  extreme:
    - {after_min: 0, notify: [lead]}
reporting:
  obligations:
    - name: early
      within_h: 1
      min_severity: high
      lead_time_min: 90
      notify: [lead]
danger_limits:
  level: [5, 1]
rules:
  - name: any
    match: ["*"]
"""


def test_every_people_error_is_reported_with_file_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    found = {(i.line, i.path) for i in info.value.issues}
    assert found == {
        (6, "contacts.boss.role"), (10, "contacts.lead.reach"),
        (12, "severity.default"), (16, "severity.rules[0].when"),
        (19, "severity.rules[1].when.margin_below"),
        (22, "escalation.high[0].notify"), (23, "escalation.extreme"),
        (30, "reporting.obligations[0].lead_time_min"), (33, "danger_limits.level")}
    text = str(info.value)
    assert f"{path}:10: contacts.lead.reach: unknown hook 'pager'; defined: ops_log" in text
    assert "unknown contact 'nobody'" in text


def test_the_playbook_command_checks_a_file_exit_2_with_located_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert cli("playbook", str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: contacts.boss.role: must be one of shift_lead" in err
    assert cli("playbook") == 0
    out = capsys.readouterr().out
    assert "regulator_liaison" in out and "early_warning      within 24 h" in out
    assert cli("playbook", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["people"]["escalation"]["critical"][0]["after_s"] == 0


def test_classification_takes_the_highest_rule_that_holds():
    plan = PeoplePlan(severity_rules=(
        SeverityRule("ai", Severity.HIGH, ai_in_control=True),
        SeverityRule("near", Severity.CRITICAL, ai_in_control=True, margin_below=0.05),
        SeverityRule("sensing", Severity.LOW, trigger=("input.*",)),
        SeverityRule("stopped", Severity.HIGH, mode_after=("safe_stop",))))
    facts = SeverityFacts(("input.stale.level",), False, "manual")
    assert plan.classify(facts) == (Severity.MEDIUM, None)  # LOW never lowers the default
    assert plan.classify(replace(facts, mode_after="safe_stop")) == (Severity.HIGH, "stopped")
    ai = replace(facts, ai_in_control=True)
    assert plan.classify(ai) == (Severity.HIGH, "ai")
    assert plan.classify(replace(ai, consequence=Consequence(0.2))) == (Severity.HIGH, "ai")
    assert plan.classify(replace(ai, consequence=Consequence(0.01))) == (
        Severity.CRITICAL, "near")
    # Not assessed yet: a margin condition does not hold.
    assert plan.classify(replace(ai, consequence=Consequence(None))) == (Severity.HIGH, "ai")


def test_an_ai_in_control_trip_is_high_and_a_sensor_fault_under_fallback_is_medium(tmp_path):
    rig = Rig(tmp_path / "a", after_s=1.0, window_s=2.0)
    rig.to_auto()
    rig.hijack()
    rig.good(5)
    rig.close()
    inc = load_incident(rig.db, rig.manager.incidents[0].id)
    assert inc.mode_at_trip == "auto"
    assert inc.severity is Severity.HIGH
    (change,) = inc.severity_changes
    assert change.by is None and change.rule == "ai_in_control"

    rig = Rig(tmp_path / "b", after_s=1.0, window_s=2.0)
    rig.good(3)  # MANUAL: the fallback is in control
    rig.freeze_level()
    rig.good(5)
    rig.close()
    inc = load_incident(rig.db, rig.manager.incidents[0].id)
    assert inc.mode_at_trip == "manual" and inc.severity is Severity.MEDIUM
    assert inc.severity_changes[0].rule is None


def test_the_consequence_in_the_window_raises_the_severity(tmp_path):
    """The level is 2.5 m; with danger limits [2.45, 10] the process was 0.5 % of the span
    from one: the playbook's near-danger rule makes the incident critical once the window is
    assessed, and the timeline says why."""
    book = load_playbook(DEFAULT_PLAYBOOK)
    book = replace(book, danger_limits={"level": (2.45, 10.0)})
    rig = Rig(tmp_path, playbook=book, after_s=1.0, window_s=2.0)
    rig.to_auto()
    rig.hijack()
    assert rig.manager.incidents[0].severity is Severity.HIGH
    rig.good(15)
    rig.close()
    inc = load_incident(rig.db, rig.manager.incidents[0].id)
    assert inc.consequence is not None and inc.consequence.sensor == "level"
    assert inc.consequence.min_margin is not None and 0 < inc.consequence.min_margin < 0.05
    assert inc.consequence.frames == inc.flight_recorder.frames  # type: ignore[union-attr]
    assert [c.level for c in inc.severity_changes] == [Severity.HIGH, Severity.CRITICAL]
    assert inc.severity_changes[-1].rule == "ai_drove_near_danger"
    assert any("consequence: closest approach" in e.text for e in inc.timeline)


def test_an_operator_raises_the_severity_with_a_reason(tmp_path, capsys):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.good(3)
    rig.freeze_level()
    rig.good(15)
    rig.close()
    db, ident = str(rig.db), rig.manager.incidents[0].id
    assert cli("severity", ident, "critical", "--reason", "level transmitter on the safety "
               "loop", "--by", "alice", "--db", db) == 0
    assert "severity critical" in capsys.readouterr().out
    inc = load_incident(db, ident)
    assert inc.severity is Severity.CRITICAL and inc.phase is Phase.INVESTIGATING
    change = inc.severity_changes[-1]
    assert (change.by, change.reason, change.previous) == (
        "alice", "level transmitter on the safety loop", Severity.MEDIUM)
    assert change.source.startswith("cli@")
    rec = incident_records(db, ident)[-2]  # the severity record (then the phase)
    assert rec.actor == "alice" and json.loads(rec.payload)["action"] == "severity"
    assert verify(db).ok
    # Never lowered, never without a reason, only known levels.
    assert cli("severity", ident, "high", "--reason", "x", "--by", "bob", "--db", db) == 1
    assert "can only be raised" in capsys.readouterr().err
    assert cli("severity", ident, "severe", "--reason", "x", "--by", "bob", "--db", db) == 2
    assert "unknown severity 'severe'" in capsys.readouterr().err
    assert cli("severity", ident, "critical", "--reason", " ", "--by", "bob", "--db", db) == 2
    assert cli("severity", ident, "critical", "--reason", "x", "--via",
               "opc.tcp://127.0.0.1:1/", "--user", "u") == 1  # it goes through --via now
    assert "cannot reach the gateway" in capsys.readouterr().err
    assert load_incident(db, ident).severity_changes == inc.severity_changes
    assert cli("list", "--db", db) == 0
    listed = capsys.readouterr().out
    assert f"{ident}  investigating  critical  sensing " in listed and " opened " in listed


def test_a_severity_record_that_does_not_rise_is_not_folded():
    plan = PeoplePlan()
    opened = {"incident": "I", "action": "open", "site": "s", "wall_s": 1.0, "at_s": 0.0,
              "trigger": {"detector": "d", "reason": "r"}, "mode_at_trip": "auto",
              "mode_after_trip": "manual", "people": plan.to_json()}
    high = {"incident": "I", "action": "severity", "level": "high", "wall_s": 2.0}
    with pytest.raises(ValueError, match="does not rise"):
        fold([opened, high, high])


def test_old_incidents_without_people_still_read(tmp_path):
    old = {"incident": "I", "action": "open", "site": "s", "wall_s": 1.0, "at_s": 0.0,
           "trigger": {"detector": "d", "reason": "r"}, "mode_at_trip": "auto",
           "mode_after_trip": "manual"}
    inc = fold([old])["I"]
    assert inc.severity is None and inc.deadlines() == () and not inc.people.contacts


def test_a_small_playbook_with_people(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        hooks:
          pager: {kind: command, argv: [/bin/true, "{incident}"]}
        contacts:
          lead: {role: shift_lead, reach: pager, hours: "24/7"}
        escalation:
          medium: [{after_min: 0, notify: lead}]
        rules:
          - {name: any, match: "*"}
        """))
    book = load_playbook(path)
    assert book.people.contacts["lead"].reach == ("pager",)
    assert book.people.escalation[Severity.MEDIUM][0].contacts == ("lead",)
    assert book.people.obligations == ()
