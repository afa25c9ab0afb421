"""Tests for gateway.config.loader: valid sites load, every malformed site gets a located error.

Each malformed site is BASE with one textual change. The expected line is not copied from a
run: it is found by searching the changed text for the line the error must point at (the key
that is wrong, or for a missing key the first line of the mapping that should hold it, which is
where the loader reports missing keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import ConfigError, Site, load_config
from gateway.config import schema as s

if TYPE_CHECKING:
    from gateway.config.yamlsrc import Issue

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

BASE = """\
site:
  name: test-site
  cycle_ms: 100

devices:
  plc:
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5020
    heartbeat: {table: holding_register, address: 100}
  ua:
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840/
    heartbeat: "ns=2;s=Ua.Heartbeat"

tags:
  level:
    device: plc
    kind: sensor
    table: input_register
    address: 0
    type: float32
    range: [0.0, 5.0]
  flow:
    device: plc
    kind: sensor
    table: input_register
    address: 2
    type: uint16
    range: [0.0, 50.0]
  temp:
    device: ua
    kind: sensor
    node: "ns=2;s=Ua.Temp"
    range: [0.0, 300.0]
  valve:
    device: plc
    kind: actuator
    table: holding_register
    address: 0
    type: uint16
    scale: 0.01
    safe_value: 0.0
  pump:
    device: plc
    kind: actuator
    table: holding_register
    address: 1
    type: uint16
    scale: 0.01
    safe_value: 20.0
  drain:
    device: plc
    kind: actuator
    table: coil
    address: 0
    safe_value: 0
  heater:
    device: ua
    kind: actuator
    node: "ns=2;s=Ua.Heater"
    safe_value: 1.0

envelope:
  limits:
    valve: {min: 0.0, max: 100.0, max_rate_per_s: 20.0, policy: clamp}
    pump:
      min: 0.0
      max: 100.0
      policy: clamp
    drain: {allowed: [0, 1], policy: reject}
    heater: {min: 0.0, max: 100.0}
  constraints:
    - name: total_flow
      expr: "valve + pump + 40 * drain <= 160"
      policy: reject
    - name: min_draw
      expr: "pump - 10 * level >= -40"
      policy: trip
  interlocks:
    - name: high_level
      when: "level > 4.5"
      then: ["valve <= 0"]
      policy: clamp
    - name: hot
      when: "temp >= 250"
      then: "heater <= 10"
  prediction:
    step_s: 1.0
    horizon_steps: 10
    model:
      level: "0.0001 * valve - 0.0001 * pump"
    keep:
      level: {min: 0.2, max: 4.8}
    policy: reject

controller:
  kind: external
  outputs: [valve, pump]

fallback:
  valve: {kind: pid, measurement: level, setpoint: 2.5, kp: 40.0}
  pump: {kind: fixed, value: 30.0}

northbound:
  modbus: {host: 127.0.0.1, port: 1502}
  opcua:
    endpoint: opc.tcp://127.0.0.1:4841/gateway/
    allow_anonymous: true
