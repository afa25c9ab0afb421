"""OpcUaDeviceClient against the test PLC over real sockets on 127.0.0.1.

An asyncua server takes ~2 s to start here, so one test drives one PLC through the whole story
(subscribe, poll, typed writes, refusals, loss, restart); the rest need no server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

import pytest
from asyncua import ua
from hypothesis import given
from hypothesis import strategies as st

from gateway.adapters.base import (
    AdapterError,
    ConnectionState,
    DeviceRejected,
    DeviceUnavailable,
    EncodingError,
    TagStore,
)
from gateway.adapters.opcua.client import OpcUaDeviceClient, decode, encode
from gateway.config.schema import (
    OpcUaDevice,
    OpcUaRef,
    OpcUaSecurity,
    Tag,
    TagKind,
    WireType,
)
from simulators.plc_opcua import OpcUaPlc, PlcVariable
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable

VT = ua.VariantType


def sensor(name: str, node: str, wire: WireType = WireType.FLOAT64) -> Tag:
    return Tag(name, "plc", TagKind.SENSOR, OpcUaRef(f"ns=2;s={node}"), wire,
               range_min=-1e6, range_max=1e6)


def actuator(name: str, node: str, wire: WireType = WireType.FLOAT64, scale: float = 1.0,
             offset: float = 0.0) -> Tag:
    return Tag(name, "plc", TagKind.ACTUATOR, OpcUaRef(f"ns=2;s={node}"), wire, scale=scale,
               offset=offset, safe_value=offset)


TAGS = (
    sensor("pressure", "Boiler.Pressure"),
    sensor("temperature", "Boiler.Temperature", WireType.FLOAT32),
    sensor("flame", "Boiler.Flame", WireType.BOOL),
    actuator("heater", "Boiler.Heater"),
    actuator("valve", "Boiler.Valve", WireType.FLOAT32),
    actuator("stage", "Boiler.Stage", WireType.INT32),
    actuator("trim", "Boiler.Trim", WireType.INT16, scale=0.1),
)

PLC_VARS = (
    PlcVariable("Boiler.Pressure", VT.Double, 1.5),
    PlcVariable("Boiler.Temperature", VT.Float, 20.0),
    PlcVariable("Boiler.Flame", VT.Boolean, True),
    PlcVariable("Boiler.Heater", VT.Double, 0.0),
    PlcVariable("Boiler.Valve", VT.Float, 0.0),
    PlcVariable("Boiler.Stage", VT.Int32, 0),
    PlcVariable("Boiler.Trim", VT.Int16, 0),
    PlcVariable("Boiler.Heartbeat", VT.UInt16, 0),
)


async def until(pred: Callable[[], bool], timeout_s: float = 8.0) -> float:
    """Wait (bounded) until ``pred()``; return how long it took."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_client_against_plc(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.adapters.opcua")

    async def main() -> None:
        plc = OpcUaPlc(PLC_VARS)
        await plc.start()
        sub_dev = OpcUaDevice("plc", plc.endpoint, timeout_ms=500, poll_ms=50, subscribe=True,
                              heartbeat=OpcUaRef("ns=2;s=Boiler.Heartbeat"))
        poll_dev = OpcUaDevice("plc", plc.endpoint, timeout_ms=500, poll_ms=50,
                               subscribe=False)
        store = TagStore(tuple(t.name for t in TAGS))
        poll_store = TagStore(tuple(t.name for t in TAGS))
        client = OpcUaDeviceClient(sub_dev, TAGS, store, backoff_initial_s=0.05,
                                   backoff_max_s=0.4)
        poller = OpcUaDeviceClient(poll_dev, TAGS, poll_store, backoff_initial_s=0.05,
                                   backoff_max_s=0.4)
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(poller.run())]
        try:
            # -- subscription and polling fill their stores, in engineering units
            await until(lambda: store.get("pressure").good and poll_store.get("flame").good)
            assert client.state is ConnectionState.CONNECTED
            assert client.connects == 1  # the metrics' device_connects_total
            assert store.get("pressure").value == 1.5
            assert store.get("temperature").value == 20.0
            assert store.get("flame").value == 1.0
            await plc.set("Boiler.Pressure", 2.75)
            await until(lambda: store.get("pressure").value == 2.75)
            await until(lambda: poll_store.get("pressure").value == 2.75)
            # a Bad status from the device -> bad quality, last value kept
            await plc.set("Boiler.Temperature", 21.0, ua.StatusCodes.BadSensorFailure)
            await until(lambda: not store.get("temperature").good)
            await until(lambda: not poll_store.get("temperature").good)
            assert store.get("temperature").value == 20.0
            await plc.set("Boiler.Temperature", 22.0)
            await until(lambda: store.get("temperature").good)
            # -- a value that does not change stays current while the subscription is healthy
            # (no notification comes; the liveness probe vouches for it), so the supervisor's
            # staleness detector does not trip on a quiet plant
            await asyncio.sleep(1.5)
            assert time.monotonic() - store.get("flame").at_s < 0.5

            # -- typed writes arrive in each node's own type
            await client.write({"heater": 42.5, "valve": 12.25, "stage": 3, "trim": -1.5})
            got = {w.name: (w.value, w.vtype, w.status) for w in plc.writes}
            assert got == {
                "Boiler.Heater": (42.5, VT.Double, "Good"),
                "Boiler.Valve": (12.25, VT.Float, "Good"),
                "Boiler.Stage": (3, VT.Int32, "Good"),
                "Boiler.Trim": (-15, VT.Int16, "Good"),
            }
            assert await plc.get("Boiler.Stage") == 3

            # -- values the node's type cannot hold: EncodingError, nothing sent at all
            before = len(plc.writes)
            for bad in ({"heater": 1.0, "stage": 2**31}, {"stage": 2.5},
                        {"heater": math.nan}, {"valve": 1e39}, {"trim": 3276.8},
                        {"stage": 1, "trim": 0.05}):
                with pytest.raises(EncodingError):
                    await client.write(bad)
            with pytest.raises(KeyError):
                await client.write({"pressure": 1.0})  # a sensor
            assert len(plc.writes) == before

            # -- heartbeat wraps in the node's type (UInt16 here)
            await client.write_heartbeat(2**16 + 7)
            assert (plc.writes[-1].name, plc.writes[-1].value, plc.writes[-1].vtype) == (
                "Boiler.Heartbeat", 7, VT.UInt16)

            # -- a Bad answer from the device -> DeviceRejected with the status name
            plc.reject["Boiler.Stage"] = ua.StatusCodes.BadOutOfRange
            with pytest.raises(DeviceRejected) as info:
                await client.write({"heater": 5.0, "stage": 1})
            assert info.value.code == "BadOutOfRange"
            del plc.reject["Boiler.Stage"]

            # -- the PLC goes away: tags bad within a bounded time, writes refused at once
            caplog.clear()
            writes_before_loss = len(plc.writes)
            await plc.stop()
            took = await until(lambda: not any(store.get(t.name).good for t in TAGS)
                               and not any(poll_store.get(t.name).good for t in TAGS),
                               timeout_s=4.0)
            assert took < 4.0
            await until(lambda: client.state in (ConnectionState.BACKOFF,
                                                 ConnectionState.CONNECTING))
            with pytest.raises(DeviceUnavailable):
                await client.write({"heater": 1.0})
            with pytest.raises(DeviceUnavailable):
                await client.write_heartbeat(1)
            assert store.get("pressure").value == 2.75  # last value kept, flagged bad
            await asyncio.sleep(1.0)  # several failed reconnects...
            faults = [r for r in caplog.records
                      if r.name == "gateway.adapters.opcua" and r.levelno >= logging.WARNING]
            # ...logged once per fault kind, not once per attempt (loss, then refused connect)
            assert 1 <= len({(r.msg, r.args[0]) for r in faults}) <= 4
            assert len(faults) <= 6

            # -- the PLC comes back: reconnect, re-subscribe, good again, nothing replayed
            await plc.start()
            await until(lambda: store.get("pressure").good and poll_store.get("pressure").good)
            await plc.set("Boiler.Pressure", 3.25)
            await until(lambda: store.get("pressure").value == 3.25)
            assert client.state is ConnectionState.CONNECTED
            assert client.connects == 2  # failed attempts are not connects
            assert len(plc.writes) == writes_before_loss
            await client.write({"stage": 2})
            assert plc.writes[-1].value == 2
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await task
            await client.close()
            await plc.stop()
        assert client.state is ConnectionState.CLOSED
        assert not store.get("pressure").good

    asyncio.run(main())


