"""Forensic replay: recorded cycles through the same supervisor code, on both envelope engines.

A supervisor on the water-tank site runs a real ONNX policy in a loop, as the runtime does
(model inputs from the sensors and the last applied command, the canary cases run the cycle
after the supervisor asks, requests queued between cycles, write-backs after the step), with a
flight recorder taking every cycle. The scenario has operator requests (granted and refused),
a trip by a NaN reading, its reset and the way back to AUTO, an operator setpoint, a bypass,
canary rounds, a deadline miss, and at ``T_DEMAND_S`` a change of demand, the one input on which
the "nudged" model differs from the live one.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import gateway
import gateway.envelope
from gateway.adapters import codec
from gateway.config.schema import ControllerKind, ControllerSpec
from gateway.control.ai import AiWiring, onnx_policy_config
from gateway.control.onnx_policy import load_policy
from gateway.envelope.engine import ENGINES
from gateway.forensics.cli import add_parser
from gateway.forensics.recorder import FlightRecorder, RecordingInfo, read_jsonl
from gateway.forensics.replay import ReplayError, ReplayResult, replay, replay_recording
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Decision, Proposal, ProposalAnomaly, Snapshot
from gateway.supervisor.detectors import CanaryCases
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind
from simulators.zoo.graphs import mlp, serialize, sha256_hex

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.forensics.recorder import Frame

ROOT = Path(__file__).resolve().parents[2]
TANK = ROOT / "configs" / "water_tank.yaml"
CYCLE_S = 0.1
N_CYCLES = 3000
T_DEMAND_S = 200.0
INPUTS = ("level", "demand", "inflow_valve")
OUTPUTS = ("inflow_valve", "outflow_pump")
NORMALISATION = {"input_offset": (2.5, 0.005, 50.0), "input_scale": (0.4, 200.0, 0.02),
                 "output_offset": (50.0, 50.0), "output_scale": (50.0, 50.0)}


def policy_bytes(demand_gain: float = 0.5) -> bytes:
    """A level controller with demand feedforward, in model units (see NORMALISATION):
    inflow ~ 30 - 40 (level - 2.5) + feedforward(demand), pump ~ 30. ``demand_gain`` is the
    weight of the demand input into its hidden unit: changing it changes the outputs only
    where demand differs from its offset (0.005)."""
    w1 = np.zeros((3, 4))
    w1[0, 0] = 0.5
    w1[1, 1] = demand_gain
    w1[0, 2], w1[2, 2] = 0.05, 0.03
    w1[2, 3] = 0.02
    b1 = np.zeros(4)
    w2 = np.zeros((4, 2))
    w2[0, 0], w2[1, 0], w2[2, 0], w2[3, 1] = -4.0, 0.2, 0.01, 0.01
    b2 = np.array([-0.4, -0.4])
    return serialize(mlp([(w1, b1), (w2, b2)]))


def onnx_site(model: Path, data: bytes, canary_period_s: float = 5.0):
    site = gateway.load_config(TANK)
    controller = ControllerSpec(kind=ControllerKind.ONNX, model=model, sha256=sha256_hex(data),
                                inputs=INPUTS, outputs=OUTPUTS, deadline_ms=1000.0,
                                input_offset=NORMALISATION["input_offset"],
                                input_scale=NORMALISATION["input_scale"],
                                output_offset=NORMALISATION["output_offset"],
                                output_scale=NORMALISATION["output_scale"])
    return replace(site, controller=controller,
                   operation=replace(site.operation, clean_shadow_s=5.0),
                   detection=replace(site.detection, canary_period_s=canary_period_s))


@dataclass
class Tank:
    level_m: float = 2.5
    demand: float = 0.005

    def advance(self, command: np.ndarray, dt_s: float) -> None:
        inflow, pump, drain = (float(x) for x in command)
        rate = 0.0001 * (inflow - pump) - 0.002 * drain + 0.05 * (0.005 - self.demand)
        self.level_m = min(max(self.level_m + rate * dt_s, 0.0), 5.0)

    def snapshot(self, now_s: float, inflow: float) -> Snapshot:
        # The transmitter's reading moves a little even when the level does not, as a live
        # one does (the site trips on a reading frozen for 5 s; in SAFE_STOP the tank's inflow
        # and pump are both off and the level stands still).
        reading = self.level_m + 0.0005 * math.sin(7.3 * now_s)
        return Snapshot(np.array([reading, 0.0005 * inflow, self.demand, now_s]),
                        np.array([True, True, True, True]), np.full(4, 0.05))


@dataclass
class Run:
    site: object
    model: Path
    recorder: FlightRecorder
    decisions: list[Decision]
    canary: CanaryCases
    start_s: float
    initial: np.ndarray


def requests_at(k: int) -> list[OperatorRequest]:
    op = "alice"
    table = {
        5: [OperatorRequest(RequestKind.TO_SHADOW, op, True)],
        10: [OperatorRequest(RequestKind.BYPASS, "mallory", False, "canary", 5.0)],
        100: [OperatorRequest(RequestKind.TO_AUTO, op, True, reason="clean shadow")],
        # In SAFE_STOP the AI keeps proposing its own output, far from the safe values: the
        # gross-violation, violation-rate and divergence detectors would trip again at once.
        440: [OperatorRequest(RequestKind.BYPASS, "admin", True, name, 60.0,
                              reason="AI judged against safe values")
              for name in ("envelope.gross", "violation_rate", "divergence.inflow_valve")],
        450: [OperatorRequest(RequestKind.RESET_TRIP, "admin", True, reason="sensor fixed")],
        455: [OperatorRequest(RequestKind.TO_MANUAL, op, True)],
        500: [OperatorRequest(RequestKind.TO_SHADOW, op, True)],
        600: [OperatorRequest(RequestKind.TO_AUTO, op, True)],  # refused: shadow not clean
        700: [OperatorRequest(RequestKind.BYPASS, "admin", True, "canary", 10.0)],
        750: [OperatorRequest(RequestKind.END_BYPASS, "admin", True, "canary"),
              OperatorRequest(RequestKind.TO_AUTO, op, True)],
    }
    return table.get(k, [])


def record_run(tmp_path: Path, engine: str, n_cycles: int = N_CYCLES) -> Run:
    """Drive supervisor, policy and tank as the runtime does, recording every cycle."""
    data = policy_bytes()
    model = tmp_path / "policy.onnx"
    model.write_bytes(data)
    site = onnx_site(model, data)
    wiring = AiWiring(site)
    start_s = 0.0
    initial = np.array([30.0, 30.0, 0.0])
    with load_policy(onnx_policy_config(site)) as policy:
        golden = np.array([[2.5, 0.005, 30.0], [3.0, 0.005, 40.0]])
        expected = np.array([policy.infer_sync(row).outputs for row in golden])
        canary = CanaryCases(golden, expected, 1e-4)
        # As the live runtime builds it: with the codec, its commands are as written.
        sup = Supervisor(site, gateway.envelope.compile(site, engine), initial, start_s,
                         canary=canary, codec=codec)
        recorder = FlightRecorder(n_cycles * CYCLE_S + 10.0, CYCLE_S,
                                  RecordingInfo.of(site, start_s, initial, canary,
                                                   sha256_hex(data)))
        tank = Tank()
        applied = initial.copy()
        canary_due = False
        decisions = []
        for k in range(n_cycles):
            now = start_s + k * CYCLE_S
            if now >= T_DEMAND_S:
                tank.demand = 0.008
            for req in requests_at(k):
                sup.apply_request(req)
                recorder.operator.request(req)
            if k == 480:  # an operator setpoint in MANUAL: validated write-through, then held
                first = applied.copy()
                first[0] = min(applied[0] + 1.0, 100.0)
                sup.record_write(first)
                recorder.operator.write(first)
                sup.set_operator_setpoint(0, 45.0)
                recorder.operator.setpoint(0, 45.0)
                applied = first
            snapshot = tank.snapshot(now, applied[0])
            if k == 400:  # a NaN reading: input trip to SAFE_STOP
                snapshot = Snapshot(np.array([math.nan, *snapshot.sensors[1:]]), snapshot.good,
                                    snapshot.age_s)
            x = wiring.inputs(snapshot.sensors, applied)
            proposal = wiring.proposal(policy.infer(x), now)
            if k == 900:  # a deadline miss, as the runtime would see it
                proposal = Proposal(None, ProposalAnomaly.DEADLINE_MISSED, now)
            if canary_due:
                rows = [policy.infer(np.ascontiguousarray(r)).outputs for r in golden]
                proposal = replace(proposal, canary=np.array(rows, dtype=np.float64))
            decision = sup.step(snapshot, proposal, now)
            recorder.record_cycle(now, snapshot, x, proposal, decision)
            decisions.append(decision)
            canary_due = decision.canary_due
            written = decision.command
            if k % 97 == 0:  # the wire gate adjusted the encoded value: a write-back
                written = np.round(decision.command, 1)
                sup.record_write(written)
                recorder.operator.write(written)
            applied = written
            tank.advance(applied, CYCLE_S)
    return Run(site, model, recorder, decisions, canary, start_s, initial)


@pytest.fixture(scope="module", params=ENGINES)
def recorded(request, tmp_path_factory):
    """One recorded run per envelope engine (module scope: recording takes a few seconds).
    Like the suite's ``engine`` fixture, a missing compiled engine fails, never skips."""
    engine = request.param
    if engine == "cython":
        try:
            import _fastcheck.envelope  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a broken install must fail loudly
            pytest.fail(f"compiled engine not importable: {exc}")
    return engine, record_run(tmp_path_factory.mktemp(f"run-{engine}"), engine)


