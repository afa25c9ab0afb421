"""Staleness limits per sensor: each tag is judged against what its own device can meet.

A reading is renewed every update period of its device (the polling period, or for an OPC UA
subscription the session probe that confirms unchanged values), and a healthy device may take
up to its ``timeout_ms`` to answer. A limit shorter than the two together judges a healthy
device's readings stale: ``check`` refuses it where it is written, and a limit not written
defaults to at least that.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.cli import EXIT_INPUT, EXIT_OK, main
from gateway.config import ConfigError, load_config
from gateway.supervisor.detectors import InputHealth

ROOT = Path(__file__).resolve().parents[2]
WATER = ROOT / "configs" / "water_tank.yaml"
BOILER = ROOT / "configs" / "boiler.yaml"


def edited(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / source.name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    text = path.read_text(encoding="utf-8")
    assert text.count(needle) == 1
    return text[: text.index(needle)].count("\n") + 1


def test_check_refuses_a_site_limit_shorter_than_poll_plus_timeout(tmp_path, capsys):
    # The tank's PLC is polled every 100 ms and may take 500 ms to answer: 599 ms is too short.
    path = edited(tmp_path, WATER, "stale_after_ms: 2000", "stale_after_ms: 599")
    assert main(["check", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    line = line_of(path, "stale_after_ms: 599")
    (refusal,) = [x for x in err.splitlines() if "stale_after_ms" in x]
    assert refusal.startswith(f"{path}:{line}: detection.stale_after_ms: 599 ms is shorter "
                              "than device 'plc' can meet (polled every 100 ms, plus its "
                              "timeout_ms 500)"), err
    assert "at least 600 ms" in refusal
    assert "Traceback" not in err
    # The limit itself is allowed: exactly poll + timeout.
    exact = edited(tmp_path, WATER, "stale_after_ms: 2000", "stale_after_ms: 600")
    assert main(["check", str(exact)]) == EXIT_OK, capsys.readouterr().err


def test_check_refuses_a_device_limit_and_names_the_device_key(tmp_path, capsys):
    # A subscribed OPC UA device confirms its values every 250 ms (publishing at 100 ms).
    path = edited(tmp_path, BOILER, "    subscribe: true\n",
                  "    subscribe: true\n    stale_after_ms: 2000\n")
    assert main(["check", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    line = line_of(path, "stale_after_ms: 2000")
    (refusal,) = [x for x in err.splitlines() if "stale_after_ms" in x]
    assert refusal.startswith(f"{path}:{line}: devices.boiler_plc.stale_after_ms: 2000 ms is "
                              "shorter than device 'boiler_plc' can meet (subscription "
                              "confirmed every 250 ms, plus its timeout_ms"), err


def test_shipped_sites_pass_the_rule():
    for path in (WATER, BOILER):
        site = load_config(path)
        for tag in site.sensors:
            device = next(d for d in site.devices if d.name == tag.device)
            assert site.stale_after_ms(tag) >= device.timeout_ms + device.poll_ms


def test_each_sensor_is_judged_against_its_own_devices_limit(tmp_path):
    # Two devices: a fast Modbus PLC (100 ms + 500 ms) and a slow one (1000 ms + 2000 ms),
    # no limit written: each sensor's default is the longer of 1 s and what its device meets.
    text = WATER.read_text(encoding="utf-8")
    text = text.replace("""    heartbeat: {table: holding_register, address: 100}
""", """    heartbeat: {table: holding_register, address: 100}
  slow:
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5022
    timeout_ms: 2000
    poll_ms: 1000
""")
    text = text.replace("""  uptime_s:             # the PLC's uptime counter
    device: plc""", """  uptime_s:             # the PLC's uptime counter
    device: slow""")
    text = text.replace("  stale_after_ms: 2000\n", "")
    path = tmp_path / "two.yaml"
    path.write_text(text, encoding="utf-8")
    site = load_config(path)
    limits = {t.name: site.stale_after_ms(t) for t in site.sensors}
    assert limits == {"level": 1000.0, "inflow_rate": 1000.0, "demand": 1000.0,
                      "uptime_s": 3000.0}
    health = InputHealth(site)
    names = list(health.names)
    values = [2.5, 0.01, 0.01, 100.0]
    good = [True] * 4
    # 1.3 s old everywhere: stale for the fast PLC's tags, current for the slow one's (every
    # tag of the fast PLC stale at once: the device is named too, the slow one is not).
    masked, findings = health.check(values, good, [1.3] * 4)
    assert sorted(f.detector for f in findings) == [
        "device.plc", "input.stale.demand", "input.stale.inflow_rate", "input.stale.level"]
    assert masked[names.index("uptime_s")] == 100.0
    assert all(math.isnan(masked[names.index(n)]) for n in ("level", "inflow_rate", "demand"))
    # Past the slow device's own limit, its tag is stale too.
    _, findings = health.check(values, good, [0.1, 0.1, 0.1, 3.01])
    assert [f.detector for f in findings] == ["input.stale.uptime_s"]
    assert "limit 3.0 s" in findings[0].reason
    # A device's own limit overrides the site's; a site limit applies to every other device.
    text = text.replace("    poll_ms: 1000\n", "    poll_ms: 1000\n    stale_after_ms: 5000\n")
    text = text.replace("  divergence_threshold: 20.0\n",
                        "  divergence_threshold: 20.0\n  stale_after_ms: 800\n")
    path.write_text(text, encoding="utf-8")
    site = load_config(path)
    assert {t.name: site.stale_after_ms(t) for t in site.sensors} == {
        "level": 800.0, "inflow_rate": 800.0, "demand": 800.0, "uptime_s": 5000.0}


def test_a_site_limit_too_short_for_one_device_only_is_refused(tmp_path):
    text = WATER.read_text(encoding="utf-8").replace(
        """    heartbeat: {table: holding_register, address: 100}
""", """    heartbeat: {table: holding_register, address: 100}
  slow:
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5022
    timeout_ms: 2000
""").replace("""  uptime_s:             # the PLC's uptime counter
    device: plc""", """  uptime_s:             # the PLC's uptime counter
    device: slow""")
    path = tmp_path / "two.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert issue.path == "detection.stale_after_ms"
    assert "device 'slow'" in issue.message and "at least 2100 ms" in issue.message


def test_check_refuses_a_frozen_limit_shorter_than_the_device_renews_a_reading(tmp_path,
                                                                               capsys):
    path = edited(tmp_path, WATER, "frozen_after_s: {level: 5}", "frozen_after_s: {level: 0.5}")
    assert main(["check", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    line = line_of(path, "frozen_after_s: {level: 0.5}")
    (refusal,) = [x for x in err.splitlines() if "frozen_after_s" in x]
    assert refusal.startswith(f"{path}:{line}: detection.frozen_after_s.level: 0.5 s is "
                              "shorter than device 'plc' renews a reading (polled every 100 ms, "
                              "plus its timeout_ms 500)"), err
    assert "at least 0.6 s" in refusal
