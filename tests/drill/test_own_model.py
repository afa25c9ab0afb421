"""Drills with the team's own model: a scenario's ``controller.file`` (pinned by sha256, mapped
to the site's tags) and a site's own ONNX model run exactly as given, never replaced by a zoo
model; a bad file, hash or mapping is refused with file:line and key (exit 2).

The drills here are real (simulator, gateway, model over loopback) and short (a few simulated
seconds of AUTO)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError
from simulators.drill.cli import drills_dir
from simulators.drill.runner import run_drill
from simulators.drill.scenario import load_scenario
from simulators.zoo import graphs
from simulators.zoo.own import WATER_TANK_LINEAR_PATH, water_tank_linear

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "configs" / "water_tank.yaml"
INFLOW_PCT = 37.0  # what the constant test model always proposes for the inflow valve


def _constant_model(folder: Path) -> tuple[Path, str]:
    """A model that always proposes inflow 37 %, pump 30 %: no zoo model ever does."""
    data = graphs.serialize(graphs.linear([[0.0, 0.0], [0.0, 0.0]], [INFLOW_PCT, 30.0]))
    path = folder / "team_model.onnx"
    path.write_bytes(data)
    return path, graphs.sha256_hex(data)


def _site_with_own_model(folder: Path, model: Path, sha: str) -> Path:
    """The example tank, its controller section naming the team's own ONNX file."""
    text = SITE.read_text().replace("path: ../reports/water_tank_audit.db",
                                    f"path: {folder}/site_audit.db")
    controller = (f"controller:\n  kind: onnx\n  model: {model.name}\n  sha256: {sha}\n"
                  "  inputs: [level, demand]\n  outputs: [inflow_valve, outflow_pump]\n\n")
    text = re.sub(r"^controller:\n(?:  .*\n|\n)*", controller, text, flags=re.M)
    path = folder / "own_site.yaml"
    path.write_text(text)
    return path


def _scenario(folder: Path, site: Path, controller: str, extra: str = "") -> Path:
    path = folder / "own.yaml"
    path.write_text(f"plant: water_tank\nsite: {site}\ncontroller: {controller}\nseed: 3\n"
                    f"duration_s: 8\nauto_after_s: 4\n{extra}")
    return path


def _ai_proposals(run) -> list[float]:
    i = run.actuators.index("inflow_valve")
    return [t.proposal[i] for t in run.ticks if t.source == "ai"]


def test_a_sites_own_model_runs_as_the_site_says(tmp_path):
    model, sha = _constant_model(tmp_path)
    site = _site_with_own_model(tmp_path, model, sha)
    scenario = load_scenario(_scenario(tmp_path, site, "{kind: onnx}"))
    assert scenario.model == "site"
    run = asyncio.run(run_drill(scenario, tmp_path / "work"))
    assert run.drill_site is not None
    assert run.drill_site.controller.model == model
    assert run.drill_site.controller.sha256 == sha
    assert run.models[0] == ("ai", model, sha)
    proposals = _ai_proposals(run)
    assert len(proposals) > 20  # the AI had control for seconds
    assert all(p == INFLOW_PCT for p in proposals)  # the site's model, not the zoo's


def test_a_scenario_naming_a_zoo_model_for_such_a_site_is_refused(tmp_path):
    model, sha = _constant_model(tmp_path)
    site = _site_with_own_model(tmp_path, model, sha)
    path = _scenario(tmp_path, site, "{kind: onnx, model: nominal}")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "drill", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert f"{path}:3: controller.model: the site 'water-tank' runs its own ONNX model" in (
        result.stderr)
    assert "Traceback" not in result.stderr


def test_a_scenarios_own_file_runs_with_its_mapping(tmp_path):
    model, sha = _constant_model(tmp_path)
    scenario = load_scenario(_scenario(
        tmp_path, SITE, f"{{kind: onnx, file: {model.name}, sha256: {sha}, "
                        "inputs: [level, demand], outputs: [inflow_valve, outflow_pump]}"))
    assert (scenario.model, scenario.own_model and scenario.own_model.path) == ("file", model)
    run = asyncio.run(run_drill(scenario, tmp_path / "work"))
    assert run.drill_site is not None and run.drill_site.controller.model == model
    assert run.drill_site.controller.inputs == ("level", "demand")
    proposals = _ai_proposals(run)
    assert len(proposals) > 20
    assert all(p == INFLOW_PCT for p in proposals)


def test_the_shipped_own_model_is_the_builders(tmp_path):
    # The committed example file is exactly what simulators/zoo/own.py builds, and the
    # example scenario pins its hash.
    data = water_tank_linear()
    assert WATER_TANK_LINEAR_PATH.read_bytes() == data
    sc = load_scenario(drills_dir() / "own_model_water_tank.yaml")
    assert sc.own_model is not None
    assert sc.own_model.path == WATER_TANK_LINEAR_PATH
    assert sc.own_model.sha256 == graphs.sha256_hex(data)


OK_MAPPING = "inputs: [level, demand], outputs: [inflow_valve, outflow_pump]"


@pytest.mark.parametrize(("controller", "expected"), [
    ("{kind: onnx, file: missing.onnx, sha256: SHA, " + OK_MAPPING + "}",
     "3: controller.file: no such model file"),
    ("{kind: onnx, file: team_model.onnx, sha256: " + "0" * 64 + ", " + OK_MAPPING + "}",
     "3: controller.sha256: "),
    ("{kind: onnx, file: team_model.onnx, sha256: SHA, inputs: [level, pressure], "
     "outputs: [inflow_valve, outflow_pump]}",
     "3: controller.inputs: 'pressure' is not a tag of the site 'water-tank'"),
    ("{kind: onnx, file: team_model.onnx, sha256: SHA, inputs: [level, demand], "
     "outputs: [inflow_valve, level]}",
     "3: controller.outputs: 'level' is not an actuator"),
    ("{kind: onnx, file: team_model.onnx, sha256: SHA, inputs: [level, demand, uptime_s], "
     "outputs: [inflow_valve, outflow_pump]}",
     "3: controller.inputs: "),
    ("{kind: onnx, file: team_model.onnx, sha256: SHA}",
     "3: controller.inputs: required with controller.file"),
    ("{kind: onnx, model: nominal, file: team_model.onnx}",
     "3: controller.file: give either model"),
    ("{kind: onnx, model: evil}", "3: controller.model: must be one of"),
    ("{kind: onnx, model: nominal, sha256: SHA}",
     "3: controller.sha256: goes with controller.file"),
])
def test_bad_own_model_is_named_with_its_line_and_key(tmp_path, controller, expected):
    _, sha = _constant_model(tmp_path)
    path = _scenario(tmp_path, SITE, controller.replace("SHA", sha))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert f"{path}:{expected}" in str(info.value)


def test_bad_own_model_exits_2_without_traceback(tmp_path):
    _constant_model(tmp_path)
    path = _scenario(tmp_path, SITE, "{kind: onnx, file: team_model.onnx, sha256: "
                     + "1" * 64 + ", " + OK_MAPPING + "}")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "drill", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert f"{path}:3: controller.sha256:" in result.stderr
    assert "Traceback" not in result.stderr