def test_missing_password_env_is_reported_not_raised(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SG_TEST_NO_SUCH_PASSWORD", raising=False)
    device = OpcUaDevice("plc", f"opc.tcp://127.0.0.1:{free_port()}/plc/", poll_ms=50,
                         security=OpcUaSecurity(username="gw",
                                                password_env="SG_TEST_NO_SUCH_PASSWORD"))

    async def main() -> None:
        store = TagStore(("pressure",))
        client = OpcUaDeviceClient(device, TAGS[:1], store, backoff_initial_s=0.01,
                                   backoff_max_s=0.02)
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.3)
        assert not task.done()  # never raises out of run
        assert client.state in (ConnectionState.BACKOFF, ConnectionState.CONNECTING)
        with pytest.raises(DeviceUnavailable):
            await client.write({})
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="gateway.adapters.opcua"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if "SG_TEST_NO_SUCH_PASSWORD" in
                r.getMessage()]
    assert len(messages) == 1  # one line while the fault persists
    assert isinstance(AdapterError("x"), Exception)


def test_constructor_refuses_foreign_tags() -> None:
    device = OpcUaDevice("other", "opc.tcp://127.0.0.1:4840/")
    with pytest.raises(ValueError, match="not an OPC UA tag"):
        OpcUaDeviceClient(device, TAGS, TagStore(("pressure",)))