def test_the_scenario_has_what_it_claims(recorded):
    _, run = recorded
    events = [e for d in run.decisions for e in d.events]
    kinds = {e.kind for e in events}
    assert {EventKind.TRIP, EventKind.RESET, EventKind.REQUEST_REFUSED, EventKind.BYPASS_START,
            EventKind.BYPASS_END, EventKind.MODE_CHANGE} <= kinds
    assert any(e.kind is EventKind.TRIP and e.name.startswith("input.") for e in events)
    modes = [d.mode for d in run.decisions]
    assert Mode.SAFE_STOP in modes and Mode.MANUAL in modes
    assert modes[-1] is Mode.AUTO  # back in AUTO after the reset, to the end
    frames = run.recorder.frames()
    assert len(frames) == N_CYCLES
    assert sum(f.proposal is not None and f.proposal.canary is not None for f in frames) >= 50
    assert any(f.proposal is not None and f.proposal.anomaly is ProposalAnomaly.NONFINITE_INPUT
               for f in frames)
    assert sum(len(f.interventions) for f in frames) >= 30
    assert [f.seq for f in frames] == list(range(N_CYCLES))


def _timing_cycles(frames: Sequence[Frame]) -> list[int]:
    """The cycles whose recorded proposal was a deadline miss or a busy model."""
    timing = (ProposalAnomaly.DEADLINE_MISSED, ProposalAnomaly.BUSY)
    return [k for k, f in enumerate(frames)
            if f.proposal is not None and f.proposal.anomaly in timing]


