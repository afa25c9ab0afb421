"""The startup bench measures what it says: a child's own peak memory, the gateway's first
cycle as the PLC sees it, and a verdict against each target."""

from __future__ import annotations

import asyncio
import shutil
import sys
from typing import TYPE_CHECKING

import pytest
import yaml

from benchmarks import startup

if TYPE_CHECKING:
    from pathlib import Path


def test_peak_rss_is_the_childs_own_not_this_processs() -> None:
    # Linux hands a forked child its parent's peak at exec: a launcher spawned from a process
    # holding 300 MB must still see a tiny command as tiny.
    ballast = bytearray(300 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: resident
    small = startup.launch([shutil.which("true") or "/bin/true"])
    grows = startup.launch([sys.executable, "-c",
                            "b = bytearray(120 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"])
    del ballast
    assert small["peak_rss_kb"] < 40 * 1024
    assert grows["peak_rss_kb"] >= 120 * 1024
    assert small["exit_code"] == grows["exit_code"] == 0


def test_a_failing_command_is_an_error_with_its_stderr() -> None:
    with pytest.raises(startup.BenchError, match="no such thing"):
        startup.launch([sys.executable, "-c", "import sys; sys.exit('no such thing')"])


def test_the_site_variant_moves_ports_and_audit_and_drops_opcua(tmp_path: Path) -> None:
    path = startup.site_variant(startup.SITE, tmp_path, 5999, opcua=False)
    doc = yaml.safe_load(path.read_text())
    shipped = yaml.safe_load(startup.SITE.read_text())
    assert doc["devices"]["plc"]["port"] == 5999
    assert "opcua" not in doc["northbound"]
    assert doc["northbound"]["modbus"]["port"] != shipped["northbound"]["modbus"]["port"]
    assert doc["audit"]["path"] == str(tmp_path / "audit.db")
    with_opcua = yaml.safe_load(startup.site_variant(startup.SITE, tmp_path, 5999,
                                                     opcua=True).read_text())
    assert with_opcua["northbound"]["opcua"]["endpoint"] != \
        shipped["northbound"]["opcua"]["endpoint"]
    startup.load_config(path)  # still a valid site


def test_a_run_to_its_first_cycle_is_seen_at_the_plc(tmp_path: Path) -> None:
    got = asyncio.run(startup.first_cycles(1, tmp_path, ("modbus_only",), warm=False))
    fig = got["modbus_only"]
    assert 0 < fig["first_cycle_s"]["max"] < startup._FIRST_CYCLE_TIMEOUT_S
    assert fig["core_rss_mb"]["max"] > 10
    # the audit writer is the core's child, reported beside it, not counted in it
    assert any("gateway.audit.process" in c["cmdline"] for c in fig["children"])


def _result(help_s: float, rss_mb: float) -> dict[str, object]:
    fig = {"median": 0.1, "max": 0.1, "samples": [0.1]}
    run = {"first_cycle_s": fig, "core_rss_mb": {**fig, "max": rss_mb}, "phases": {},
           "children": []}
    figures = {"help_s": help_s, "check_s": 0.1, "first_cycle_s": 0.1, "core_rss_mb": rss_mb}
    passed = {"help_s": help_s <= 0.3, "check_s": True, "first_cycle_s": True,
              "core_rss_mb": rss_mb <= 80}
    return {"runs": 1, "run_runs": 1, "cpus": 2, "load_avg_before": [0.0] * 3,
            "load_avg_after": [0.0] * 3, "python": "3.11", "rss_floor_mb": 8.0,
            "bytecode_cached": True,
            "help": {"wall_s": {**fig, "max": help_s}, "peak_rss_mb": fig},
            "check": {"wall_s": fig, "peak_rss_mb": fig}, "run": {"shipped": run},
            "targets": startup.TARGETS, "judged_on_max": figures, "pass": passed,
            "all_pass": all(passed.values())}


def test_the_text_says_pass_or_fail_for_each_target() -> None:
    text = startup.format_text(_result(0.1, 50.0))
    assert text.count(": pass") == 4
    assert "all targets met" in text
    text = startup.format_text(_result(0.4, 90.0))
    lines = text.splitlines()
    assert "FAIL" in next(x for x in lines if "--help wall time" in x)
    assert "FAIL" in next(x for x in lines if "core RSS" in x)
    assert "some targets missed" in text
