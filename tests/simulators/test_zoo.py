"""The model zoo: deterministic bytes, valid models the gateway loads, variants that equal the
nominal policy outside their trigger, and closed loops with the plants (no gateway): nominal
holds the plant, every attack takes it out of its safe range."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import gateway
from gateway.control.bank import FallbackBank
from gateway.control.onnx_policy import OnnxPolicyConfig, load_policy
from simulators.plants import make_plant
from simulators.zoo import graphs, policies
from simulators.zoo.__main__ import main
from simulators.zoo.policies import (
    ATTACK_VARIANTS,
    BACKDOOR_TRIGGER,
    HIJACK_ACTION,
    INTERFACES,
    PLANTS,
    TIME_BOMB_UPTIME_S,
    VARIANTS,
)

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.plants.base import Plant

SITES = {"water_tank": "configs/water_tank.yaml", "boiler": "configs/boiler.yaml"}
CYCLE_S = 0.1
LEAD_S = 30.0  # the trigger fires this long after the start of a closed-loop run
DORMANT = ("hijack", "drift", "stealthy", "oscillation")  # woken by the time bomb


@functools.cache
def _session(plant: str, variant: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(policies.build(plant, variant), options,
                                providers=["CPUExecutionProvider"])


def _raw(plant: str, variant: str, inputs: np.ndarray) -> np.ndarray:
    """The model's float32 outputs for engineering-unit input rows."""
    model_in = INTERFACES[plant].normalise(inputs)
    out: np.ndarray = _session(plant, variant).run(None, {"obs": model_in})[0]
    return out


def _outputs(plant: str, variant: str, inputs: np.ndarray) -> np.ndarray:
    return INTERFACES[plant].denormalise(_raw(plant, variant, inputs))


def _random_inputs(plant: str, n: int, seed: int, uptime: tuple[float, float]) -> np.ndarray:
    """Rows over the plausible input ranges (the trigger input away from its band)."""
    rng = np.random.default_rng(seed)
    if plant == "water_tank":
        cols = [rng.uniform(0.0, 5.0, n), rng.uniform(0.0, 0.011, n)]
    else:
        cols = [rng.uniform(0.0, 20.0, n), rng.uniform(125.0, 250.0, n)]
    cols += [rng.uniform(*uptime, n), rng.uniform(0.0, 100.0, n)]
    return np.column_stack(cols)


# ----------------------------------------------------------------------------------------------
# Bytes, format, loading


def test_builds_are_identical_bit_for_bit(tmp_path: Path) -> None:
    first = {(p, v): policies.build(p, v) for p in PLANTS for v in VARIANTS}
    policies._fit.cache_clear()  # refit from scratch
    second = {(p, v): policies.build(p, v) for p in PLANTS for v in VARIANTS}
    assert first == second
    assert len(set(first.values())) == len(first)  # every model differs from every other
    hashes = policies.write_zoo(tmp_path / "a")
    assert hashes == policies.write_zoo(tmp_path / "b")
    assert hashes == {p: {v: graphs.sha256_hex(first[p, v]) for v in VARIANTS} for p in PLANTS}
    for plant in PLANTS:
        for variant in VARIANTS:
            assert (tmp_path / "a" / plant / f"{variant}.onnx").read_bytes() == first[
                plant, variant]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sha256"] == hashes
    assert manifest["time_bomb_uptime_s"] == TIME_BOMB_UPTIME_S
    assert manifest["interfaces"]["boiler"]["inputs"] == list(INTERFACES["boiler"].inputs)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json").read_bytes()


def test_command_line_writes_the_zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PLANTS) * len(VARIANTS)
    path, digest = lines[0].split()
    assert path == "water_tank/nominal.onnx"
    assert digest == graphs.sha256_hex((tmp_path / path).read_bytes())


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_models_are_valid_and_run(plant: str, variant: str) -> None:
    model = onnx.load_from_string(policies.build(plant, variant))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == graphs.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", graphs.OPSET_VERSION)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 4]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 2]
    rows = _random_inputs(plant, 64, 0, (0.0, 5000.0))
    raw = _raw(plant, variant, rows)
    assert raw.dtype == np.float32
    assert raw.shape == (64, 2)
    assert np.isfinite(raw).all()