def assert_identical(result: ReplayResult, decisions: list[Decision]) -> None:
    assert result.identical, result.divergences[:5]
    assert result.first_divergence_s is None
    assert result.proposal_divergent_cycles == result.decision_divergent_cycles == 0
    assert len(result.decisions) == len(decisions)
    for live, rep in zip(decisions, result.decisions, strict=True):
        assert rep.mode is live.mode
        assert rep.command.tobytes() == live.command.tobytes()  # bit for bit
        assert rep.source is live.source and rep.sources == live.sources
        assert repr(rep.events) == repr(live.events)  # repr: exact floats, and NaN == NaN
        assert rep.canary_due == live.canary_due


def test_recorded_proposals_reproduce_the_live_decisions(recorded):
    engine, run = recorded
    result = replay(run.site, run.recorder.frames(), None, engine=engine,
                    initial_command=run.initial, start_s=run.start_s, canary=run.canary)
    assert_identical(result, run.decisions)
    assert not result.recomputed and result.exact_start


def test_the_same_model_reproduces_the_live_decisions(recorded):
    engine, run = recorded
    result = replay(run.site, run.recorder.frames(), run.model, engine=engine,
                    initial_command=run.initial, start_s=run.start_s, canary=run.canary,
                    tolerance=0.0)
    assert_identical(result, run.decisions)
    assert result.recomputed
    # The deadline misses cannot be recomputed offline: the one the run forces at cycle 900,
    # and any the model's own deadline caused while the recording was made on a busy host.
    timing = _timing_cycles(run.recorder.frames())
    assert 900 in timing
    assert result.recorded_kept == len(timing)
    assert result.max_proposal_diff == {"inflow_valve": 0.0, "outflow_pump": 0.0,
                                        "drain_valve": 0.0}


