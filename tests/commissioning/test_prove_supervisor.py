"""prove runs the full supervisor: the mode machine and every detector judge the history, and a
tampered history trips the right detector at the right time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import yaml

from gateway.commissioning.learn import LearnOptions, learn
from gateway.commissioning.prove import CommandsAs, ProofResult, prove
from gateway.commissioning.sources import History, read_csv
from gateway.commissioning.writer import write_site
from gateway.config import load_config
from tests.commissioning.conftest import WATER

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site


def edited(history: History, name: str, rows: slice, change: np.ndarray) -> History:
    values = history.values.copy()
    values[rows, history.names.index(name)] += change
    return History(history.time_s, history.names, values, history.sources)


def trips(result: ProofResult, kind: str = "") -> dict[str, tuple[int, float]]:
    """Trips (of ``kind``'s tallies only, when given): name -> (count, first time)."""
    return {t.name: (t.count, t.first_s) for t in result.tallies.values()
            if t.action == "trip" and kind in ("", t.kind)}


def test_a_learned_envelope_has_no_trip_on_its_own_history_with_the_full_supervisor(
        tmp_path: Path, water_site: Site, water_ai_day: Path) -> None:
    history = read_csv(water_ai_day)
    out = tmp_path / "learned.yaml"
    write_site(learn(water_site, history, LearnOptions()),
               yaml.safe_load(WATER.read_text()), out)
    result = prove(load_config(out), history)
    assert result.supervisor and result.commands_as == "ai"
    # The AI-judging detectors and the mode machine ran: nearly all of the history in AUTO.
    assert {"violation_rate", "envelope.gross", "divergence.inflow_valve",
            "device.plc", "input.rate.level"} <= set(result.detectors_judged)
    assert result.time_in_mode_s["auto"] > 0.99 * (result.t_last_s - result.t_first_s)
    assert trips(result) == {}
    assert result.rearms == 0
    # What no history can judge is listed with the reason, not silently skipped.
    assert {d for d, _ in result.detectors_not_judged} >= {"canary", "deadline", "ai_silent"}


def test_a_biased_ai_trips_divergence_after_the_injection(water_site: Site,
                                                          water_ai_day: Path) -> None:
    history = read_csv(water_ai_day)
    start = 6000  # 600 s in
    n = history.n_samples - start
    # The AI's valve command biased upward by up to 45 % of its range, ramped at 0.5 % per
    # cycle: within every hand-written limit, so the envelope passes each command.
    bias = np.minimum(np.arange(1, n + 1) * 0.5, 45.0)
    forged = edited(history, "inflow_valve", slice(start, None), bias)
    forged.values[:, forged.names.index("inflow_valve")].clip(0.0, 100.0, out=forged.values[
        :, forged.names.index("inflow_valve")])
    result = prove(water_site, forged)
    found = trips(result)
    assert set(found) == {"divergence.inflow_valve"}, found
    count, at = found["divergence.inflow_valve"]
    assert count == 1
    assert float(history.time_s[start]) < at < float(history.time_s[start]) + 60.0
    assert prove(water_site, history).trips == 0  # the untampered history: nothing


def test_repeated_clamps_trip_the_violation_rate_and_prove_rearms(water_site: Site,
                                                                  water_ai_day: Path) -> None:
    history = read_csv(water_ai_day)
    col = history.names.index("inflow_valve")
    values = history.values.copy()
    # Twice, 60 cycles of a valve command jerking 15 % up and back (the step limit is 10):
    # every move up is clamped (a move toward closed, the safe state, never is), so every
    # other cycle. violation_max 20 in 10 s: the 21st clamp, 40 cycles in, trips.
    bursts = (3000, 9000)
    for start in bursts:
        for k in range(60):
            values[start + k, col] = values[start - 1, col] + (15.0 if k % 2 == 0 else 0.0)
    forged = History(history.time_s, history.names, values, history.sources)
    result = prove(water_site, forged)
    found = trips(result)
    assert set(found) == {"violation_rate"}, found
    rate = result.tallies["violation_rate"]
    assert rate.count == 2  # re-armed after the first burst, tripped again in the second
    assert result.rearms >= 1
    assert rate.first_s == float(history.time_s[bursts[0] + 40])
    assert rate.last_s == float(history.time_s[bursts[1] + 40])
    assert result.tallies["inflow_valve.step"].count == 60


def test_written_commands_judge_sensing_and_say_why_ai_detectors_are_not_judged(
        water_site: Site, water_day: Path) -> None:
    history = read_csv(water_day)
    forged = edited(history, "level", slice(1000, 1001), np.array([-2.0]))
    result = prove(water_site, forged, commands=CommandsAs.WRITTEN)
    assert result.supervisor and result.commands_as == "written"
    assert trips(result, "detector") == {"input.rate.level": (1, float(history.time_s[1000]))}
    why = dict(result.detectors_not_judged)
    assert "violation_rate" in why and "divergence.inflow_valve" in why
    assert "violation_rate" not in result.detectors_judged
    assert set(result.time_in_mode_s) <= {"manual", "safe_stop"}


def test_a_lost_device_is_judged_by_the_supervisor(water_site: Site, water_day: Path) -> None:
    history = read_csv(water_day)
    sensors = [t.name for t in water_site.sensors]
    values = history.values.copy()
    for name in sensors:
        values[2000:2004, history.names.index(name)] = np.nan  # four seconds of nothing
    result = prove(water_site, History(history.time_s, history.names, values, history.sources))
    found = trips(result)
    assert found["device.plc"] == (1, float(history.time_s[2002]))
    assert found["input.stale.level"] == (1, float(history.time_s[2002]))


def test_without_every_sensor_the_supervisor_does_not_run_and_says_so(
        water_site: Site, water_day: Path) -> None:
    history = read_csv(water_day)
    keep = [i for i, n in enumerate(history.names) if n != "demand"]
    partial = History(history.time_s, tuple(history.names[i] for i in keep),
                      history.values[:, keep], history.sources)
    result = prove(water_site, partial)
    assert not result.supervisor
    assert result.notes and "demand" in result.notes[0]
    assert result.json()["supervisor"] is False


def test_a_recording_is_judged_on_its_own_proposals_in_its_recorded_modes(
        tmp_path: Path, water_site: Site) -> None:
    import dataclasses

    import gateway.envelope
    from gateway.commissioning.sources import read_any
    from gateway.forensics.recorder import FlightRecorder, RecordingInfo, write_jsonl
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Proposal, Snapshot
    from gateway.supervisor.events import EventKind
    from gateway.supervisor.modes import OperatorRequest, RequestKind

    # A gateway's own recording: MANUAL, SHADOW, then AUTO, where the AI's valve command
    # jerks 15 % up every other cycle. The live supervisor clamps each (what was written moved
    # 2 % a cycle, within the rate limit) and its violation rate trips.
    site = dataclasses.replace(water_site, operation=dataclasses.replace(
        water_site.operation, clean_shadow_s=1.0))
    initial = np.array([40.0, 30.0, 0.0])
    sup = Supervisor(site, gateway.envelope.compile(site), initial, 0.0)
    info = RecordingInfo.of(site, 0.0, initial)
    recorder = FlightRecorder(600.0, 0.1, info)
    live_trip = None
    for k in range(600):
        now = 0.1 * (k + 1)
        for at, kind in ((5, RequestKind.TO_SHADOW), (30, RequestKind.TO_AUTO)):
            if k == at:
                request = OperatorRequest(kind, "op", True)
                sup.apply_request(request)
        snap = Snapshot(np.array([2.5 + 0.001 * np.sin(k), 0.02, 0.004, float(k)]),
                        np.ones(4, dtype=bool), np.zeros(4))
        valve = 40.0 + (15.0 if 300 <= k < 360 and k % 2 == 0 else 0.0)
        proposal = Proposal(np.array([valve, 30.0, 0.0]))
        decision = sup.step(snap, proposal, now)
        recorder.record_cycle(now, snap, None, proposal, decision)
        if live_trip is None and any(e.kind is EventKind.TRIP and e.name == "violation_rate"
                                     for e in decision.events):
            live_trip = now
    assert live_trip is not None
    path = tmp_path / "rec.jsonl"
    write_jsonl(path, recorder.frames(), info)
    history = read_any(path, site)
    result = prove(site, history)
    assert result.commands_as == "recorded"
    assert trips(result) == {"violation_rate": (1, live_trip)}
    assert {"ai_silent", "deadline"} <= set(result.detectors_judged)
    assert set(result.time_in_mode_s) == {"manual", "shadow", "auto"}
    # The written commands alone, judged as if they were the AI's, were never clamped: only
    # the recorded proposals show what the AI asked for.
    assert trips(prove(site, history, commands=CommandsAs.AI)) == {}