# --------------------------------------------------------------------------- encoding, no I/O

INT_TYPES = {VT.Int16: (-(2**15), 2**15 - 1), VT.UInt16: (0, 2**16 - 1),
             VT.Int32: (-(2**31), 2**31 - 1), VT.UInt32: (0, 2**32 - 1)}


@given(st.sampled_from(sorted(INT_TYPES)), st.integers(-(2**33), 2**33))
def test_integer_encoding_is_exact_or_refused(vtype: ua.VariantType, raw: int) -> None:
    tag = actuator("a", "A")
    low, high = INT_TYPES[vtype]
    if low <= raw <= high:
        variant = encode(float(raw), vtype, tag)
        assert (variant.Value, variant.VariantType) == (raw, vtype)
    else:
        with pytest.raises(EncodingError):
            encode(float(raw), vtype, tag)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_encoding_never_changes_the_value(value: float) -> None:
    """What goes on the wire decodes back to the value asked for (to float32 precision), or
    the write is refused: the envelope's check stays valid after encoding."""
    tag = actuator("a", "A", scale=0.1, offset=5.0)
    for vtype in (VT.Double, VT.Float, VT.Int16, VT.UInt32, VT.Boolean):
        try:
            variant = encode(value, vtype, tag)
        except EncodingError:
            continue
        back = decode(variant.Value, tag)
        assert back is not None
        tolerance = 1e-6 if vtype is VT.Float else 1e-9
        assert abs(back - value) <= tolerance * max(1.0, abs(value))


def test_encoding_details() -> None:
    tag = actuator("a", "A")
    assert encode(1.0, VT.Boolean, tag).Value is True
    assert encode(0.0, VT.Boolean, tag).Value is False
    for bad in (0.5, 2.0, -1.0):
        with pytest.raises(EncodingError):
            encode(bad, VT.Boolean, tag)
    with pytest.raises(EncodingError, match="not a supported"):
        encode(1.0, VT.String, tag)
    with pytest.raises(EncodingError, match="not a number"):
        encode(True, VT.Double, tag)
    with pytest.raises(EncodingError, match="float32"):
        encode(-3.5e38, VT.Float, tag)
    assert decode("text", tag) is None
    assert decode(True, tag) == 1.0
