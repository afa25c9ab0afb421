"""``safety-gateway bench wire``: the gateway on the wire, side by side with direct access.

Three processes per protocol, as on site: a PLC stand-in (``simulators.plc_modbus`` or
``simulators.plc_opcua``), the gateway (``safety-gateway run``, 100 Hz cycle, 16 tags: 8
sensors, 8 actuators), and this process as the client. The same client library reads and
writes the PLC directly and then through the gateway:

- reads through the gateway are served from its mirror of the PLC;
- writes through the gateway are operator setpoints in MANUAL mode: validated against the
  envelope, encoded, checked again, and forwarded to the PLC before the gateway answers;
- ``validated_writes_per_s`` counts accepted validated writes from 4 concurrent connections
  (the gateway batches what they send at the same moment into one device request);
- the PLC device is configured as a deployment with write-through traffic should be: writes on
  their own connection (``separate_write_connection``), so they never queue behind polls;
- ``cycle_lateness_ms_p99`` is the gateway's own measurement of its 100 Hz cycle while a client
  reads back to back from the northbound server (from ``run --stats-json``'s timeline, the
  cycles of that window only: not those of the write load before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulators.ports import free_port

N_SENSORS = 8
N_ACTUATORS = 8
TARGETS = {"read_ratio_max": 1.2, "write_ratio_max": 2.5, "write_p99_us_max": 1000.0,
           "validated_writes_per_s_min": 3000.0, "cycle_lateness_ms_p99_max": 2.0}


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _site_yaml(protocol: str, plc_port: int, nb_port: int) -> str:
    if protocol == "modbus":
        device = (f"  plc: {{protocol: modbus_tcp, host: 127.0.0.1, port: {plc_port}, unit: 1,"
                  f" timeout_ms: 500, poll_ms: 10, separate_write_connection: true,"
                  f" heartbeat: {{table: holding_register, address: 100}}}}\n")
        sensor = "{{device: plc, kind: sensor, table: input_register, address: {a}, " \
                 "type: float32, range: [-1000, 1000]}}"
        actuator = "{{device: plc, kind: actuator, table: holding_register, address: {a}, " \
                   "type: float32, safe_value: 0}}"
        northbound = (f"  modbus: {{host: 127.0.0.1, port: {nb_port}, unit: 1, "
                      f"allow: [127.0.0.1]}}\n")
    else:
        device = (f"  plc: {{protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{plc_port}/plc/', "
                  f"timeout_ms: 2000, poll_ms: 10, subscribe: true}}\n")
        sensor = "{{device: plc, kind: sensor, node: 'ns=2;s=S{i}', type: float64, " \
                 "range: [-1000, 1000]}}"
        actuator = "{{device: plc, kind: actuator, node: 'ns=2;s=A{i}', type: float64, " \
                   "safe_value: 0}}"
        northbound = (f"  opcua: {{endpoint: 'opc.tcp://127.0.0.1:{nb_port}/gateway/', "
                      f"allow_anonymous: true}}\n")
    lines = ["site: {name: bench, cycle_ms: 10}", "devices:", device.rstrip(), "tags:"]
    for i in range(N_SENSORS):
        lines.append(f"  s{i}: " + sensor.format(a=2 * i, i=i))
    for i in range(N_ACTUATORS):
        lines.append(f"  a{i}: " + actuator.format(a=2 * i, i=i))
    lines += ["envelope:", "  limits:"]
    for i in range(N_ACTUATORS):
        lines.append(f"    a{i}: {{min: -100, max: 100, max_rate_per_s: 100000, policy: clamp}}")
    lines.append("  constraints:")
    for i in range(0, N_ACTUATORS, 2):
        lines.append(f"    - {{name: pair{i}, expr: 'a{i} + a{i + 1} - 0.01 * s{i} <= 150'}}")
    lines += ["fallback:"] + [f"  a{i}: {{kind: hold}}" for i in range(N_ACTUATORS)]
    lines += ["northbound:", northbound.rstrip(), ""]
    return "\n".join(lines)


class _Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> _Process:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=asyncio.subprocess.DEVNULL, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _until(check: Any, timeout_s: float, what: str, log: Path) -> None:
    from asyncua.ua.uaerrors import UaError

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        # Not up yet: refused connections, timeouts, a server still building its nodes.
        with contextlib.suppress(OSError, TimeoutError, UaError):
            if await check():
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout_s} s; its log: {log}")


async def _timed(fn: Any, n: int) -> list[float]:
    samples = []
    for k in range(n):
        t0 = time.perf_counter_ns()
        await fn(k)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return samples


# ------------------------------------------------------------------------------ Modbus


async def _modbus(n: int, seconds: float, folder: Path) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    plc_port, nb_port = free_port(), free_port()
    site = folder / "bench_modbus.yaml"
    site.write_text(_site_yaml("modbus", plc_port, nb_port))
    stats = folder / "stats_modbus.json"
    plc = _Process([sys.executable, "-m", "simulators.plc_modbus", "--port", str(plc_port)],
                   folder / "plc_modbus.log")
    gw = _Process([sys.executable, "-m", "gateway.cli", "run", str(site), "--stats-json",
                   str(stats)], folder / "gateway_modbus.log")
    result: dict[str, float] = {}
    async with plc:
        direct = AsyncModbusTcpClient("127.0.0.1", port=plc_port)

        async def plc_up() -> bool:
            return bool(await direct.connect())

        await _until(plc_up, 20, "the Modbus PLC", plc.log)
        async with gw:
            via = AsyncModbusTcpClient("127.0.0.1", port=nb_port)

            async def gw_up() -> bool:
                if not await via.connect():
                    return False
                rr = await via.read_input_registers(1000, count=4, device_id=1)
                # MANUAL, and a heartbeat: the first cycle ran (the server answers earlier)
                return not rr.isError() and rr.registers[0] == 2 and rr.registers[3] > 0

            await _until(gw_up, 30, "the gateway", gw.log)

            def f32(v: float) -> list[int]:
                return list(struct.unpack(">HH", struct.pack(">f", v)))

            async def read_direct(_: int) -> None:
                rr = await direct.read_input_registers(0, count=10, device_id=1)
                assert not rr.isError()

            async def read_gw(_: int) -> None:
                rr = await via.read_input_registers(0, count=10, device_id=1)
                assert not rr.isError()

            async def write_direct(k: int) -> None:
                rr = await direct.write_registers(0, f32(10.0 + (k % 2)), device_id=1)
                assert not rr.isError()

            async def write_gw(k: int) -> None:
                rr = await via.write_registers(0, f32(10.0 + (k % 2)), device_id=1)
                assert not rr.isError(), rr

            for name, fn in (("read_direct", read_direct), ("read_gateway", read_gw),
                             ("write_direct", write_direct), ("write_gateway", write_gw)):
                await _timed(fn, n // 10)  # warm-up
                samples = await _timed(fn, n)
                result[f"modbus_{name}_us_p50"] = statistics.median(samples)
                result[f"modbus_{name}_us_p99"] = _pct(samples, 0.99)

            clients = [AsyncModbusTcpClient("127.0.0.1", port=nb_port) for _ in range(4)]
            for c in clients:
                await c.connect()
            counts = [0, 0, 0, 0]
            end = time.monotonic() + seconds

            async def hammer(i: int) -> None:
                k = 0
                while time.monotonic() < end:
                    rr = await clients[i].write_registers(2 * (i + 1), f32(20.0 + (k % 2)),
                                                          device_id=1)
                    counts[i] += not rr.isError()
                    k += 1

            t0 = time.monotonic()
            await asyncio.gather(*(hammer(i) for i in range(4)))
            writes_end = time.monotonic()
            result["validated_writes_per_s"] = sum(counts) / (writes_end - t0)

            # The cycle under read load: reads back to back for `seconds`, then stop the
            # gateway and take its own lateness figures for the cycles of that window (the
            # gateway's clock is CLOCK_MONOTONIC, as this process's).
            window_start = time.monotonic()
            end = window_start + seconds
            reads = 0
            while time.monotonic() < end:
                await via.read_input_registers(0, count=10, device_id=1)
                reads += 1
            window_end = time.monotonic()
            result["hammer_reads_per_s"] = reads / (window_end - window_start)
            for c in (*clients, via):
                c.close()
            await gw.stop()
        direct.close()
    import json

    gw_stats = json.loads(stats.read_text())
    result.update(_window(gw_stats, window_start, window_end))
    # For information (no target): the cycle while the 4 connections write through.
    under_writes = _window(gw_stats, t0, writes_end)
    result["cycle_lateness_ms_p99_under_writes"] = under_writes["cycle_lateness_ms_p99"]
    # For information: the gateway's longest garbage-collector pause over its whole run
    # (start-up's heap is frozen before the first cycle; see gateway.runtime.heap).
    result["gateway_gc_pause_ms_max"] = max(gw_stats["gc_pause_ms_max"])
    result["gateway_gc_full_collections"] = float(gw_stats["gc_collections"][2])
    return result


def _window(stats: dict[str, Any], start_s: float, end_s: float) -> dict[str, float]:
    """The gateway's cycle figures between ``start_s`` and ``end_s`` (its --stats-json)."""
    timeline = stats["timeline"]
    late = [ms for at, ms in zip(timeline["at_s"], timeline["lateness_ms"], strict=True)
            if start_s <= at <= end_s]
    if not late:
        raise RuntimeError("the gateway ran no cycle during the read load")
    expected = (end_s - start_s) / (stats["period_ms"] / 1000.0)
    return {"cycle_lateness_ms_p50": statistics.median(late),
            "cycle_lateness_ms_p99": _pct(late, 0.99), "cycle_lateness_ms_max": max(late),
            "cycles": float(len(late)), "cycles_skipped": max(0.0, round(expected) - len(late))}


