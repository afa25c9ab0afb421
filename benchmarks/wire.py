"""``safety-gateway bench wire``: the gateway on the wire, against a plain proxy in the same run.

Modbus: four processes, as on site, and this one as the client: a PLC stand-in
(``simulators.plc_modbus``); the peer baseline, ``modbus-proxy`` 0.8.0 (PyPI; an asyncio
forwarding proxy that checks nothing, installed by the ``bench`` extra) in front of that PLC;
the gateway (``safety-gateway run``, 100 Hz cycle, 16 tags: 8 sensors, 8 actuators: its safety
core, and its communications process hosting the northbound servers, which hands every write to
the core over the request channel) in front of the same PLC; the PLC directly. The same
pymodbus client measures the three paths in interleaved rounds (each path goes first, second
and third equally often), so that a change of load on the host hits all three alike, and every
figure is reported against the proxy's:

- write latency p50/p99: a float32 setpoint (FC16, 2 registers). Through the gateway it is an
  operator setpoint in MANUAL mode: validated against the envelope, encoded, checked again,
  and forwarded to the PLC before the gateway answers;
- read latency p50/p99 of 10 input registers; through the gateway, served from its mirror;
- writes/s over 4 connections per path (interleaved slices of 0.5 s); the gateway batches
  what its connections send at the same moment into one device request; ``validated_writes_per_s``
  counts its accepted writes;
- the PLC device is configured as a deployment with write-through traffic should be: writes on
  their own connection (``separate_write_connection``), so they never queue behind polls;
- ``cycle_lateness_ms_p99`` is the gateway's own measurement of its 100 Hz cycle while a client
  reads back to back from the northbound server (from ``run --stats-json``'s timeline, the
  cycles of that window only: not those of the write load before it).

Targets (issue 17): write p50 <= 1.2x the proxy's, write p99 <= 1.5x the proxy's p99, writes/s
over 4 connections >= 1.5x the proxy's, read p50 <= 0.5x the proxy's; cycle lateness p99 <= 2 ms.

Also measured: the round trip of a 64-byte message over a Unix socketpair to another process
(asyncio at both ends), what a write-through pays once the northbound servers live in the
communications process and the core answers over the request channel. And OPC UA, direct
against through the gateway (no peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.errors import BenchUnavailable
from simulators.ports import free_port

N_SENSORS = 8
N_ACTUATORS = 8
# Against modbus-proxy 0.8.0 in the same run (issue 17, item 4); the cycle's own target.
TARGETS = {"write_p50_vs_proxy_max": 1.2, "write_p99_vs_proxy_max": 1.5,
           "writes_per_s_vs_proxy_min": 1.5, "read_p50_vs_proxy_max": 0.5,
           "cycle_lateness_ms_p99_max": 2.0}


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
        # One source (this process) holds 5 connections: the latency client and 4 writers.
        northbound = (f"  modbus: {{host: 127.0.0.1, port: {nb_port}, unit: 1, "
                      f"allow: [127.0.0.1], max_per_source: 8}}\n")
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
    from pymodbus.exceptions import ModbusException

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        # Not up yet: refused connections, timeouts, a server still building its nodes, a
        # client still between its own reconnect attempts.
        with contextlib.suppress(OSError, TimeoutError, UaError, ModbusException):
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

# The three ways to the PLC, and their order in the first round (later rounds rotate it).
PATHS = ("direct", "proxy", "gateway")


def _f32(v: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", v)))


def _rotated(round_no: int) -> tuple[str, ...]:
    """The paths in round ``round_no``'s order: each path goes first, second and third
    equally often, so that neither drift nor the path before it favours one."""
    k = round_no % len(PATHS)
    return PATHS[k:] + PATHS[:k]


async def _latencies(clients: dict[str, Any], n: int, per_round: int
                     ) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """``n`` timed writes and ``n`` timed reads per path, in interleaved rounds of
    ``per_round`` each (one warm-up round first, not counted); and the refused requests per
    path and operation (their time until the refusal is among the samples: on a loaded host
    the gateway refuses a write-through whose device write took longer than a cycle)."""
    samples: dict[str, dict[str, list[float]]] = {
        p: {"write": [], "read": []} for p in PATHS}
    refused = {f"{p}_{op}": 0 for p in PATHS for op in ("write", "read")}

    def ops(path: str, client: Any) -> tuple[Any, Any]:
        async def write(k: int) -> None:
            rr = await client.write_registers(0, _f32(10.0 + (k % 2)), device_id=1)
            refused[f"{path}_write"] += rr.isError()

        async def read(_: int) -> None:
            rr = await client.read_input_registers(0, count=10, device_id=1)
            refused[f"{path}_read"] += rr.isError()

        return write, read

    calls = {p: ops(p, c) for p, c in clients.items()}
    rounds = -(-n // per_round)
    for r in range(-1, rounds):
        for path in _rotated(r):
            write, read = calls[path]
            w = await _timed(write, per_round)
            rd = await _timed(read, per_round)
            if r >= 0:
                samples[path]["write"] += w
                samples[path]["read"] += rd
            else:
                refused.update(dict.fromkeys(refused, 0))  # the warm-up's do not count
    return samples, refused


async def _throughput(ports: dict[str, int], seconds: float, slice_s: float
                      ) -> tuple[dict[str, float], dict[str, int]]:
    """Accepted writes per second over 4 connections per path, for ``seconds`` per path in
    interleaved slices of ``slice_s`` (each connection writes its own float32 register);
    and the refused writes per path."""
    from pymodbus.client import AsyncModbusTcpClient

    conns = {p: [AsyncModbusTcpClient("127.0.0.1", port=port) for _ in range(4)]
             for p, port in ports.items()}
    for group in conns.values():
        for c in group:
            if not await c.connect():
                raise RuntimeError("a hammer connection did not connect")
    counts = dict.fromkeys(ports, 0)
    spent = dict.fromkeys(ports, 0.0)
    refused = dict.fromkeys(ports, 0)

    async def hammer(path: str, i: int, until: float) -> None:
        client = conns[path][i]
        k = 0
        while time.monotonic() < until:
            rr = await client.write_registers(2 * (i + 1), _f32(20.0 + (k % 2)), device_id=1)
            if rr.isError():
                refused[path] += 1
            else:
                counts[path] += 1
            k += 1

    slices = max(1, round(seconds / slice_s))
    for r in range(slices):
        for path in _rotated(r):
            if path not in ports:
                continue
            t0 = time.monotonic()
            await asyncio.gather(*(hammer(path, i, t0 + slice_s) for i in range(4)))
            spent[path] += time.monotonic() - t0
    for group in conns.values():
        for c in group:
            c.close()
    return {p: counts[p] / spent[p] for p in ports}, refused


async def _modbus(n: int, seconds: float, folder: Path) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    plc_port, proxy_port, nb_port = free_port(), free_port(), free_port()
    site = folder / "bench_modbus.yaml"
    site.write_text(_site_yaml("modbus", plc_port, nb_port))
    stats = folder / "stats_modbus.json"
    plc = _Process([sys.executable, "-m", "simulators.plc_modbus", "--port", str(plc_port)],
                   folder / "plc_modbus.log")
    # The peer: a plain asyncio forwarding proxy that checks nothing, one connection to the
    # PLC (its default timeout, 10 s, never fires here).
    proxy = _Process([sys.executable, "-m", "modbus_proxy", "-b", f"tcp://127.0.0.1:{proxy_port}",
                      "--modbus", f"tcp://127.0.0.1:{plc_port}"], folder / "proxy.log")
    gw = _Process([sys.executable, "-m", "gateway.cli", "run", str(site), "--stats-json",
                   str(stats)], folder / "gateway_modbus.log")
    result: dict[str, float] = {}
    async with plc:
        direct = AsyncModbusTcpClient("127.0.0.1", port=plc_port)

        async def plc_up() -> bool:
            return bool(await direct.connect())

        await _until(plc_up, 20, "the Modbus PLC", plc.log)
        async with proxy, gw:
            proxied = AsyncModbusTcpClient("127.0.0.1", port=proxy_port)
            via = AsyncModbusTcpClient("127.0.0.1", port=nb_port)

            async def proxy_up() -> bool:
                if not await proxied.connect():
                    return False
                return not (await proxied.read_input_registers(0, count=1, device_id=1)
                            ).isError()

            async def gw_up() -> bool:
                if not await via.connect():
                    return False
                rr = await via.read_input_registers(1000, count=4, device_id=1)
                # MANUAL, and a heartbeat: the first cycle ran (the server answers earlier)
                return not rr.isError() and rr.registers[0] == 2 and rr.registers[3] > 0

            await _until(proxy_up, 20, "modbus-proxy", proxy.log)
            await _until(gw_up, 30, "the gateway", gw.log)

            clients = {"direct": direct, "proxy": proxied, "gateway": via}
            samples, refused = await _latencies(clients, n, per_round=max(10, n // 30))
            for path in PATHS:
                for op in ("write", "read"):
                    result[f"modbus_{op}_{path}_refused"] = float(refused[f"{path}_{op}"])
            for path in PATHS:
                for op in ("write", "read"):
                    s = samples[path][op]
                    result[f"modbus_{op}_{path}_us_p50"] = statistics.median(s)
                    result[f"modbus_{op}_{path}_us_p99"] = _pct(s, 0.99)
                    result[f"modbus_{op}_{path}_n"] = float(len(s))

            t0 = time.monotonic()
            rates, refused = await _throughput(
                {"direct": plc_port, "proxy": proxy_port, "gateway": nb_port},
                seconds, slice_s=0.5)
            for path, count in refused.items():
                result[f"{path}_writes_refused_under_load"] = float(count)
            writes_end = time.monotonic()
            result["direct_writes_per_s"] = rates["direct"]
            result["proxy_writes_per_s"] = rates["proxy"]
            result["validated_writes_per_s"] = rates["gateway"]

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
            for c in (proxied, via):
                c.close()
            await gw.stop()
        direct.close()
    import json

    gw_stats = json.loads(stats.read_text())
    result.update(_window(gw_stats, window_start, window_end))
    # For information (no target): the cycle while the 4-connection loads run (a third of
    # that time is the gateway's own; the rest it polls and cycles beside the others').
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


# ------------------------------------------------------------------------------ the link hop

# The child end of the hop: answers each 64-byte request with 64 bytes, from an asyncio
# protocol (as the core will answer the communications process's requests).
_HOP_CHILD = """
import asyncio, socket, sys

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
    def data_received(self, data):
        self.t.write(data)
    def connection_lost(self, exc):
        done.set_result(None)

