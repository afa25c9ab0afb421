"""``safety-gateway bench fleet``: runs against its own nats-server and reports real figures;
its options are checked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gateway.cli import main

if TYPE_CHECKING:
    import pytest


def test_bench_fleet_quick_reports_what_was_held(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "fleet", "--quick", "--sites", "1", "--rate", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sites"] == 1 and result["offered_records_per_s"] == 40
    # 3 s measured at 40 records/s: nearly all held, none refused, lags measured
    assert result["held"] >= 90 and result["refused"] == 0 and result["errors"] == 0
    assert 0 < result["lag_s_p50"] <= result["lag_s_p99"] <= result["lag_s_max"]
    assert result["server_rss_mb_max"] > 0
    assert result["met"] is False  # 1 site is not the target's configuration


def test_bench_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "fleet", "--sites", "0"]) == 2
    assert "--sites must be" in capsys.readouterr().err
    assert main(["bench", "supervisor", "--sites", "3"]) == 2
    assert "apply to bench fleet only" in capsys.readouterr().err