def test_a_jsonl_round_trip_replays_bit_for_bit(recorded, tmp_path):
    engine, run = recorded
    path = tmp_path / "flight.jsonl"
    run.recorder.to_jsonl(path)
    recording = read_jsonl(path)
    assert recording.info is not None
    assert recording.info.start_s == run.start_s
    assert recording.info.canary is not None
    np.testing.assert_array_equal(recording.info.canary.outputs, run.canary.outputs)
    for a, b in zip(recording.frames, run.recorder.frames(), strict=True):
        assert a.now_s == b.now_s
        assert a.requests == b.requests
        assert a.interventions == b.interventions
        assert repr(a.decision.events) == repr(b.decision.events)
        assert a.snapshot.sensors.tobytes() == b.snapshot.sensors.tobytes()
    for model in (None, run.model):
        result = replay_recording(run.site, recording, model, engine=engine)
        assert_identical(result, run.decisions)


def test_a_nudged_model_diverges_when_demand_moves(recorded, tmp_path):
    engine, run = recorded
    nudged = tmp_path / "nudged.onnx"
    nudged.write_bytes(policy_bytes(demand_gain=0.6))
    frames = run.recorder.frames()
    result = replay(run.site, frames, nudged, engine=engine, initial_command=run.initial,
                    start_s=run.start_s, canary=run.canary)
    first = next(f.now_s for f in frames if f.now_s >= T_DEMAND_S)
    assert result.first_proposal_divergence_s == first
    assert result.first_divergence_s == first
    # Every cycle with the new demand, except deadline misses (not recomputed; the forced one
    # is before T, a busy host may add others).
    timing = set(_timing_cycles(frames))
    assert result.proposal_divergent_cycles == sum(
        f.now_s >= T_DEMAND_S and k not in timing for k, f in enumerate(frames))
    assert result.divergent_input_ranges["demand"] == (0.008, 0.008)
    assert result.max_proposal_diff["inflow_valve"] > 0.01
    assert result.max_proposal_diff["outflow_pump"] == 0.0
    assert result.mode_or_command_divergent_cycles > 0
    assert result.first_decision_divergence_s >= first
    assert result.divergent_inputs.shape == (result.proposal_divergent_cycles, 3)
    assert not result.identical and result.diverged
    summary = result.to_json()
    json.dumps(summary)
    assert summary["first_divergence_s"] == first


def test_a_window_frozen_mid_run_replays_warm_with_exact_proposals(recorded, tmp_path):
    engine, run = recorded
    recorder = FlightRecorder(30.0, CYCLE_S, run.recorder.info)
    for frame in run.recorder.frames()[:2000]:
        recorder.record(frame)
    window = recorder.freeze(2000 * CYCLE_S - 1.0, 0.0)
    assert window.complete
    path = tmp_path / "window.jsonl"
    window.to_jsonl(path)
    recording = read_jsonl(path)
    assert recording.frames[0].seq > 0
    result = replay_recording(run.site, recording, run.model, engine=engine, tolerance=0.0)
    assert not result.exact_start
    assert any("warm start" in note for note in result.notes)
    assert result.proposal_divergent_cycles == 0  # the model's outputs are exact regardless


def test_replay_refuses_what_does_not_fit(recorded, tmp_path):
    _, run = recorded
    frames = run.recorder.frames()
    with pytest.raises(ReplayError, match="no frames"):
        replay(run.site, [], None, initial_command=run.initial, start_s=0.0)
    with pytest.raises(ReplayError, match="initial_command"):
        replay(run.site, frames, None, initial_command=[1.0], start_s=0.0)
    boiler = gateway.load_config(ROOT / "configs" / "boiler.yaml")
    with pytest.raises(ReplayError, match="sensor"):
        replay(boiler, frames, None, initial_command=np.zeros(len(boiler.actuators)),
               start_s=0.0)
    external = gateway.load_config(TANK)
    with pytest.raises(ReplayError, match="onnx controller"):
        replay(external, frames[:10], run.model, initial_command=run.initial, start_s=0.0)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ReplayError, match=r"junk\.onnx"):
        replay(run.site, frames[:10], junk, initial_command=run.initial, start_s=0.0)


