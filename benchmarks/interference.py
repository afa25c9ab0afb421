"""``safety-gateway bench interference``: does northbound traffic move the control cycle?

Three kinds of process, as on site: a PLC stand-in that records when each heartbeat arrives
(``simulators.heartbeat_plc``, its own process), the gateway (``safety-gateway run`` with
``--stats-json``: a Modbus device, northbound Modbus AND OPC UA, 100 Hz cycle, audit on), and
this process, which generates the loads (``simulators.loads``). Windows of the same length,
one after the other:

- ``idle``: nothing talks to the northbound side;
- ``read_hammer``: Modbus reads back to back on 4 connections;
- ``connect_flood``: rounds of 2,000 TCP connection attempts to the northbound Modbus port,
  400 in flight at once, each reset as soon as it is open, until the window ends;
- ``opcua_sessions``: 300 OPC UA sessions created and never activated, held to the window's
  end (the window lasts at least until all 300 are held);
- ``comms_killed``: the communications process (the core's child running
  ``python -m gateway.comms``) killed with SIGKILL at the window's start; the core restarts
  it. Without such a process (before the process split) this load is reported as not
  available.

For each window: the core's cycle lateness p50/p99/max and longest gap between cycle starts
(the gateway's own timeline), the longest gap between heartbeat arrivals at the PLC, the
heartbeats missed (counter values the PLC never received, and cycles the core skipped), trips
(the audit log: a mode change to SAFE_STOP or a trip event), and whether the northbound side
answered a fresh Modbus and OPC UA client after the load. Loads are reported as ratios to the
idle window of the same run, against the targets of issue 17: lateness p99 <= 1.1 x idle +
0.5 ms, no heartbeat missed, no trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.loads import (
    SESSION_TIMEOUT_MS,
    FloodResult,
    UnactivatedSessions,
    comms_children,
    connect_flood,
    read_hammer,
)
from simulators.ports import free_port

LOADS = ("read_hammer", "connect_flood", "opcua_sessions", "comms_killed")
HAMMER_CONNECTIONS = 4
FLOOD_ATTEMPTS = 2000
FLOOD_AT_ONCE = 400
OPCUA_SESSIONS = 300
CYCLE_MS = 10.0
HEARTBEAT_ADDRESS = 100
P99_FACTOR = 1.1
P99_SLACK_MS = 0.5
N_SENSORS = 8
N_ACTUATORS = 8


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def site_yaml(plc_port: int, modbus_port: int, opcua_port: int, audit: Path) -> str:
    """The bench's site: one Modbus device (heartbeat at holding register 100, polled every
    cycle), 8 sensors and 8 actuators (hold fallback, MANUAL), northbound Modbus and OPC UA
    on loopback, 100 Hz cycle, audit log at ``audit``."""
    lines = [f"site: {{name: interference, cycle_ms: {CYCLE_MS:g}}}", "devices:",
             f"  plc: {{protocol: modbus_tcp, host: 127.0.0.1, port: {plc_port}, unit: 1, "
             f"timeout_ms: 500, poll_ms: 10, separate_write_connection: true, "
             f"heartbeat: {{table: holding_register, address: {HEARTBEAT_ADDRESS}}}}}",
             "tags:"]
    for i in range(N_SENSORS):
        lines.append(f"  s{i}: {{device: plc, kind: sensor, table: input_register, "
                     f"address: {2 * i}, type: float32, range: [-1000, 1000]}}")
    for i in range(N_ACTUATORS):
        lines.append(f"  a{i}: {{device: plc, kind: actuator, table: holding_register, "
                     f"address: {2 * i}, type: float32, safe_value: 0}}")
    lines += ["envelope:", "  limits:"]
    lines += [f"    a{i}: {{min: -100, max: 100, policy: clamp}}" for i in range(N_ACTUATORS)]
    lines += ["fallback:"] + [f"  a{i}: {{kind: hold}}" for i in range(N_ACTUATORS)]
    lines += ["northbound:",
              f"  modbus: {{host: 127.0.0.1, port: {modbus_port}, unit: 1, "
              f"allow: [127.0.0.1]}}",
              f"  opcua: {{endpoint: 'opc.tcp://127.0.0.1:{opcua_port}/gateway/', "
              f"allow_anonymous: true}}",
              f"audit: {{path: '{audit}'}}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ analysis
# Pure functions of what the processes recorded: unit-tested without processes.


def _neighbourhood(at_s: list[float], start_s: float, end_s: float) -> list[float]:
    """The times in ``[start_s, end_s]`` (sorted input) with the last one before and the
    first one after, so that a stall across either edge of the window counts."""
    inside = [i for i, t in enumerate(at_s) if start_s <= t <= end_s]
    if not inside:
        before = [t for t in at_s if t < start_s][-1:]
        after = [t for t in at_s if t > end_s][:1]
        return before + after
    lo, hi = max(0, inside[0] - 1), min(len(at_s), inside[-1] + 2)
    return at_s[lo:hi]


def _max_gap_ms(times: list[float], start_s: float, end_s: float) -> float:
    """The longest interval between consecutive times around the window; a window with no
    time inside counts from its start to its end at least."""
    if not any(start_s <= t <= end_s for t in times):
        first = max([t for t in times if t < start_s], default=start_s)
        last = min([t for t in times if t > end_s], default=end_s)
        return 1000.0 * (last - first)
    return 1000.0 * max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def cycle_figures(stats: dict[str, Any], start_s: float, end_s: float) -> dict[str, float]:
    """The core's cycles in ``[start_s, end_s]`` from ``run --stats-json``: lateness
    percentiles (ms), the longest gap between cycle starts (ms, across the window's edges too)
    and the cycles skipped: deadlines that passed without a cycle (each cycle's deadline is
    its start minus its lateness; the schedule's deadlines are a period apart, so two
    consecutive cycles whose deadlines are n periods apart skipped n - 1)."""
    timeline = stats["timeline"]
    at = list(timeline["at_s"])
    deadline = {t: t - ms / 1000.0 for t, ms in zip(at, timeline["lateness_ms"], strict=True)}
    late = [ms for t, ms in zip(at, timeline["lateness_ms"], strict=True)
            if start_s <= t <= end_s]
    period_s = float(stats["period_ms"]) / 1000.0
    near = _neighbourhood(at, start_s, end_s)
    skipped = sum(max(0, round((deadline[b] - deadline[a]) / period_s) - 1)
                  for a, b in itertools.pairwise(near))
    return {
        "cycles": float(len(late)),
        "cycle_lateness_ms_p50": statistics.median(late) if late else float("nan"),
        "cycle_lateness_ms_p99": _pct(late, 0.99) if late else float("nan"),
        "cycle_lateness_ms_max": max(late) if late else float("nan"),
        "cycle_gap_ms_max": _max_gap_ms(near, start_s, end_s),
        "cycles_skipped": float(skipped),
    }


def heartbeat_figures(at_s: list[float], values: list[int], start_s: float, end_s: float
                      ) -> dict[str, float]:
    """Heartbeats as the PLC received them around ``[start_s, end_s]``: how many arrived
    inside, the longest gap between arrivals (ms, across the window's edges too), and the
    counter values that never arrived (the counter goes up by one per heartbeat sent, modulo
    65536)."""
    pairs = sorted(zip(at_s, values, strict=True))
    times = [t for t, _ in pairs]
    near = _neighbourhood(times, start_s, end_s)
    first = times.index(near[0]) if near else 0
    counters = [v for _, v in pairs[first:first + len(near)]]
    missed = sum(max(0, (b - a) % 65536 - 1) for a, b in itertools.pairwise(counters))
    return {"heartbeats": float(sum(start_s <= t <= end_s for t in times)),
            "heartbeat_gap_ms_max": _max_gap_ms(near, start_s, end_s),
            "heartbeat_counter_missed": float(missed)}


def trips(records: list[tuple[str, dict[str, Any]]]) -> list[tuple[float, str]]:
    """``(at_s, why)`` of each trip in audit records ``(kind, payload)``: a mode change to
    SAFE_STOP or a trip event (``at_s``: the gateway's monotonic clock)."""
    found = []
    for kind, payload in records:
        if kind not in ("mode", "event") or not isinstance(payload, dict):
            continue
        evidence = payload.get("evidence") or {}
        if payload.get("kind") == "trip" or evidence.get("to") == "safe_stop":
            found.append((float(payload.get("at_s", float("nan"))),
                          f"{payload.get('kind')}:{payload.get('name')}: "
                          f"{payload.get('reason')}"))
    return found


def judge(windows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each load against the ``idle`` window: ratios and the issue's targets (other windows
    whose name starts with ``idle`` are not judged)."""
    idle = windows["idle"]
    out: dict[str, Any] = {}
    for name, w in windows.items():
        if name.startswith("idle") or not w.get("available", True):
            continue
        ratios = {}
        for key in ("cycle_lateness_ms_p50", "cycle_lateness_ms_p99", "cycle_lateness_ms_max",
                    "cycle_gap_ms_max", "heartbeat_gap_ms_max"):
            ratios[key] = w[key] / idle[key] if idle[key] > 0 else None
        bound = P99_FACTOR * idle["cycle_lateness_ms_p99"] + P99_SLACK_MS
        out[name] = {
            "ratios": ratios,
            "cycle_lateness_ms_p99_bound": bound,
            "met": {"lateness_p99": w["cycle_lateness_ms_p99"] <= bound,
                    "no_missed_heartbeat": w["heartbeats_missed"] == 0,
                    "no_trip": not w["trips"],
                    "northbound_answers_after": bool(w["northbound_after"]["ok"])},
        }
    return out


# ------------------------------------------------------------------------------ processes


class _Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=asyncio.subprocess.DEVNULL, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout_s: float = 30.0) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 when it is gone)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (float(parts[11]) + float(parts[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Rig:
    """A heartbeat-recording PLC and a gateway in processes of their own, in ``folder``.

    ``async with Rig(folder) as rig``: both started, the gateway's first cycle done and both
    northbound servers answering. :meth:`window` runs one load; leaving the block stops both
    and :meth:`results` reads what they recorded."""

    folder: Path
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plc_port, self.modbus_port, self.opcua_port = free_port(), free_port(), free_port()
        self.site = self.folder / "site.yaml"
        self.audit = self.folder / "audit.db"
        self.stats = self.folder / "stats.json"
        self.heartbeat_file = self.folder / "heartbeats.json"
        self.site.write_text(site_yaml(self.plc_port, self.modbus_port, self.opcua_port,
                                       self.audit))
        self.endpoint = f"opc.tcp://127.0.0.1:{self.opcua_port}/gateway/"
        self.plc = _Process([sys.executable, "-m", "simulators.heartbeat_plc", "--port",
                             str(self.plc_port), "--address", str(HEARTBEAT_ADDRESS), "--out",
                             str(self.heartbeat_file)], self.folder / "plc.log")
        self.gateway = _Process([sys.executable, "-m", "gateway.cli", "run", str(self.site),
                                 "--stats-json", str(self.stats)], self.folder / "gateway.log")

    async def __aenter__(self) -> Rig:
        await self.plc.start()
        await _until(lambda: _tcp_open(self.plc_port), 30, "the PLC", self.plc.log)
        await self.gateway.start()
        await _until(self._cycling, 60, "the gateway's first cycle", self.gateway.log,
                     alive=self.gateway)
        await _until(lambda: _tcp_open(self.opcua_port), 60, "the gateway's OPC UA server",
                     self.gateway.log, alive=self.gateway)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gateway.stop()
        await self.plc.stop()

    async def _cycling(self) -> bool:
        """The northbound Modbus server answers with a heartbeat: the core has cycled."""
        from pymodbus.client import AsyncModbusTcpClient

        await _tcp_open(self.modbus_port)  # listening yet? (pymodbus logs each refusal)
        client = AsyncModbusTcpClient("127.0.0.1", port=self.modbus_port, timeout=2,
                                      retries=0)
        try:
            if not await client.connect():
                return False
            rr = await client.read_input_registers(1000, count=4, device_id=1)
            return not rr.isError() and rr.registers[3] > 0
        finally:
            client.close()

    async def probe(self, deadline_s: float = 20.0) -> dict[str, Any]:
        """Does the northbound side answer a fresh client? Five Modbus reads on a new
        connection, and one OPC UA read of the mode on a new session; each retried until
        ``deadline_s`` (a restarting communications process needs a moment)."""
        from asyncua.client.client import Client
        from asyncua.ua.uaerrors import UaError
        from pymodbus.client import AsyncModbusTcpClient
        from pymodbus.exceptions import ModbusException

        t0 = time.monotonic()
        served = 0
        while served < 5 and time.monotonic() - t0 < deadline_s:
            client = AsyncModbusTcpClient("127.0.0.1", port=self.modbus_port, timeout=2,
                                          retries=0)
            try:
                if await client.connect():
                    for _ in range(5 - served):
                        rr = await client.read_input_registers(0, count=10, device_id=1)
                        if rr.isError():
                            break
                        served += 1
            except (ModbusException, OSError):
                pass  # not answering yet: the next attempt, within the deadline
            finally:
                client.close()
            if served < 5:
                await asyncio.sleep(0.2)
        modbus_s = time.monotonic() - t0
        mode = None
        while mode is None and time.monotonic() - t0 < deadline_s:
            ua_client = Client(self.endpoint, timeout=5)
            ua_client.session_timeout = SESSION_TIMEOUT_MS
            try:
                await ua_client.connect()
                mode = str(await ua_client.get_node("ns=2;s=Gateway.Status.Mode").read_value())
            except (OSError, TimeoutError, UaError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(OSError, TimeoutError, UaError,
                                         asyncio.IncompleteReadError):
                    await ua_client.disconnect()
        return {"ok": served == 5 and mode is not None, "modbus_reads_served": served,
                "modbus_answer_s": modbus_s, "opcua_mode": mode,
                "answer_s": time.monotonic() - t0}

    async def window(self, name: str, window_s: float) -> dict[str, Any]:
        """Run load ``name`` (one of :data:`LOADS`, or no load for a name that starts with
        ``idle``) for a window of ``window_s``
        (longer only when the load itself needs longer), then probe the northbound side."""
        load: dict[str, Any] = {}
        busy0, total0 = _cpu_busy()
        core0 = _cpu_s(self.gateway.pid)
        start = time.monotonic()
        end = start + window_s
        if name.startswith("idle"):
            await asyncio.sleep(window_s)
        elif name == "read_hammer":
            r = await read_hammer("127.0.0.1", self.modbus_port, end, HAMMER_CONNECTIONS)
            load = {"reads": r.reads, "errors": r.errors,
                    "reads_per_s": r.reads / max(r.elapsed_s, 1e-9)}
        elif name == "connect_flood":
            rounds: list[FloodResult] = []
            while time.monotonic() < end or not rounds:
                f = await connect_flood("127.0.0.1", self.modbus_port, FLOOD_ATTEMPTS,
                                        FLOOD_AT_ONCE)
                rounds.append(f)
            load = {"rounds": len(rounds), "attempts": sum(f.attempts for f in rounds),
                    "opened": sum(f.opened for f in rounds),
                    "refused": sum(f.refused for f in rounds),
                    "failed": sum(f.failed for f in rounds),
                    "attempts_per_s": sum(f.attempts for f in rounds)
                    / max(sum(f.elapsed_s for f in rounds), 1e-9)}
        elif name == "opcua_sessions":
            sessions = UnactivatedSessions(self.endpoint)
            try:
                held = await sessions.open(OPCUA_SESSIONS)
                load = {"held": held, "refused": sessions.refused,
                        "open_s": time.monotonic() - start}
                await asyncio.sleep(max(0.0, end - time.monotonic()))
            finally:
                await sessions.close()
        elif name == "comms_killed":
            found = comms_children(self.gateway.pid)
            if not found:
                await asyncio.sleep(0)
                window = {"available": False,
                          "why": "no child process of the core runs python -m gateway.comms "
                                 "(the process split has not landed on this commit)"}
                self.windows[name] = window
                return window
            killed = found[0]
            os.kill(killed, signal.SIGKILL)
            restarted_after = None
            while time.monotonic() < end or restarted_after is None:
                if restarted_after is None and any(
                        p != killed for p in comms_children(self.gateway.pid)):
                    restarted_after = time.monotonic() - start
                if time.monotonic() - start > max(window_s, 60.0):
                    break  # never restarted: reported as such
                await asyncio.sleep(0.01)
            load = {"killed_pid": killed, "restarted_after_s": restarted_after}
        else:
            raise ValueError(f"unknown load {name!r}; one of: idle, {', '.join(LOADS)}")
        stop = time.monotonic()
        busy1, total1 = _cpu_busy()
        window = {"available": True, "start_s": start, "end_s": stop,
                  "window_s": stop - start, "load": load,
                  "host_cpu_busy_pct": 100.0 * (busy1 - busy0) / max(total1 - total0, 1e-9),
                  "core_cpu_pct": 100.0 * (_cpu_s(self.gateway.pid) - core0) / (stop - start),
                  "load_avg_1min": os.getloadavg()[0]}
        window["northbound_after"] = await self.probe()
        self.windows[name] = window
        return window

    def results(self) -> dict[str, dict[str, Any]]:
        """Each window's figures, once the gateway and the PLC have stopped (they write their
        records at exit)."""
        from gateway.audit.store import read_records

        stats = json.loads(self.stats.read_text())
        beats = json.loads(self.heartbeat_file.read_text())
        records = [(r.kind, r.data()) for r in read_records(self.audit,
                                                            kinds=("mode", "event"))]
        tripped = trips(records)
        out: dict[str, dict[str, Any]] = {}
        for name, w in self.windows.items():
            if not w.get("available", True):
                out[name] = w
                continue
            start, end = w["start_s"], w["end_s"]
            figures = {**w, **cycle_figures(stats, start, end),
                       **heartbeat_figures(beats["at_s"], beats["values"], start, end)}
            figures["heartbeats_missed"] = (figures["heartbeat_counter_missed"]
                                            + figures["cycles_skipped"])
            figures["trips"] = [why for at, why in tripped if start <= at <= end]
            out[name] = figures
        out["_whole_run"] = {"trips": [why for _, why in tripped],
                             "gateway_log_tracebacks":
                                 self.gateway.log.read_text().count("Traceback")}
        return out


async def _tcp_open(port: int) -> bool:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    return True


async def _until(check: Any, timeout_s: float, what: str, log: Path,
                 alive: _Process | None = None) -> None:
    from asyncua.ua.uaerrors import UaError
    from pymodbus.exceptions import ModbusException

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if alive is not None and not alive.alive():
            raise RuntimeError(f"{what}: the process ended; its log: {log}")
        # Not up yet: refused connections, timeouts, a server still building its nodes.
        with contextlib.suppress(OSError, TimeoutError, UaError, ModbusException):
            if await check():
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout_s} s; its log: {log}")


async def measure(folder: Path, window_s: float, loads: tuple[str, ...] = LOADS,
                  settle_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """Start a PLC and a gateway in ``folder``, run the idle window then each of ``loads``
    (each ``window_s`` long, ``settle_s`` apart), stop both; each window's figures."""
    async with Rig(folder) as rig:
        await rig.window("idle", window_s)
        for name in loads:
            await asyncio.sleep(settle_s)
            await rig.window(name, window_s)
    return rig.results()


def run(quick: bool) -> dict[str, Any]:
    window_s = 2.0 if quick else 10.0
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-interference-") as tmp:
        windows = asyncio.run(measure(Path(tmp), window_s))
    whole = windows.pop("_whole_run")
    verdicts = judge(windows)
    return {"bench": "interference", "window_s": window_s, "windows": windows,
            "loads": verdicts, "whole_run": whole,
            "targets": {"cycle_lateness_ms_p99": f"<= {P99_FACTOR} x idle + {P99_SLACK_MS} ms",
                        "heartbeats_missed": 0, "trips": 0},
            "all_met": all(all(v["met"].values()) for v in verdicts.values()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_before": list(load0),
                        "load_avg_after": list(os.getloadavg())}}


def format_text(r: dict[str, Any]) -> str:
    def fmt(x: float | None, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"interference bench ({r['window_s']:g} s windows; PLC, gateway and load "
             f"generator in three processes; load average before "
             f"{r['machine']['load_avg_before'][0]:.2f}, after "
             f"{r['machine']['load_avg_after'][0]:.2f}):",
             f"  {'window':<15} {'late p50':>9} {'p99':>7} {'max':>7} {'cycle gap':>9} "
             f"{'hb gap':>7} {'hb missed':>9} {'trips':>5} {'host cpu':>8} {'nb after':>8}"]
    for name, w in r["windows"].items():
        if not w.get("available", True):
            lines.append(f"  {name:<15} not available: {w['why']}")
            continue
        lines.append(
            f"  {name:<15} {w['cycle_lateness_ms_p50']:9.3f} {w['cycle_lateness_ms_p99']:7.3f} "
            f"{w['cycle_lateness_ms_max']:7.2f} {w['cycle_gap_ms_max']:9.1f} "
            f"{w['heartbeat_gap_ms_max']:7.1f} {int(w['heartbeats_missed']):9d} "
            f"{len(w['trips']):5d} {w['host_cpu_busy_pct']:7.0f}% "
            f"{'yes' if w['northbound_after']['ok'] else 'NO':>8}")
    lines.append("  (ms; gaps: longest interval between cycle starts / heartbeat arrivals at "
                 "the PLC)")
    for name, v in r["loads"].items():
        ratios = v["ratios"]
        met = ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in v["met"].items())
        lines.append(f"  {name}: x idle: p50 {fmt(ratios['cycle_lateness_ms_p50'])}, p99 "
                     f"{fmt(ratios['cycle_lateness_ms_p99'])} (bound "
                     f"{v['cycle_lateness_ms_p99_bound']:.3f} ms), max "
                     f"{fmt(ratios['cycle_lateness_ms_max'])}, heartbeat gap "
                     f"{fmt(ratios['heartbeat_gap_ms_max'])}; {met}")
    lines.append(f"targets {'all met' if r['all_met'] else 'NOT all met'}")
    return "\n".join(lines)
