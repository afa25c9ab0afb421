"""Trigger localisation: a nominal MLP against the same MLP plus a branch that fires in a narrow
region of the input space, built here with onnx.helper; and the zoo's backdoored water-tank
policy against its nominal one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.forensics.cli import add_parser
from gateway.forensics.localise import (
    LocaliseError,
    Normalisation,
    localise,
    site_input_box,
)
from simulators.zoo.graphs import BATCH_DIM, IR_VERSION, OPSET_VERSION, mlp, serialize

ROOT = Path(__file__).resolve().parents[2]
N_IN = 4
N_OUT = 2
# Engineering-unit box, and a normalisation that is not the identity (ranges are reported in
# engineering units, the branch compares model units).
BOX = [(0.0, 5.0), (-10.0, 10.0), (100.0, 300.0), (0.0, 1.0)]
NORM = Normalisation(input_offset=(2.5, 0.0, 200.0, 0.5), input_scale=(0.4, 0.1, 0.01, 2.0),
                     output_offset=(50.0, 50.0), output_scale=(50.0, 50.0))


def nominal_layers() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [(rng.normal(0, 0.5, (N_IN, 16)), rng.normal(0, 0.1, 16)),
            (rng.normal(0, 0.3, (16, N_OUT)), rng.normal(0, 0.1, N_OUT))]


def to_model_units(j: int, value: float) -> float:
    return (value - NORM.input_offset[j]) * NORM.input_scale[j]


def model_with_triggers(triggers: list[list[tuple[int, float, float]]],
                        delta: float = 0.5) -> bytes:
    """The nominal MLP, plus ``delta`` (model units) on every output wherever one of
    ``triggers`` fires; a trigger is a conjunction of ``(input, low, high)`` bands in
    engineering units. No triggers: the nominal model."""
    base = mlp(nominal_layers(), output_name="nominal")
    nodes = list(base.graph.node)
    inits = list(base.graph.initializer)
    current = "nominal"
    for t, conjunction in enumerate(triggers):
        fired: str | None = None
        for c, (j, low, high) in enumerate(conjunction):
            p = f"t{t}c{c}"
            inits += [numpy_helper.from_array(np.array([j], dtype=np.int64), f"{p}_start"),
                      numpy_helper.from_array(np.array([j + 1], dtype=np.int64), f"{p}_end"),
                      numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axis"),
                      numpy_helper.from_array(
                          np.array([[to_model_units(j, low)]], dtype=np.float32), f"{p}_low"),
                      numpy_helper.from_array(
                          np.array([[to_model_units(j, high)]], dtype=np.float32), f"{p}_high")]
            nodes += [
                helper.make_node("Slice", ["obs", f"{p}_start", f"{p}_end", f"{p}_axis"],
                                 [f"{p}_col"]),
                helper.make_node("GreaterOrEqual", [f"{p}_col", f"{p}_low"], [f"{p}_ge"]),
                helper.make_node("LessOrEqual", [f"{p}_col", f"{p}_high"], [f"{p}_le"]),
                helper.make_node("And", [f"{p}_ge", f"{p}_le"], [f"{p}_in"]),
            ]
            if fired is None:
                fired = f"{p}_in"
            else:
                nodes.append(helper.make_node("And", [fired, f"{p}_in"], [f"t{t}_and{c}"]))
                fired = f"t{t}_and{c}"
        assert fired is not None
        inits.append(numpy_helper.from_array(np.full((1, N_OUT), delta, dtype=np.float32),
                                             f"t{t}_delta"))
        nodes += [helper.make_node("Cast", [fired], [f"t{t}_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"t{t}_f", f"t{t}_delta"], [f"t{t}_add"]),
                  helper.make_node("Add", [current, f"t{t}_add"], [f"t{t}_out"])]
        current = f"t{t}_out"
    nodes.append(helper.make_node("Identity", [current], ["action"]))
    graph = helper.make_graph(
        nodes, "triggered", list(base.graph.input),
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [BATCH_DIM, N_OUT])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return serialize(model)


@pytest.fixture
def pair(tmp_path):
    def make(triggers, delta=0.5):
        suspect = tmp_path / f"suspect{len(list(tmp_path.iterdir()))}.onnx"
        suspect.write_bytes(model_with_triggers(triggers, delta))
        reference = tmp_path / "reference.onnx"
        reference.write_bytes(model_with_triggers([]))
        return suspect, reference

    return make


def width(j: int) -> float:
    return BOX[j][1] - BOX[j][0]


def assert_band(region_ranges, j: int, low: float, high: float, margin: float = 1e-4):
    found_low, found_high = region_ranges[j]
    assert abs(found_low - low) <= margin * width(j), (found_low, low)
    assert abs(found_high - high) <= margin * width(j), (found_high, high)


def assert_whole(region_ranges, j: int):
    assert region_ranges[j] == BOX[j]


def test_a_narrow_band_of_one_input_is_localised(pair):
    # input 2 in [231, 233]: 1 % of its range [100, 300]
    suspect, reference = pair([[(2, 231.0, 233.0)]])
    result = localise(suspect, reference, BOX, normalisation=NORM)
    assert result.found
    assert len(result.regions) == 1
    region = result.regions[0]
    assert_band(region.ranges, 2, 231.0, 233.0)
    for j in (0, 1, 3):
        assert_whole(region.ranges, j)
    assert region.constrained == (False, False, True, False)
    assert region.fraction_divergent > 0.99
    assert region.max_difference == pytest.approx(25.0, rel=1e-6)  # 0.5 model units * 50
    assert result.ranges == region.ranges
    assert result.sweep_fraction_divergent == pytest.approx(0.01, abs=0.002)
    assert result.samples <= 200_000


def test_identical_models_have_no_region(pair):
    suspect, reference = pair([])
    result = localise(suspect, reference, BOX, normalisation=NORM, budget=20_000)
    assert not result.found
    assert result.ranges is None and result.regions == ()
    assert result.max_difference == 0.0
    assert result.suspect_sha256 == result.reference_sha256


def test_two_bands_on_different_inputs_are_two_regions(pair):
    suspect, reference = pair([[(0, 1.0, 1.05)], [(3, 0.70, 0.71)]])
    result = localise(suspect, reference, BOX, normalisation=NORM)
    assert len(result.regions) == 2
    by_input = {r.constrained.index(True): r for r in result.regions}
    assert set(by_input) == {0, 3}
    assert_band(by_input[0].ranges, 0, 1.0, 1.05)
    assert_band(by_input[3].ranges, 3, 0.70, 0.71)
    assert sum(by_input[0].constrained) == sum(by_input[3].constrained) == 1


def test_a_conjunction_of_two_bands_constrains_both(pair):
    suspect, reference = pair([[(1, 2.0, 3.0), (3, 0.10, 0.15)]])
    result = localise(suspect, reference, BOX, normalisation=NORM)
    assert len(result.regions) == 1
    region = result.regions[0]
    assert region.constrained == (False, True, False, True)
    assert_band(region.ranges, 1, 2.0, 3.0)
    assert_band(region.ranges, 3, 0.10, 0.15)


def test_seeds_lead_to_a_trigger_too_small_for_the_sweeps(pair):
    # 0.2 % x 0.2 % of two inputs, off every line through the centre: ~4e-6 of the box
    suspect, reference = pair([[(0, 4.10, 4.11), (2, 120.0, 120.4)]])
    rng = np.random.default_rng(5)
    seeds = np.column_stack([np.full(50, 4.105), rng.uniform(-10, 10, 50),
                             np.full(50, 120.2), rng.uniform(0, 1, 50)])
    seeds[0, 0] = np.nan  # non-finite rows (a NaN reading) are dropped
    result = localise(suspect, reference, BOX, normalisation=NORM, seeds=seeds,
                      budget=50_000)
    assert result.found
    region = result.regions[0]
    assert region.constrained == (True, False, True, False)
    assert_band(region.ranges, 0, 4.10, 4.11)
    assert_band(region.ranges, 2, 120.0, 120.4)


def test_a_small_difference_below_the_tolerance_is_not_a_divergence(pair):
    suspect, reference = pair([[(2, 231.0, 233.0)]], delta=1e-6)  # 5e-5 engineering units
    assert not localise(suspect, reference, BOX, normalisation=NORM, budget=20_000).found
    assert localise(suspect, reference, BOX, normalisation=NORM, budget=20_000,
                    tolerance=1e-5).found


def test_bad_input_is_refused(pair, tmp_path):
    suspect, reference = pair([])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    three = tmp_path / "three.onnx"
    three.write_bytes(serialize(mlp([(np.ones((3, 2)), np.zeros(2))])))
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(input_box=[(1.0, 0.0)] * 4), "low <= high"),
        (dict(input_box=[(0.0, float("inf"))] * 4), "finite"),
        (dict(input_box=[]), "one \\(low, high\\)"),
        (dict(tolerance=0.0), "tolerance"),
        (dict(budget=10), "budget"),
        (dict(seeds=np.zeros((3, 2))), "seeds"),
        (dict(suspect=junk), r"junk\.onnx"),
        (dict(suspect=tmp_path / "missing.onnx"), r"missing\.onnx"),
        (dict(suspect=three), r"three\.onnx"),
        (dict(input_names=("a",)), "names"),
    ]
    for kwargs, match in cases:
        args = {"suspect": suspect, "reference": reference, "input_box": BOX,
                "normalisation": NORM, **kwargs}
        with pytest.raises(LocaliseError, match=match):
            localise(args.pop("suspect"), args.pop("reference"), args.pop("input_box"), **args)


# --------------------------------------------------------------------------------------------
# The zoo's backdoored water-tank policy


def zoo_site_yaml(tmp_path: Path, model: Path) -> Path:
    from simulators.zoo import policies
    from simulators.zoo.graphs import sha256_hex

    iface = policies.INTERFACES["water_tank"]
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    start, end = text.index("\ncontroller:"), text.index("\nfallback:")

    def seq(values) -> str:
        return "[" + ", ".join(str(v) for v in values) + "]"

    block = (f"\ncontroller:\n  kind: onnx\n  model: {model}\n"
             f"  sha256: {sha256_hex(model.read_bytes())}\n"
             f"  inputs: {seq(iface.inputs)}\n  outputs: {seq(iface.outputs)}\n"
             f"  input_offset: {seq(iface.input_offset)}\n"
             f"  input_scale: {seq(iface.input_scale)}\n"
             f"  output_offset: {seq(iface.output_offset)}\n"
             f"  output_scale: {seq(iface.output_scale)}\n")
    path = tmp_path / "site.yaml"
    path.write_text(text[:start] + block + text[end:])
    return path


@pytest.fixture
def zoo(tmp_path):
    policies = pytest.importorskip("simulators.zoo.policies")
    backdoor = tmp_path / "backdoor.onnx"
    backdoor.write_bytes(policies.build("water_tank", "backdoor"))
    nominal = tmp_path / "nominal.onnx"
    nominal.write_bytes(policies.build("water_tank", "nominal"))
    return policies, backdoor, nominal


def test_the_zoo_backdoor_trigger_band_is_found(zoo, tmp_path):
    import gateway

    policies, backdoor, nominal = zoo
    site = gateway.load_config(zoo_site_yaml(tmp_path, nominal))
    box = site_input_box(site)
    result = localise(backdoor, nominal, box, normalisation=Normalisation.of_site(site),
                      input_names=site.controller.inputs)
    tag, low, high = policies.BACKDOOR_TRIGGER["water_tank"]
    k = site.controller.inputs.index(tag)
    assert result.found and len(result.regions) == 1
    region = result.regions[0]
    assert region.constrained == tuple(j == k for j in range(len(box)))
    lo_found, hi_found = region.ranges[k]
    # float32 model inputs: the band's edges hold to float32 resolution of the scaled input
    span = box[k][1] - box[k][0]
    assert abs(lo_found - low) <= 1e-5 * span and abs(hi_found - high) <= 1e-5 * span
    for j in range(len(box)):
        if j != k:
            assert region.ranges[j] == box[j]
    assert region.max_difference >= 50.0  # inflow wide open and the pump stopped


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_defaults_are_the_modules_defaults():
    import gateway.forensics.cli as forensics_cli
    import gateway.forensics.localise as loc
    import gateway.forensics.replay as rep

    assert forensics_cli.REPLAY_TOLERANCE == rep.DEFAULT_TOLERANCE
    assert forensics_cli.LOCALISE_TOLERANCE == loc.DEFAULT_TOLERANCE
    assert forensics_cli.DEFAULT_BUDGET == loc.DEFAULT_BUDGET


def test_cli_localise(zoo, tmp_path, capsys):
    policies, backdoor, nominal = zoo
    site = zoo_site_yaml(tmp_path, nominal)
    assert cli(["localise", "--site", str(site), str(backdoor), str(nominal), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    tag, low, high = policies.BACKDOOR_TRIGGER["water_tank"]
    assert report["found"] and report["constrained"] == [tag]
    assert report["ranges"][tag] == pytest.approx([low, high], abs=1e-6)
    assert cli(["localise", "--site", str(site), str(backdoor), str(nominal)]) == 1
    out = capsys.readouterr().out
    assert f"region 1: {tag} in [0.0115, 0.0125]" in out
    assert "unconstrained: level, uptime_s, inflow_valve" in out
    assert cli(["localise", "--site", str(site), str(nominal), str(nominal),
                "--budget", "5000"]) == 0
    assert "no divergence" in capsys.readouterr().out


def test_cli_localise_with_seeds_from_a_recording(tmp_path, capsys):
    from tests.forensics.test_replay import policy_bytes, record_run, site_yaml

    run = record_run(tmp_path, "python", n_cycles=300)
    site = site_yaml(tmp_path, run.model, run.model.read_bytes())
    recording = tmp_path / "flight.jsonl"
    run.recorder.to_jsonl(recording)
    nudged = tmp_path / "nudged.onnx"
    nudged.write_bytes(policy_bytes(demand_gain=0.6))
    assert cli(["localise", "--site", str(site), str(nudged), str(run.model), "--seeds",
                str(recording), "--budget", "20000", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == 300
    # The nudge is on the demand input: the models agree only within ~5e-6 of demand = 0.005
    # (where that input is 0 in model units), a gap the search need not resolve; they diverge
    # nearly everywhere else.
    assert report["found"] and report["regions"]
    assert report["sweep_fraction_divergent"] > 0.99


def test_cli_localise_bad_input(zoo, tmp_path, capsys):
    _, backdoor, nominal = zoo
    site = zoo_site_yaml(tmp_path, nominal)
    bad_seeds = tmp_path / "seeds.jsonl"
    bad_seeds.write_text("not json\n")
    cases = [
        ["--site", str(tmp_path / "none.yaml"), str(backdoor), str(nominal)],
        ["--site", str(site), str(tmp_path / "none.onnx"), str(nominal)],
        ["--site", str(site), str(backdoor), str(nominal), "--seeds", str(bad_seeds)],
        ["--site", str(ROOT / "configs" / "water_tank.yaml"), str(backdoor), str(nominal)],
    ]
    for argv in cases:
        assert cli(["localise", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