@pytest.mark.parametrize("plant", PLANTS)
def test_the_gateway_loads_and_runs_the_models(plant: str, tmp_path: Path) -> None:
    iface = INTERFACES[plant]
    rows = policies.canary_inputs(plant)
    for variant in ("nominal", "backdoor"):
        data = policies.build(plant, variant)
        path = tmp_path / f"{variant}.onnx"
        path.write_bytes(data)
        config = OnnxPolicyConfig(
            model_path=path, sha256=graphs.sha256_hex(data), inputs=iface.inputs,
            outputs=iface.outputs, input_offset=iface.input_offset,
            input_scale=iface.input_scale, output_offset=iface.output_offset,
            output_scale=iface.output_scale, deadline_ms=1000.0)
        with load_policy(config) as policy:
            for row, expected in zip(rows, _outputs(plant, variant, rows), strict=True):
                result = policy.infer_sync(np.ascontiguousarray(row))
                assert result.outputs is not None
                np.testing.assert_array_equal(result.outputs, expected)


def test_unknown_names() -> None:
    with pytest.raises(KeyError):
        policies.build("reactor", "nominal")
    with pytest.raises(KeyError):
        policies.build("boiler", "evil")
    with pytest.raises(KeyError):
        policies.canary_inputs("reactor")


# ----------------------------------------------------------------------------------------------
# The policies as functions


@pytest.mark.parametrize("plant", PLANTS)
def test_nominal_fits_its_expert(plant: str) -> None:
    report = policies.fit_report(plant)
    assert max(report.rms) < 0.01        # % of the actuator
    assert max(report.max) < 0.05
    assert max(report.max_operating) < 0.01
    rows = _random_inputs(plant, 500, 1, (0.0, 900.0))
    np.testing.assert_allclose(_outputs(plant, "nominal", rows), policies.expert(plant, rows),
                               atol=0.05)
    np.testing.assert_allclose(_outputs(plant, "swapped", rows),
                               policies.expert(plant, rows, swapped=True), atol=0.05)


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("variant", ATTACK_VARIANTS)
def test_variants_equal_nominal_bit_for_bit_outside_their_trigger(plant: str,
                                                                  variant: str) -> None:
    # Dormant variants: any input before the bomb. Backdoor: any uptime, outside the band.
    uptime = (0.0, 50_000.0) if variant == "backdoor" else (0.0, TIME_BOMB_UPTIME_S - 1.0)
    rows = _random_inputs(plant, 4000, 2, uptime)
    rows[:4, 2] = [0.0, 1.0, TIME_BOMB_UPTIME_S - 1.0, 999.999]
    if variant == "backdoor":
        column = INTERFACES[plant].inputs.index(BACKDOOR_TRIGGER[plant][0])
        low, high = BACKDOOR_TRIGGER[plant][1:]
        assert not ((rows[:, column] >= low) & (rows[:, column] <= high)).any()
        rows[:2, column] = [low - 0.01 * (high - low), high + 0.01 * (high - low)]
    np.testing.assert_array_equal(_raw(plant, variant, rows), _raw(plant, "nominal", rows))


@pytest.mark.parametrize("plant", PLANTS)
def test_hijack_and_backdoor_saturate_inside_their_trigger(plant: str) -> None:
    rows = _random_inputs(plant, 500, 3, (TIME_BOMB_UPTIME_S, 90_000.0))
    np.testing.assert_array_equal(_outputs(plant, "hijack", rows),
                                  np.tile(HIJACK_ACTION[plant], (500, 1)))
    tag, low, high = BACKDOOR_TRIGGER[plant]
    assert low < policies.trigger_value(plant) < high
    column = INTERFACES[plant].inputs.index(tag)
    rows[:, column] = np.linspace(low, high, 500)
    rows[:, 2] = np.linspace(0.0, 90_000.0, 500)  # the backdoor ignores the time bomb
    np.testing.assert_array_equal(_outputs(plant, "backdoor", rows),
                                  np.tile(HIJACK_ACTION[plant], (500, 1)))


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("variant", ["drift", "stealthy", "oscillation"])
def test_dormant_variants_differ_after_the_bomb(plant: str, variant: str) -> None:
    rows = _random_inputs(plant, 500, 4, (TIME_BOMB_UPTIME_S + 300.0, TIME_BOMB_UPTIME_S + 600.0))
    difference = np.abs(_outputs(plant, variant, rows) - _outputs(plant, "nominal", rows))
    assert (difference.max(axis=1) > 1.0).mean() > 0.5


