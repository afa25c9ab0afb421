"""``safety-gateway bench interference --quick --json``, end to end (the CI smoke run)."""

from __future__ import annotations

import json
import math

from benchmarks import interference
from gateway.cli import main


def test_quick_bench_reports_every_window_against_the_idle_one(capsys):
    assert main(["bench", "interference", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    windows = result["windows"]
    assert list(windows) == ["idle", "read_hammer", "connect_flood", "opcua_sessions",
                             "comms_killed"]
    for name, w in windows.items():
        if not w["available"]:
            # Only the killed communications process can be missing (before the split).
            assert name == "comms_killed"
            assert "gateway.comms" in w["why"]
            continue
        assert w["cycles"] > 0, name
        assert w["heartbeats"] > 0, name
        assert math.isfinite(w["cycle_lateness_ms_p99"]), name
        assert w["window_s"] >= 2.0, name
        assert name in result["loads"] or name == "idle"
    assert windows["read_hammer"]["load"]["reads"] > 0
    assert windows["connect_flood"]["load"]["attempts"] >= 2000
    assert windows["opcua_sessions"]["load"]["held"] + \
        windows["opcua_sessions"]["load"]["refused"] == 300
    for verdict in result["loads"].values():
        assert set(verdict["met"]) == {"lateness_p99", "no_missed_heartbeat", "no_trip",
                                       "northbound_answers_after"}
    assert result["whole_run"]["gateway_log_tracebacks"] == 0
    text = interference.format_text(result)
    assert all(name in text for name in windows)