async def main():
    global done
    done = asyncio.get_running_loop().create_future()
    sock = socket.socket(fileno=int(sys.argv[1]))
    await asyncio.get_running_loop().connect_accepted_socket(Echo, sock)
    await done

asyncio.run(main())
"""
HOP_BYTES = 64


async def _unix_hop(n: int) -> dict[str, float]:
    """Round trips of a 64-byte request and its answer over a Unix socketpair to a child
    process, asyncio at both ends: what one write-through pays to cross from the
    communications process to the core and back, before any encoding."""
    parent_end, child_end = socket.socketpair()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOP_CHILD, str(child_end.fileno()),
        pass_fds=(child_end.fileno(),))
    child_end.close()
    reader, writer = await asyncio.open_unix_connection(sock=parent_end)
    message = bytes(range(HOP_BYTES))

    async def hop(_: int) -> None:
        writer.write(message)
        if await reader.readexactly(HOP_BYTES) != message:
            raise RuntimeError("the hop's echo differs from the request")

    try:
        await _timed(hop, n // 10)
        samples = await _timed(hop, n)
    finally:
        writer.close()
        await child.wait()
    return {"link_hop_us_p50": statistics.median(samples),
            "link_hop_us_p99": _pct(samples, 0.99)}


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    """Every Modbus figure against the proxy's in the same run (x < 1: faster than it)."""
    out: dict[str, float] = {}
    for path in ("direct", "gateway"):
        for op in ("write", "read"):
            for q in ("p50", "p99"):
                out[f"{op}_{path}_{q}"] = (r[f"modbus_{op}_{path}_us_{q}"]
                                           / r[f"modbus_{op}_proxy_us_{q}"])
    out["writes_per_s_direct"] = r["direct_writes_per_s"] / r["proxy_writes_per_s"]
    out["writes_per_s_gateway"] = r["validated_writes_per_s"] / r["proxy_writes_per_s"]
    return out