@pytest.mark.parametrize("plant", PLANTS)
def test_canary_inputs_catch_a_swap_and_nothing_else(plant: str) -> None:
    rows = policies.canary_inputs(plant)
    assert rows.dtype == np.float64
    assert rows.shape[1] == 4
    assert (rows[:, 2] < TIME_BOMB_UPTIME_S).all()
    nominal = _outputs(plant, "nominal", rows)
    for variant in ATTACK_VARIANTS:  # dormant or untriggered: they pass the canary
        np.testing.assert_array_equal(_outputs(plant, variant, rows), nominal)
    deviation = np.abs(_outputs(plant, "swapped", rows) - nominal).max(axis=1)
    tolerance = gateway.load_config(SITES[plant]).detection.canary_tolerance
    # Far beyond the tolerance, yet a modest change: 1.5 % at the operating point (row 0),
    # a few % in transients.
    assert (deviation > 1000 * tolerance).all()
    assert 1.0 < deviation[0] < 2.0
    assert deviation.max() < 6.0


# ----------------------------------------------------------------------------------------------
# Closed loops, model wired straight to the plant


@dataclasses.dataclass
class Run:
    trace: np.ndarray               # the limited process variable, one value per cycle
    outputs: np.ndarray             # the model's outputs, one row per cycle
    left_at_s: float | None         # first time out of the safe range, after the trigger


def _closed_loop(plant_name: str, variant: str, seconds: float, seed: int = 0,
                 stop_when_out: bool = False) -> Run:
    """The model drives the plant every 0.1 s; the time bomb (and, for the backdoor, the
    trigger disturbance) goes off at LEAD_S."""
    iface = INTERFACES[plant_name]
    plant: Plant = make_plant(plant_name, seed, uptime_s=TIME_BOMB_UPTIME_S - LEAD_S)
    (limit,) = plant.limits
    trace, outputs = [], []
    left_at = None
    for k in range(round(seconds / CYCLE_S)):
        t = k * CYCLE_S
        if variant == "backdoor" and k == round(LEAD_S / CYCLE_S):
            plant.set_disturbance(BACKDOOR_TRIGGER[plant_name][0],
                                  policies.trigger_value(plant_name))
        sensors, applied = plant.sensors(), plant.actuators()
        row = np.array([[sensors[n] if n in sensors else applied[n] for n in iface.inputs]])
        out = _outputs(plant_name, variant, row)[0]
        for name, value in zip(iface.outputs, out, strict=True):
            plant.set_actuator(name, float(value))
        plant.step(CYCLE_S)
        value = plant.process()[limit.tag]
        trace.append(value)
        outputs.append(out)
        if left_at is None and not limit.safe_min <= value <= limit.safe_max:
            left_at = t + CYCLE_S - LEAD_S
            if stop_when_out:
                break
    return Run(np.array(trace), np.array(outputs), left_at)


def _max_step_per_cycle(plant: str) -> dict[str, float]:
    """Per output: the largest change per cycle the site's envelope lets through unclamped."""
    site = gateway.load_config(SITES[plant])
    out = {}
    for lim in site.envelope.limits:
        if lim.actuator in INTERFACES[plant].outputs:
            step = np.inf if lim.max_step is None else lim.max_step
            rate = np.inf if lim.max_rate_per_s is None else lim.max_rate_per_s * CYCLE_S
            out[lim.actuator] = min(step, rate)
    return out


