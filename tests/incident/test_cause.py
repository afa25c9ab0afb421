"""Each incident names its cause when it opens (one mapping, shared with the drills), and a
device lost as a whole is told from a bad sensor."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import gateway
from gateway.incident.causes import Cause, cause_of
from gateway.incident.cli import add_parser
from gateway.incident.comms import facts, render_draft
from gateway.incident.model import fold_record
from gateway.incident.store import incident_records, load_incident
from gateway.supervisor.decision import Snapshot
from gateway.supervisor.detectors import InputHealth
from tests.incident.rig import Rig
from tests.incident.test_model import OPEN
from tests.supervisor.plant import TANK, good_policy


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", *argv])
    return int(args.func(args))


def _open_payload(rig: Rig, ident: str) -> dict:
    first = incident_records(rig.db, ident)[0]
    payload = json.loads(first.payload)
    assert payload["action"] == "open"
    return payload


def _lose_the_plc(rig: Rig):
    """Every sensor tag of the tank's PLC goes bad in one cycle (the connection is lost)."""
    snap = Snapshot(np.array([rig.tank.level_m, 0.01, 0.004, 1000.0]),
                    np.zeros(4, dtype=bool), np.full(4, 0.05))
    return rig.step(good_policy(rig), snapshot=snap)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fault", "detector", "cause"), [
    ("hijack", "envelope.gross", "ai_behaviour"),
    ("freeze_level", "input.quality.level", "sensing"),
    ("lose_plc", "device.plc", "device"),
])
def test_an_incident_records_its_cause_and_shows_it(tmp_path, capsys, fault, detector, cause):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.to_auto()
    decision = _lose_the_plc(rig) if fault == "lose_plc" else getattr(rig, fault)()
    rig.good(3)
    rig.close()
    (inc,) = rig.manager.incidents
    assert inc.trigger.detector == detector
    assert inc.cause == cause
    assert _open_payload(rig, inc.id)["cause"] == cause  # kept in the audit record
    assert load_incident(rig.db, inc.id).cause == cause  # and folded back from it
    if fault == "lose_plc":
        # The device names the trip; its sensors' own trips come in the same cycle.
        trips = [e.name for e in decision.events if e.kind == "trip"]
        assert trips[0] == "device.plc"
        assert set(trips[1:]) >= {f"input.quality.{s}"
                                  for s in ("level", "inflow_rate", "demand", "uptime_s")}
        assert ("device", "plc") in inc.trigger.evidence
    capsys.readouterr()
    assert cli("show", inc.id, "--db", str(rig.db)) == 0
    assert f"  cause     {cause}\n" in capsys.readouterr().out
    assert cli("show", inc.id, "--db", str(rig.db), "--json") == 0
    assert json.loads(capsys.readouterr().out)["cause"] == cause
    assert cli("list", "--db", str(rig.db)) == 0
    assert f"  {cause} " in capsys.readouterr().out
    assert cli("list", "--db", str(rig.db), "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["cause"] == cause
    # The drafts' facts name it, in words too.
    said = facts(inc, inc.opened_wall_s + 60.0)
    assert said["cause"].startswith(f"{cause}: ")
    assert f"Cause: {cause}: " in said["what_happened"]
    assert f"Cause: {cause}: " in render_draft(inc, "internal", now_wall_s=inc.opened_wall_s)


def test_an_older_record_without_a_cause_still_folds_and_a_bad_one_is_refused():
    assert "cause" not in OPEN
    assert fold_record(None, OPEN).cause is Cause.AI_BEHAVIOUR  # canary, by the mapping
    other = {**OPEN, "trigger": {**OPEN["trigger"], "detector": "site.own_check"}}
    assert fold_record(None, other).cause is Cause.OTHER
    assert fold_record(None, {**OPEN, "cause": "device"}).cause is Cause.DEVICE
    with pytest.raises(ValueError, match=r"cause must be one of .* not 'plc'"):
        fold_record(None, {**OPEN, "cause": "plc"})


def test_one_mapping_shared_with_the_drills():
    import simulators.drill.causes as drill

    assert drill.cause_of is cause_of and drill.Cause is Cause
    assert [cause_of(d) for d in ("device.plc", "input.stale.level", "canary", "envelope",
                                  "divergence.pump", "ai_silent", "controller.nan", "x")] == [
        "device", "sensing", "ai_behaviour", "ai_behaviour", "ai_behaviour",
        "ai_unavailable", "ai_unavailable", "other"]


def test_a_device_is_named_only_when_all_its_tags_are_lost_at_once():
    health = InputHealth(gateway.load_config(TANK))
    assert health.devices == (("plc", (0, 1, 2, 3)),)
    values = [2.5, 0.01, 0.004, 1000.0]

    def detectors(good: list[bool], age: list[float]) -> list[str]:
        return [f.detector for f in health.check(values, good, age, 1.0)[1]]

    fresh = [0.05] * 4
    # One sensor bad, or three of four: sensing.
    assert detectors([False, True, True, True], fresh) == ["input.quality.level"]
    assert "device.plc" not in detectors([False, False, False, True], fresh)
    # All four, bad or stale (a device that stopped answering): the device, first.
    assert detectors([False] * 4, fresh)[0] == "device.plc"
    found = detectors([False, False, True, True], [0.05, 0.05, 60.0, 60.0])
    assert found[0] == "device.plc" and len(found) == 5
    # Out of range is a reading, not a lost device.
    out_of_range = [f.detector for f in health.check([2.5, 0.01, 0.004, -1e9],
                                                     [False, False, False, True], fresh,
                                                     1.0)[1]]
    assert out_of_range[-1] == "input.range.uptime_s" and "device.plc" not in out_of_range


def test_a_device_with_one_sensor_is_left_to_its_sensor(tmp_path):
    from dataclasses import replace

    site = gateway.load_config(TANK)
    clock = replace(site.devices[0], name="clock")
    site = replace(site, devices=(*site.devices, clock),
                   tags=tuple(replace(t, device="clock") if t.name == "uptime_s" else t
                              for t in site.tags))
    health = InputHealth(site)
    assert health.devices == (("plc", (0, 1, 2)),)
    found = [f.detector for f in health.check([2.5, 0.01, 0.004, 1000.0],
                                              [True, True, True, False], [0.05] * 4, 1.0)[1]]
    assert found == ["input.quality.uptime_s"]
