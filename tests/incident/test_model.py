"""Folding incident records: pure, strict about order and form."""

from __future__ import annotations

import json

import pytest

from gateway.incident.model import (
    ChecklistPhase,
    EntryKind,
    Phase,
    finite_json,
    fold,
    fold_record,
    utc_text,
)

OPEN = {"incident": "INC-1", "action": "open", "site": "tank", "wall_s": 100.0, "at_s": 5.0,
        "trigger": {"detector": "canary", "reason": "deviates", "at_s": 5.0,
                    "target": "manual", "evidence": [["deviation", 0.4], ["x", {"$f": "nan"}]]},
        "mode_at_trip": "auto", "mode_after_trip": "manual",
        "model": {"path": "m.onnx", "sha256": "aa"}, "config_sha256": "bb",
        "playbook": {"name": "default", "source": None, "sha256": None, "rule": "r"},
        "checklist": {"detection": ["look"], "recovery": ["roll back", "approve"]},
        "notify": ["ops"], "flight_recorder": None}


def rec(action: str, **fields):
    return {"incident": "INC-1", "action": action, "wall_s": 101.0, **fields}


def test_open_builds_the_incident():
    inc = fold_record(None, OPEN)
    assert inc.phase is Phase.DETECTED
    assert inc.trigger.evidence[0] == ("deviation", 0.4)
    assert inc.trigger.evidence[1][1] != inc.trigger.evidence[1][1]  # NaN
    assert [(i.phase, i.text) for i in inc.checklist] == [
        (ChecklistPhase.DETECTION, "look"), (ChecklistPhase.RECOVERY, "roll back"),
        (ChecklistPhase.RECOVERY, "approve")]
    assert inc.timeline[0].kind is EntryKind.OPENED
    assert inc.records == 1
    assert inc.to_json()["phase"] == "detected"
    json.dumps(finite_json(inc.to_json()), allow_nan=False)


def test_phases_only_move_forward():
    inc = fold_record(None, OPEN)
    inc = fold_record(inc, rec("phase", phase="investigating", at_s=None, by="a", reason="n"))
    with pytest.raises(ValueError, match="does not move forward"):
        fold_record(inc, rec("phase", phase="contained", at_s=6.0, by=None, reason=""))
    assert inc.phase_change(Phase.CONTAINED) is None


def test_order_and_form_are_checked():
    with pytest.raises(ValueError, match="never opened"):
        fold_record(None, rec("note", who="a", text="x"))
    inc = fold_record(None, OPEN)
    with pytest.raises(ValueError, match="opened twice"):
        fold_record(inc, OPEN)
    with pytest.raises(ValueError, match="unknown incident action"):
        fold_record(inc, rec("dance"))
    with pytest.raises(ValueError, match="must be text"):
        fold_record(inc, rec("note", who=3, text="x"))
    with pytest.raises(ValueError, match="out of order"):
        fold_record(inc, rec("flight_recorder", part=1, parts=2, frames=1, total_frames=2,
                             trigger_s=1.0, start_s=0.0, end_s=2.0))
    with pytest.raises(ValueError, match="names no incident"):
        fold([{"action": "open"}])


def test_checklist_items_added_later_keep_the_phase_order():
    inc = fold_record(None, OPEN)
    inc = fold_record(inc, rec("checklist", added={"forensics": ["diff"], "detection": ["look",
                                                                                        "ask"]},
                               rule="x"))
    assert [i.text for i in inc.checklist] == ["look", "ask", "diff", "roll back", "approve"]
    inc = fold_record(inc, rec("checklist", phase="recovery", index=1, item="approve",
                               who="bob"))
    assert inc.checklist_of(ChecklistPhase.RECOVERY)[1].done
    with pytest.raises(ValueError, match="no item 5"):
        fold_record(inc, rec("checklist", phase="recovery", index=5, item="?", who="bob"))


def test_utc_text():
    assert utc_text(0.0) == "1970-01-01 00:00:00.000Z"
    assert utc_text(None) == "-"
    assert utc_text(float("nan")) == "-"
