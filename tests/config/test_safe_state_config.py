"""The safe state in the site file: conditional rows read as a cause-and-effect table, and the
proof `check` runs at load (gateway.envelope.proof): every refusal names the line, the key,
the interlock or constraint, the actuator and the values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from gateway.config import load_config
from gateway.envelope import compile as compile_envelope
from gateway.envelope.proof import prove_safe_state
from tests.config.test_loader import assert_issue, edit, issues_of, line_of, write

TANK = (Path(__file__).resolve().parents[2] / "configs" / "water_tank.yaml").read_text()
PUMP_SAFE = "    safe_value: 0.0\n"  # outflow_pump's (the only plain 0.0 in the file)


def test_shipped_sites_are_proven_by_check():
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--json",
                             str(root / "configs/water_tank.yaml"),
                             str(root / "configs/boiler.yaml")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert all(r["safe_state_proven"] for r in reports)


def test_a_conditional_safe_value_loads_and_the_engines_follow_it(tmp_path: Path):
    text = edit(TANK, PUMP_SAFE, """\
    safe_value:         # read top to bottom: the first row whose `when` holds wins
      - {when: "level < 1.0", value: 0}     # low (or unknown): stop the pump
      - {when: "level < 2.0", value: 10}
      - {value: 20}                         # otherwise a minimum draw downstream
""")
    site = load_config(write(tmp_path, text))
    assert [(c.actuator, c.when, c.value) for c in site.envelope.safe_cases
            if c.actuator == "outflow_pump"] == [
        ("outflow_pump", "level < 1.0", 0.0), ("outflow_pump", "level < 2.0", 10.0)]
    pump = next(t for t in site.actuators if t.name == "outflow_pump")
    assert pump.safe_value == 20.0
    for engine in ("python", "cython"):
        env = compile_envelope(site, engine)
        for level, want in ((0.5, 0.0), (1.5, 10.0), (3.0, 20.0), (float("nan"), 0.0)):
            sensors = np.array([level, 0.01, 0.004, 100.0])
            assert env.safe_state(sensors)[1] == want, (engine, level)


def test_malformed_conditional_tables_are_located(tmp_path: Path):
    cases = [
        ("      - {when: \"level < 1.0\", value: 0}\n      - {when: \"level < 2\", value: 20}\n",
         "when: \"level < 2\"", "tags.outflow_pump.safe_value[1].when", "the last row"),
        ("      - {value: 0}\n      - {value: 20}\n",
         "- {value: 0}", "tags.outflow_pump.safe_value[0].value", "needs `when`"),
        ("      - {when: \"level < 1.0\", value: 150}\n      - {value: 20}\n",
         "value: 150", "tags.outflow_pump.safe_value[0].value", "outside its own limits"),
        ("      - {when: \"inflow_valve < 1.0\", value: 0}\n      - {value: 20}\n",
         "when: \"inflow", "tags.outflow_pump.safe_value[0].when", "sensor"),
        ("      - {when: \"level < 1.0\", value: 0.005}\n      - {value: 20}\n",
         "value: 0.005", "tags.outflow_pump.safe_value[0].value", "cannot be represented"),
    ]
    for rows, at, key, fragment in cases:
        text = edit(TANK, PUMP_SAFE, "    safe_value:\n" + rows)
        path = write(tmp_path, text)
        assert_issue(path, issues_of(path), line_of(text, at), key, fragment)


def test_check_refuses_a_safe_state_that_breaks_a_constraint(tmp_path: Path):
    # A 30 % pump as the safe value breaks pump_dry_run (pump - 40 * level <= 12) between the
    # dry interlock (0.3 m, where it stops the pump) and 0.45 m; a stop would satisfy it.
    text = edit(TANK, PUMP_SAFE, "    safe_value: 30.0\n")
    path = write(tmp_path, text)
    issue = assert_issue(path, issues_of(path), line_of(text, "safe_value: 30.0"),
                         "tags.outflow_pump.safe_value", "breaks pump_dry_run")
    assert "outflow_pump = 30" in issue.message and "level" in issue.message


def test_check_refuses_interlocks_that_leave_an_actuator_no_value(tmp_path: Path):
    text = edit(TANK, '''      then: ["inflow_valve <= 0"]
      policy: clamp
''', '''      then: ["inflow_valve <= 0", "outflow_pump >= 50"]
      policy: clamp
    - name: pump_stop_near_full
      when: "level > 4.6"
      then: ["outflow_pump <= 0"]
''')
    path = write(tmp_path, text)
    issue = assert_issue(path, issues_of(path), line_of(text, PUMP_SAFE.strip()),
                         "tags.outflow_pump.safe_value", "no value")
    assert "high_level_closes_inflow" in issue.message and "pump_stop_near_full" in issue.message
    assert "level" in issue.message


def test_check_refuses_an_interlock_bound_the_wire_cannot_carry(tmp_path: Path):
    # The interlock's bound replaces a plain safe value of 20 % under 0.3 m; 12.345 % is not
    # a multiple of the register's 0.01 % resolution.
    text = edit(TANK, '''      then: ["outflow_pump <= 0", "drain_valve <= 0"]''',
                '''      then: ["outflow_pump <= 12.345", "drain_valve <= 0"]''')
    text = edit(text, PUMP_SAFE, "    safe_value: 20.0\n")
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, "safe_value: 20.0"),
                 "tags.outflow_pump.safe_value", "cannot be represented")


def test_a_constraint_no_command_can_meet_is_a_warning_not_a_refusal():
    site = load_config(Path(__file__).resolve().parents[2] / "configs" / "boiler.yaml")
    findings = prove_safe_state(site)
    assert findings and not any(f.refuse for f in findings)
    assert any("heat_vs_pressure" in f.message for f in findings)
