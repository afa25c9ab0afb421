"""ModbusDeviceClient against a real pymodbus server (simulators/plc_modbus.py) on 127.0.0.1.

Plain sync tests running an async body with asyncio.run (no pytest-asyncio). Every wait is
bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.adapters.base import (
    ConnectionState,
    DeviceRejected,
    DeviceUnavailable,
    EncodingError,
    TagStore,
)
from gateway.adapters.codec import encode
from gateway.adapters.modbus.client import ModbusDeviceClient
from gateway.config.schema import ModbusDevice, ModbusRef, Order, Table, Tag, TagKind, WireType
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

HR, IR, CO, DI = (Table.HOLDING_REGISTER, Table.INPUT_REGISTER, Table.COIL,
                  Table.DISCRETE_INPUT)


def run(body: Callable[[], Coroutine[Any, Any, None]], limit_s: float = 10.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit_s):
            await body()
    asyncio.run(bounded())


def sensor(name: str, table: Table, address: int, wire_type: WireType = WireType.FLOAT32,
           **kw: Any) -> Tag:
    return Tag(name, "plc", TagKind.SENSOR, ModbusRef(table, address), wire_type=wire_type,
               range_min=-1e9, range_max=1e9, **kw)


def actuator(name: str, table: Table, address: int, wire_type: WireType = WireType.FLOAT32,
             safe: float = 0.0, **kw: Any) -> Tag:
    return Tag(name, "plc", TagKind.ACTUATOR, ModbusRef(table, address), wire_type=wire_type,
               safe_value=safe, **kw)


SENSORS = [
    sensor("level", IR, 0),  # float32 ABCD
    sensor("flow", IR, 2, word_order=Order.LITTLE),  # float32 CDAB
    sensor("temp", HR, 10, WireType.INT16),
    sensor("pct", HR, 11, WireType.UINT16, scale=0.01),
    sensor("pump_on", CO, 3, WireType.BOOL),
    sensor("door", DI, 5, WireType.BOOL),
]
ACTUATORS = [
    actuator("valve", HR, 20),  # float32: FC16
    actuator("speed", HR, 22, WireType.UINT16, scale=0.1),  # FC6
    actuator("run", CO, 7, WireType.BOOL),  # FC5
]


async def wait_until(cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(plc_port: int, tags: list[Tag], **device_kw: Any
                  ) -> AsyncIterator[tuple[ModbusDeviceClient, TagStore]]:
    device = ModbusDevice("plc", "127.0.0.1", port=plc_port,
                          **{"timeout_ms": 300.0, "poll_ms": 20.0, **device_kw})
    store = TagStore(tuple(t.name for t in tags))
    client = ModbusDeviceClient(device, tags, store, backoff_initial_s=0.05, backoff_max_s=0.2)
    task = asyncio.create_task(client.run())
    try:
        yield client, store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


@contextlib.asynccontextmanager
async def silent_device() -> AsyncIterator[int]:
    """A server on 127.0.0.1 that accepts connections and reads requests but never answers;
    yields its port. Its sockets are closed on the way out."""
    writers: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            with contextlib.suppress(ConnectionError):
                while await reader.read(512):
                    continue  # read and drop: the device is mute
        finally:  # also when cancelled at shutdown: never leak the socket
            writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.05)  # let the handlers see their sockets close
        await server.wait_closed()


def all_good(store: TagStore, names: list[str] | None = None) -> bool:
    return all(store.get(n).good for n in (names or store.names))


def test_poll_decodes_every_type() -> None:
    async def body() -> None:
        async with TestPLC() as plc:
            await plc.set_float32(IR, 0, 21.5)
            await plc.set_float32(IR, 2, -3.25, word_order="little")
            await plc.set_registers(HR, 10, [0x10000 - 123, 12345])
            await plc.set_bits(CO, 3, [True])
            await plc.set_bits(DI, 5, [True])
            async with running(plc.port, SENSORS) as (client, store):
                await wait_until(lambda: all_good(store))
                assert client.state is ConnectionState.CONNECTED
                values = {n: store.get(n).value for n in store.names}
                assert values == {"level": 21.5, "flow": -3.25, "temp": -123.0,
                                  "pct": pytest.approx(123.45), "pump_on": 1.0, "door": 1.0}
                await plc.set_float32(IR, 0, 22.0)
                await wait_until(lambda: store.get("level").value == 22.0)
            assert plc.writes == []  # polling never writes
    run(body)


def test_write_reaches_the_plc_with_the_right_function_codes() -> None:
    async def body() -> None:
        tags = SENSORS + ACTUATORS
        async with TestPLC() as plc, running(plc.port, tags) as (client, store):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED)
            await client.write({"valve": 12.5, "speed": 150.0, "run": 1.0})
            got = [(w.function_code, w.address, w.values, w.result) for w in plc.writes]
            # valve (float32 at 20-21) and speed (22) are contiguous: one FC16 request.
            assert got == [(16, 20, [0x4148, 0x0000, 1500], 0), (5, 7, [1], 0)]
            assert await plc.get_registers(HR, 20, 3) == [0x4148, 0x0000, 1500]
            assert await plc.get_bits(CO, 7, 1) == [True]
            plc.writes.clear()
            await client.write({"speed": 151.0})  # one register alone: FC6
            got = [(w.function_code, w.address, w.values, w.result) for w in plc.writes]
            assert got == [(6, 22, [1510], 0)]
            # read-back of actuators through the poll
            await wait_until(lambda: store.get("speed").value == pytest.approx(151.0))
            assert store.get("valve").value == 12.5
    run(body)


def test_encoding_error_writes_nothing() -> None:
    async def body() -> None:
        tags = SENSORS + ACTUATORS
        async with TestPLC() as plc, running(plc.port, tags) as (client, _):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED)
            for bad in ({"valve": 1.0, "speed": 7000.0},  # 70000 raw > uint16: not clipped
                        {"valve": 1.0, "run": 0.5},  # a coil takes 0 or 1
                        {"valve": math.nan},
                        {"valve": 1.0, "temp": 3.0},  # a sensor
                        {"valve": 1.0, "nonexistent": 3.0}):
                with pytest.raises(EncodingError):
                    await client.write(bad)
            await asyncio.sleep(0.05)
            assert plc.writes == []
            assert await plc.get_registers(HR, 20, 3) == [0, 0, 0]
    run(body)


def test_not_connected_raises_at_once_and_is_never_queued() -> None:
    async def body() -> None:
        device = ModbusDevice("plc", "127.0.0.1", port=free_port(), timeout_ms=200.0,
                              heartbeat=ModbusRef(HR, 0))
        store = TagStore(tuple(t.name for t in ACTUATORS))
        client = ModbusDeviceClient(device, ACTUATORS, store)
        assert client.state is ConnectionState.DISCONNECTED
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="not connected"):
            await client.write({"valve": 1.0})
        with pytest.raises(DeviceUnavailable, match="not connected"):
            await client.write_heartbeat(1)
        assert time.monotonic() - t0 < 0.1
        await client.close()
        assert client.state.value == "closed"

        # no heartbeat configured: a no-op, even when disconnected
        plain = ModbusDeviceClient(ModbusDevice("plc", "127.0.0.1", port=free_port()), [],
                                   TagStore(()))
        await plain.write_heartbeat(5)
    run(body)


def test_plc_outage_marks_tags_bad_and_reconnect_replays_nothing() -> None:
    async def body() -> None:
        tags = SENSORS + ACTUATORS
        async with TestPLC() as plc, running(plc.port, tags) as (client, store):
            await plc.set_float32(IR, 0, 5.0)
            await wait_until(lambda: all_good(store))
            assert client.connects == 1  # the metrics' device_connects_total
            await client.write({"valve": 10.0})
            assert len(plc.writes) == 1

            await plc.stop()
            t0 = time.monotonic()
            await wait_until(lambda: not any(store.get(n).good for n in store.names), 1.0)
            assert time.monotonic() - t0 < 1.0
            assert store.get("level").value == 5.0  # last value kept, flagged bad
            await wait_until(lambda: client.state is not ConnectionState.CONNECTED)
            with pytest.raises(DeviceUnavailable):
                await client.write({"valve": 99.0})
            await asyncio.sleep(0.3)  # several reconnect attempts against a dark port

            await plc.set_float32(IR, 0, 6.0)  # the plant moved on while we were away
            await plc.start()
            await wait_until(lambda: all_good(store) and store.get("level").value == 6.0)
            assert client.state is ConnectionState.CONNECTED
            assert client.connects == 2  # failed attempts against the dark port are not
            await asyncio.sleep(0.2)  # ~10 poll cycles after the reconnect
            assert len(plc.writes) == 1, "the reconnect wrote something"
            assert await plc.get_registers(HR, 20, 2) == list(encode(ACTUATORS[0], 10.0))

            await client.write({"valve": 11.0})  # a fresh write works again
            assert [w.values for w in plc.writes[1:]] == [list(encode(ACTUATORS[0], 11.0))]
    run(body)


def test_device_exception_becomes_device_rejected() -> None:
    async def body() -> None:
        far = actuator("far", HR, 60, WireType.UINT16)  # the PLC only has 50 registers
        guarded = actuator("guarded", HR, 30, WireType.UINT16)
        tags = [*SENSORS, far, guarded]
        async with TestPLC(holding=50) as plc, running(plc.port, tags) as (client, store):
            await wait_until(lambda: all_good(store, ["level", "temp", "guarded"]))
            with pytest.raises(DeviceRejected) as info:
                await client.write({"far": 1.0})
            assert info.value.code == 2
            plc.reject[30] = 3
            with pytest.raises(DeviceRejected) as info:
                await client.write({"guarded": 7.0})
            assert info.value.code == 3
            assert await plc.get_registers(HR, 30, 1) == [0]
            assert [(w.address, w.result) for w in plc.writes] == [(60, 2), (30, 3)]
            # a block the PLC refuses to read marks its tags bad; the others stay good
            await asyncio.sleep(0.1)
            assert not store.get("far").good
            assert all_good(store, ["level", "temp", "pct", "guarded"])
            assert client.state is ConnectionState.CONNECTED
    run(body)


def test_heartbeat_register_and_coil() -> None:
    async def body() -> None:
        async with TestPLC() as plc:
            async with running(plc.port, SENSORS, heartbeat=ModbusRef(HR, 40)) as (client, _):
                await wait_until(lambda: client.state is ConnectionState.CONNECTED)
                seen = []
                for counter in (1, 2, 3, 65537):
                    await client.write_heartbeat(counter)
                    seen += await plc.get_registers(HR, 40, 1)
                assert seen == [1, 2, 3, 1]
                assert {w.function_code for w in plc.writes} == {6}
            async with running(plc.port, SENSORS, heartbeat=ModbusRef(CO, 9)) as (client, _):
                await wait_until(lambda: client.state is ConnectionState.CONNECTED)
                bits = []
                for counter in (1, 2, 3):
                    await client.write_heartbeat(counter)
                    bits += await plc.get_bits(CO, 9, 1)
                assert bits == [True, False, True]
                assert plc.writes[-1].function_code == 5
    run(body)


def test_silent_device_times_out(caplog: pytest.LogCaptureFixture) -> None:
    """A device that accepts the connection but never answers: bad tags within a bounded time,
    writes fail as DeviceUnavailable (not hang), and the fault is logged once however many
    reconnect cycles it lasts."""
    async def body() -> None:
        async with silent_device() as port, running(port, SENSORS + ACTUATORS,
                                                    timeout_ms=100.0) as (client, store):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED, 1.0)
            t0 = time.monotonic()
            with pytest.raises(DeviceUnavailable):
                await client.write({"valve": 1.0})
            assert time.monotonic() - t0 < 1.0
            assert not any(store.get(n).good for n in store.names)
            await asyncio.sleep(0.8)  # several connect / time out / back off cycles
            assert not any(store.get(n).good for n in store.names)

    with caplog.at_level(logging.DEBUG, logger="gateway.adapters.modbus"):
        run(body)
    ours = [r for r in caplog.records if r.name == "gateway.adapters.modbus"]
    assert sum(r.levelno >= logging.WARNING for r in ours) <= 2  # the write's and the poll's
    assert sum("read holding_register" in r.getMessage() for r in ours) >= 3


def test_writes_to_a_silent_device_fail_within_the_timeout_alone_or_queued() -> None:
    """A lone request is bounded by pymodbus's own timeout (the client adds no timer of its
    own when nothing else is in flight on the connection); requests queued behind it are
    bounded too. No polling here, so nothing else shares the connection."""
    async def body() -> None:
        async with silent_device() as port:
            device = ModbusDevice("plc", "127.0.0.1", port=port, timeout_ms=100.0)
            store = TagStore(tuple(t.name for t in ACTUATORS))
            client = ModbusDeviceClient(device, ACTUATORS, store, backoff_initial_s=0.01,
                                        backoff_max_s=0.02, polling=False)
            task = asyncio.create_task(client.run())
            try:
                for queued in (1, 3):
                    await wait_until(lambda: client.state is ConnectionState.CONNECTED, 2.0)
                    t0 = time.monotonic()
                    # wait_for only turns a hang into a failure of this test.
                    results = await asyncio.wait_for(asyncio.gather(
                        *(client.write({"valve": float(k)}) for k in range(queued)),
                        return_exceptions=True), 5.0)
                    elapsed = time.monotonic() - t0
                    assert all(isinstance(r, DeviceUnavailable) for r in results), results
                    assert elapsed < 0.1 * 2 + 0.05 + 0.5, (queued, elapsed)
                    assert client._in_flight == {}  # every request's count was given back
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await client.close()

    run(body)


def test_cancellation_propagates_and_faults_log_once(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        device = ModbusDevice("plc", "127.0.0.1", port=free_port(), timeout_ms=100.0)
        store = TagStore(tuple(t.name for t in SENSORS))
        client = ModbusDeviceClient(device, SENSORS, store, backoff_initial_s=0.01,
                                    backoff_max_s=0.02)
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.3)  # >10 failed connection attempts
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert client.state is ConnectionState.DISCONNECTED

    with caplog.at_level(logging.DEBUG, logger="gateway.adapters.modbus"):
        run(body)
    ours = [r for r in caplog.records if r.name == "gateway.adapters.modbus"]
    warnings = [r for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot connect" in warnings[0].getMessage()
    assert len(ours) > 5  # the repeats went to debug


def test_constructor_checks_its_tags() -> None:
    device = ModbusDevice("plc", "127.0.0.1")
    other = Tag("x", "other", TagKind.SENSOR, ModbusRef(HR, 0), range_min=0, range_max=1)
    with pytest.raises(ValueError, match="belongs to device"):
        ModbusDeviceClient(device, [other], TagStore(("x",)))
    with pytest.raises(ValueError, match="not in the tag store"):
        ModbusDeviceClient(device, SENSORS, TagStore(()))


def test_separate_write_connection() -> None:
    """Writes and heartbeats on their own connection (a second client): they work, a
    PLC restart reconnects both, and nothing is replayed."""

    async def body() -> None:
        tags = SENSORS + ACTUATORS
        async with TestPLC() as plc, running(plc.port, tags, separate_write_connection=True,
                                             heartbeat=ModbusRef(HR, 40)) as (client, store):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED
                             and all_good(store))
            assert client._writer is not None
            assert client._writer is not client._client
            await client.write({"valve": 12.5, "speed": 150.0})
            await client.write_heartbeat(7)
            got = [(w.function_code, w.address, w.values) for w in plc.writes]
            assert got == [(16, 20, [0x4148, 0x0000, 1500]), (6, 40, [7])]
            await plc.stop()
            await wait_until(lambda: not all_good(store))
            with pytest.raises(DeviceUnavailable):
                await client.write({"speed": 1.0})
            n_before = len(plc.writes)
            await plc.start()
            await wait_until(lambda: client.state is ConnectionState.CONNECTED
                             and all_good(store), timeout_s=5.0)
            await asyncio.sleep(0.2)
            assert plc.writes[n_before:] == []  # the reconnect itself wrote nothing
            await client.write({"speed": 2.0})
            assert [w.values for w in plc.writes[n_before:]] == [[20]]
    run(body)


def test_an_abandoned_request_ends_the_session_before_anything_else_is_sent() -> None:
    """A request cancelled by its caller before its answer: the answer still comes, and on
    the same connection pymodbus would take it for the next request's. The session is dropped
    at once and the next write goes out on a new connection (counted by the proxy), where
    its own answer confirms it."""
    from tests.runtime.delayproxy import DelayProxy

    async def body() -> None:
        # Every answer 300 ms late (a slow window that never ends); timeout 1 s.
        async with (
            TestPLC() as plc,
            DelayProxy("127.0.0.1", plc.port, delay_s=0.3, slow_s=1.0, period_s=1.0) as proxy,
            running(proxy.port, ACTUATORS, timeout_ms=1000.0, poll_ms=10_000.0) as (client, _),
        ):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED, 5.0)
            assert proxy.accepted == 1
            write = asyncio.create_task(client.write({"speed": 1.0}))
            await asyncio.sleep(0.05)  # on the wire, unanswered
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
            assert client.state is not ConnectionState.CONNECTED  # not reused
            await wait_until(lambda: client.state is ConnectionState.CONNECTED, 5.0)
            await client.write({"speed": 2.0})  # confirmed by its own answer
            assert proxy.accepted == 2
            assert await plc.get_registers(HR, 22, 1) == [20]

    run(body, limit_s=20.0)
