"""Tests for `safety-gateway check`: exit codes, located errors on stderr, the JSON summary.

Expected summaries are counted by hand from configs/water_tank.yaml and configs/boiler.yaml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK, main
from gateway.envelope import ENGINE

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT / "configs" / "water_tank.yaml"
BOILER = ROOT / "configs" / "boiler.yaml"
# file:line: key.path: message  (the key path is absent only for whole-file problems)
LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?:(?P<key>[\w.\[\]-]+): )?(?P<msg>.+)$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def broken(tmp_path: Path, old: str, new: str, name: str = "broken.yaml") -> Path:
    text = WATER.read_text(encoding="utf-8")
    assert text.count(old) == 1
    path = tmp_path / name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    text = path.read_text(encoding="utf-8")
    assert text.count(needle) == 1
    return text[: text.index(needle)].count("\n") + 1


# --------------------------------------------------------------------------- valid files


def test_valid_file_prints_a_summary(capsys):
    code, out, err = run(capsys, "check", str(WATER))
    assert code == EXIT_OK
    # water tank: sensors level, inflow_rate, demand, uptime_s; actuators inflow_valve,
    # outflow_pump, drain_valve; constraints total_flow, pump_dry_run; two interlocks;
    # 10 steps of 1 s
    assert out == (
        f"{WATER}: ok: site 'water-tank', 4 sensors, 3 actuators, 2 linear constraints, "
        f"2 interlocks, prediction 10 x 1.0 s, engine {ENGINE}\n"
    )
    assert "Traceback" not in err


def test_two_valid_files(capsys):
    code, out, _ = run(capsys, "check", str(WATER), str(BOILER))
    assert code == EXIT_OK
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{WATER}: ok: site 'water-tank'")
    assert lines[1] == (
        f"{BOILER}: ok: site 'boiler', 3 sensors, 3 actuators, 3 linear constraints, "
        f"3 interlocks, prediction 10 x 2.0 s, engine {ENGINE}"
    )


def test_json_summary_of_a_valid_file(capsys):
    code, out, _ = run(capsys, "check", "--json", str(WATER))
    assert code == EXIT_OK
    report = json.loads(out)  # stdout is exactly one JSON document
    assert report["ok"] is True
    assert report["engine"] in ("cython", "python")
    assert report["engine"] == ENGINE
    assert report["site"] == "water-tank"
    actuators = {a["name"]: a for a in report["actuators"]}
    assert list(actuators) == ["inflow_valve", "outflow_pump", "drain_valve"]
    for name, unit, low, high, safe in [
        # A conditional safe value shows its table's last row, the default (10 % open when the
        # level is known at or under 0.8 m; closed above it or unknown).
        ("inflow_valve", "%", 0.0, 100.0, 10.0),
        ("outflow_pump", "%", 0.0, 100.0, 0.0),
        ("drain_valve", "open", 0.0, 1.0, 0.0),
    ]:
        entry = actuators[name]
        assert (entry["unit"], entry["min"], entry["max"], entry["safe_value"]) == (
            unit, low, high, safe)
    assert actuators["drain_valve"]["allowed"] == [0.0, 1.0]
    sensors = {x["name"]: x for x in report["sensors"]}
    assert list(sensors) == ["level", "inflow_rate", "demand", "uptime_s"]
    assert (sensors["level"]["unit"], sensors["level"]["min"], sensors["level"]["max"]) == (
        "m", 0.0, 5.0)
    assert sensors["inflow_rate"]["max"] == 0.05
    constraints = {c["name"]: c for c in report["constraints"]}
    # per-actuator limits, 2 linear constraints, 2 interlocks, 1 kept prediction
    assert len(report["constraints"]) == 3 + 2 + 2 + 1
    assert constraints["total_flow"]["kind"] == "linear"
    assert constraints["total_flow"]["policy"] == "reject"
    assert constraints["high_level_closes_inflow"]["kind"] == "interlock"
    assert constraints["high_level_closes_inflow"]["then"] == ["inflow_valve <= 0.0"]
    assert constraints["low_level_stops_pump"]["policy"] == "trip"
    pred = constraints["predict.level"]
    assert (pred["kind"], pred["min"], pred["max"], pred["horizon_s"]) == (
        "prediction", 0.2, 4.8, 10.0)


def test_json_summary_of_several_files_is_a_list(capsys, tmp_path):
    bad = broken(tmp_path, "  name: water-tank", "  name: 3")
    code, out, _ = run(capsys, "check", "--json", str(WATER), str(bad))
    assert code == EXIT_INPUT  # one invalid file fails the whole check
    reports = json.loads(out)
    assert [r["ok"] for r in reports] == [True, False]
    assert reports[1]["file"] == str(bad)


# --------------------------------------------------------------------------- invalid files

INVALID = [
    # (old, new, key, needle on the reported line, fragment)
    ("    unit: m\n", "    unit: m\n    colour: blue\n", "tags.level.colour", "colour: blue",
     "unknown key"),
    ('"inflow_valve + outflow_pump + 40 * drain_valve <= 160"',
     '"inflow_valve * outflow_pump <= 160"', "envelope.constraints[0].expr",
     "inflow_valve * outflow_pump", "not linear"),
    ("    outflow_pump: {min: 0.0, max: 100.0,", "    outflow_pump: {min: 0.0, max: .nan,",
     "envelope.limits.outflow_pump.max", "max: .nan", "must be a finite number"),
    ('when: "level > 4.5"', 'when: "inflow_valve > 4.5"', "envelope.interlocks[0].when",
     "inflow_valve > 4.5", "only sensors"),
    ("  cycle_ms: 100", "  cycle_ms: 100\n  cycle_ms: 50", "site.cycle_ms", "cycle_ms: 50",
     "duplicate key (first defined at line 7)"),
]


@pytest.mark.parametrize(("old", "new", "key", "needle", "fragment"), INVALID,
                         ids=["unknown-key", "nonlinear", "nan-limit", "actuator-in-when",
                              "duplicate-key"])
def test_invalid_file_exits_2_with_located_errors(capsys, tmp_path, old, new, key, needle,
                                                 fragment):
    path = broken(tmp_path, old, new)
    code, out, err = run(capsys, "check", str(path))
    assert code == EXIT_INPUT
    assert out == ""
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines, "no error printed"
    for text in lines:
        match = LOCATED.match(text)
        assert match, f"not file:line: key: message: {text!r}"
        assert match["file"] == str(path)
    expected = f"{path}:{line_of(path, needle)}: {key}: "
    hits = [t for t in lines if t.startswith(expected)]
    assert hits, f"{expected!r} not in:\n{err}"
    assert fragment in hits[0]


def test_forbidden_yaml_tag_exits_2(capsys, tmp_path):
    target = tmp_path / "pwned"
    path = broken(tmp_path, "  name: water-tank",
                  f'  name: !!python/object/apply:builtins.open ["{target}", "w"]')
    code, _, err = run(capsys, "check", str(path))
    assert code == EXIT_INPUT
    assert not target.exists()
    assert err.startswith(f"{path}:5: site.name: YAML tag ")
    assert "Traceback" not in err


def test_several_errors_are_all_printed_in_line_order(capsys, tmp_path):
    path = broken(tmp_path, "  cycle_ms: 100", "  cycle_ms: zero")
    text = path.read_text(encoding="utf-8").replace("port: 1502", "port: 99999")
    text = text.replace("  sample_every_n: 100", "  sample_every_n: many")
    path.write_text(text, encoding="utf-8")
    code, _, err = run(capsys, "check", str(path))
    assert code == EXIT_INPUT
    matches = [LOCATED.match(t) for t in err.splitlines()]
    assert all(matches), err
    located = [(int(m["line"]), m["key"]) for m in matches if m is not None]
    assert [n for n, _ in located] == sorted(n for n, _ in located)
    assert located == [
        (line_of(path, "cycle_ms: zero"), "site.cycle_ms"),
        (line_of(path, "port: 99999"), "northbound.modbus.port"),
        (line_of(path, "sample_every_n: many"), "audit.sample_every_n"),
    ]


def test_json_on_an_invalid_file(capsys, tmp_path):
    path = broken(tmp_path, "    unit: m\n", "    unit: m\n    colour: blue\n")
    code, out, _ = run(capsys, "check", "--json", str(path))
    assert code == EXIT_INPUT
    report = json.loads(out)
    assert report["ok"] is False
    assert report["file"] == str(path)
    assert report["errors"] == [
        f"{path}:{line_of(path, 'colour: blue')}: tags.level.colour: unknown key"
    ]


def test_missing_file_exits_2_naming_the_file(capsys, tmp_path):
    path = tmp_path / "no-such-site.yaml"
    code, out, err = run(capsys, "check", str(path))
    assert code == EXIT_INPUT
    assert out == ""
    assert str(path) in err
    assert "file not found" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [[], ["check"], ["frobnicate"], ["check", "--yaml", str(WATER)]],
    ids=["no-args", "check-without-file", "unknown-command", "unknown-option"],
)
def test_bad_usage_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_INPUT
    _, err = capsys.readouterr()
    assert "usage: safety-gateway" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- loader problems


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("  divergence_drift: 0.2", "  divergence_drift:"),
        ('"inflow_valve + outflow_pump + 40 * drain_valve <= 160"',
         '"' + "(" * 400 + "inflow_valve" + ")" * 400 + ' <= 160"'),
    ],
    ids=["empty-detection-value", "deeply-nested-expression"],
)
def test_bad_input_never_exits_as_internal_error(capsys, tmp_path, old, new):
    # BUG (loader.py _read_simple, and expr.py recursion): both files are bad input, but load_config
    # raises TypeError / RecursionError, so check prints "internal error" and exits 70.
    path = broken(tmp_path, old, new)
    code, _, err = run(capsys, "check", str(path))
    assert "internal error" not in err
    assert code == EXIT_INPUT


# --------------------------------------------------------------------------- real processes


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SAFETY_GATEWAY_ENGINE", None)
    env.pop("SAFETY_GATEWAY_REQUIRE_COMPILED", None)
    env.update(extra)
    return env


def test_console_script_end_to_end(tmp_path):
    script = Path(sys.executable).with_name("safety-gateway")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    bad = broken(tmp_path, "  name: water-tank", "  name: [water, tank]")
    done = subprocess.run([str(script), "check", str(BOILER), str(bad)], capture_output=True,
                          text=True, timeout=60, env=_env(), check=False)
    assert done.returncode == EXIT_INPUT
    assert done.stdout.startswith(f"{BOILER}: ok: site 'boiler', ")
    assert f"{bad}:5: site.name: must be text, found a list" in done.stderr
    assert "Traceback" not in done.stderr


def test_module_entry_point_and_environment_exit_code():
    # `python -m gateway.cli` works; an impossible engine request is an environment problem.
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(BOILER)],
                          capture_output=True, text=True, timeout=60,
                          env=_env(SAFETY_GATEWAY_ENGINE="fortran"), check=False)
    assert done.returncode == EXIT_ENVIRONMENT
    assert "SAFETY_GATEWAY_ENGINE='fortran'" in done.stderr
    assert "Traceback" not in done.stderr
