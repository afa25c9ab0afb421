"""The wire bench against its peer: fair interleaving, ratios against the proxy, and a smoke
run of the Modbus part with the real modbus-proxy, PLC stand-in and gateway processes."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from benchmarks import wire


def test_each_path_takes_each_place_equally_often():
    places: Counter[tuple[str, int]] = Counter()
    for r in range(3 * 7):
        order = wire._rotated(r)
        assert sorted(order) == sorted(wire.PATHS)
        places.update((path, k) for k, path in enumerate(order))
    assert set(places.values()) == {7}


def figures(**overrides: float) -> dict[str, float]:
    r = {}
    for op in ("write", "read"):
        for q, base in (("p50", 400.0), ("p99", 800.0)):
            r[f"modbus_{op}_proxy_us_{q}"] = base
            r[f"modbus_{op}_direct_us_{q}"] = base / 2
            r[f"modbus_{op}_gateway_us_{q}"] = base * 1.5
    r.update(direct_writes_per_s=8000.0, proxy_writes_per_s=2000.0,
             validated_writes_per_s=3000.0)
    r.update(overrides)
    return r


def test_every_figure_is_against_the_proxy_of_the_same_run():
    vs = wire._ratios(figures(modbus_write_gateway_us_p99=1000.0,
                              modbus_read_gateway_us_p50=100.0))
    assert vs["write_gateway_p50"] == pytest.approx(1.5)
    assert vs["write_gateway_p99"] == pytest.approx(1.25)
    assert vs["read_gateway_p50"] == pytest.approx(0.25)
    assert vs["write_direct_p50"] == pytest.approx(0.5)
    assert vs["writes_per_s_gateway"] == pytest.approx(1.5)
    assert vs["writes_per_s_direct"] == pytest.approx(4.0)


def test_a_missing_peer_is_said_so(monkeypatch):
    from benchmarks.errors import BenchUnavailable

    monkeypatch.setattr(wire.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BenchUnavailable, match=r"modbus-proxy 0\.8\.0"):
        wire.run(quick=True)


def test_modbus_part_runs_with_the_proxy_in_the_same_run(tmp_path):
    r = asyncio.run(wire._modbus(20, 0.5, tmp_path))
    for path in wire.PATHS:
        assert r[f"modbus_write_{path}_n"] == 20
        assert 0 < r[f"modbus_write_{path}_us_p50"] <= r[f"modbus_write_{path}_us_p99"]
        assert 0 < r[f"modbus_read_{path}_us_p50"] <= r[f"modbus_read_{path}_us_p99"]
        # Counted, under the names the text output reads (a loaded host may refuse some).
        assert r[f"modbus_write_{path}_refused"] >= 0
        assert r[f"modbus_read_{path}_refused"] >= 0
        assert r[f"{path}_writes_refused_under_load"] >= 0
    assert r["proxy_writes_per_s"] > 0
    assert r["validated_writes_per_s"] > 0
    assert r["cycles"] > 0


def test_bench_without_the_peer_exits_3_and_says_what_to_install(monkeypatch, capsys):
    from gateway.cli import main

    monkeypatch.setattr(wire.importlib.util, "find_spec", lambda name: None)
    assert main(["bench", "wire", "--quick"]) == 3
    err = capsys.readouterr().err
    assert "modbus-proxy 0.8.0" in err
    assert "pip install -e '.[bench]'" in err
    assert "internal error" not in err


def whole_result(**overrides: float) -> dict[str, object]:
    """A result as run() builds it, with made-up figures."""
    r: dict[str, object] = dict(figures(**overrides))
    for path in wire.PATHS:
        for op in ("write", "read"):
            r[f"modbus_{op}_{path}_n"] = 3000.0
            r[f"modbus_{op}_{path}_refused"] = 0.0
        r[f"{path}_writes_refused_under_load"] = 0.0
    r["gateway_writes_refused_under_load"] = 5.0
    for proto in ("opcua",):
        for op in ("read", "write"):
            for path in ("direct", "gateway"):
                r[f"{proto}_{op}_{path}_us_p50"] = 500.0
                r[f"{proto}_{op}_{path}_us_p99"] = 900.0
    r.update(hammer_reads_per_s=8000.0, cycle_lateness_ms_p50=0.1, cycle_lateness_ms_p99=0.5,
             cycles=600.0, cycles_skipped=0.0, cycle_lateness_ms_p99_under_writes=2.0,
             gateway_gc_pause_ms_max=0.9, gateway_gc_full_collections=0.0,
             link_hop_us_p50=45.0, link_hop_us_p99=110.0)
    vs = wire._ratios(r)  # type: ignore[arg-type]
    r["vs_proxy"] = vs
    r["targets"] = wire.TARGETS
    r["met"] = {"write_p50_vs_proxy_max": False, "write_p99_vs_proxy_max": True,
                "writes_per_s_vs_proxy_min": True, "read_p50_vs_proxy_max": True,
                "cycle_lateness_ms_p99_max": True}
    r["machine"] = {"cpus": 2, "load_avg_before": [1.0, 1.0, 1.0],
                    "load_avg_after": [1.5, 1.0, 1.0]}
    return r


def test_the_text_says_pass_or_fail_per_target_with_the_ratio():
    text = wire.format_text(whole_result())
    assert "FAIL  write p50 <= 1.2x (x1.50)" in text
    assert "PASS  write p99 <= 1.5x (x1.50)" in text
    assert "PASS  writes/s >= 1.5x (x1.50)" in text
    assert "PASS  read p50 <= 0.5x" in text
    assert "gateway 0; 5" in text  # refused: latency runs; 4-connection runs