"""


def edit(text: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` (a test that matches twice is a broken test)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based line of the one occurrence of ``needle``."""
    assert text.count(needle) == 1, f"{needle!r} occurs {text.count(needle)} times"
    return text[: text.index(needle)].count("\n") + 1


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def issues_of(path: Path) -> list[Issue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def shown(issues: list[Issue]) -> str:
    return "\n".join(str(i) for i in issues)


def assert_issue(path: Path, issues: list[Issue], line: int, key: str, fragment: str) -> Issue:
    found = [i for i in issues if i.line == line and i.path == key]
    assert found, f"no issue at line {line} for {key!r}; got:\n{shown(issues)}"
    issue = found[0]
    assert fragment in issue.message, f"{fragment!r} not in {issue.message!r}"
    assert issue.file == str(path)
    assert str(issue) == f"{path}:{line}: {key}: {issue.message}"
    return issue


def test_base_site_is_valid(tmp_path: Path):
    site = load_config(write(tmp_path, BASE))
    assert [t.name for t in site.tags] == ["level", "flow", "temp", "valve", "pump", "drain",
                                           "heater"]


# --------------------------------------------------------------------------- valid examples


def test_water_tank_loads():
    site = load_config(CONFIGS / "water_tank.yaml")
    assert isinstance(site, Site)
    assert site.site.name == "water-tank"
    assert site.site.cycle_ms == 100.0
    # tag order is file order; it fixes the envelope's vectors
    assert [t.name for t in site.tags] == ["level", "inflow_rate", "demand", "uptime_s",
                                           "inflow_valve", "outflow_pump", "drain_valve"]
    assert [t.name for t in site.actuators] == ["inflow_valve", "outflow_pump", "drain_valve"]
    assert [t.name for t in site.sensors] == ["level", "inflow_rate", "demand", "uptime_s"]

    (plc,) = site.devices
    assert isinstance(plc, s.ModbusDevice)
    assert (plc.host, plc.port, plc.unit, plc.timeout_ms) == ("127.0.0.1", 5020, 1, 500.0)
    assert plc.heartbeat == s.ModbusRef(s.Table.HOLDING_REGISTER, 100)

    level = site.tag("level")
    assert level.ref == s.ModbusRef(s.Table.INPUT_REGISTER, 0)
    assert level.wire_type is s.WireType.FLOAT32
    assert (level.range_min, level.range_max) == (0.0, 5.0)
    assert site.tag("inflow_rate").scale == 0.001
    pump = site.tag("outflow_pump")
    assert pump.safe_value == 0.0
    assert pump.on_shutdown is s.ShutdownAction.HOLD
    # The inflow's SAFE_STOP is a table: closed above 0.8 m or unknown, else 10 % (the default).
    assert site.tag("inflow_valve").safe_value == 10.0
    (refill,) = site.envelope.safe_cases
    assert (refill.actuator, refill.when, refill.value) == ("inflow_valve", "level > 0.8", 0.0)
    drain = site.tag("drain_valve")
    assert drain.wire_type is s.WireType.BOOL  # the default on a coil
    assert drain.unit == "open"

    limits = {lim.actuator: lim for lim in site.envelope.limits}
    assert list(limits) == ["inflow_valve", "outflow_pump", "drain_valve"]
    inflow = limits["inflow_valve"]
    assert (inflow.min, inflow.max, inflow.max_rate_per_s, inflow.max_step) == (
        0.0, 100.0, 20.0, 10.0)
    assert inflow.policy is s.Policy.CLAMP
    # min and max of a discrete actuator come from its allowed values
    assert (limits["drain_valve"].min, limits["drain_valve"].max) == (0.0, 1.0)
    assert limits["drain_valve"].allowed == (0.0, 1.0)
    assert limits["drain_valve"].policy is s.Policy.REJECT

    total, dry = site.envelope.constraints
    assert total.terms == (("inflow_valve", 1.0), ("outflow_pump", 1.0), ("drain_valve", 40.0))
    assert total.rhs == 160.0
    assert dry.name == "pump_dry_run"
    assert dry.terms == (("outflow_pump", 1.0), ("level", -40.0))
    assert dry.rhs == 12.0

    high, low = site.envelope.interlocks
    assert high.condition == (("level", 1.0),)
    assert (high.op, high.rhs) == (s.ConditionOp.GT, 4.5)
    assert high.then == (s.Tightening("inflow_valve", True, 0.0),)
    assert high.policy is s.Policy.CLAMP
    assert (low.op, low.rhs, low.policy) == (s.ConditionOp.LT, 0.3, s.Policy.TRIP)
    assert low.then == (s.Tightening("outflow_pump", True, 0.0),
                        s.Tightening("drain_valve", True, 0.0))

    pred = site.envelope.prediction
    assert pred is not None
    assert (pred.step_s, pred.horizon_steps, pred.policy) == (1.0, 10, s.Policy.REJECT)
    (row,) = pred.model
    assert row.sensor == "level"
    assert dict(row.terms) == pytest.approx(
        {"inflow_valve": 0.0001, "outflow_pump": -0.0001, "drain_valve": -0.002})
    assert row.constant == 0.0
    assert pred.keep == (s.KeepRange("level", 0.2, 4.8),)

    assert site.controller.kind is s.ControllerKind.EXTERNAL
    assert site.controller.outputs == ("inflow_valve", "outflow_pump")
    pid, fixed, _ = site.fallback
    assert (pid.actuator, pid.kind, pid.measurement, pid.setpoint, pid.kp, pid.ki_per_s) == (
        "inflow_valve", s.FallbackKind.PID, "level", 2.5, 40.0, 0.5)
    assert (fixed.kind, fixed.value) == (s.FallbackKind.FIXED, 30.0)
    assert site.detection.divergence_drift == 0.2  # fractions of the range (configs/ changed)
    assert site.detection.violation_max == 20  # a default
    assert site.northbound.opcua is not None and site.northbound.opcua.allow_anonymous
    assert {(u.name, u.role) for u in site.northbound.opcua.users} == {
        ("admin", "admin"), ("operator", "operator")}
    assert site.northbound.modbus is not None and site.northbound.modbus.port == 1502
    # relative paths are resolved against the file's folder
    assert site.audit.path == CONFIGS / "../reports/water_tank_audit.db"
    assert site.audit.sample_every_n == 100


def test_boiler_loads():
    site = load_config(CONFIGS / "boiler.yaml")
    assert [t.name for t in site.tags] == ["pressure", "temperature", "uptime_s", "heater",
                                           "relief_valve", "burner_stage"]
    (plc,) = site.devices
    assert isinstance(plc, s.OpcUaDevice)
    assert plc.endpoint == "opc.tcp://127.0.0.1:4840/boiler/"
    assert plc.heartbeat == s.OpcUaRef("ns=2;s=Boiler.Heartbeat")
    assert site.tag("heater").ref == s.OpcUaRef("ns=2;s=Boiler.Heater")
    assert site.tag("burner_stage").wire_type is s.WireType.INT32

    limits = {lim.actuator: lim for lim in site.envelope.limits}
    stage = limits["burner_stage"]
    assert (stage.min, stage.max, stage.allowed, stage.max_step) == (
        0.0, 3.0, (0.0, 1.0, 2.0, 3.0), 1.0)

    heat_vs_pressure = site.envelope.constraints[0]
    assert heat_vs_pressure.terms == (("heater", 1.0), ("pressure", 5.0))
    assert site.envelope.constraints[2].policy is s.Policy.TRIP

    off, vent, hot = site.envelope.interlocks
    assert off.then == (s.Tightening("heater", True, 0.0), s.Tightening("burner_stage", True, 0.0))
    # a single tightening written without a list; ">=" is a lower bound
    assert (vent.op, vent.rhs) == (s.ConditionOp.GE, 14.5)
    assert vent.then == (s.Tightening("relief_valve", False, 60.0),)
    assert hot.then == (s.Tightening("heater", True, 10.0),)

    pred = site.envelope.prediction
    assert pred is not None
    rows = {m.sensor: m for m in pred.model}
    assert list(rows) == ["temperature", "pressure"]
    # 0.00347 h + 0.0694 b - 0.000578 (T - 20) - 0.0144 - 0.0067 r: the parenthesis
    # distributes, constants fold (0.000578 * 20 - 0.0144)
    temp = rows["temperature"]
    assert dict(temp.terms) == pytest.approx(
        {"heater": 0.00347, "burner_stage": 0.0694, "temperature": -0.000578,
         "relief_valve": -0.0067})
    assert temp.constant == pytest.approx(0.000578 * 20 - 0.0144)
    pres = rows["pressure"]
    assert dict(pres.terms) == pytest.approx(
        {"heater": 0.00118, "burner_stage": 0.0236, "temperature": -0.00015,
         "relief_valve": -0.00174})
    assert pres.constant == pytest.approx(0.00015 * 20 - 0.00375)
    keep = {k.sensor: k for k in pred.keep}
    assert keep["pressure"].min == -math.inf  # only max given
    assert keep["pressure"].max == 15.0
    assert (keep["temperature"].min, keep["temperature"].max) == (5.0, 240.0)

    relief = next(f for f in site.fallback if f.actuator == "relief_valve")
    assert relief.kind is s.FallbackKind.RULES
    assert relief.value == 0.0
    first, second = relief.rules
    assert (first.condition, first.op, first.rhs, first.value) == (
        (("pressure", 1.0),), s.ConditionOp.GT, 12.0, 80.0)
    assert second.value == 30.0
    # The shipped sites define an admin and an operator, passwords from the environment.
    opcua = site.northbound.opcua
    assert opcua is not None and not opcua.allow_anonymous
    assert {(u.name, u.role, u.password_env) for u in opcua.users} == {
        ("admin", "admin", "SAFETY_GATEWAY_ADMIN_PASSWORD"),
        ("operator", "operator", "SAFETY_GATEWAY_OPERATOR_PASSWORD")}
    # the section sets only the divergence settings; everything else is the defaults
    assert site.detection == s.Detection(
        divergence_drift=0.15, divergence_threshold=20.0,
        frozen_after_s=(("pressure", 5.0), ("temperature", 5.0)))


def test_ge_constraint_is_stored_negated(tmp_path: Path):
    site = load_config(write(tmp_path, BASE))
    total, min_draw = site.envelope.constraints
    assert total.terms == (("valve", 1.0), ("pump", 1.0), ("drain", 40.0))
    assert total.rhs == 160.0
    # pump - 10 level >= -40   is stored as   -pump + 10 level <= 40
    assert min_draw.terms == (("pump", -1.0), ("level", 10.0))
    assert min_draw.rhs == 40.0
    assert min_draw.policy is s.Policy.TRIP
    hot = site.envelope.interlocks[1]
    assert hot.policy is s.Policy.CLAMP  # the default for interlocks


def test_same_address_in_different_tables_is_not_a_duplicate(tmp_path: Path):
    # BASE already has input register 0 (level), holding register 0 (valve) and coil 0 (drain);
    # add discrete input 0 as well.
    text = edit(BASE, "  temp:\n", "  door:\n    device: plc\n    kind: sensor\n"
                "    table: discrete_input\n    address: 0\n    range: [0, 1]\n  temp:\n")
    site = load_config(write(tmp_path, text))
    at_zero = {t.ref.table for t in site.tags
               if isinstance(t.ref, s.ModbusRef) and t.ref.address == 0}
    assert at_zero == set(s.Table)


def test_float32_overlapping_an_earlier_uint16(tmp_path: Path):
    # flow (uint16) moves to register 5; a float32 declared after it at 4 takes 4 and 5.
    text = edit(BASE, "    address: 2\n", "    address: 5\n")
    text = edit(text, "  temp:\n", "  extra:\n    device: plc\n    kind: sensor\n"
                "    table: input_register\n    address: 4\n    type: float32\n"
                "    range: [0, 1]\n  temp:\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, "  extra:"), "tags.extra",
                 "address overlaps tag 'flow' on device 'plc'")
    assert len(issues) == 1, shown(issues)
    # ... and at 3 it takes 3 and 4, clear of flow at 5 (and of level at 0 and 1)
    load_config(write(tmp_path, edit(text, "    address: 4\n", "    address: 3\n")))


def test_same_node_on_different_devices_is_not_a_duplicate(tmp_path: Path):
    text = edit(BASE, "    heartbeat: \"ns=2;s=Ua.Heartbeat\"\n",
                "    heartbeat: \"ns=2;s=Ua.Heartbeat\"\n  ua2:\n    protocol: opcua\n"
                "    endpoint: opc.tcp://10.0.0.2:4840/\n")
    text = edit(text, "  heater:\n", "  temp2:\n    device: ua2\n    kind: sensor\n"
                "    node: \"ns=2;s=Ua.Temp\"\n    range: [0, 1]\n  heater:\n")
    site = load_config(write(tmp_path, text))
    assert site.tag("temp2").ref == site.tag("temp").ref


# --------------------------------------------------------------------------- malformed sites


@dataclass(frozen=True)
class Case:
    id: str
    old: str
    new: str
    key: str
    at: str  # a unique text in the changed file on the line the error must name
    fragment: str


CASES = [
    # unknown keys
    Case("unknown-section", "controller:\n", "colour: blue\ncontroller:\n",
         "colour", "colour: blue", "unknown section (expected one of: site, devices"),
    Case("unknown-key-in-tag", "    range: [0.0, 5.0]\n",
         "    range: [0.0, 5.0]\n    colour: red\n", "tags.level.colour", "colour: red",
         "unknown key"),
    Case("unknown-key-in-limits", "      max: 100.0\n      policy: clamp\n",
         "      max: 100.0\n      maximum: 90\n      policy: clamp\n",
         "envelope.limits.pump.maximum", "maximum: 90", "unknown key"),
    Case("unknown-key-in-site", "  cycle_ms: 100\n", "  cycle_ms: 100\n  cylce_ms: 50\n",
         "site.cylce_ms", "cylce_ms", "unknown key"),
    Case("unknown-key-in-constraint", "      policy: trip\n",
         "      policy: trip\n      severity: high\n", "envelope.constraints[1].severity",
         "severity: high", "unknown key"),
    Case("unknown-key-in-device", "    port: 5020\n", "    port: 5020\n    baud: 9600\n",
         "devices.plc.baud", "baud: 9600", "unknown key"),
    Case("endpoint-on-modbus-device", "    port: 5020\n",
         "    port: 5020\n    endpoint: opc.tcp://x/\n", "devices.plc.endpoint",
         "endpoint: opc.tcp://x/", "unknown key"),
    # wrong types
    Case("text-for-number", "  cycle_ms: 100", "  cycle_ms: fast", "site.cycle_ms",
         "cycle_ms: fast", "must be a number, found text 'fast'"),
    Case("bool-for-number", "      max: 100.0\n", "      max: true\n",
         "envelope.limits.pump.max", "max: true", "must be a number, found boolean True"),
    Case("list-for-mapping", "    heater: {min: 0.0, max: 100.0}", "    heater: [0.0, 100.0]",
         "envelope.limits.heater", "heater: [0.0, 100.0]", "must be a mapping, found a list"),
    Case("list-for-mapping-section", "site:\n  name: test-site\n  cycle_ms: 100\n",
         "site:\n  - test-site\n", "site", "- test-site", "must be a mapping, found a list"),
    Case("number-for-text", "  name: test-site", "  name: 42", "site.name", "name: 42",
         "must be text, found number 42"),
    Case("float-for-int", "    address: 2\n", "    address: 2.5\n", "tags.flow.address",
         "address: 2.5", "must be a whole number, found number 2.5"),
    Case("bool-for-int", "    port: 5020", "    port: yes", "devices.plc.port", "port: yes",
         "must be a whole number, found boolean True"),
    Case("bad-enum", "    kind: sensor\n    node:", "    kind: sensr\n    node:",
         "tags.temp.kind", "kind: sensr", "must be one of sensor, actuator; not 'sensr'"),
    Case("number-for-bool", "    allow_anonymous: true", "    allow_anonymous: 1",
         "northbound.opcua.allow_anonymous", "allow_anonymous: 1",
         "must be true or false, found number 1"),
    Case("text-for-list", "  outputs: [valve, pump]", "  outputs: valve",
         "controller.outputs", "outputs: valve", "must be a list, found text 'valve'"),
    Case("null-required", "  name: test-site", "  name:", "site.name", "  name:\n",
         "must have a value"),
    # missing required keys: reported on the first line of the mapping that lacks them
    Case("missing-device", "    device: ua\n    kind: actuator\n", "    kind: actuator\n",
         "tags.heater.device", "    kind: actuator\n    node: \"ns=2;s=Ua.Heater\"",
         "required key is missing"),
    Case("missing-envelope-section", "envelope:\n  limits:\n", "envelopes:\n  limits:\n",
         "envelope", "site:", "required key is missing"),
    # limits
    Case("min-greater-than-max", "      min: 0.0\n      max: 100.0\n",
         "      min: 150.0\n      max: 100.0\n", "envelope.limits.pump.max", "max: 100.0\n",
         "must be >= min (150.0)"),
    Case("nan-limit", "    heater: {min: 0.0, max: 100.0}", "    heater: {min: .nan, max: 100.0}",
         "envelope.limits.heater.min", "heater: {min: .nan", "must be a finite number, not nan"),
    Case("inf-limit", "    heater: {min: 0.0, max: 100.0}", "    heater: {min: 0.0, max: .inf}",
         "envelope.limits.heater.max", "max: .inf", "must be a finite number, not inf"),
    Case("minus-inf-limit", "    heater: {min: 0.0, max: 100.0}",
         "    heater: {min: -.inf, max: 100.0}", "envelope.limits.heater.min", "min: -.inf",
         "must be a finite number, not -inf"),
    Case("nan-in-allowed", "{allowed: [0, 1], policy: reject}",
         "{allowed: [0, .nan], policy: reject}", "envelope.limits.drain.allowed[1]",
         "allowed: [0, .nan]", "must be a finite number, not nan"),
    Case("allowed-outside-min-max", "{allowed: [0, 1], policy: reject}",
         "{min: 0, max: 1, allowed: [0, 2]}", "envelope.limits.drain.allowed",
         "allowed: [0, 2]", "2.0 is outside [0.0, 1.0]"),
    Case("allowed-duplicates", "{allowed: [0, 1], policy: reject}",
         "{allowed: [0, 1, 1], policy: reject}", "envelope.limits.drain.allowed",
         "allowed: [0, 1, 1]", "values must be distinct"),
    Case("negative-rate", "max_rate_per_s: 20.0", "max_rate_per_s: -1",
         "envelope.limits.valve.max_rate_per_s", "max_rate_per_s: -1", "must be > 0, not -1.0"),
    Case("limits-for-a-sensor", "    heater: {min: 0.0, max: 100.0}\n",
         "    heater: {min: 0.0, max: 100.0}\n    level: {min: 0, max: 5}\n",
         "envelope.limits.level", "level: {min: 0, max: 5}",
         "limits name actuators; 'level' is a sensor"),
    Case("limits-for-unknown-tag", "    heater: {min: 0.0, max: 100.0}\n",
         "    heater: {min: 0.0, max: 100.0}\n    fan: {min: 0, max: 5}\n",
         "envelope.limits.fan", "fan: {min: 0, max: 5}",
         "limits name actuators; 'fan' is not a tag"),
    Case("actuator-without-limits", "    heater: {min: 0.0, max: 100.0}\n", "",
         "envelope.limits.heater", "valve: {min: 0.0",
         "every actuator needs limits (min and max, or allowed values)"),
    Case("limits-without-max", "    heater: {min: 0.0, max: 100.0}", "    heater: {min: 0.0}",
         "envelope.limits.heater.max", "heater: {min: 0.0}", "required (or give allowed values)"),
    Case("clamp-nonfinite-policy", "envelope:\n  limits:\n",
         "envelope:\n  nonfinite_policy: clamp\n  limits:\n", "envelope.nonfinite_policy",
         "nonfinite_policy: clamp", "NaN/inf cannot be clamped"),
    # safe values
    Case("actuator-without-safe-value", "    safe_value: 1.0\n", "",
         "tags.heater.safe_value", "    device: ua\n    kind: actuator",
         "every actuator needs a safe value"),
    Case("safe-value-outside-limits", "    safe_value: 20.0\n", "    safe_value: 150.0\n",
         "tags.pump.safe_value", "safe_value: 150.0",
         "150.0 is outside its own limits [0.0, 100.0]"),
    Case("safe-value-not-allowed", "    safe_value: 0\n", "    safe_value: 0.5\n",
         "tags.drain.safe_value", "safe_value: 0.5", "0.5"),
    Case("safe-value-nan", "    safe_value: 20.0\n", "    safe_value: .nan\n",
         "tags.pump.safe_value", "safe_value: .nan", "must be a finite number, not nan"),
    Case("sensor-with-safe-value", "    range: [0.0, 50.0]\n",
         "    range: [0.0, 50.0]\n    safe_value: 3\n", "tags.flow.safe_value", "safe_value: 3\n",
         "only actuators have a safe value"),
    # constraints
    Case("unknown-tag-in-constraint", "valve + pump + 40 * drain <= 160",
         "valve + pmup + 40 * drain <= 160", "envelope.constraints[0].expr",
         "pmup", "unknown tag 'pmup'"),
    Case("product-in-constraint", "valve + pump + 40 * drain <= 160", "valve * pump <= 160",
         "envelope.constraints[0].expr", "valve * pump",
         "not linear: product of 'valve' and 'pump' at column 7 in 'valve * pump <= 160'"),
    Case("strict-less-in-constraint", "valve + pump + 40 * drain <= 160",
         "valve + pump + 40 * drain < 160", "envelope.constraints[0].expr", "drain < 160",
         "operator '<' is not allowed here; use <= or >="),
    Case("equality-constraint", "valve + pump + 40 * drain <= 160", "valve == 50",
         "envelope.constraints[0].expr", "valve == 50", "operator '==' is not allowed here"),
    Case("clamp-on-constraint", "      policy: reject\n    - name: min_draw",
         "      policy: clamp\n    - name: min_draw", "envelope.constraints[0].policy",
         "policy: clamp\n    - name: min_draw",
         "clamp is not defined for a constraint coupling several values"),
    Case("duplicate-constraint-name", "    - name: min_draw", "    - name: total_flow",
         "envelope.constraints[1].name", "- name: total_flow\n      expr: \"pump",
         "'total_flow' is already the name of envelope.constraints[0]"),
    Case("interlock-named-like-constraint", "    - name: hot", "    - name: min_draw",
         "envelope.interlocks[1].name", "- name: min_draw\n      when",
         "'min_draw' is already the name of envelope.constraints[1]"),
    Case("empty-constraint-name", "    - name: min_draw", "    - name: \" \"",
         "envelope.constraints[1].name", "name: \" \"", "must not be empty"),
    Case("constraint-without-expr", "      expr: \"pump - 10 * level >= -40\"\n", "",
         "envelope.constraints[1].expr", "- name: min_draw", "required key is missing"),
    Case("constraint-two-comparisons", "pump - 10 * level >= -40",
         "0 <= pump <= 50", "envelope.constraints[1].expr", "0 <= pump",
         "one comparison only"),
    # interlocks
    Case("unknown-tag-in-interlock", "\"level > 4.5\"", "\"levle > 4.5\"",
         "envelope.interlocks[0].when", "levle", "unknown tag 'levle'"),
    Case("actuator-in-interlock", "\"level > 4.5\"", "\"valve > 4.5\"",
         "envelope.interlocks[0].when", "valve > 4.5",
         "'valve' is an actuator; only sensors may appear here"),
    Case("tightening-outside-limits", "[\"valve <= 0\"]", "[\"valve <= 150\"]",
         "envelope.interlocks[0].then[0]", "valve <= 150",
         "bound 150.0 is outside valve's limits [0.0, 100.0]"),
    Case("tightening-below-limits", "\"heater <= 10\"", "\"heater >= -5\"",
         "envelope.interlocks[1].then", "heater >= -5",
         "bound -5.0 is outside heater's limits [0.0, 100.0]"),
    Case("tightening-on-sensor", "[\"valve <= 0\"]", "[\"level <= 0\"]",
         "envelope.interlocks[0].then[0]", "[\"level <= 0\"]", "'level' is not an actuator"),
    Case("tightening-two-tags", "[\"valve <= 0\"]", "[\"valve + pump <= 0\"]",
         "envelope.interlocks[0].then[0]", "valve + pump <= 0", "must bound one actuator"),
    Case("tightening-strict", "[\"valve <= 0\"]", "[\"valve < 1\"]",
         "envelope.interlocks[0].then[0]", "valve < 1", "operator '<' is not allowed here"),
    Case("interlock-without-then", "      then: [\"valve <= 0\"]\n", "",
         "envelope.interlocks[0].then", "- name: high_level", "must tighten at least one"),
    Case("interlock-equality", "\"level > 4.5\"", "\"level == 4.5\"",
         "envelope.interlocks[0].when", "level == 4.5", "operator '==' is not allowed here"),
    # prediction
    Case("unknown-tag-in-model", "\"0.0001 * valve - 0.0001 * pump\"",
         "\"0.0001 * valve - 0.0001 * pmup\"", "envelope.prediction.model.level", "pmup",
         "unknown tag 'pmup'"),
    Case("model-row-for-unknown-tag", "      level: \"0.0001",
         "      lvl: \"0.0001 * valve\"\n      level: \"0.0001",
         "envelope.prediction.model.lvl", "lvl:", "'lvl' is not a sensor"),
    Case("model-row-for-actuator", "      level: \"0.0001",
         "      pump: \"0.1 * valve\"\n      level: \"0.0001",
         "envelope.prediction.model.pump", "pump: \"0.1", "'pump' is not a sensor"),
    Case("nonlinear-model", "\"0.0001 * valve - 0.0001 * pump\"", "\"0.0001 * valve * pump\"",
         "envelope.prediction.model.level", "valve * pump", "not linear: product"),
    Case("unknown-tag-in-keep", "      level: {min: 0.2, max: 4.8}\n",
         "      level: {min: 0.2, max: 4.8}\n      lvl: {max: 1}\n",
         "envelope.prediction.keep.lvl", "lvl: {max: 1}", "'lvl'"),
    Case("keep-min-greater-than-max", "{min: 0.2, max: 4.8}", "{min: 4.8, max: 0.2}",
         "envelope.prediction.keep.level.max", "{min: 4.8, max: 0.2}", "must be >= min (4.8)"),
    Case("keep-without-bounds", "{min: 0.2, max: 4.8}", "{}",
         "envelope.prediction.keep.level.min", "level: {}", "give min, max or both"),
    Case("clamp-on-prediction", "    policy: reject\n\ncontroller",
         "    policy: clamp\n\ncontroller",
         "envelope.prediction.policy", "policy: clamp\n\ncontroller",
         "clamp is not defined for the prediction; use reject or trip"),
    Case("horizon-zero", "    horizon_steps: 10", "    horizon_steps: 0",
         "envelope.prediction.horizon_steps", "horizon_steps: 0", "must be 1..10000, not 0"),
    Case("step-negative", "    step_s: 1.0", "    step_s: -1.0",
         "envelope.prediction.step_s", "step_s: -1.0", "must be > 0, not -1.0"),
    # addresses
    Case("duplicate-modbus-register", "    address: 1\n", "    address: 0\n", "tags.pump",
         "  pump:\n    device", "address overlaps tag 'valve' on device 'plc'"),
    Case("float32-overlaps-next-register", "    address: 2\n", "    address: 1\n", "tags.flow",
         "  flow:\n    device", "address overlaps tag 'level' on device 'plc'"),
    Case("duplicate-coil", "  heater:\n", "  vent:\n    device: plc\n    kind: actuator\n"
         "    table: coil\n    address: 0\n    safe_value: 0\n  heater:\n", "tags.vent",
         "  vent:", "address overlaps tag 'drain' on device 'plc'"),
    Case("register-is-the-heartbeat", "    address: 1\n", "    address: 100\n", "tags.pump",
         "  pump:\n    device", "address is the heartbeat of device 'plc'"),
    Case("float32-past-last-register", "    address: 2\n    type: uint16\n",
         "    address: 65535\n    type: float32\n", "tags.flow", "  flow:\n    device",
         "float32 at address 65535 runs past register 65535"),
    Case("address-out-of-range", "    address: 2\n", "    address: 70000\n",
         "tags.flow.address", "address: 70000", "must be 0..65535, not 70000"),
    Case("duplicate-opcua-node", "node: \"ns=2;s=Ua.Heater\"", "node: \"ns=2;s=Ua.Temp\"",
         "tags.heater", "  heater:\n    device", "address overlaps tag 'temp' on device 'ua'"),
    Case("node-is-the-heartbeat", "node: \"ns=2;s=Ua.Heater\"", "node: \"ns=2;s=Ua.Heartbeat\"",
         "tags.heater", "  heater:\n    device", "node is the heartbeat of device 'ua'"),
    # tags and devices
    Case("unknown-device", "    device: plc\n    kind: sensor\n    table: input_register\n"
         "    address: 2\n", "    device: plx\n    kind: sensor\n    table: input_register\n"
         "    address: 2\n", "tags.flow.device", "device: plx", "unknown device 'plx'"),
    Case("node-on-modbus-tag", "    type: float32\n",
         "    type: float32\n    node: \"ns=2;s=X\"\n", "tags.level.node", "ns=2;s=X",
         "a Modbus device's tags use table and address"),
    Case("table-on-opcua-tag", "    node: \"ns=2;s=Ua.Temp\"\n",
         "    node: \"ns=2;s=Ua.Temp\"\n    table: holding_register\n", "tags.temp.table",
         "table: holding_register\n    range", "an OPC UA device's tags use node"),
    Case("address-on-opcua-tag", "    node: \"ns=2;s=Ua.Temp\"\n",
         "    node: \"ns=2;s=Ua.Temp\"\n    address: 7\n", "tags.temp.address", "address: 7",
         "an OPC UA device's tags use node"),
    Case("sensor-without-range", "    range: [0.0, 300.0]\n", "", "tags.temp.range",
         "    device: ua\n    kind: sensor",
         "a sensor needs its plausible range [min, max]"),
    Case("range-reversed", "    range: [0.0, 300.0]", "    range: [300.0, 0.0]",
         "tags.temp.range", "range: [300.0, 0.0]", "min (300.0) > max (0.0)"),
    Case("range-three-values", "    range: [0.0, 300.0]", "    range: [0.0, 1.0, 300.0]",
         "tags.temp.range", "range: [0.0, 1.0", "must be [min, max], found 3 values"),
    Case("range-inf", "    range: [0.0, 300.0]", "    range: [0.0, .inf]",
         "tags.temp.range[1]", "range: [0.0, .inf]", "must be a finite number, not inf"),
    Case("bad-node-id", "node: \"ns=2;s=Ua.Temp\"", "node: \"Ua.Temp\"", "tags.temp.node",
         "node: \"Ua.Temp\"", "'Ua.Temp' is not a node id (expected e.g. 'ns=2;s=Tank.Level')"),
    Case("bad-namespace", "node: \"ns=2;s=Ua.Temp\"", "node: \"ns=x;s=Ua.Temp\"",
         "tags.temp.node", "ns=x", "is not a node id"),
    Case("actuator-on-input-register", "    table: holding_register\n    address: 0\n",
         "    table: input_register\n    address: 9\n", "tags.valve.table",
         "table: input_register\n    address: 9", "an actuator must be writable"),
    Case("coil-with-float-type", "    table: coil\n    address: 0\n",
         "    table: coil\n    address: 0\n    type: float32\n", "tags.drain.type",
         "type: float32\n    safe", "a coil holds bits: type must be bool"),
    Case("zero-scale", "    scale: 0.01\n    safe_value: 0.0", "    scale: 0\n    safe_value: 0.0",
         "tags.valve.scale", "scale: 0\n", "must not be 0"),
    Case("tag-name-not-identifier", "  flow:\n", "  flow-rate:\n", "tags.flow-rate",
         "flow-rate:", "tag names must be identifiers"),
    Case("bad-endpoint", "    endpoint: opc.tcp://127.0.0.1:4840/",
         "    endpoint: http://127.0.0.1:4840/", "devices.ua.endpoint", "http://",
         "must start with opc.tcp://, not 'http://127.0.0.1:4840/'"),
    Case("port-out-of-range", "    port: 5020", "    port: 70000", "devices.plc.port",
         "port: 70000", "must be 1..65535, not 70000"),
    Case("port-zero", "    port: 5020", "    port: 0", "devices.plc.port", "port: 0",
         "must be 1..65535, not 0"),
    Case("northbound-port-out-of-range", "{host: 127.0.0.1, port: 1502}",
         "{host: 127.0.0.1, port: 65536}", "northbound.modbus.port", "port: 65536",
         "must be 1..65535, not 65536"),
    Case("unit-id-out-of-range", "    port: 5020\n", "    port: 5020\n    unit: 256\n",
         "devices.plc.unit", "unit: 256", "must be 0..255, not 256"),
    Case("heartbeat-read-only", "heartbeat: {table: holding_register, address: 100}",
         "heartbeat: {table: input_register, address: 100}", "devices.plc.heartbeat",
         "heartbeat: {table: input_register", "must be a holding_register or coil"),
    Case("unknown-protocol", "    protocol: modbus_tcp", "    protocol: modbus_rtu",
         "devices.plc.protocol", "modbus_rtu", "must be one of modbus_tcp, opcua; not"),
    Case("security-mode-without-policy", "    heartbeat: \"ns=2;s=Ua.Heartbeat\"\n",
         "    heartbeat: \"ns=2;s=Ua.Heartbeat\"\n    security: {mode: sign}\n",
         "devices.ua.security.mode", "security: {mode: sign}",
         "policy and mode must both be none or both be set"),
    Case("no-devices", "devices:\n  plc:", "devices: {}\nunused:\n  plc:", "devices",
         "devices: {}", "must define at least one device"),
    # controller, fallback, northbound
    Case("onnx-without-sha256", "  kind: external\n",
         "  kind: onnx\n  model: policy.onnx\n  inputs: [level]\n", "controller.sha256",
         "kind: onnx", "must be the model's sha256 as 64 lowercase hex digits"),
    Case("onnx-uppercase-sha256", "  kind: external\n",
         "  kind: onnx\n  model: policy.onnx\n  sha256: " + "AB" * 32 + "\n  inputs: [level]\n",
         "controller.sha256", "sha256: ABAB", "64 lowercase hex digits"),
    Case("onnx-without-model", "  kind: external\n",
         "  kind: onnx\n  inputs: [level]\n", "controller.model", "kind: onnx",
         "required for an onnx controller"),
    Case("controller-output-sensor", "  outputs: [valve, pump]", "  outputs: [valve, level]",
         "controller.outputs", "outputs: [valve, level]", "'level' is not an actuator"),
    Case("controller-input-unknown", "  outputs: [valve, pump]",
         "  outputs: [valve, pump]\n  inputs: [levle]", "controller.inputs",
         "inputs: [levle]", "unknown tag 'levle'"),
    Case("controller-scale-length", "  outputs: [valve, pump]",
         "  outputs: [valve, pump]\n  output_scale: [1.0]", "controller.output_scale",
         "output_scale", "has 1 values for 2 tags"),
    Case("pid-without-measurement", "{kind: pid, measurement: level, setpoint: 2.5, kp: 40.0}",
         "{kind: pid, setpoint: 2.5, kp: 40.0}", "fallback.valve.measurement",
         "valve: {kind: pid", "a pid needs the sensor it controls"),
    Case("pid-without-setpoint", "{kind: pid, measurement: level, setpoint: 2.5, kp: 40.0}",
         "{kind: pid, measurement: level, kp: 40.0}", "fallback.valve.setpoint",
         "valve: {kind: pid", "a pid needs a setpoint"),
    Case("pid-measuring-an-actuator", "measurement: level,", "measurement: pump,",
         "fallback.valve.measurement", "measurement: pump", "'pump' is not a sensor"),
    Case("pid-negative-gain", "kp: 40.0}", "kp: -40.0}", "fallback.valve.kp", "kp: -40.0",
         "gains must be >= 0"),
    Case("fallback-for-sensor", "  pump: {kind: fixed, value: 30.0}\n",
         "  pump: {kind: fixed, value: 30.0}\n  level: {kind: hold}\n", "fallback.level",
         "level: {kind: hold}", "'level' is not an actuator"),
    Case("fixed-without-value", "{kind: fixed, value: 30.0}", "{kind: fixed}",
         "fallback.pump.value", "pump: {kind: fixed}", "required (the fixed value"),
    Case("rule-on-actuator", "  pump: {kind: fixed, value: 30.0}\n",
         "  pump:\n    kind: rules\n    value: 0\n    rules:\n"
         "      - {when: \"valve > 1\", value: 5}\n", "fallback.pump.rules[0].when",
         "when: \"valve > 1\"", "'valve' is an actuator; only sensors may appear here"),
    Case("opcua-no-users-no-anonymous", "    allow_anonymous: true", "    allow_anonymous: false",
         "northbound.opcua.users", "endpoint: opc.tcp://127.0.0.1:4841",
         "list users, or set allow_anonymous: true explicitly"),
    Case("opcua-user-bad-role", "    allow_anonymous: true",
         "    allow_anonymous: false\n    users:\n      - {name: ai, password_env: AI_PW, "
         "role: root}", "northbound.opcua.users[0].role", "role: root",
         "must be operator, ai, viewer or admin, not 'root'"),
    Case("opcua-users-in-clear", "    allow_anonymous: true",
         "    allow_anonymous: false\n    users:\n      - {name: ai, password_env: AI_PW}",
         "northbound.opcua.users", "users:", "passwords would cross the wire in clear"),
    Case("opcua-deprecated-policy", "    allow_anonymous: true",
         "    allow_anonymous: true\n    security: {policy: Basic128Rsa15, mode: sign, "
         "certificate: c.der, private_key: k.pem}", "northbound.opcua.security",
         "security: {policy: Basic128Rsa15", "deprecated"),
    Case("detection-negative", "northbound:\n", "detection:\n  violation_max: -1\n\nnorthbound:\n",
         "detection.violation_max", "violation_max: -1", "must be >= 0"),
    Case("frozen-unknown-tag", "northbound:\n",
         "detection:\n  frozen_after_s: {levle: 30}\n\nnorthbound:\n",
         "detection.frozen_after_s.levle", "levle: 30", "unknown tag 'levle'"),
    Case("frozen-actuator", "northbound:\n",
         "detection:\n  frozen_after_s:\n    level: 30\n    valve: 30\n\nnorthbound:\n",
         "detection.frozen_after_s.valve", "valve: 30", "'valve' is not a sensor"),
    Case("frozen-zero", "northbound:\n",
         "detection:\n  frozen_after_s:\n    level: 0\n\nnorthbound:\n",
         "detection.frozen_after_s.level", "    level: 0\n", "must be > 0, not 0.0"),
    Case("frozen-text", "northbound:\n",
         "detection:\n  frozen_after_s: {level: long}\n\nnorthbound:\n",
         "detection.frozen_after_s.level", "level: long", "must be a number, found text 'long'"),
    Case("frozen-not-a-mapping", "northbound:\n",
         "detection:\n  frozen_after_s: [level]\n\nnorthbound:\n",
         "detection.frozen_after_s", "frozen_after_s: [level]", "must be a mapping, found a list"),
    Case("gross-above-one", "northbound:\n",
         "detection:\n  gross_violation: 1.5\n\nnorthbound:\n",
         "detection.gross_violation", "gross_violation: 1.5", "must be in [0, 1], not 1.5"),
    Case("rate-negative", "northbound:\n",
         "detection:\n  max_rate_per_s:\n    flow: -2.5\n\nnorthbound:\n",
         "detection.max_rate_per_s.flow", "flow: -2.5", "must be > 0, not -2.5"),
    Case("rate-inf", "northbound:\n",
         "detection:\n  max_rate_per_s: {temp: .inf}\n\nnorthbound:\n",
         "detection.max_rate_per_s.temp", "temp: .inf", "must be a finite number, not inf"),
    Case("rate-nan", "northbound:\n",
         "detection:\n  max_rate_per_s: {temp: .nan}\n\nnorthbound:\n",
         "detection.max_rate_per_s.temp", "temp: .nan", "must be a finite number, not nan"),
    Case("rate-actuator", "northbound:\n",
         "detection:\n  max_rate_per_s: {heater: 1.0}\n\nnorthbound:\n",
         "detection.max_rate_per_s.heater", "heater: 1.0", "'heater' is not a sensor"),
    Case("rate-unknown-tag", "northbound:\n",
         "detection:\n  max_rate_per_s: {pressure: 1.0}\n\nnorthbound:\n",
         "detection.max_rate_per_s.pressure", "pressure: 1.0", "unknown tag 'pressure'"),
    Case("operation-unknown-mode", "northbound:\n", "operation:\n  start_mode: turbo\n\n"
         "northbound:\n", "operation.start_mode", "start_mode: turbo",
         "must be one of shadow, manual; not 'turbo'"),
    Case("audit-negative-sampling", "northbound:\n", "audit:\n  sample_every_n: -3\n\n"
         "northbound:\n", "audit.sample_every_n", "sample_every_n: -3", "must be >= 0"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_site(tmp_path: Path, case: Case):
    text = edit(BASE, case.old, case.new)
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, case.at), case.key, case.fragment)


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- several errors


def test_all_errors_are_reported_sorted_by_line(tmp_path: Path):
    # Five independent mistakes, put where the loader's reading order (site, devices, tags,
    # envelope, ..., northbound, then unknown sections) differs from their order in the file.
    text = "colour: blue\n" + BASE
    text = edit(text, "  cycle_ms: 100", "  cycle_ms: -5")
    text = edit(text, "    range: [0.0, 5.0]\n", "    range: [0.0, 5.0]\n    colour: red\n")
    text = edit(text, "      min: 0.0\n      max: 100.0\n", "      min: 150.0\n      max: 100.0\n")
    text = edit(text, "{host: 127.0.0.1, port: 1502}", "{host: 127.0.0.1, port: 0}")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    got = [(i.line, i.path) for i in info.value.issues]
    expected = [
        (1, "colour"),
        (line_of(text, "cycle_ms: -5"), "site.cycle_ms"),
        (line_of(text, "colour: red"), "tags.level.colour"),
        (line_of(text, "max: 100.0\n      policy"), "envelope.limits.pump.max"),
        (line_of(text, "port: 0}"), "northbound.modbus.port"),
    ]
    # every mistake is reported (a follow-on message may come too; see the cascade tests)
    for item in expected:
        assert item in got, shown(info.value.issues)
    assert [i.line for i in info.value.issues] == sorted(i.line for i in info.value.issues)
    # the exception's text is the issues, one per line, in the same order
    assert str(info.value).splitlines() == [str(i) for i in info.value.issues]


def test_several_errors_in_one_list_are_all_reported(tmp_path: Path):
    text = edit(BASE, "valve + pump + 40 * drain <= 160", "vlave <= 160")
    text = edit(text, "pump - 10 * level >= -40", "pump * level >= -20")
    text = edit(text, "\"level > 4.5\"", "\"valve > 4.5\"")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert [(i.line, i.path) for i in issues] == [
        (line_of(text, "vlave"), "envelope.constraints[0].expr"),
        (line_of(text, "pump * level"), "envelope.constraints[1].expr"),
        (line_of(text, "valve > 4.5"), "envelope.interlocks[0].when"),
    ]


def test_errors_in_different_sections_with_same_line_order(tmp_path: Path):
    # Errors are sorted by line, and ties keep reading order (the sort is stable).
    text = edit(BASE, "  outputs: [valve, pump]", "  outputs: [level, flow]")
    issues = issues_of(write(tmp_path, text))
    assert [i.message for i in issues] == ["'level' is not an actuator",
                                           "'flow' is not an actuator"]


# --------------------------------------------------------------------------- loader problems


@pytest.mark.parametrize(
    ("old", "new", "key", "at"),
    [
        # an actuator tag that fails to build: its later uses must not be reported as
        # "not a tag" / "unknown tag" / "not an actuator"
        ("    scale: 0.01\n    safe_value: 0.0", "    scale: abc\n    safe_value: 0.0",
         "tags.valve.scale", "scale: abc"),
        # a device that fails to build: its tags must not all become "unknown device"
        ("    endpoint: opc.tcp://127.0.0.1:4840/", "    endpoint: http://127.0.0.1:4840/",
         "devices.ua.endpoint", "http://"),
        # a limits entry that fails: no second "every actuator needs limits" for it
        ("      min: 0.0\n      max: 100.0\n", "      min: 150.0\n      max: 100.0\n",
         "envelope.limits.pump.max", "max: 100.0\n      policy"),
        # a model row that fails: keep must not say "no model row" / "must name a sensor"
        ("\"0.0001 * valve - 0.0001 * pump\"", "\"0.0001 * valve - 0.0001 * pmup\"",
         "envelope.prediction.model.level", "pmup"),
    ],
    ids=["bad-tag", "bad-device", "bad-limits", "bad-model-row"],
)
def test_one_mistake_gives_one_error(tmp_path: Path, old, new, key, at):
    # BUG (loader.py: _section drops the item; _read_tags, _read_devices, _read_envelope,
    # _read_prediction then report every reference to it): an item that fails
    # is dropped, and every later reference to it is reported again with a misleading
    # message. E.g. one bad `scale` on an actuator also yields "limits name actuators; 'valve'
    # is not a tag", "unknown tag 'valve'", "'valve' is not an actuator" (x3); one bad device
    # endpoint yields 20+ lines. Fix: remember the names of items that failed (tags, devices,
    # limits, model rows) and skip checks that refer to them.
    text = edit(BASE, old, new)
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, at), key, "")
    assert len(issues) == 1, shown(issues)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("detection", "divergence_drift"),
        ("detection", "violation_max"),
        ("detection", "frozen_after_s"),
        ("detection", "max_rate_per_s"),
        ("operation", "clean_shadow_s"),
        ("audit", "sample_every_n"),
    ],
)
def test_empty_value_in_flat_section_is_a_located_error(tmp_path: Path, section, key):
    # BUG (loader.py, _read_simple): it passes None for `key:` with no value, so the
    # dataclass check raises TypeError (math.isfinite(None), None < 0) out of load_config;
    # `safety-gateway check` reports an internal error and exits 70.
    text = edit(BASE, "northbound:\n", f"{section}:\n  {key}:\n\nnorthbound:\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, f"  {key}:\n"), f"{section}.{key}", "")


@pytest.mark.parametrize(("section", "key"), [("detection", "divergence"),
                                               ("operation", "start_mode")])
def test_empty_value_is_not_silently_none(tmp_path: Path, section, key):
    # BUG (loader.py, _read_simple): `divergence:` with no value gives Detection(divergence=None),
    # which is falsy: the divergence detector is silently switched off. `start_mode:` gives
    # Operation(start_mode=None), which is not a StartMode at all. Either refuse the empty value
    # with a located error or use the default, never None.
    text = edit(BASE, "northbound:\n", f"{section}:\n  {key}:\n\nnorthbound:\n")
    path = write(tmp_path, text)
    try:
        site = load_config(path)
    except ConfigError as exc:
        assert_issue(path, exc.issues, line_of(text, f"  {key}:\n"), f"{section}.{key}", "")
    else:
        value = getattr(getattr(site, section), key)
        assert value is not None
        assert value == getattr(getattr(s, section.capitalize())(), key)


def test_per_sensor_detection_loads_in_file_order(tmp_path: Path):
    text = edit(BASE, "northbound:\n", "detection:\n  frozen_after_s: {temp: 600, level: 30}\n"
                "  max_rate_per_s:\n    level: 0.05\n    flow: 2\n\nnorthbound:\n")
    site = load_config(write(tmp_path, text))
    assert site.detection.frozen_after_s == (("temp", 600.0), ("level", 30.0))
    assert site.detection.max_rate_per_s == (("level", 0.05), ("flow", 2.0))
    assert s.Detection().frozen_after_s == () == s.Detection().max_rate_per_s  # off by default


def test_every_bad_per_sensor_entry_is_reported(tmp_path: Path):
    text = edit(BASE, "northbound:\n", "detection:\n  max_rate_per_s:\n    level: 0\n"
                "    pump: 5\n    flow: .inf\n    temp: 3\n  frozen_after_s: {levle: 1}\n"
                "\nnorthbound:\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, "level: 0\n"), "detection.max_rate_per_s.level",
                 "must be > 0, not 0.0")
    assert_issue(path, issues, line_of(text, "pump: 5"), "detection.max_rate_per_s.pump",
                 "'pump' is not a sensor")
    assert_issue(path, issues, line_of(text, "flow: .inf"), "detection.max_rate_per_s.flow",
                 "must be a finite number, not inf")
    assert_issue(path, issues, line_of(text, "levle: 1"), "detection.frozen_after_s.levle",
                 "unknown tag 'levle'")
    assert len(issues) == 4, shown(issues)


def test_per_sensor_entry_for_a_tag_that_failed_is_not_reported_again(tmp_path: Path):
    text = edit(BASE, "    range: [0.0, 300.0]", "    range: [300.0, 0.0]")
    text = edit(text, "northbound:\n", "detection:\n  max_rate_per_s: {temp: 3}\n\nnorthbound:\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, "range: [300.0, 0.0]"), "tags.temp.range", "")
    assert len(issues) == 1, shown(issues)


def test_bad_heartbeat_node_names_the_heartbeat_key(tmp_path: Path):
    # BUG (loader.py, _read_devices): the heartbeat's OpcUaRef is built against the device mapping,
    # so its FieldError("node") is reported as `devices.ua.node` on the device's first line.
    text = edit(BASE, "heartbeat: \"ns=2;s=Ua.Heartbeat\"", "heartbeat: \"Ua.Heartbeat\"")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, "heartbeat: \"Ua.Heartbeat\""),
                 "devices.ua.heartbeat", "is not a node id")