# ------------------------------------------------------------------------------ OPC UA


async def _opcua(n: int, folder: Path) -> dict[str, float]:
    from asyncua import ua
    from asyncua.client.client import Client

    plc_port, nb_port = free_port(), free_port()
    site = folder / "bench_opcua.yaml"
    site.write_text(_site_yaml("opcua", plc_port, nb_port))
    names = [f"S{i}" for i in range(N_SENSORS)] + [f"A{i}" for i in range(N_ACTUATORS)]
    plc = _Process([sys.executable, "-m", "simulators.plc_opcua", "--port", str(plc_port),
                    *names], folder / "plc_opcua.log")
    gw = _Process([sys.executable, "-m", "gateway.cli", "run", str(site)],
                  folder / "gateway_opcua.log")
    result: dict[str, float] = {}
    async with plc:
        direct = Client(f"opc.tcp://127.0.0.1:{plc_port}/plc/")

        async def plc_up() -> bool:
            await direct.connect()
            return True

        await _until(plc_up, 30, "the OPC UA PLC", plc.log)
        async with gw:
            via = Client(f"opc.tcp://127.0.0.1:{nb_port}/gateway/")

            async def gw_up() -> bool:
                await via.connect()
                mode = await via.get_node("ns=2;s=Gateway.Status.Mode").read_value()
                return bool(mode == "manual")

            await _until(gw_up, 40, "the gateway", gw.log)
            d_sensor = direct.get_node("ns=2;s=S0")
            d_actuator = direct.get_node("ns=2;s=A0")
            g_sensor = via.get_node("ns=2;s=Gateway.Sensors.s0")
            g_actuator = via.get_node("ns=2;s=Gateway.Actuators.a0")

            async def read_direct(_: int) -> None:
                await d_sensor.read_value()

            async def read_gw(_: int) -> None:
                await g_sensor.read_value()

            async def write_direct(k: int) -> None:
                await d_actuator.write_value(ua.Variant(10.0 + (k % 2), ua.VariantType.Double))

            async def write_gw(k: int) -> None:
                await g_actuator.write_value(ua.Variant(10.0 + (k % 2), ua.VariantType.Double))

            for name, fn in (("read_direct", read_direct), ("read_gateway", read_gw),
                             ("write_direct", write_direct), ("write_gateway", write_gw)):
                await _timed(fn, n // 10)
                samples = await _timed(fn, n)
                result[f"opcua_{name}_us_p50"] = statistics.median(samples)
                result[f"opcua_{name}_us_p99"] = _pct(samples, 0.99)
            await via.disconnect()
        await direct.disconnect()
    return result


def run(quick: bool) -> dict[str, Any]:
    n, seconds = (300, 1.5) if quick else (3000, 5.0)
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        folder = Path(tmp)
        modbus = asyncio.run(_modbus(n, seconds, folder))
        opcua = asyncio.run(_opcua(n // 3, folder))
    r: dict[str, Any] = {"bench": "wire", **modbus, **opcua}
    read_ratio = r["modbus_read_gateway_us_p50"] / r["modbus_read_direct_us_p50"]
    write_ratio = r["modbus_write_gateway_us_p50"] / r["modbus_write_direct_us_p50"]
    r["modbus_read_ratio"] = read_ratio
    r["modbus_write_ratio"] = write_ratio
    r["targets"] = TARGETS
    r["met"] = {
        "read_ratio_max": read_ratio <= TARGETS["read_ratio_max"],
        "write_ratio_max": write_ratio <= TARGETS["write_ratio_max"],
        "write_p99_us_max": r["modbus_write_gateway_us_p99"] <= TARGETS["write_p99_us_max"],
        "validated_writes_per_s_min":
            r["validated_writes_per_s"] >= TARGETS["validated_writes_per_s_min"],
        "cycle_lateness_ms_p99_max":
            r["cycle_lateness_ms_p99"] <= TARGETS["cycle_lateness_ms_p99_max"],
    }
    r["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": os.getloadavg()[0]}
    return r


def format_text(r: dict[str, Any]) -> str:
    def row(proto: str, what: str) -> str:
        d, g = r[f"{proto}_{what}_direct_us_p50"], r[f"{proto}_{what}_gateway_us_p50"]
        return (f"  {proto:<6} {what:<5}  direct p50 {d:8.1f} us   gateway p50 {g:8.1f} us "
                f"(x{g / d:4.2f})   gateway p99 {r[f'{proto}_{what}_gateway_us_p99']:8.1f} us")

    met = r["met"]
    lines = [
        "wire bench (PLC stand-in, gateway and client in three processes; loopback):",
        row("modbus", "read"), row("modbus", "write"), row("opcua", "read"),
        row("opcua", "write"),
        f"  validated writes over 4 connections: {r['validated_writes_per_s']:8.0f} /s",
        f"  100 Hz cycle lateness under {r['hammer_reads_per_s']:.0f} reads/s: "
        f"p50 {r['cycle_lateness_ms_p50']:.3f} ms  p99 {r['cycle_lateness_ms_p99']:.3f} ms  "
        f"({int(r['cycles'])} cycles, {int(r['cycles_skipped'])} skipped)",
        f"  (the same under the validated writes: p99 "
        f"{r['cycle_lateness_ms_p99_under_writes']:.3f} ms; no target)",
        f"  gateway's longest garbage-collector pause: {r['gateway_gc_pause_ms_max']:.1f} ms "
        f"({int(r['gateway_gc_full_collections'])} full collections; no target)",
        "targets: " + "; ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()),
    ]
    return "\n".join(lines)
