"""Injections that do not depend on the zoo, several per scenario, each scored on its own and
on the cause the gateway's incident names. Real, short drills (a few simulated seconds after
AUTO)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulators.drill.runner import run_drill
from simulators.drill.scenario import load_scenario
from simulators.drill.score import score

SITE = Path(__file__).resolve().parents[2] / "configs" / "water_tank.yaml"


def _run(tmp_path: Path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"plant: water_tank\nsite: {SITE}\nseed: 6\n"
                    f"controller: {{kind: onnx, model: nominal}}\nauto_after_s: 3\n{text}")
    run = asyncio.run(run_drill(load_scenario(path), tmp_path / "work"))
    return run, score(run)


def test_a_sensor_follows_its_profile_and_is_lifted(tmp_path):
    # The level reading ramps from its value to 3 m over 5 s (about 0.1 m/s: under the site's
    # 0.25 m/s plausibility limit, so a benign-looking drift), then the PLC publishes the
    # truth again.
    run, card = _run(tmp_path, "duration_s: 14\ninjections:\n"
                     "  - {at_s: 4, kind: sensor_profile, tag: level, expect: no_trip, "
                     "duration_s: 6, profile: {shape: ramp, to: 3.0, over_s: 5}}\n")
    published = {round(s.at_s, 1): s.sensors_published["level"] for s in run.history}
    start = published[3.9]  # what the PLC published when the injection began
    assert abs(published[4.0] - start) < 1e-6
    assert abs(published[6.5] - (start + (3.0 - start) * 0.5)) < 1e-5
    assert abs(published[9.5] - 3.0) < 1e-6
    assert abs(published[12.0] - 2.5) < 0.1  # lifted at 10 s: the true level again
    assert [m.kind for m in run.marks if m.name == "sensor_profile"] == ["injection", "lifted"]
    (r,) = card.injections
    assert r.expect == "no_trip" and r.passed, r.verdict


def test_a_benign_injection_that_trips_fails_and_a_device_fault_names_the_device(tmp_path):
    # Two injections: a "benign" step of the level reading (the gateway trips on its rate:
    # the benign one fails), and a PLC disconnect declared as a device fault: every tag of the
    # PLC goes bad in the same cycle, the trip names the device, and the drill scores it so.
    # (Before the device finding the trip named input.quality.level: cause sensing, failed.)
    _, card = _run(tmp_path, "duration_s: 12\ndetect_budget_s: 2\ninjections:\n"
                     "  - {at_s: 4, kind: sensor_profile, tag: level, expect: no_trip, "
                     "duration_s: 1, profile: {shape: step, to: 1.0}}\n"
                     "  - {at_s: 7, kind: plc_disconnect, duration_s: 2, cause: device}\n")
    benign, device = card.injections
    assert not benign.passed
    assert benign.verdict.startswith("tripped at 4.1 s (input.rate.level) on a benign")
    assert device.detector == "device.plc"
    assert device.cause_named == "device" and device.cause_expected == "device"
    assert device.cause_scored and device.cause_ok is True
    assert device.passed, device.verdict
    assert not card.passed
    assert card.false_trips > 0  # the benign injection's trip came before the first attack
    assert [r.split(":")[0] for r in card.reasons if r.startswith("injection")] == [
        "injection 1 (sensor_profile at 4 s)"]


def test_a_plc_disconnect_opens_an_incident_whose_cause_is_the_device(tmp_path):
    # A real drill: the PLC drops off the network in AUTO. The incident it opens names the
    # device as its cause, with the device in the trigger's evidence; the sensors' own trips
    # come in the same cycle (classification only: the trip is not later than before).
    from gateway.incident.store import load_incidents

    run, card = _run(tmp_path, "duration_s: 8\ndetect_budget_s: 1.2\ninjections:\n"
                     "  - {at_s: 5, kind: plc_disconnect, duration_s: 2, cause: device}\n")
    (r,) = card.injections
    assert r.passed and r.detector == "device.plc" and r.cause_ok, r.verdict
    (incident,) = load_incidents(run.audit_db)
    assert incident.cause == "device"
    assert incident.trigger.detector == "device.plc"
    assert ("device", "plc") in incident.trigger.evidence
    trips = [m for m in run.marks if m.kind == "trip"]
    device_at = min(m.at_s for m in trips if m.name == "device.plc")
    sensor_at = min(m.at_s for m in trips if m.name.startswith("input.quality."))
    assert device_at == sensor_at
    assert {t.detector for t in incident.trips} >= {"device.plc", "input.quality.level"}
    assert card.incident_causes[0][1] == "device"


def test_a_disturbance_follows_its_profile(tmp_path):
    # The consumers' draw held at 8 l/s for 3 s, then the daily pattern again; no trip.
    run, card = _run(tmp_path, "duration_s: 10\ninjections:\n"
                     "  - {at_s: 4, kind: disturbance, name: demand, duration_s: 3, "
                     "profile: {shape: hold, value: 0.008}}\n")
    demand = {round(s.at_s, 1): s.process.get("demand") for s in run.history}
    truth = [s for s in run.history if 4.0 <= s.at_s < 7.0]
    assert truth
    assert all(abs(s.sensors_published["demand"] - 0.008) < 0.0006 for s in truth), demand
    assert card.passed, card.reasons
    assert card.injections[0].passed and card.injections[0].verdict == "no trip, as expected"
