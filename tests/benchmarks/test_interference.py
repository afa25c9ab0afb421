"""The interference bench's arithmetic, and the load generators it drives, without a gateway."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import pytest

from benchmarks.interference import cycle_figures, heartbeat_figures, judge, trips
from simulators.loads import comms_children, connect_flood

if TYPE_CHECKING:
    from pathlib import Path

PERIOD_S = 0.01


def stats(at_s: list[float], lateness_ms: list[float] | None = None) -> dict[str, object]:
    late = lateness_ms if lateness_ms is not None else [0.1] * len(at_s)
    return {"period_ms": 1000 * PERIOD_S, "timeline": {"at_s": at_s, "lateness_ms": late}}


def test_cycle_figures_take_the_window_and_count_a_stall_across_its_edge() -> None:
    # 9 ms late before the window, then a stall, then 0.5 ms late from 1.5 s on.
    at = ([PERIOD_S * k + 0.009 for k in range(100)]
          + [1.5 + PERIOD_S * k + 0.0005 for k in range(100)])
    late = [9.0] * 100 + [0.5] * 100
    got = cycle_figures(stats(at, late), 1.2, 2.5)
    # The cycles at 1.50..2.49 only; the stall from 0.999 to 1.5005 straddles the window's
    # start; the deadlines 1.00 .. 1.49 passed without a cycle.
    assert got["cycles"] == 100
    assert got["cycle_lateness_ms_p99"] == 0.5
    assert got["cycle_gap_ms_max"] == pytest.approx(501.5)
    assert got["cycles_skipped"] == 50


def test_a_late_cycle_is_not_a_skipped_one() -> None:
    # Each cycle on its deadline but one, 8 ms late: a 18 ms gap, then a 2 ms one.
    at = [PERIOD_S * k + (0.008 if k == 50 else 0.0) for k in range(100)]
    late = [8.0 if k == 50 else 0.0 for k in range(100)]
    got = cycle_figures(stats(at, late), 0.0, 1.0)
    assert got["cycle_gap_ms_max"] == pytest.approx(18.0)
    assert got["cycles_skipped"] == 0


def test_cycle_figures_of_a_window_without_any_cycle_span_the_whole_stall() -> None:
    at = [0.0, 0.01, 0.02, 3.0, 3.01]
    got = cycle_figures(stats(at), 1.0, 2.0)
    assert got["cycles"] == 0
    assert math.isnan(got["cycle_lateness_ms_p99"])
    assert got["cycle_gap_ms_max"] == pytest.approx(2980.0)


def test_a_steady_cycle_has_no_gap_beyond_its_period_and_skips_nothing() -> None:
    at = [PERIOD_S * k for k in range(300)]
    got = cycle_figures(stats(at), 0.5, 2.5)
    assert got["cycle_gap_ms_max"] == pytest.approx(10.0)
    assert got["cycles_skipped"] == 0


def test_heartbeat_figures_count_counter_values_that_never_arrived() -> None:
    at = [PERIOD_S * k for k in range(10)] + [0.2, 0.21]
    values = [*range(65530, 65536), 0, 1, 2, 3, 7, 8]  # wraps at 65536; 4..6 lost
    got = heartbeat_figures(at, values, 0.0, 0.3)
    assert got["heartbeats"] == 12
    assert got["heartbeat_counter_missed"] == 3
    assert got["heartbeat_gap_ms_max"] == pytest.approx(110.0)


def test_heartbeat_figures_are_those_of_the_window_and_its_edges() -> None:
    at = [0.0, 0.01, 0.5, 0.51, 0.52, 2.0]
    values = [1, 2, 40, 41, 42, 100]
    got = heartbeat_figures(at, values, 0.45, 0.6)
    assert got["heartbeats"] == 3
    # 2 -> 40 straddles the start and 42 -> 100 the end: both count, in time and in values.
    assert got["heartbeat_counter_missed"] == 37 + 57
    assert got["heartbeat_gap_ms_max"] == pytest.approx(1480.0)


def test_trips_are_mode_changes_to_safe_stop_and_trip_events() -> None:
    records = [
        ("mode", {"kind": "mode_change", "name": "mode", "at_s": 1.0, "reason": "x",
                  "evidence": {"from": "auto", "to": "manual"}}),
        ("mode", {"kind": "mode_change", "name": "mode", "at_s": 2.0, "reason": "stale",
                  "evidence": {"from": "manual", "to": "safe_stop"}}),
        ("event", {"kind": "trip", "name": "staleness", "at_s": 2.0, "reason": "stale",
                   "evidence": {}}),
        ("event", {"kind": "anomaly", "name": "x", "at_s": 3.0, "reason": "",
                   "evidence": {}}),
        ("decision", {"mode": "safe_stop"}),
    ]
    assert [at for at, _ in trips(records)] == [2.0, 2.0]


def window(p99: float, missed: float = 0, tripped: tuple[str, ...] = (),
           answered: bool = True) -> dict[str, object]:
    return {"cycle_lateness_ms_p50": 0.2, "cycle_lateness_ms_p99": p99,
            "cycle_lateness_ms_max": 2 * p99, "cycle_gap_ms_max": 12.0,
            "heartbeat_gap_ms_max": 14.0, "heartbeats_missed": missed,
            "trips": list(tripped), "northbound_after": {"ok": answered}}


def test_judge_holds_each_load_to_the_idle_run_of_the_same_bench() -> None:
    verdict = judge({"idle": window(1.0), "ok": window(1.6), "late": window(1.61),
                     "missed": window(1.0, missed=1), "tripped": window(1.0, tripped=("t",)),
                     "deaf": window(1.0, answered=False),
                     "gone": {"available": False, "why": "no comms process"},
                     "idle_after": window(9.0)})
    assert verdict["ok"]["cycle_lateness_ms_p99_bound"] == pytest.approx(1.6)
    assert verdict["ok"]["ratios"]["cycle_lateness_ms_p99"] == pytest.approx(1.6)
    assert all(verdict["ok"]["met"].values())
    assert not verdict["late"]["met"]["lateness_p99"]
    assert not verdict["missed"]["met"]["no_missed_heartbeat"]
    assert not verdict["tripped"]["met"]["no_trip"]
    assert not verdict["deaf"]["met"]["northbound_answers_after"]
    assert "gone" not in verdict
    assert "idle_after" not in verdict  # another idle window: information, not a load


def test_comms_children_are_the_core_children_running_gateway_comms(tmp_path: Path) -> None:
    def proc(pid: int, argv: list[str], children: dict[str, list[int]]) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv)
                                                      + b"\0")
        for tid, kids in children.items():
            (tmp_path / str(pid) / "task" / tid).mkdir(parents=True)
            (tmp_path / str(pid) / "task" / tid / "children").write_text(
                " ".join(map(str, kids)) + " ")

    proc(10, ["python", "-m", "gateway.cli", "run", "site.yaml"], {"10": [11, 12], "13": [14]})
    proc(11, ["python", "-m", "gateway.audit.process"], {})
    proc(12, ["/usr/bin/python3", "-m", "gateway.comms", "--fd", "5"], {})
    proc(14, ["python", "-m", "gateway.comms"], {})
    # 15 is a child that ended between the two reads: no cmdline left.
    (tmp_path / "10" / "task" / "13" / "children").write_text("14 15")
    assert comms_children(10, proc=tmp_path) == [12, 14]
    assert comms_children(99, proc=tmp_path) == []


def test_connect_flood_counts_what_a_real_listener_did() -> None:
    async def body() -> None:
        def on_connect(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got = await connect_flood("127.0.0.1", port, attempts=300, at_once=100)
        server.close()
        await server.wait_closed()
        assert (got.attempts, got.opened, got.refused, got.failed) == (300, 300, 0, 0)
        # Nothing listens there any more: every attempt is refused, none hangs.
        gone = await connect_flood("127.0.0.1", port, attempts=50, at_once=50)
        assert (gone.opened, gone.refused) == (0, 50)
        with pytest.raises(ValueError, match="at_once"):
            await connect_flood("127.0.0.1", port, attempts=1, at_once=0)

    asyncio.run(body())
