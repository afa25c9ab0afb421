"""Scenario files: every shipped one loads; mistakes are reported as file:line: key: message."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.config import ConfigError
from simulators.drill.cli import drills_dir, find_scenario
from simulators.drill.scenario import InjectionKind, load_scenario

if TYPE_CHECKING:
    from pathlib import Path

DRILLS = sorted(drills_dir().glob("*.yaml"))


def test_there_are_enough_scenarios():
    # The issue asks for at least 8 covering (a)-(f) and the non-model faults.
    assert len(DRILLS) >= 8
    kinds = {i.kind for p in DRILLS for i in load_scenario(p).injections}
    models = {load_scenario(p).model for p in DRILLS} | {
        i.model for p in DRILLS for i in load_scenario(p).injections if i.model}
    assert {"hijack", "backdoor", "drift", "stealthy", "oscillation", "swapped"} <= models
    assert {InjectionKind.SENSOR_FREEZE, InjectionKind.SENSOR_SPOOF,
            InjectionKind.PLC_DISCONNECT, InjectionKind.AI_SILENT} <= kinds


@pytest.mark.parametrize("path", DRILLS, ids=[p.stem for p in DRILLS])
def test_shipped_scenarios_load(path):
    sc = load_scenario(path)
    assert sc.site.is_file()
    if sc.injections:
        assert sc.detect_budget_s is not None
        assert sc.auto_after_s < sc.injections[0].at_s < sc.duration_s


def test_default_scenario_is_the_backdoored_tank():
    path = find_scenario("backdoor_water_tank")
    assert path is not None
    sc = load_scenario(path)
    assert (sc.plant, sc.model) == ("water_tank", "backdoor")


def _write(tmp_path: Path, text: str) -> Path:
    site = drills_dir().parent / "water_tank.yaml"
    path = tmp_path / "s.yaml"
    if "controller" not in text:  # appended: the lines above keep their numbers
        text += "controller: {kind: onnx, model: nominal}\n"
    path.write_text(text.replace("SITE", str(site)))
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("plant: pond\nsite: SITE\nduration_s: 10\n", "s.yaml:1: plant: must be one of"),
    ("plant: water_tank\nsite: nowhere.yaml\nduration_s: 10\n", "s.yaml:2: site: no such site"),
    ("plant: water_tank\nsite: SITE\n", "s.yaml:1: duration_s: required key is missing"),
    ("plant: water_tank\nsite: SITE\nduration_s: -1\n", "s.yaml:3: duration_s: must be > 0"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ncontroller: {kind: onnx, model: evil}\n",
     "s.yaml:4: controller.model: must be one of"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: sensor_freeze}\n",
     "s.yaml:6: injections[0].tag: required for sensor_freeze"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 500, kind: ai_silent}\n",
     "s.yaml:6: injections[0].at_s: must lie in [0, duration_s=100)"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\n"
     "injections:\n  - {at_s: 50, kind: ai_silent}\n",
     "s.yaml:1: detect_budget_s: required when the scenario injects something"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: meteor}\n",
     "s.yaml:6: injections[0].kind: must be one of"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\nfoo: 1\n", "s.yaml:4: foo: unknown key"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\nauto_after_s: 60\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: ai_silent}\n",
     "auto_after_s: the AI must be in AUTO before the first injection"),
])
def test_mistakes_are_named_with_their_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, text))
    assert expected in str(info.value)


def test_every_problem_at_once(tmp_path):
    text = "plant: pond\nsite: SITE\nduration_s: -5\nfoo: 1\n"
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, text))
    assert len(info.value.issues) == 3
