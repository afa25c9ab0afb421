"""Playbook files: the default playbook, rule matching, and located errors, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.incident.model import ChecklistPhase
from gateway.incident.playbook import (
    DEFAULT_PLAYBOOK,
    ContainmentKind,
    ContainmentStep,
    HookKind,
    NotificationSpec,
    Playbook,
    Rule,
    load_playbook,
    redact_url,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_playbook_is_the_one_in_configs():
    assert ROOT / "configs" / "playbooks" / "default.yaml" == DEFAULT_PLAYBOOK


def test_the_default_playbook_loads_and_follows_the_five_phases():
    book = load_playbook(DEFAULT_PLAYBOOK)
    assert book.name == "default"
    assert book.join_open_incident
    assert book.sha256 is not None and len(book.sha256) == 64
    assert set(book.checklist) == set(ChecklistPhase)
    text = " ".join(i for items in book.checklist.values() for i in items)
    for command in ("safety-gateway audit verify", "safety-gateway incidents export",
                    "safety-gateway model rollback", "SHADOW", "AUTO"):
        assert command in text
    forensics = book.checklist_for(book.rule_for("envelope"))["forensics"]
    assert any("safety-gateway localise" in item for item in forensics)


@pytest.mark.parametrize(("detector", "rule", "containment"), [
    ("canary", "model_integrity", ["manual", "quarantine_model"]),
    ("input.frozen.level", "sensing", ["safe_stop", "procedure"]),
    ("input.quality.level", "sensing", ["safe_stop", "procedure"]),
    ("device.plc", "device", ["safe_stop", "procedure"]),
    ("envelope", "ai_behaviour", ["manual"]),
    ("envelope.gross", "ai_behaviour", ["manual"]),
    ("divergence.inflow_valve", "ai_behaviour", ["manual"]),
    ("violation_rate", "ai_behaviour", ["manual"]),
    ("ai_silent", "ai_unavailable", ["manual"]),
    ("deadline", "ai_unavailable", ["manual"]),
    ("controller.nonfinite_output", "ai_unavailable", ["manual"]),
    ("something.new", "any", ["manual"]),
])
def test_default_rules(detector, rule, containment):
    book = load_playbook(DEFAULT_PLAYBOOK)
    found = book.rule_for(detector)
    assert found is not None and found.name == rule
    assert [s.kind.value for s in found.containment] == containment
    # Never a shutdown beyond what the supervisor itself does for sensing faults.
    if not detector.startswith(("input.", "device.")):
        assert ContainmentKind.SAFE_STOP not in [s.kind for s in found.containment]


def test_a_full_playbook_with_every_kind_of_hook(tmp_path):
    path = tmp_path / "book.yaml"
    path.write_text("""
name: plant-7
join_open_incident: false
hooks:
  ops: {kind: log, level: error}
  soc: {kind: webhook, url: "https://soc.example:8443/in", timeout_s: 2.5}
  page: {kind: command, argv: [/usr/bin/page, "--id={incident}", "{message}"]}
checklist:
  recovery: ["approve AUTO"]
rules:
  - name: canary
    match: canary
    containment: [manual, quarantine_model, {kind: rate_limit, factor: 0.25}]
    notify: [ops, soc, page]
    join_open_incident: true
    checklist:
      forensics: ["diff the model"]
  - name: rest
    match: ["*"]
""")
    book = load_playbook(path)
    assert book.name == "plant-7" and not book.join_open_incident
    assert book.hooks["soc"] == NotificationSpec("soc", HookKind.WEBHOOK,
                                                 url="https://soc.example:8443/in",
                                                 timeout_s=2.5)
    page = book.hooks["page"]
    assert page.command({"incident": "INC-1", "message": "a; rm -rf /"}) == [
        "/usr/bin/page", "--id=INC-1", "a; rm -rf /"]  # one argument, never a shell
    canary = book.rule_for("canary")
    assert canary is not None
    assert canary.containment[-1] == ContainmentStep(ContainmentKind.RATE_LIMIT, 0.25)
    assert book.joins_open(canary) and not book.joins_open(book.rule_for("x"))
    assert [h.name for h in book.hooks_for(canary)] == ["ops", "soc", "page"]
    assert book.checklist_for(canary)["forensics"] == ["diff the model"]
    assert book.checklist_for(canary)["recovery"] == ["approve AUTO"]


def test_every_error_is_reported_at_once_with_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""name: bad
hooks:
  soc: {kind: webhook, url: "ftp://x"}
  page: {kind: command, argv: []}
  slow: {kind: log, timeout_s: -1}
  odd: {kind: carrier_pigeon}
checklist:
  lunch: ["eat"]
rules:
  - name: a
    match: ["*"]
    containment: [manual, reboot]
    notify: [nobody]
  - name: b
    match: []
    containment: [{kind: rate_limit, factor: 2}, rate_limit]
  - match: ["x"]
    colour: red
  - name: a
    match: ["y"]
""")
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    lines = [str(issue) for issue in info.value.issues]
    text = "\n".join(lines)
    assert all(line.startswith(f"{path}:") for line in lines), text
    expected = [
        (3, "hooks.soc.url"),
        (4, "hooks.page"),
        (5, "hooks.slow.timeout_s"),
        (6, "hooks.odd.kind"),
        (8, "checklist.lunch"),
        (12, "rules[0].containment[1]"),
        (13, "rules[0].notify"),
        (15, "rules[1].match"),
        (16, "rules[1].containment[0].factor"),
        (16, "rules[1].containment[1]"),
        (17, "rules[2].name"),
        (18, "rules[2].colour"),
        (19, "rules[3].name"),
    ]
    for line, key in expected:
        assert any(s.startswith(f"{path}:{line}: {key}") for s in lines), (line, key, text)


