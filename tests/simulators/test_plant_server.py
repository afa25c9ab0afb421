"""PlantServer: one plant behind a PLC served over Modbus TCP and OPC UA, over real sockets on
127.0.0.1, with a small fake plant defined here (the real plants are tested on their own).

An asyncua server takes ~2.4 s to start, so one test drives one dual-protocol server through the
whole story (reads through both, writes through both, refusals, faults, loss and return); the
Modbus-only tests start in milliseconds. pytest-asyncio is not used: each test runs its own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from simulators.plant_server import (
    PLANTS,
    PlantServer,
    PlantWrite,
    WireProtocol,
    _slots,
    decode_registers,
    encode_registers,
    simulate_main,
)
from simulators.plants.base import PlantTag, ProcessLimit, TagKind
from simulators.ports import free_port
from simulators.simulate_args import add_parser

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]
MB, UA = WireProtocol.MODBUS, WireProtocol.OPCUA


# ---------------------------------------------------------------------------- a fake plant


def _tag(name: str, kind: TagKind, table: str, address: int, mtype: str, opc_type: str,
         scale: float = 1.0, unit: str = "") -> PlantTag:
    return PlantTag(name, kind, unit, table, address, mtype, f"Fake.{name.title()}", opc_type,
                    scale)


S, A, H = TagKind.SENSOR, TagKind.ACTUATOR, TagKind.HEARTBEAT


class FakePlant:
    """A first-order level process: the level moves toward ``4 * valve/100 + heat/100 -
    drain`` with a 10 s time constant. ``count`` is a step counter starting above 65535 (both
    words of a uint32 matter); ``status`` is a sensor kept in a holding register."""

    name: str = "fake"
    tags: tuple[PlantTag, ...] = (
        _tag("level", S, "input_register", 0, "float32", "Double", unit="m"),
        _tag("flow", S, "input_register", 2, "uint16", "Double", scale=0.001, unit="m3/s"),
        _tag("count", S, "input_register", 3, "uint32", "UInt32"),
        _tag("status", S, "holding_register", 20, "uint16", "Int32"),
        _tag("valve", A, "holding_register", 0, "uint16", "Double", scale=0.01, unit="%"),
        _tag("heat", A, "holding_register", 1, "float32", "Double", unit="kW"),
        _tag("drain", A, "coil", 3, "bool", "Boolean"),
        _tag("heartbeat", H, "holding_register", 10, "uint16", "UInt16"),
    )
    limits: tuple[ProcessLimit, ...] = (ProcessLimit("level", 2.0, 0.5, 4.0, 0.0, 5.0),)

    def __init__(self) -> None:
        self.level = 1.0
        self.count = 70_000
        self.act = {"valve": 50.0, "heat": 0.0, "drain": 0.0}
        self.set_calls: list[tuple[str, float]] = []

    def step(self, dt_s: float) -> None:
        target = 4 * self.act["valve"] / 100 + self.act["heat"] / 100 - self.act["drain"]
        self.level += (target - self.level) * (1 - math.exp(-dt_s / 10))
        self.count += 1

    def sensors(self) -> dict[str, float]:
        return {"level": self.level + 1e-9, "flow": 0.05 * self.act["valve"] / 100 + 1e-5,
                "count": float(self.count), "status": 3.0}

    def process(self) -> dict[str, float]:
        return {"level": self.level}

    def actuators(self) -> dict[str, float]:
        return dict(self.act)

    def set_actuator(self, name: str, value: float) -> None:
        if name not in self.act:
            raise KeyError(name)
        self.set_calls.append((name, value))
        if name == "valve":
            value = min(max(value, 0.0), 100.0)
        self.act[name] = value

    def set_disturbance(self, name: str, value: float) -> None:
        raise KeyError(name)


# ---------------------------------------------------------------------------- helpers


def f32(words: Sequence[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *words))[0]
    return value


def regs32(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


async def read_modbus_sensors(client: AsyncModbusTcpClient) -> dict[str, float]:
    """Decode the fake plant's sensors the way a client would (the test's own codec)."""
    rr = await client.read_input_registers(0, count=5, device_id=1)
    assert not rr.isError(), rr
    r = rr.registers
    st = await client.read_holding_registers(20, count=1, device_id=1)
    assert not st.isError(), st
    return {"level": f32(r[0:2]), "flow": r[2] * 0.001, "count": float((r[3] << 16) | r[4]),
            "status": float(st.registers[0])}


async def modbus_client(port: int | None) -> AsyncModbusTcpClient:
    assert port is not None
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    assert await client.connect()
    return client


async def until(pred: Callable[[], bool], timeout_s: float = 8.0) -> None:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


async def bench_ticks(server: PlantServer, n: int = 2000) -> float:
    """Microseconds per tick (benchmark-style print, no assertion on the figure)."""
    start = time.perf_counter()
    for _ in range(n):
        await server.tick(0.1)
    return (time.perf_counter() - start) / n * 1e6


# ---------------------------------------------------------------------------- pure parts


def test_codec_round_trips_and_edges() -> None:
    assert encode_registers("float32", 1.0, 21.5) == [0x41AC, 0x0000]
    assert decode_registers("float32", 1.0, [0x41AC, 0x0000]) == 21.5
    assert encode_registers("float32", 1.0, 1e39) == regs32(math.inf)
    assert encode_registers("uint16", 0.01, 37.125) == [3712]   # half to even
    assert encode_registers("uint16", 0.01, 700.0) == [65535]   # clipped
    assert encode_registers("uint16", 0.01, -3.0) == [0]
    assert encode_registers("uint16", 0.01, math.nan) == [0]
    assert encode_registers("uint32", 1.0, 70_001) == [1, 70_001 - 65536]
    assert decode_registers("uint32", 1.0, [1, 4465]) == 70_001
    assert encode_registers("int16", 0.1, -1.5) == [0x10000 - 15]
    assert decode_registers("int16", 0.1, [0x10000 - 15]) == pytest.approx(-1.5)
    assert decode_registers("int32", 1.0, encode_registers("int32", 1.0, -5)) == -5


def test_tag_validation() -> None:
    good = FakePlant.tags
    assert len(_slots(good)) == len(good)
    bad_cases = [
        (good[0], good[0]),                                                  # duplicate name
        (_tag("a", A, "input_register", 0, "uint16", "Double"),),            # read-only table
        (_tag("a", A, "holding_register", 0, "float32", "Double"),
         _tag("b", A, "holding_register", 1, "uint16", "Double")),           # overlap
        (_tag("a", S, "coil", 0, "uint16", "Double"),),                      # bool table
        (_tag("a", S, "input_register", 0, "float64", "Double"),),           # unknown type
        (_tag("a", S, "input_register", 0, "uint16", "String"),),            # unknown OPC type
        (_tag("a", S, "input_register", 65535, "uint32", "UInt32"),),        # past 65535
    ]
    for tags in bad_cases:
        with pytest.raises(ValueError, match="tag"):
            _slots(tags)
    with pytest.raises(ValueError, match="opcua_path"):
        PlantServer(FakePlant(), modbus_port=None, opcua_port=None, opcua_path="plant")


def test_ticks_without_servers_record_history_and_faults() -> None:
    async def main() -> None:
        plant = FakePlant()
        server = PlantServer(plant, modbus_port=None, opcua_port=None)
        await server.start()
        s1 = await server.tick(0.5)
        assert s1.at_s == 0.5 == server.plant_time_s  # default clock: plant time
        assert s1.process == {"level": pytest.approx(plant.level)}
        # published = the wire's quantisation, not the float64 truth
        assert s1.sensors_published["flow"] == 25 * 0.001
        assert s1.sensors_published["level"] == struct.unpack(
            ">f", struct.pack(">f", plant.level + 1e-9))[0]
        assert s1.sensors_published["count"] == 70_001
        assert s1.actuators == {"valve": 50.0, "heat": 0.0, "drain": 0.0}
        server.freeze("level")
        await server.tick(0.5)
        assert server.history[-1].sensors_published["level"] == s1.sensors_published["level"]
        assert server.history[-1].process["level"] != s1.process["level"]
        with pytest.raises(KeyError):
            server.freeze("nope")
        with pytest.raises(ValueError, match="not a sensor"):
            server.spoof("valve", 1.0)
        with pytest.raises(ValueError, match="dt_s"):
            await server.tick(0.0)
        assert server.faults == [(0.5, "freeze level")]
        assert len(server.history) == 2

    asyncio.run(main())


def test_keep_last_bounds_the_record() -> None:
    async def main() -> None:
        server = PlantServer(FakePlant(), modbus_port=None, opcua_port=None, keep_last=10)
        await server.start()
        for _ in range(100):
            await server.tick(0.1)
        assert 10 <= len(server.history) <= 13
        assert server.history[-1].at_s == pytest.approx(10.0)

    asyncio.run(main())


# ---------------------------------------------------------------------------- Modbus only


def test_modbus_reads_writes_refusals_faults_and_loss() -> None:
    async def main() -> None:
        plant = FakePlant()
        wall = [1000.0]
        server = PlantServer(plant, opcua_port=None, clock=lambda: wall[0])
        assert server.opcua_endpoint is None
        await server.start()
        client = await modbus_client(server.modbus_port)
        try:
            # -- reads: what a client decodes is exactly what the PLC published
            assert await read_modbus_sensors(client) == server.published()
            for _ in range(3):
                await server.tick(0.1)
            assert await read_modbus_sensors(client) == server.history[-1].sensors_published
            # initial actuators are in the PLC memory
            rr = await client.read_holding_registers(0, count=3, device_id=1)
            assert rr.registers == [5000, *regs32(0.0)]

            # -- writes: one FC16 over two actuators -> two PlantWrites, decoded, in order
            wall[0] = 1001.0
            calls_before = len(plant.set_calls)
            r = await client.write_registers(0, [7325, *regs32(12.5)], device_id=1)
            assert not r.isError()
            assert (await client.write_coil(3, True, device_id=1)).isError() is False
            assert not (await client.write_register(10, 41, device_id=1)).isError()
            assert server.writes == [
                PlantWrite(1001.0, "valve", 7325 * 0.01, MB, (7325,)),
                PlantWrite(1001.0, "heat", 12.5, MB, tuple(regs32(12.5))),
                PlantWrite(1001.0, "drain", 1.0, MB, True),
                PlantWrite(1001.0, "heartbeat", 41.0, MB, (41,)),
            ]
            # ... reaching the plant only at the next scan, via the PLC memory
            assert plant.act == {"valve": 50.0, "heat": 0.0, "drain": 0.0}
            assert len(plant.set_calls) == calls_before
            await server.tick(0.1)
            assert plant.act == {"valve": pytest.approx(73.25), "heat": 12.5, "drain": 1.0}
            assert server.history[-1].actuators == plant.act
            assert ("heartbeat", 41.0) not in plant.set_calls

            # -- half of a float32 (the low word): decoded from the memory after the store
            hi = regs32(12.5)[0]
            assert not (await client.write_register(2, 0x8000, device_id=1)).isError()
            assert server.writes[-1] == PlantWrite(1001.0, "heat", 12.53125, MB, (hi, 0x8000))

            # -- refusals: exception 2, nothing stored, nothing recorded
            n = len(server.writes)
            for address, values in ((5, [1]), (0, [1, 2, 3, 4, 5, 6]), (20, [9]), (500, [1]),
                                    (9, [1, 2])):
                r = await client.write_registers(address, values, device_id=1)
                assert r.isError(), address
                assert r.exception_code == 2, address
            r = await client.write_coil(0, True, device_id=1)  # no coil actuator there
            assert r.isError()
            assert r.exception_code == 2
            assert len(server.writes) == n
            rr = await client.read_holding_registers(0, count=1, device_id=1)
            assert rr.registers == [7325]
            assert (await client.read_holding_registers(20, count=1, device_id=1)
                    ).registers == [3]

            # -- freeze: the published value sticks (good quality) while the truth moves
            server.freeze("level")
            frozen = (await read_modbus_sensors(client))["level"]
            for _ in range(5):
                await server.tick(1.0)
            now = await read_modbus_sensors(client)
            assert now["level"] == frozen != plant.level
            assert now["count"] == plant.count  # other sensors still move
            server.unfreeze("level")
            await server.publish()
            assert (await read_modbus_sensors(client))["level"] == pytest.approx(
                plant.level, abs=1e-6)

            # -- spoof: the attacker's value, quantised like the truth; then the truth again
            server.spoof("flow", 0.04449)
            await server.tick(0.1)
            assert (await read_modbus_sensors(client))["flow"] == 44 * 0.001
            assert server.history[-1].sensors_published["flow"] == 44 * 0.001
            server.unspoof("flow")
            await server.tick(0.1)
            assert (await read_modbus_sensors(client))["flow"] == pytest.approx(
                0.05 * 0.7325 + 1e-5, abs=1e-3)

            # -- disconnect: the client loses the connection; physics goes on; memory kept
            wall[0] = 1002.0
            await server.disconnect()
            assert not server.connected
            with pytest.raises((ConnectionException, ModbusIOException)):
                await client.read_input_registers(0, count=2, device_id=1)
            client.close()
            assert server.modbus_port is not None
            refused = AsyncModbusTcpClient("127.0.0.1", port=server.modbus_port, timeout=1,
                                           retries=0)
            assert not await refused.connect()  # nothing listens
            refused.close()
            level_before = plant.level
            for _ in range(10):
                await server.tick(1.0)
            assert plant.level != level_before
            assert plant.act["valve"] == pytest.approx(73.25)  # last applied, kept
            wall[0] = 1003.0
            await server.reconnect()
            client = await modbus_client(server.modbus_port)
            rr = await client.read_holding_registers(0, count=3, device_id=1)
            assert rr.registers == [7325, *regs32(12.53125)]  # retentive memory
            assert (await client.read_coils(3, count=1, device_id=1)).bits[0] is True
            # sensors published while disconnected are there on return
            assert await read_modbus_sensors(client) == server.history[-1].sensors_published
            assert server.faults == [
                (1001.0, "freeze level"), (1001.0, "unfreeze level"),
                (1001.0, "spoof flow=0.04449"), (1001.0, "unspoof flow"),
                (1002.0, "disconnect"), (1003.0, "reconnect")]
            # writes work again after the return
            assert not (await client.write_register(0, 1000, device_id=1)).isError()
            await server.tick(0.1)
            assert plant.act["valve"] == 10.0

            us = await bench_ticks(server)
            print(f"\nPlantServer.tick, Modbus only (3 actuators, 4 sensors): {us:.0f} us")
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


def test_run_advances_plant_time_at_speed() -> None:
    async def main() -> None:
        server = PlantServer(FakePlant(), opcua_port=None)
        with pytest.raises(ValueError, match="speed"):
            await server.run(speed=0)
        async with server:
            task = asyncio.create_task(server.run(speed=50.0, period_s=0.01))
            start = time.monotonic()
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            wall = time.monotonic() - start
        # 50x: about 15 s of plant time in 0.3 s (slips allowed on a busy machine)
        assert 2.0 < server.plant_time_s <= 50.0 * wall + 0.5
        assert server.history[-1].at_s == pytest.approx(server.plant_time_s)

    asyncio.run(main())


def test_port_in_use_is_an_oserror_and_nothing_listens() -> None:
    async def main() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            taken = sock.getsockname()[1]
            server = PlantServer(FakePlant(), modbus_port=taken, opcua_port=None)
            with pytest.raises(OSError, match="cannot listen"):
                await server.start()
            assert not server.connected

    asyncio.run(main())


# ---------------------------------------------------------------------------- both protocols


def test_both_protocols_one_plant() -> None:
    async def main() -> None:
        plant = FakePlant()
        server = PlantServer(plant, opcua_path="/fake/")
        await server.start()
        assert server.opcua_endpoint == f"opc.tcp://127.0.0.1:{server.opcua_port}/fake/"
        mb = await modbus_client(server.modbus_port)
        ua_client = Client(server.opcua_endpoint, timeout=2)
        await ua_client.connect()
        node = {t.name: ua_client.get_node(f"ns=2;s={t.opcua_name}") for t in plant.tags}

        async def read_ua_sensors() -> dict[str, float]:
            return {n: float(await node[n].read_value())
                    for n in ("level", "flow", "count", "status")}

        try:
            # -- the same published values through both protocols
            for _ in range(3):
                await server.tick(0.1)
                published = server.history[-1].sensors_published
                assert await read_modbus_sensors(mb) == published
                assert await read_ua_sensors() == published
            assert await node["count"].read_data_type_as_variant_type() == ua.VariantType.UInt32
            # initial actuators on the OPC UA side too
            assert await node["valve"].read_value() == 50.0
            assert await node["drain"].read_value() is False

            # -- an OPC UA write reaches the plant at the next scan, and Modbus reads it back
            await node["valve"].write_value(ua.Variant(61.5, ua.VariantType.Double))
            await node["drain"].write_value(ua.Variant(True, ua.VariantType.Boolean))
            await node["heartbeat"].write_value(ua.Variant(7, ua.VariantType.UInt16))
            assert [(w.tag, w.value, w.protocol, w.raw) for w in server.writes] == [
                ("valve", 61.5, UA, 61.5), ("drain", 1.0, UA, True), ("heartbeat", 7.0, UA, 7)]
            assert plant.act["valve"] == 50.0
            await server.tick(0.1)
            assert plant.act == {"valve": 61.5, "heat": 0.0, "drain": 1.0}
            assert (await mb.read_holding_registers(0, count=1, device_id=1)).registers == [6150]
            assert (await mb.read_coils(3, count=1, device_id=1)).bits[0] is True

            # -- the latest write wins across protocols: Modbus then OPC UA -> OPC UA's value
            assert not (await mb.write_register(0, 2000, device_id=1)).isError()
            await node["valve"].write_value(ua.Variant(33.3, ua.VariantType.Double))
            await server.tick(0.1)
            assert plant.act["valve"] == 33.3
            assert (await mb.read_holding_registers(0, count=1, device_id=1)).registers == [3330]
            # ... and OPC UA then Modbus -> Modbus's value, mirrored to OPC UA
            await node["heat"].write_value(ua.Variant(5.0, ua.VariantType.Double))
            assert not (await mb.write_registers(1, regs32(8.25), device_id=1)).isError()
            await server.tick(0.1)
            assert plant.act["heat"] == 8.25
            assert await node["heat"].read_value() == 8.25
            assert [(w.tag, w.value, w.protocol) for w in server.writes[-4:]] == [
                ("valve", 20.0, MB), ("valve", pytest.approx(33.3), UA), ("heat", 5.0, UA),
                ("heat", 8.25, MB)]

            # -- sensors are not writable through OPC UA; nothing recorded, nothing changed
            n = len(server.writes)
            for name, variant in (("level", ua.Variant(1.0, ua.VariantType.Double)),
                                  ("count", ua.Variant(1, ua.VariantType.UInt32))):
                with pytest.raises(UaStatusCodeError) as info:
                    await node[name].write_value(variant)
                assert info.value.code in (StatusCodes.BadNotWritable,
                                           StatusCodes.BadUserAccessDenied)
            assert len(server.writes) == n
            assert await read_ua_sensors() == server.published()

            # -- freeze and spoof show through OPC UA as well
            server.freeze("level")
            server.spoof("count", 12.0)
            frozen = (await read_ua_sensors())["level"]
            for _ in range(3):
                await server.tick(1.0)
            got = await read_ua_sensors()
            assert got["level"] == frozen
            assert got["count"] == 12.0
            assert await read_modbus_sensors(mb) == got
            server.unfreeze("level")
            server.unspoof("count")

            us = await bench_ticks(server)
            print(f"\nPlantServer.tick, Modbus + OPC UA (3 actuators, 4 sensors): {us:.0f} us")

            # -- disconnect: both clients lose their connection; reconnect: memory kept
            await server.disconnect()
            with pytest.raises((ConnectionException, ModbusIOException)):
                await mb.read_input_registers(0, count=2, device_id=1)
            with pytest.raises((ConnectionError, TimeoutError, UaError)):
                await node["level"].read_value()
            for _ in range(5):
                await server.tick(1.0)
            await server.reconnect()
            mb.close()
            with contextlib.suppress(ConnectionError, UaError, TimeoutError):
                await ua_client.disconnect()
            mb = await modbus_client(server.modbus_port)
            ua_client = Client(server.opcua_endpoint, timeout=2)
            await ua_client.connect()
            node = {t.name: ua_client.get_node(f"ns=2;s={t.opcua_name}") for t in plant.tags}
            assert await node["heat"].read_value() == 8.25
            assert await node["valve"].read_value() == 33.3
            assert await read_ua_sensors() == server.history[-1].sensors_published
            assert await read_modbus_sensors(mb) == server.history[-1].sensors_published
            await node["valve"].write_value(ua.Variant(44.0, ua.VariantType.Double))
            await server.tick(0.1)
            assert plant.act["valve"] == 44.0
            assert [f[1] for f in server.faults][-2:] == ["disconnect", "reconnect"]
        finally:
            mb.close()
            with contextlib.suppress(ConnectionError, UaError, TimeoutError):
                await ua_client.disconnect()
            await server.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv", [
    [], ["reactor"], ["water_tank", "--speed", "0"], ["water_tank", "--speed", "nan"],
    ["water_tank", "--modbus-port", "70000"], ["boiler", "--opcua-port", "x"],
    ["boiler", "--no-modbus", "--no-opcua"], ["boiler", "--bogus"],
])
def test_simulate_bad_arguments_exit_2_with_one_line(argv, capsys) -> None:
    assert simulate_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_simulate_port_in_use_exits_3_with_one_line(capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert simulate_main(["water_tank", "--modbus-port", str(taken), "--no-opcua"]) == 3
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "level=" not in line]  # log lines aside
    assert len(lines) == 1, err
    assert "cannot listen" in lines[0]
    assert "Traceback" not in err


def test_add_parser_registers_simulate() -> None:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", "boiler", "--speed", "10", "--seed", "3",
                              "--opcua-port", "0"])
    assert callable(args.func)  # runs cmd_simulate, imported only when the command runs
    assert (args.plant, args.speed, args.seed, args.opcua_port, args.modbus_port) == (
        "boiler", 10.0, 3, 0, None)
    assert set(PLANTS) == {"water_tank", "boiler"}


def test_simulate_cli_serves_and_stops_on_sigterm() -> None:
    modbus_port, opcua_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from simulators.plant_server import simulate_main; "
         "sys.exit(simulate_main(sys.argv[1:]))",
         "water_tank", "--modbus-port", str(modbus_port), "--opcua-port", str(opcua_port),
         "--speed", "10"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the one line saying what listens where
        assert f"127.0.0.1:{modbus_port}" in line, line
        assert f"opc.tcp://127.0.0.1:{opcua_port}/water_tank/" in line, line

        async def read() -> tuple[float, float]:
            client = await modbus_client(modbus_port)
            try:
                rr = await client.read_input_registers(0, count=2, device_id=1)
                assert not rr.isError()
            finally:
                client.close()
            async with Client(f"opc.tcp://127.0.0.1:{opcua_port}/water_tank/") as ua_client:
                level = await ua_client.get_node("ns=2;s=" + _opcua_name("level")).read_value()
            return f32(rr.registers), float(level)

        mb_level, ua_level = asyncio.run(read())
        assert 0.0 <= mb_level <= 5.0
        assert ua_level == pytest.approx(mb_level, abs=0.05)  # the plant moves meanwhile
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _opcua_name(tag: str) -> str:
    from simulators.plants.water_tank import WaterTank

    return next(t.opcua_name for t in WaterTank.tags if t.name == tag)
