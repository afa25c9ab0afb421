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
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: sensor_profile, tag: level}\n",
     "s.yaml:6: injections[0].profile: required for sensor_profile"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: sensor_profile, tag: pressure, "
     "profile: {shape: hold, value: 1}}\n",
     "s.yaml:6: injections[0].tag: 'pressure' is not a sensor of the site 'water-tank'"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: sensor_profile, tag: level, "
     "profile: {shape: ramp, to: 1}}\n",
     "s.yaml:6: injections[0].profile.over_s: required for a ramp profile"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: sensor_profile, tag: level, "
     "profile: {shape: band, low: 3, high: 2}}\n",
     "s.yaml:6: injections[0].profile.high: must be above low"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\n"
     "injections:\n  - {at_s: 50, kind: disturbance, name: load, "
     "profile: {shape: hold, value: 1}}\n",
     "s.yaml:5: injections[0].name: the water_tank plant's disturbances are demand"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: ai_silent, window_s: [40, 60]}\n",
     "s.yaml:6: injections[0].window_s: must be [start, end] with at_s <= start < end"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\ndetect_budget_s: 1\n"
     "injections:\n  - {at_s: 50, kind: ai_silent, cause: weather}\n",
     "s.yaml:6: injections[0].cause: must be one of"),
    ("plant: water_tank\nsite: SITE\nduration_s: 100\nauto_retry_s: 0\n",
     "s.yaml:4: auto_retry_s: must be > 0"),
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


def test_an_attack_present_from_the_start_loads(tmp_path):
    # Before issue 19 an injection had to come after AUTO; an attack present from the start
    # is now a scenario of its own (scored: caught before the AI gets control).
    text = ("plant: water_tank\nsite: SITE\nduration_s: 100\nauto_after_s: 30\n"
            "detect_budget_s: 1\ninjections:\n  - {at_s: 0, kind: backdoor_trigger}\n")
    sc = load_scenario(_write(tmp_path, text))
    assert sc.injected_at_s == 0.0 < sc.auto_after_s


def test_profiles_follow_their_shapes():
    from simulators.drill.profiles import Profile, Shape

    assert Profile(Shape.HOLD, to=2.0).value(5.0, 9.0) == 2.0
    ramp = Profile(Shape.RAMP, to=3.0, over_s=10.0)
    assert [ramp.value(t, 1.0) for t in (0.0, 5.0, 10.0, 20.0)] == [1.0, 2.0, 3.0, 3.0]
    step = Profile(Shape.STEP, start=1.0, to=4.0, after_s=2.0)
    assert [step.value(t, 0.0) for t in (0.0, 1.9, 2.0)] == [1.0, 1.0, 4.0]
    band = Profile(Shape.BAND, low=1.0, high=2.0, period_s=4.0)
    assert [band.value(t, 0.0) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [1.0, 1.5, 2.0, 1.5, 1.0]