def run(quick: bool) -> dict[str, Any]:
    if importlib.util.find_spec("modbus_proxy") is None:
        raise BenchUnavailable(
            "bench wire needs the peer baseline modbus-proxy 0.8.0: pip install -e '.[bench]'")
    n, seconds = (300, 1.5) if quick else (3000, 6.0)
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        folder = Path(tmp)
        load_before = os.getloadavg()
        modbus = asyncio.run(_modbus(n, seconds, folder))
        hop = asyncio.run(_unix_hop(n))
        opcua = asyncio.run(_opcua(n // 3, folder))
    r: dict[str, Any] = {"bench": "wire", **modbus, **hop, **opcua}
    vs = _ratios(r)
    r["vs_proxy"] = vs
    # Against direct access, as before the peer was added (no target).
    r["modbus_read_ratio"] = r["modbus_read_gateway_us_p50"] / r["modbus_read_direct_us_p50"]
    r["modbus_write_ratio"] = (r["modbus_write_gateway_us_p50"]
                               / r["modbus_write_direct_us_p50"])
    r["targets"] = TARGETS
    r["met"] = {
        "write_p50_vs_proxy_max": vs["write_gateway_p50"] <= TARGETS["write_p50_vs_proxy_max"],
        "write_p99_vs_proxy_max": vs["write_gateway_p99"] <= TARGETS["write_p99_vs_proxy_max"],
        "writes_per_s_vs_proxy_min":
            vs["writes_per_s_gateway"] >= TARGETS["writes_per_s_vs_proxy_min"],
        "read_p50_vs_proxy_max": vs["read_gateway_p50"] <= TARGETS["read_p50_vs_proxy_max"],
        "cycle_lateness_ms_p99_max":
            r["cycle_lateness_ms_p99"] <= TARGETS["cycle_lateness_ms_p99_max"],
    }
    r["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_before": list(load_before), "load_avg_after": list(os.getloadavg())}
    return r


def format_text(r: dict[str, Any]) -> str:
    vs = r["vs_proxy"]

    def row(op: str) -> list[str]:
        out = []
        for path in PATHS:
            p50, p99 = r[f"modbus_{op}_{path}_us_p50"], r[f"modbus_{op}_{path}_us_p99"]
            ratio = ("" if path == "proxy" else
                     f"   (x{vs[f'{op}_{path}_p50']:4.2f} / x{vs[f'{op}_{path}_p99']:4.2f} "
                     "the proxy's)")
            out.append(f"    {path:<8} p50 {p50:8.1f} us   p99 {p99:8.1f} us{ratio}")
        return out

    def opc(what: str) -> str:
        d, g = r[f"opcua_{what}_direct_us_p50"], r[f"opcua_{what}_gateway_us_p50"]
        return (f"  opcua  {what:<5}  direct p50 {d:8.1f} us   gateway p50 {g:8.1f} us "
                f"(x{g / d:4.2f})   gateway p99 {r[f'opcua_{what}_gateway_us_p99']:8.1f} us")

    met, t = r["met"], r["targets"]

    def verdict(key: str) -> str:
        return "PASS" if met[key] else "FAIL"

    load = r["machine"]
    lines = [
        "wire bench (PLC stand-in, modbus-proxy 0.8.0, gateway (safety core + communications "
        "process) and client as separate processes; loopback; paths interleaved in rounds):",
        f"  modbus writes ({int(r['modbus_write_proxy_n'])} per path):", *row("write"),
        f"  modbus reads ({int(r['modbus_read_proxy_n'])} per path):", *row("read"),
        "  writes/s over 4 connections: "
        f"direct {r['direct_writes_per_s']:6.0f}   proxy {r['proxy_writes_per_s']:6.0f}   "
        f"gateway (validated) {r['validated_writes_per_s']:6.0f} "
        f"(x{vs['writes_per_s_gateway']:4.2f} the proxy's)",
        "  refused (latency runs; 4-connection runs): " + "   ".join(
            f"{p} {int(r[f'modbus_write_{p}_refused'])}; "
            f"{int(r[f'{p}_writes_refused_under_load'])}" for p in PATHS),
        "  targets against the proxy in this run:",
        f"    {verdict('write_p50_vs_proxy_max')}  write p50 <= {t['write_p50_vs_proxy_max']}x "
        f"(x{vs['write_gateway_p50']:.2f})",
        f"    {verdict('write_p99_vs_proxy_max')}  write p99 <= {t['write_p99_vs_proxy_max']}x "
        f"(x{vs['write_gateway_p99']:.2f})",
        f"    {verdict('writes_per_s_vs_proxy_min')}  writes/s >= "
        f"{t['writes_per_s_vs_proxy_min']}x (x{vs['writes_per_s_gateway']:.2f})",
        f"    {verdict('read_p50_vs_proxy_max')}  read p50 <= {t['read_p50_vs_proxy_max']}x "
        f"(x{vs['read_gateway_p50']:.2f})",
        f"    {verdict('cycle_lateness_ms_p99_max')}  100 Hz cycle lateness p99 <= "
        f"{t['cycle_lateness_ms_p99_max']} ms under {r['hammer_reads_per_s']:.0f} reads/s: "
        f"{r['cycle_lateness_ms_p99']:.3f} ms (p50 {r['cycle_lateness_ms_p50']:.3f} ms; "
        f"{int(r['cycles'])} cycles, {int(r['cycles_skipped'])} skipped)",
        f"  (cycle lateness p99 under the 4-connection loads: "
        f"{r['cycle_lateness_ms_p99_under_writes']:.3f} ms; no target)",
        f"  gateway's longest garbage-collector pause: {r['gateway_gc_pause_ms_max']:.1f} ms "
        f"({int(r['gateway_gc_full_collections'])} full collections; no target)",
        f"  a Unix socketpair round trip to another process ({HOP_BYTES} bytes, asyncio at "
        f"both ends; the core/communications hop): p50 {r['link_hop_us_p50']:.1f} us, "
        f"p99 {r['link_hop_us_p99']:.1f} us",
        opc("read"), opc("write"),
        f"  load average before/after: {load['load_avg_before'][0]:.2f} / "
        f"{load['load_avg_after'][0]:.2f} on {load['cpus']} CPUs",
    ]
    return "\n".join(lines)