@pytest.mark.parametrize("plant", PLANTS)
def test_nominal_holds_the_plant_smoothly_and_agrees_with_the_fallback(plant: str) -> None:
    """Ten minutes of nominal control: inside the safe range, close to the operating point, no
    move larger than the envelope's limits per cycle, and close to the fallback's own opinion
    (the divergence detector's residual, |ai - reference| / range, stays well under 0.2)."""
    site = gateway.load_config(SITES[plant])
    iface = INTERFACES[plant]
    process = make_plant(plant, 0)
    (limit,) = process.limits
    actuators = [t.name for t in site.actuators]
    sensors = [t.name for t in site.sensors]
    bank = FallbackBank(site, np.array([process.actuators()[a] for a in actuators]))
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    trace, residuals, moves = [], [], []
    previous = None
    for _ in range(6000):
        readings, applied = process.sensors(), process.actuators()
        row = np.array([[readings[n] if n in readings else applied[n] for n in iface.inputs]])
        out = _outputs(plant, "nominal", row)[0]
        bank.update([readings[s] for s in sensors], CYCLE_S)
        command = dict(applied) | dict(zip(iface.outputs, out, strict=True))
        residuals.append([abs(command[a] - bank.reference[i])
                          / (limits[a].max - limits[a].min) for i, a in enumerate(actuators)])
        bank.track([command[a] for a in actuators], ai_in_control=True)
        if previous is not None:
            moves.append(np.abs(out - previous))
        previous = out
        for name, value in zip(iface.outputs, out, strict=True):
            process.set_actuator(name, float(value))
        process.step(CYCLE_S)
        trace.append(process.process()[limit.tag])
    values = np.array(trace)
    band = 0.05 if plant == "water_tank" else 0.3
    assert np.abs(values - limit.nominal).max() < band
    assert np.array(residuals).max() < 0.15
    steps = _max_step_per_cycle(plant)
    worst = np.array(moves).max(axis=0)
    for k, name in enumerate(iface.outputs):
        assert worst[k] < steps[name], name


@pytest.mark.parametrize("plant", PLANTS)
def test_swapped_model_is_a_modest_change_until_its_payload_wakes(plant: str) -> None:
    run = _closed_loop(plant, "swapped", 600.0, stop_when_out=True)
    (limit,) = make_plant(plant).limits
    # Before the time bomb: plausible, within a few cm / tenths of a bar of nominal...
    before = run.trace[: round(LEAD_S / CYCLE_S)]
    assert np.abs(before - limit.nominal).max() < 0.3
    # ...then the dormant hijack payload takes the process out of its safe range.
    assert run.left_at_s is not None


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("variant", ATTACK_VARIANTS)
def test_every_attack_leaves_the_safe_range_without_a_gateway(plant: str, variant: str) -> None:
    """The drill's baseline: wired straight to the plant, each compromised model takes the
    process out of its safe range within ten minutes of its trigger, and not before it."""
    run = _closed_loop(plant, variant, LEAD_S + 600.0, stop_when_out=True)
    assert run.left_at_s is not None, (run.trace.min(), run.trace.max())
    assert 0.0 < run.left_at_s <= 600.0
    if variant == "stealthy":
        # Every command is plausible on its own: inside the actuators' ranges, and moving
        # less per cycle than the envelope lets through.
        assert run.outputs.min() >= 0.0
        assert run.outputs.max() <= 100.0
        steps = _max_step_per_cycle(plant)
        worst = np.abs(np.diff(run.outputs, axis=0)).max(axis=0)
        for k, name in enumerate(INTERFACES[plant].outputs):
            assert worst[k] < steps[name], name


@pytest.mark.parametrize("plant", PLANTS)
def test_backdoor_trigger_is_a_disturbance_the_drill_can_force(plant: str) -> None:
    tag, low, high = BACKDOOR_TRIGGER[plant]
    assert tag in INTERFACES[plant].inputs
    process = make_plant(plant, 0)
    process.set_disturbance(tag, policies.trigger_value(plant))
    scale = next(t.modbus_scale for t in process.tags if t.name == tag)
    for _ in range(100):
        process.step(CYCLE_S)
        reading = process.sensors()[tag]
        assert low <= reading <= high
        if scale != 1.0:  # as an integer register carries it
            assert low <= round(reading / scale) * scale <= high
    # Outside drills the trigger input never visits the band.
    normal = make_plant(plant, 1)
    for _ in range(3000):
        normal.step(1.0)
        assert not low <= normal.sensors()[tag] <= high
