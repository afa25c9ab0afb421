"""Tests for gateway.adapters.modbus.map: the northbound register layout and its image."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.base import Refusal, WriteOutcome
from gateway.adapters.modbus.map import (
    STATUS_BASE,
    ModeCode,
    NorthboundMap,
    RegisterImage,
    RejectionCode,
    StatusRegister,
)
from gateway.config import load_config
from gateway.config.schema import ModbusServerSpec, Northbound, Table

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IR, HR = Table.INPUT_REGISTER, Table.HOLDING_REGISTER
STATUS_TAGS = ["status.mode", "status.latched", "status.incident", "status.heartbeat",
               "status.rejection", "status.rejected_actuator", "status.bypasses",
               "status.bypass_expiry_s"]


def f32(value: float) -> bytes:
    return struct.pack(">f", value)


def unf32(data: bytes) -> float:
    return float(struct.unpack(">f", data)[0])


# --------------------------------------------------------------------------- layout


def test_water_tank_layout() -> None:
    site = load_config(CONFIGS / "water_tank.yaml")
    nmap = NorthboundMap.from_site(site)
    assert nmap.unit == 1
    sensors = ("level", "inflow_rate", "demand", "uptime_s")
    assert nmap.sensors == sensors
    assert nmap.actuators == ("inflow_valve", "outflow_pump", "drain_valve")
    entries = nmap.entries()
    n = len(sensors)
    assert entries[:n] == [
        {"tag": name, "table": "input_register", "address": 2 * i, "type": "float32",
         "scale": 1.0, "writable": False}
        for i, name in enumerate(sensors)]
    assert [e["tag"] for e in entries[n:n + 8]] == STATUS_TAGS
    assert [e["address"] for e in entries[n:n + 8]] == list(range(1000, 1008))
    assert all(e["type"] == "uint16" and e["table"] == "input_register" and not e["writable"]
               for e in entries[n:n + 8])
    assert entries[n + 8:] == [
        {"tag": name, "table": "holding_register", "address": 2 * j, "type": "float32",
         "scale": 1.0, "writable": True}
        for j, name in enumerate(("inflow_valve", "outflow_pump", "drain_valve"))]
    json.dumps(entries)  # the CLI prints it as JSON


def test_unit_comes_from_the_site_and_defaults_to_1() -> None:
    site = load_config(CONFIGS / "boiler.yaml")
    assert NorthboundMap.from_site(site).unit == 1
    other = dataclasses.replace(site, northbound=Northbound(modbus=ModbusServerSpec(unit=7)))
    assert NorthboundMap.from_site(other).unit == 7
    none = dataclasses.replace(site, northbound=Northbound())
    assert NorthboundMap.from_site(none).unit == 1
    assert NorthboundMap.from_site(none).sensors == tuple(t.name for t in site.sensors)


def test_status_register_addresses() -> None:
    assert [int(r) for r in StatusRegister] == list(range(STATUS_BASE, STATUS_BASE + 8))
    nmap = NorthboundMap((), ())
    for reg, name in zip(StatusRegister, STATUS_TAGS, strict=True):
        assert nmap.span(name) == (IR, int(reg), 1)
        entry = nmap.tag_at(IR, int(reg))
        assert entry is not None
        assert entry.tag == name


def test_lookups() -> None:
    nmap = NorthboundMap(("a", "b"), ("u", "v", "w"))
    assert nmap.span("b") == (IR, 2, 2)
    assert nmap.span("w") == (HR, 4, 2)
    with pytest.raises(KeyError):
        nmap.span("nope")
    for address, tag in ((0, "a"), (1, "a"), (2, "b"), (3, "b")):
        entry = nmap.tag_at(IR, address)
        assert entry is not None
        assert entry.tag == tag
    for address in (4, 999, 1008, 65535, -1):
        assert nmap.tag_at(IR, address) is None
    assert nmap.tag_at(HR, 5) is not None
    assert nmap.tag_at(HR, 6) is None
    assert nmap.tag_at(HR, 1000) is None  # status is in the input registers only
    assert nmap.tag_at(Table.COIL, 0) is None


def test_setpoints_in_needs_whole_float32s() -> None:
    nmap = NorthboundMap(("a",), ("u", "v", "w"))
    assert nmap.setpoints_in(0, 2) == ("u",)
    assert nmap.setpoints_in(0, 6) == ("u", "v", "w")
    assert nmap.setpoints_in(2, 4) == ("v", "w")
    assert nmap.setpoints_in(1, 2) is None  # halves of two setpoints
    assert nmap.setpoints_in(0, 1) is None  # half of one
    assert nmap.setpoints_in(0, 3) is None
    assert nmap.setpoints_in(4, 4) is None  # runs past the last actuator
    assert nmap.setpoints_in(6, 2) is None
    assert nmap.setpoints_in(0, 0) is None
    assert nmap.setpoints_in(1000, 2) is None


def test_block_of() -> None:
    nmap = NorthboundMap(("a", "b"), ("u",))
    assert nmap.block_of(IR, 0, 4) is not None
    assert nmap.block_of(IR, 3, 1) is not None
    assert nmap.block_of(IR, 3, 2) is None
    assert nmap.block_of(IR, 1000, 8) is not None
    assert nmap.block_of(IR, 1000, 9) is None
    assert nmap.block_of(IR, 0, 1006) is None  # spans the gap
    assert nmap.block_of(HR, 0, 2) is not None
    assert nmap.block_of(HR, 0, 0) is None


def test_no_actuators_no_holding_registers() -> None:
    nmap = NorthboundMap(("a",), ())
    image = RegisterImage(nmap)
    assert image.read(HR, 0, 1) is None
    assert nmap.setpoints_in(0, 2) is None


def test_bad_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 500"):
        NorthboundMap(tuple(f"s{i}" for i in range(501)), ())
    NorthboundMap(tuple(f"s{i}" for i in range(500)), ())  # ends at 999: fits
    with pytest.raises(ValueError, match="unique"):
        NorthboundMap(("a",), ("a",))
    with pytest.raises(ValueError, match="unique"):
        NorthboundMap(("status.mode",), ())
    with pytest.raises(ValueError, match="unit"):
        NorthboundMap((), (), unit=256)


@settings(max_examples=50)
@given(st.integers(0, 40), st.integers(0, 40))
def test_every_register_belongs_to_exactly_its_entry(n_sensors: int, n_actuators: int) -> None:
    nmap = NorthboundMap(tuple(f"s{i}" for i in range(n_sensors)),
                         tuple(f"a{i}" for i in range(n_actuators)))
    seen: dict[tuple[Table, int], str] = {}
    for e in nmap.entries():
        table, address, count = nmap.span(e["tag"])
        assert table.value == e["table"]
        assert address == e["address"]
        for reg in range(address, address + count):
            assert (table, reg) not in seen
            seen[(table, reg)] = e["tag"]
            entry = nmap.tag_at(table, reg)
            assert entry is not None
            assert entry.tag == e["tag"]
            assert nmap.block_of(table, reg, 1) is not None
    for table in (IR, HR):
        for reg in range(0, 1100):
            assert (nmap.tag_at(table, reg) is None) == ((table, reg) not in seen)


# --------------------------------------------------------------------------- image


def test_image_starts_nan_and_starting() -> None:
    nmap = NorthboundMap(("a",), ("u",))
    image = RegisterImage(nmap)
    assert math.isnan(image.sensor("a"))
    assert math.isnan(image.actuator("u"))
    assert image.read(IR, 1000, 6) == bytes([0, ModeCode.STARTING] + [0] * 10)
    assert ModeCode.STARTING not in (ModeCode.AUTO, ModeCode.SHADOW, ModeCode.MANUAL,
                                     ModeCode.SAFE_STOP)


@given(st.floats(width=32, allow_nan=False))
def test_float32_round_trip(value: float) -> None:
    nmap = NorthboundMap(("a", "b"), ("u", "v"))
    image = RegisterImage(nmap)
    image.set_sensor("b", value)
    image.set_actuator("v", value)
    assert image.read(IR, 2, 2) == f32(value)
    assert image.read(HR, 2, 2) == f32(value)
    assert unf32(image.read(IR, 2, 2) or b"") == value
    assert image.sensor("b") == value
    assert image.actuator("v") == value
    assert math.isnan(image.sensor("a"))  # neighbours untouched
    assert math.isnan(image.actuator("u"))


def test_out_of_float32_range_reads_as_inf() -> None:
    image = RegisterImage(NorthboundMap(("a",), ("u",)))
    image.set_sensor("a", 1e300)
    assert image.sensor("a") == math.inf
    image.set_actuator("u", -1e300)
    assert image.actuator("u") == -math.inf
    image.set_sensor("a", math.nan)
    assert math.isnan(image.sensor("a"))
    with pytest.raises(KeyError):
        image.set_sensor("u", 1.0)
    with pytest.raises(KeyError):
        image.set_actuator("a", 1.0)


def test_status_and_rejection() -> None:
    image = RegisterImage(NorthboundMap(("a",), ("u", "v")))
    image.set_status(ModeCode.SAFE_STOP, True, True, 65537)
    image.set_rejection(RejectionCode.OUTSIDE_ENVELOPE, 1)
    assert image.read(IR, 1000, 6) == struct.pack(">6H", 3, 1, 1, 1, 1, 2)
    image.set_status(ModeCode.AUTO, False, False, 65535)
    image.set_rejection(RejectionCode.NONE, None)
    assert image.read(IR, 1000, 6) == struct.pack(">6H", 0, 0, 0, 65535, 0, 0)
    assert image.read(IR, 1003, 1) == struct.pack(">H", 65535)
    image.set_status(ModeCode.STARTING, False, False, 0)
    assert image.read(IR, 1000, 1) == struct.pack(">H", 4)
    with pytest.raises(ValueError, match="mode_code"):
        image.set_status(5, False, False, 0)
    with pytest.raises(ValueError, match="actuator_index"):
        image.set_rejection(RejectionCode.READ_ONLY, 2)
    with pytest.raises(ValueError, match="rejection code"):
        image.set_rejection(10, None)
    # Bypasses in force: a count and the seconds to the earliest expiry, rounded up.
    assert image.read(IR, 1006, 2) == struct.pack(">2H", 0, 0)
    image.set_bypasses(2, 59.2)
    assert image.read(IR, 1006, 2) == struct.pack(">2H", 2, 60)
    image.set_bypasses(1, 1e9)
    assert image.read(IR, 1006, 2) == struct.pack(">2H", 1, 65535)
    image.set_bypasses(0, None)
    assert image.read(IR, 1000, 8) == struct.pack(">8H", 4, 0, 0, 0, 0, 0, 0, 0)


def test_image_read_bounds() -> None:
    image = RegisterImage(NorthboundMap(("a", "b"), ("u",)))
    assert image.read(IR, 0, 4) is not None
    assert image.read(IR, 0, 5) is None
    assert image.read(IR, 4, 1) is None
    assert image.read(IR, 999, 2) is None
    assert image.read(IR, 1007, 1) is not None
    assert image.read(IR, 1007, 2) is None
    assert image.read(IR, 0, 0) is None
    assert image.read(HR, 1, 1) is not None
    assert image.read(HR, 1, 2) is None


def test_codes() -> None:
    assert ModeCode.of("safe_stop") is ModeCode.SAFE_STOP
    assert ModeCode.of("auto") == 0
    with pytest.raises(ValueError, match="unknown mode"):
        ModeCode.of("turbo")
    assert RejectionCode.from_exception_code(3) is RejectionCode.OUTSIDE_ENVELOPE
    assert RejectionCode.from_exception_code(2) is RejectionCode.READ_ONLY
    assert RejectionCode.from_exception_code(4) is RejectionCode.DEVICE_UNCONFIRMED
    assert RejectionCode.from_exception_code(0) is RejectionCode.NONE
    assert [int(c) for c in RejectionCode] == list(range(10))
    # Each kind of refusal has its own code (issue 15: a MANUAL-only refusal was "device
    # failure"); without a kind, the exception code decides.
    codes = {RejectionCode.of(WriteOutcome(False, 4, "x", why)) for why in Refusal}
    assert len(codes) == len(Refusal) and RejectionCode.NONE not in codes
    assert RejectionCode.of(WriteOutcome(False, 4, "x", Refusal.MODE)) is RejectionCode.WRONG_MODE
    assert RejectionCode.of(WriteOutcome(False, 3, "x")) is RejectionCode.OUTSIDE_ENVELOPE
    assert RejectionCode.of(WriteOutcome(True, 0, "")) is RejectionCode.NONE