def test_replay_speed_is_over_100x_real_time_with_the_model(recorded):
    engine, run = recorded
    result = replay(run.site, run.recorder.frames(), run.model, engine=engine,
                    initial_command=run.initial, start_s=run.start_s, canary=run.canary,
                    keep_decisions=False)
    # 100x real time at 100 ms cycles is 1000 cycles/s; shared CI cores get a margin of 2.
    assert result.cycles_per_s * CYCLE_S >= 50.0, result.cycles_per_s


# --------------------------------------------------------------------------------------------
# The command line


def site_yaml(tmp_path: Path, model: Path, data: bytes) -> Path:
    text = TANK.read_text()
    start = text.index("\ncontroller:")
    end = text.index("\nfallback:")
    norm = "\n".join(f"  {k}: [{', '.join(repr(v) for v in vals)}]"
                     for k, vals in NORMALISATION.items())
    block = (f"\ncontroller:\n  kind: onnx\n  model: {model}\n  sha256: {sha256_hex(data)}\n"
             f"  inputs: [{', '.join(INPUTS)}]\n  outputs: [{', '.join(OUTPUTS)}]\n"
             f"  deadline_ms: 1000\n{norm}\n")
    text = text[:start] + block + text[end:]
    text = text.replace("  clean_shadow_s: 300", "  clean_shadow_s: 5")
    text = text.replace("detection:\n", "detection:\n  canary_period_s: 5\n", 1)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_replay(recorded, tmp_path, capsys):
    _, run = recorded
    site_file = site_yaml(tmp_path, run.model, run.model.read_bytes())
    loaded = gateway.load_config(site_file)
    assert loaded.controller == run.site.controller
    assert loaded.detection.canary_period_s == 5.0
    recording = tmp_path / "flight.jsonl"
    run.recorder.to_jsonl(recording)
    assert cli(["replay", "--site", str(site_file), "--recording", str(recording)]) == 0
    out = capsys.readouterr().out
    assert "no divergence" in out and "bit for bit" in out and "x real time" in out
    assert cli(["replay", "--site", str(site_file), "--recording", str(recording),
                "--model", str(run.model)]) == 0
    capsys.readouterr()
    nudged = tmp_path / "nudged.onnx"
    nudged.write_bytes(policy_bytes(demand_gain=0.6))
    assert cli(["replay", "--site", str(site_file), "--recording", str(recording),
                "--model", str(nudged), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["diverged"] and report["first_proposal_divergence_s"] == pytest.approx(
        T_DEMAND_S)
    assert report["divergent_input_ranges"]["demand"] == [0.008, 0.008]
    assert cli(["replay", "--site", str(site_file), "--recording", str(recording),
                "--model", str(nudged)]) == 1
    assert "first divergence at 200.000 s" in capsys.readouterr().out


def test_cli_replay_bad_input_is_one_line_and_exit_2(recorded, tmp_path, capsys):
    _, run = recorded
    site_file = site_yaml(tmp_path, run.model, run.model.read_bytes())
    recording = tmp_path / "flight.jsonl"
    run.recorder.to_jsonl(recording)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(recording.read_text().splitlines()[0] + "\n{\"seq\": 0}\n")
    cases = [
        ["--site", str(tmp_path / "missing.yaml"), "--recording", str(recording)],
        ["--site", str(site_file), "--recording", str(tmp_path / "missing.jsonl")],
        ["--site", str(site_file), "--recording", str(bad)],
        ["--site", str(site_file), "--recording", str(recording), "--model",
         str(tmp_path / "missing.onnx")],
        ["--recording", str(recording)],
        ["--bundle", str(tmp_path)],
    ]
    for argv in cases:
        assert cli(["replay", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    # The shipped site's controller is external: the recording's header says how the model
    # was wired, so the model runs (this used to be refused). The site file's canary period
    # is not the run's (5 s), and replay says where that makes the decisions differ.
    assert cli(["replay", "--site", str(TANK), "--recording", str(recording), "--model",
                str(run.model)]) == 1
    out = capsys.readouterr().out
    assert "controller as recorded (onnx" in out
    assert "decision fields that differ (cycles): canary_due" in out
    assert "bad.jsonl:2" in (cli(["replay", *cases[2]]), capsys.readouterr().err)[1]
