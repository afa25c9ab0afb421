"""Sites that each section accepts alone but that make no sense together, or that admit more
than anyone meant, are refused at the offending key's line (gateway.config.sanity)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from tests.config.test_loader import assert_issue, edit, issues_of, line_of, write

TANK = (Path(__file__).resolve().parents[2] / "configs" / "water_tank.yaml").read_text()


@pytest.mark.parametrize(("old", "new", "at", "key", "fragment"), [
    ("cycle_ms: 100", "cycle_ms: 0.001", "cycle_ms: 0.001", "site.cycle_ms", "1 to 10000 ms"),
    ("cycle_ms: 100", "cycle_ms: 60000", "cycle_ms: 60000", "site.cycle_ms", "not 60000"),
    ("    step_s: 1.0", "    step_s: 1.0e-300", "step_s: 1.0e-300", "envelope.prediction.step_s",
     "shorter than the cycle"),
    # The pump's scale: the inflow's safe-value table (10 % as its default row) cannot be
    # encoded at this scale either, and that refusal would come first.
    ("    scale: 0.01\n", "    scale: 1.0e-300\n",
     "scale: 1.0e-300", "tags.outflow_pump.scale", "cannot hold the limits [0, 100]"),
    ("port: 1502,", "port: 5020,", "port: 5020,", "northbound.modbus.port",
     "devices.plc's own address"),
    ("allow: [127.0.0.1]}", "allow: [0.0.0.0/0]}", "allow: [0.0.0.0/0]",
     "northbound.modbus.allow[0]", "admits every address"),
    ("allow: [127.0.0.1]}", "allow: [10.0.0.300]}", "allow: [10.0.0.300]",
     "northbound.modbus.allow[0]", "not an IP address"),
])
def test_dubious_site_is_refused(tmp_path: Path, old: str, new: str, at: str, key: str,
                                 fragment: str) -> None:
    text = edit(TANK, old, new)
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, at), key, fragment)


def test_allow_any_says_it_is_meant(tmp_path: Path) -> None:
    text = edit(TANK, "allow: [127.0.0.1]}", "allow: [0.0.0.0/0], allow_any: true}")
    site = load_config(write(tmp_path, text))
    assert site.northbound.modbus is not None and site.northbound.modbus.allow_any


def test_a_server_on_every_interface_collides_with_a_local_device(tmp_path: Path) -> None:
    old = "modbus: {host: 127.0.0.1, port: 1502,"
    text = edit(TANK, old, "modbus: {host: 0.0.0.0, port: 5020,")
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, "port: 5020,"), "northbound.modbus.port",
                 "own address")
    # Another loopback address on the same port is another socket: no collision.
    text = edit(TANK, old, "modbus: {host: 127.0.0.2, port: 5020,")
    load_config(write(tmp_path, text))


def test_invisible_and_confusable_characters_are_printed_escaped(tmp_path: Path) -> None:
    # A zero-width space inside a tag name, and a Cyrillic ie (U+0435): neither may print as
    # "level".
    for bad, shown in (("le\u200bvel", "le\\u200bvel"), ("l\u0435vel", "l\\u0435vel")):
        text = edit(TANK, "  level:\n    device: plc", f"  {bad}:\n    device: plc")
        path = write(tmp_path, text)
        issues = issues_of(path)
        texts = [str(i) for i in issues]
        assert any(shown in t for t in texts), texts
        assert all(t.isascii() and t.isprintable() for t in texts), texts


def test_modbus_connection_slots_are_configurable_and_checked(tmp_path: Path) -> None:
    text = edit(TANK, "allow: [127.0.0.1]}",
                "allow: [127.0.0.1], max_connections: 8, max_per_source: 2, "
                "idle_timeout_s: 5.0}")
    spec = load_config(write(tmp_path, text)).northbound.modbus
    assert spec is not None
    assert (spec.max_connections, spec.max_per_source, spec.idle_timeout_s) == (8, 2, 5.0)
    text = edit(TANK, "allow: [127.0.0.1]}", "allow: [127.0.0.1], max_per_source: 20}")
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, "max_per_source: 20"),
                 "northbound.modbus.max_per_source", "must be 1..max_connections")
