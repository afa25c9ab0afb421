"""``safety-gateway bench reload``: how fast a committed reload is in force, and what reloads
do to the control cycle's timing (issue 20, target "Reload: applied within two cycles of the
commit, no cycle late by more than its usual p99").

One gateway runs the shipped water tank (its northbound Modbus server in this process, OPC UA
off) against a test PLC on loopback. After a baseline window without reloads, the site file is
reloaded N times in a row, each time with the inflow valve's max moved between 100 % and 95 %
(above the valve's position: no ramp). Figures:

- ``applied_cycles``: cycles from the commit record to the first cycle under the new envelope
  (median, p99, max over the N reloads);
- ``applied_ms``: the same in milliseconds of the gateway's clock;
- ``request_ms``: the whole request, from asking to the answer (reading and checking the file
  and building the new supervisor in a worker thread included);
- ``lateness_ms``: the cycles' lateness (p50, p99, max) in the baseline window and in the
  window of the reloads, from the same run.

A shared host's load moves every figure: the load average and the number of CPUs are reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values) if values else float("nan"),
            "p99": _pct(values, 0.99), "max": max(values) if values else float("nan")}


def _site_text(plc_port: int, modbus_port: int) -> str:
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    text = text.replace("port: 5020", f"port: {plc_port}").replace(
        "port: 1502", f"port: {modbus_port}").replace("poll_ms: 100", "poll_ms: 20")
    # The test PLC's level holds still; the audit log goes to the bench's folder.
    text = text.replace("  frozen_after_s: {level: 5}\n", "")
    text = text.replace("path: ../reports/water_tank_audit.db", "path: audit.db")
    head, _, tail = text.partition("\n  opcua:\n")
    return head + "\n" + tail[tail.index("\naudit:"):] if tail else text


async def _measure(folder: Path, baseline_s: float, reloads: int) -> dict[str, Any]:
    import gateway
    from gateway.config.schema import Table
    from gateway.runtime.gateway import Gateway
    from gateway.runtime.reload import Status
    from simulators.plc_modbus import TestPLC
    from simulators.ports import free_port

    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
        path = folder / "site.yaml"
        text = _site_text(plc.port, free_port())
        path.write_text(text)
        gw = Gateway(gateway.load_config(path), audit_path=folder / "audit.db")
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(gw.ready.wait(), 60)
            start = gw.clock()
            await asyncio.sleep(baseline_s)  # the baseline window: cycles without reloads
            baseline_end = gw.clock()
            request_ms: list[float] = []
            for k in range(reloads):
                limit = "95.0" if k % 2 == 0 else "100.0"
                await asyncio.to_thread(path.write_text, text.replace(
                    "inflow_valve: {min: 0.0, max: 100.0,",
                    f"inflow_valve: {{min: 0.0, max: {limit},"))
                asked = loop.time()
                out = await gw.reload("bench")
                request_ms.append(1000.0 * (loop.time() - asked))
                if out.status is not Status.APPLIED:
                    raise RuntimeError(f"reload {k + 1} was not applied: {out.text()}")
            reload_end = gw.clock()
            assert gw.reloader is not None
            history = list(gw.reloader.state.history)
            timeline = gw.stats()["timeline"]
        finally:
            stop.set()
            await asyncio.wait_for(runner, 60)
    late = list(zip(timeline["at_s"], timeline["lateness_ms"], strict=True))
    # The first second holds start-up's cycles: not part of either window.
    base = [x for t, x in late if start + 1.0 <= t < baseline_end]
    during = [x for t, x in late if baseline_end <= t <= reload_end]
    return {
        "reloads": len(history),
        "cycle_ms": gw.period_s * 1000.0,
        "applied_cycles": _summary([float(h["applied_cycle"] - h["committed_cycle"])
                                    for h in history]),
        "applied_ms": _summary([1000.0 * (h["applied_s"] - h["committed_s"])
                                for h in history]),
        "request_ms": _summary(request_ms),
        "lateness_ms": {
            "baseline": {"cycles": len(base), "p50": _pct(base, 0.5), "p99": _pct(base, 0.99),
                         "max": max(base) if base else float("nan")},
            "with_reloads": {"cycles": len(during), "p50": _pct(during, 0.5),
                             "p99": _pct(during, 0.99),
                             "max": max(during) if during else float("nan")}},
    }


def run(quick: bool) -> dict[str, Any]:
    """The figures (see the module docstring); ``quick``: 2 s of baseline and 6 reloads
    instead of 10 s and 40."""
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        result = asyncio.run(_measure(Path(tmp), 2.0 if quick else 10.0, 6 if quick else 40))
    result["cpus"] = os.cpu_count()
    result["load_average"] = list(os.getloadavg())
    return result


def format_text(result: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float], unit: str) -> str:
        return (f"{name:<24} median {s['median']:8.2f} {unit}  p99 {s['p99']:8.2f} {unit}  "
                f"max {s['max']:8.2f} {unit}")

    late = result["lateness_ms"]
    lines = [f"reload: {result['reloads']} reloads, cycle {result['cycle_ms']:g} ms, "
             f"{result['cpus']} CPUs, load {', '.join(f'{x:.2f}' for x in result['load_average'])}",
             row("commit -> applied", result["applied_cycles"], "cycles"),
             row("commit -> applied", result["applied_ms"], "ms"),
             row("request (check+build)", result["request_ms"], "ms")]
    for name in ("baseline", "with_reloads"):
        w = late[name]
        lines.append(f"lateness {name:<15} p50 {w['p50']:8.2f} ms  p99 {w['p99']:8.2f} ms  "
                     f"max {w['max']:8.2f} ms  ({w['cycles']} cycles)")
    return "\n".join(lines)
