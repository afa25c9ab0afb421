"""`safety-gateway bench learn`: the synthetic site checks, and a short run reports figures
(the full bench is 24 h of history; ten minutes here)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from benchmarks import learn as bench
from gateway.cli import main
from gateway.config import load_config

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_synthetic_site_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(bench.site_text())
    site = load_config(path)
    assert (len(site.sensors), len(site.actuators)) == (80, 20)


def test_bench_learn_reports_time_memory_and_models(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "QUICK_S", 600)
    assert main(["bench", "learn", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 601 and result["tags"] == 100
    assert result["wall_s"] > 0 and result["cpu_s"] > 0
    assert 0 < result["max_rss_mb"] < 1024
    # Ten minutes are ten windows of 60 s: too few to fit 20 actuators and the sensor.
    assert result["sensors_modelled"] == 0
    text = bench.format_text(result)
    assert "learn on 601 rows x 100 tags" in text and "max RSS" in text
