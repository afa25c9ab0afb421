"""``safety-gateway bench reload`` runs and reports what the issue's reload target names: the
cycles and milliseconds from commit to applied, and the cycle lateness with and without
reloads, from one run."""

from __future__ import annotations

import math

from benchmarks import BENCHES, reload


def test_bench_reload_quick_reports_the_target_figures() -> None:
    assert BENCHES["reload"] is reload
    result = reload.run(quick=True)
    assert result["reloads"] == 6
    # The target: in force within two cycles of the commit.
    assert 0 <= result["applied_cycles"]["max"] <= 2
    assert 0 < result["applied_ms"]["median"] <= 3 * result["cycle_ms"]
    assert result["request_ms"]["median"] >= result["applied_ms"]["median"]
    for window in ("baseline", "with_reloads"):
        figures = result["lateness_ms"][window]
        assert figures["cycles"] > 0 and math.isfinite(figures["p99"])
    text = reload.format_text(result)
    assert "commit -> applied" in text and "lateness with_reloads" in text