def test_deeply_nested_expression_is_a_located_error(tmp_path: Path):
    # BUG (expr.py recursion, reached from loader.py _parse): RecursionError escapes load_config.
    deep = "(" * 400 + "valve" + ")" * 400
    text = edit(BASE, "\"valve + pump + 40 * drain <= 160\"", f"\"{deep} <= 160\"")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, deep), "envelope.constraints[0].expr", "")


def test_non_ascii_tag_name_is_refused_where_it_is_defined(tmp_path: Path):
    # BUG (loader.py, _read_tags): str.isidentifier() accepts 'höhe', but the expression tokenizer
    # only knows ASCII names ([A-Za-z_][A-Za-z0-9_]*), so such a tag can be defined but never
    # used in a constraint, interlock or model ("unexpected character 'ö'"). Fix: check names
    # with the tokenizer's pattern.
    text = edit(BASE, "  flow:\n", "  höhe:\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    # Shown escaped: a name outside printable ASCII is never printed raw (it could pass for
    # another one).
    assert_issue(path, issues, line_of(text, "höhe:"), "tags.h\\xf6he", "identifier")


@pytest.mark.parametrize("name", ["predict.level", "valve.max", "envelope.clamp_infeasible"])
def test_constraint_name_may_not_shadow_a_generated_slot_name(tmp_path: Path, name):
    # BUG (loader.py, _unique and _read_prediction): verdicts, the audit log and the dashboard name
    # violations by slot name; the compiler generates
    # `<actuator>.finite/.min/.max/.allowed/.rate/.step`, `predict.<sensor>` and
    # `envelope.clamp_infeasible`, but _unique only compares constraint and interlock names with
    # each other (the `seen` passed to _read_prediction is unused). A constraint called
    # 'predict.level' makes two slots with the same name.
    text = edit(BASE, "    - name: min_draw", f"    - name: {name}")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert any(name in i.message for i in issues), shown(issues)


def test_safe_value_not_in_allowed_says_allowed(tmp_path: Path):
    # A float64 actuator (no wire-encoding problem) whose safe value lies inside [min, max] but
    # is not one of its allowed values: the message must say so, not print an interval.
    text = (CONFIGS / "boiler.yaml").read_text()
    text = text.replace("    heater: {min: 0.0, max: 100.0, max_rate_per_s: 10.0, max_step: 5.0, "
                        "policy: clamp}",
                        "    heater: {allowed: [0, 50, 100], policy: clamp}")
    text = text.replace("    safe_value: 0.0       # heat off", "    safe_value: 25.0")
    path = write(tmp_path, text)
    issues = issues_of(path)
    issue = assert_issue(path, issues, line_of(text, "safe_value: 25.0"),
                         "tags.heater.safe_value", "25.0")
    assert "is not one of the allowed values" in issue.message


def test_keep_for_unknown_tag_says_so(tmp_path: Path):
    # Unclear message (loader.py, _read_prediction): keep entries are only compared with the
    # modelled sensors, so a typo or an actuator gets "'lvl' has no model row, ... add it under
    # prediction.model"; it should say the name is not a sensor (as model rows do).
    text = edit(BASE, "      level: {min: 0.2, max: 4.8}\n",
                "      level: {min: 0.2, max: 4.8}\n      lvl: {max: 1}\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    issue = assert_issue(path, issues, line_of(text, "lvl: {max: 1}"),
                         "envelope.prediction.keep.lvl", "'lvl'")
    assert "not a sensor" in issue.message or "unknown tag" in issue.message


def test_safe_value_must_be_encodable_in_the_wire_type(tmp_path: Path):
    # Missing check (schema.py, WireType.integer_range is never used): a safe value that the wire
    # type cannot hold is accepted. Here pump is uint16 with scale 0.01, limits [-10, 100]
    # and safe value -5: raw -500 cannot be written to a uint16, so the value the gateway
    # must fall back to cannot be encoded (DESIGN.md: "check the value after encoding").
    text = edit(BASE, "      min: 0.0\n      max: 100.0\n", "      min: -10.0\n      max: 100.0\n")
    text = edit(text, "    safe_value: 20.0\n", "    safe_value: -5.0\n")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, "safe_value: -5.0"), "tags.pump.safe_value", "")


