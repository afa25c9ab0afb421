"""``safety-gateway bench audit``: audit log throughput, and what it costs the control loop.

- ``records_per_s``: decision-sized records appended as fast as the producer can (the queue
  kept under its bound so nothing is dropped), serialised, hashed, chained and committed
  (``synchronous=FULL``: fsynced), over several seconds, measured until ``flush`` returns.
  Producer and writer share one process and its GIL, as they do in the gateway. The payloads
  are built before the timed loop (1,000 distinct ones, cycled), so the figure is the audit
  log's own cost; ``records_per_s_building_payloads`` is the same with a fresh dict built
  per record inside the loop. Medians of several runs; ``synchronous=NORMAL`` for
  comparison.
- The control loop: a loop at ``LOOP_HZ`` on an absolute schedule (sleep until the deadline,
  like ``gateway.runtime.schedule``) that builds a decision payload each cycle, appends it,
  and every ``BURST_EVERY_S`` appends a burst of ``BURST`` event records. Its lateness (wake-up
  time minus deadline: what ``safety-gateway run --stats-json`` reports for the real loop) and
  the time of each iteration's work are recorded with the audit off (the same payloads built,
  nothing appended, no writer thread) and on, in short alternating stretches (the order
  swapped each run) so that both see the same host. Reported: the median over runs of each
  run's p50/p99, the p99 of all samples pooled, and as a noise floor the same p99 comparison
  between two halves of the audit-off runs. On a shared VM the noise floor can exceed the
  10 % target by itself: read the change against it.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from benchmarks.supervisor import calibration_ns
from gateway.audit import AuditLog, verify

TARGETS = {"records_per_s_min": 20_000.0, "loop_p99_change_max": 0.10}
LOOP_HZ = 100.0
BURST = 100
BURST_EVERY_S = 1.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _decision(k: int, now: float) -> dict[str, Any]:
    # About the size of a decision record: mode, command, proposal, sensors, verdict.
    return {"cycle": k, "t_s": now, "mode": "AUTO", "command": [50.0 + 0.001 * k, 30.0, 0.0],
            "proposal": [50.5, 30.0, 0.0], "fallback": [49.8, 30.0, 0.0],
            "sensors": [2.5 + 1e-4 * k, 0.012], "quality": [True, True],
            "violations": ["inflow_valve.rate"] if k % 7 == 0 else [], "clamped": k % 7 == 0,
            "dt_s": 0.01, "events": []}


def bench_throughput(seconds: float, synchronous: Literal["FULL", "NORMAL"], *,
                     build_payloads: bool) -> dict[str, float]:
    """Append as fast as possible for ``seconds`` (keeping under the bound: this measures
    the writer, not drops), then flush; records committed per second from the first append
    to the end of the flush. With ``build_payloads`` a fresh decision dict is built for every
    record in the timed loop (the producer's own cost competes for the GIL too); without,
    the producer cycles through 1,000 distinct payloads built beforehand, so the figure is the
    audit log's own: append, serialise, hash, chain, commit."""
    pool = [_decision(k, 0.0) for k in range(1000)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.db"
        audit = AuditLog(path, max_pending=200_000, synchronous=synchronous, batch_max=2048)
        try:
            append = audit.append
            t0 = time.perf_counter()
            end = t0 + seconds
            k = 0
            while time.perf_counter() < end:
                if audit.pending > 100_000:
                    time.sleep(0.001)
                    continue
                if build_payloads:
                    for _ in range(200):
                        append("decision", _decision(k, 0.0))
                        k += 1
                else:
                    for payload in pool[k % 1000:k % 1000 + 200]:
                        append("decision", payload)
                    k += 200
            flushed = audit.flush(120.0)
            elapsed = time.perf_counter() - t0
            written = audit.acknowledged_seq
            lost = audit.lost
            batches = audit.stats()["batches"]
        finally:
            audit.close()
        result = verify(path)
        if not (flushed and result.ok and lost == 0 and written == k):
            raise RuntimeError(f"throughput run incomplete: flushed={flushed} lost={lost} "
                               f"written={written}/{k} verify={result.message}")
        return {"records": float(written), "seconds": elapsed,
                "records_per_s": written / elapsed, "batches": float(batches)}


def _loop_segment(seconds: float, audit: AuditLog | None, idle_hint: bool = True,
                  ) -> tuple[list[float], list[float]]:
    """One stretch of the simulated control loop; returns (lateness, work) samples in s."""
    period = 1.0 / LOOP_HZ
    burst_every = max(1, round(BURST_EVERY_S * LOOP_HZ))
    cycles = int(seconds * LOOP_HZ)
    late: list[float] = []
    work: list[float] = []
    sink: list[dict[str, Any]] = []
    start = time.perf_counter() + 0.05
    for k in range(cycles):
        deadline = start + k * period
        delay = deadline - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        woke = time.perf_counter()
        payload = _decision(k, woke)
        if audit is not None:
            audit.append("decision", payload)
        else:
            sink.append(payload)
        if k % burst_every == burst_every // 2:
            for j in range(BURST):
                event = {"cycle": k, "n": j, "name": "divergence", "reason": "burst"}
                if audit is not None:
                    audit.append("event", event)
                else:
                    sink.append(event)
        if len(sink) > 1000:
            sink.clear()
        if audit is not None and idle_hint:
            audit.idle()  # as the gateway does at the end of each cycle
        done = time.perf_counter()
        late.append(woke - deadline)
        work.append(done - woke)
    return late, work


def bench_loop(runs: int, seconds: float, folder: Path) -> dict[str, Any]:
    """Alternate audit-off and audit-on stretches (the order swapped every run, so that a
    drift in the host's speed does not favour one), and summarise both ways: the median of
    each run's percentiles, and the percentiles of all samples pooled."""
    per_run: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    pooled: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "on": ([], [])}
    halves: tuple[list[float], list[float]] = ([], [])  # audit-off lateness, even/odd runs
    for r in range(runs):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            audit = AuditLog(folder / f"loop-{r}.db") if mode == "on" else None
            try:
                late, work = _loop_segment(seconds, audit)
            finally:
                if audit is not None:
                    audit.close()
            pooled[mode][0].extend(late)
            pooled[mode][1].extend(work)
            if mode == "off":
                halves[r % 2].extend(late)
            per_run[mode].append({"late_us_p50": 1e6 * _percentile(late, 0.5),
                                  "late_us_p99": 1e6 * _percentile(late, 0.99),
                                  "work_us_p50": 1e6 * _percentile(work, 0.5),
                                  "work_us_p99": 1e6 * _percentile(work, 0.99)})
    out: dict[str, Any] = {"loop_cycles_per_run": int(seconds * LOOP_HZ)}
    for mode in ("off", "on"):
        for key in ("late_us_p50", "late_us_p99", "work_us_p50", "work_us_p99"):
            out[f"{mode}_{key}"] = statistics.median(row[key] for row in per_run[mode])
        late, work = pooled[mode]
        out[f"{mode}_late_us_p99_pooled"] = 1e6 * _percentile(late, 0.99)
        out[f"{mode}_late_us_max"] = 1e6 * max(late)
        out[f"{mode}_work_us_p99_pooled"] = 1e6 * _percentile(work, 0.99)
        out[f"runs_late_us_p99_{mode}"] = [round(row["late_us_p99"], 1)
                                           for row in per_run[mode]]
    out["late_p99_change"] = out["on_late_us_p99"] / out["off_late_us_p99"] - 1.0
    out["late_p99_pooled_change"] = (out["on_late_us_p99_pooled"]
                                     / out["off_late_us_p99_pooled"] - 1.0)
    # The noise floor: the same comparison between two halves of the audit-off runs.
    if halves[1]:
        out["off_vs_off_late_p99_change"] = (_percentile(halves[1], 0.99)
                                             / _percentile(halves[0], 0.99) - 1.0)
    return out


def run(quick: bool) -> dict[str, Any]:
    runs, tp_seconds, loop_seconds, loop_runs = (1, 1.0, 1.0, 2) if quick else (5, 4.0, 2.0, 16)
    full = [bench_throughput(tp_seconds, "FULL", build_payloads=False) for _ in range(runs)]
    built = [bench_throughput(tp_seconds, "FULL", build_payloads=True) for _ in range(runs)]
    normal = [bench_throughput(tp_seconds, "NORMAL", build_payloads=False)
              for _ in range(max(1, runs // 2))]
    with tempfile.TemporaryDirectory() as folder:
        loop = bench_loop(loop_runs, loop_seconds, Path(folder))
    records_per_s = statistics.median(r["records_per_s"] for r in full)
    return {
        "bench": "audit",
        "records_per_s": records_per_s,
        "records_per_s_runs": [round(r["records_per_s"]) for r in full],
        "records_per_s_normal_sync": statistics.median(r["records_per_s"] for r in normal),
        "records_per_s_building_payloads": statistics.median(r["records_per_s"] for r in built),
        "records_per_s_building_payloads_runs": [round(r["records_per_s"]) for r in built],
        "synchronous": "FULL",
        "loop_hz": LOOP_HZ,
        "loop_burst": f"{BURST} records every {BURST_EVERY_S} s",
        "runs": runs,
        "loop_runs": loop_runs,
        **loop,
        "targets": TARGETS,
        "met": {"records_per_s_min": records_per_s >= TARGETS["records_per_s_min"],
                "loop_p99_change_max": loop["late_p99_change"] <= TARGETS[
                    "loop_p99_change_max"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "switch_interval_s": sys.getswitchinterval(),
                    "empty_call_ns": calibration_ns(), "load_avg_1min": os.getloadavg()[0],
                    "gc_enabled": gc.isenabled()},
    }


def format_text(result: dict[str, Any]) -> str:
    met = result["met"]
    lines = [
        f"audit log throughput (hash-chained, committed, synchronous=FULL), median of "
        f"{result['runs']}: {result['records_per_s']:,.0f} records/s "
        f"(NORMAL: {result['records_per_s_normal_sync']:,.0f}; with the producer building "
        f"a fresh payload per record: {result['records_per_s_building_payloads']:,.0f})",
        f"control loop at {result['loop_hz']:.0f} Hz with a burst of {result['loop_burst']}, "
        f"{result['loop_runs']} x {result['loop_cycles_per_run']} cycles each way "
        "(medians of the runs; pooled):",
    ]
    for mode in ("off", "on"):
        lines.append(
            f"  audit {mode:3}: lateness p50 {result[f'{mode}_late_us_p50']:7.1f} us  "
            f"p99 {result[f'{mode}_late_us_p99']:7.1f} us "
            f"({result[f'{mode}_late_us_p99_pooled']:.1f})"
            f"  max {result[f'{mode}_late_us_max']:8.1f} us;  work p50 "
            f"{result[f'{mode}_work_us_p50']:6.1f} us  p99 {result[f'{mode}_work_us_p99']:6.1f} us")
    lines += [
        f"  lateness p99 change with audit on: {100 * result['late_p99_change']:+.1f} % "
        f"(pooled {100 * result['late_p99_pooled_change']:+.1f} %); noise floor, audit off "
        f"vs off: {100 * result.get('off_vs_off_late_p99_change', math.nan):+.1f} %",
        f"host: an empty Python call took {result['machine']['empty_call_ns']:.0f} ns "
        f"(load {result['machine']['load_avg_1min']:.2f})",
        f"targets: >= {TARGETS['records_per_s_min']:,.0f} records/s: "
        f"{'met' if met['records_per_s_min'] else 'MISSED'}; loop p99 change <= "
        f"{100 * TARGETS['loop_p99_change_max']:.0f} %: "
        f"{'met' if met['loop_p99_change_max'] else 'MISSED'}",
    ]
    return "\n".join(lines)