def test_a_missing_file_and_broken_yaml_are_located(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_playbook(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigError, match=rf"{bad}:\d+: YAML syntax error"):
        load_playbook(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(ConfigError, match="rules: required key is missing"):
        load_playbook(empty)


def test_playbooks_built_in_code_are_checked():
    with pytest.raises(ValueError, match="unknown hook"):
        Playbook(name="x", rules=(Rule("r", ("*",), notify=("nobody",)),))
    with pytest.raises(ValueError, match="factor"):
        ContainmentStep(ContainmentKind.RATE_LIMIT, 0.0)
    with pytest.raises(ValueError, match="argv"):
        NotificationSpec("x", HookKind.COMMAND)
    with pytest.raises(ValueError, match="placeholder"):
        NotificationSpec("x", HookKind.COMMAND, argv=("/bin/true", "{__class__}"))
    with pytest.raises(ValueError, match="url"):
        NotificationSpec("x", HookKind.WEBHOOK, url="file:///etc/passwd")


def test_first_matching_rule_wins_and_no_rule_is_none():
    book = Playbook(name="x", rules=(Rule("inputs", ("input.*",)), Rule("env", ("env*",))))
    assert book.rule_for("input.rate.level").name == "inputs"  # type: ignore[union-attr]
    assert book.rule_for("envelope.gross").name == "env"  # type: ignore[union-attr]
    assert book.rule_for("canary") is None
    assert book.checklist_for(None) == {p.value: [] for p in ChecklistPhase}


def test_credentials_never_leave_the_url_in_records():
    assert redact_url("https://u:p@h.example:8443/x?q=1") == "https://h.example:8443/x?q=1"
    assert redact_url("http://h/x") == "http://h/x"


def test_a_containment_step_calls_for_a_manual_operation_procedure_by_name(tmp_path):
    """The procedure is recorded in the incident's containment and added to its containment
    checklist (which resolving requires); the gateway itself requests nothing for it."""
    from gateway.incident.manager import Request
    from gateway.incident.model import ContainmentStatus
    from tests.incident.rig import Rig

    book = load_playbook(DEFAULT_PLAYBOOK)
    step = book.rule_for("input.frozen.level").containment[1]  # type: ignore[union-attr]
    assert (step.kind, step.procedure) == (ContainmentKind.PROCEDURE, "MOP-LOCAL-READING")
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.good(3)
    rig.freeze_level()
    rig.good(3)
    inc = rig.manager.incidents[0]
    (rec,) = [c for c in inc.containment if c.step == "procedure"]
    assert rec.status is ContainmentStatus.REQUESTED
    assert rec.detail.startswith("operators: procedure MOP-LOCAL-READING (operating manual")
    items = [i.text for i in inc.checklist_of(ChecklistPhase.CONTAINMENT)]
    assert items[-1].startswith("carry out the manual-operation procedure MOP-LOCAL-READING")
    assert any("checklist containment" in t and "MOP-LOCAL-READING" in t
               for t in inc.open_requirements())
    assert not [a for a in rig.actions if isinstance(a, Request)]
    assert "safety instrumented system" in inc.plant_safety
    assert "heartbeat" in inc.plant_safety and "watchdog" in inc.plant_safety
    rig.close()


def test_procedure_steps_are_checked(tmp_path):
    path = tmp_path / "book.yaml"
    path.write_text("""\
rules:
  - name: a
    match: "*"
    containment:
      - {kind: procedure}
      - {kind: manual, name: MOP-1}
      - {kind: procedure, name: MOP-2}
      - {kind: procedure, name: MOP-2}
""")
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    assert {(i.line, i.path) for i in info.value.issues} == {
        (5, "rules[0].containment[0].name"), (6, "rules[0].containment[1].name"),
        (4, "rules[0].containment")}