def test_numeric_node_id_must_be_a_number(tmp_path: Path):
    # Missing check (schema.py, _looks_like_nodeid): `i=` takes a numeric identifier, but
    # 'ns=2;i=Temp' is accepted and only fails when the adapter connects.
    text = edit(BASE, "node: \"ns=2;s=Ua.Temp\"", "node: \"ns=2;i=Temp\"")
    path = write(tmp_path, text)
    issues = issues_of(path)
    assert_issue(path, issues, line_of(text, "ns=2;i=Temp"), "tags.temp.node", "node id")


# --------------------------------------------------------------------------- whole-file errors


def test_yaml_problem_is_a_config_error(tmp_path: Path):
    text = edit(BASE, "  cycle_ms: 100\n", "  cycle_ms: 100\n  cycle_ms: 200\n")
    path = write(tmp_path, text)
    (issue,) = issues_of(path)
    assert (issue.line, issue.path) == (line_of(text, "cycle_ms: 200"), "site.cycle_ms")
    assert "duplicate key" in issue.message


def test_forbidden_tag_in_site_is_a_config_error_and_not_run(tmp_path: Path):
    target = tmp_path / "pwned"
    text = edit(BASE, "  name: test-site",
                f"  name: !!python/object/apply:builtins.open [\"{target}\", \"w\"]")
    path = write(tmp_path, text)
    (issue,) = issues_of(path)
    assert not target.exists()
    assert (issue.line, issue.path) == (2, "site.name")


def test_missing_file(tmp_path: Path):
    path = tmp_path / "absent.yaml"
    (issue,) = issues_of(path)
    assert issue.file == str(path)
    assert issue.message == "file not found"


def test_top_level_not_a_mapping(tmp_path: Path):
    (issue,) = issues_of(write(tmp_path, "- site\n- devices\n"))
    assert issue.line == 1
    assert issue.message == "top level must be a mapping of keys"


def test_empty_mapping_reports_each_missing_section(tmp_path: Path):
    path = write(tmp_path, "audit: {}\n")
    issues = issues_of(path)
    assert {i.path for i in issues} >= {"site", "devices"}
    assert all(i.message == "required key is missing" for i in issues if i.path in
               ("site", "devices"))


def test_start_mode_auto_is_refused(tmp_path):
    text = (CONFIGS / "water_tank.yaml").read_text().replace(
        "start_mode: manual", "start_mode: auto")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = text.splitlines().index("  start_mode: auto") + 1
    assert f"{path}:{line}: operation.start_mode: must be one of shadow, manual" in str(
        info.value)


def test_reserved_names_are_the_envelope_slot_names():
    """The loader reserves the compiler's built-in slot names with its own copy of the naming
    rule (config must not import the envelope); the two must not drift apart."""
    from gateway.config.loader import _Names
    from gateway.envelope.compiled import ACTUATOR_SLOTS, INFEASIBLE, compile_site

    for name in ("water_tank.yaml", "boiler.yaml"):
        site = load_config(CONFIGS / name)
        reserved = _Names({t.name: t for t in site.tags}, set()).reserved()
        user = {c.name for c in site.envelope.constraints}
        user |= {i.name for i in site.envelope.interlocks}
        assert set(compile_site(site).slot_names) - user <= reserved
        assert reserved == (
            {f"{t.name}.{slot}" for t in site.actuators for slot in ACTUATOR_SLOTS}
            | {f"predict.{t.name}" for t in site.sensors} | {INFEASIBLE})
