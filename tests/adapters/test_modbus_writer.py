"""The lean write connection, against scripted devices on 127.0.0.1 (real sockets), and the
device client writing through it to a real pymodbus PLC (simulators/plc_modbus.py).

Plain sync tests running an async body with asyncio.run; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.adapters.base import ConnectionState, DeviceRejected, DeviceUnavailable
from gateway.adapters.modbus.writer import ConnectionLost, WriteConnection
from simulators.plc_modbus import TestPLC
from tests.adapters.test_modbus_client import ACTUATORS, CO, HR, run, running, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

MBAP = struct.Struct(">HHHB")
FC16 = bytes([16, 0, 20, 0, 2, 4, 0x41, 0x48, 0, 0])  # 12.5 as float32 to registers 20-21
ECHO16 = FC16[:5]



def frame(tid: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    return MBAP.pack(tid, protocol, len(pdu) + 1, unit) + pdu


class Device:
    """A scripted Modbus TCP device: each request frame is answered with ``answer(tid,
    unit, pdu)`` (nothing if it returns b""). Records the requests and whether the peer
    closed."""

    def __init__(self, answer: Callable[[int, int, bytes], bytes]) -> None:
        self.answer = answer
        self.requests: list[tuple[int, int, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.closed_by_peer = 0
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readexactly(7)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_peer += 1
                    return
                tid, _, length, unit = MBAP.unpack(head)
                pdu = await reader.readexactly(length - 1)
                self.requests.append((tid, unit, pdu))
                out = self.answer(tid, unit, pdu)
                if out:
                    writer.write(out)
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def device(answer: Callable[[int, int, bytes], bytes]) -> AsyncIterator[Device]:
    dev = Device(answer)
    dev.server = await asyncio.start_server(dev.serve, "127.0.0.1", 0)
    try:
        yield dev
    finally:
        for w in dev.writers:
            w.close()
        dev.server.close()
        await dev.server.wait_closed()


def echo(tid: int, unit: int, pdu: bytes) -> bytes:
    return frame(tid, unit, pdu[:5])


async def connect(dev: Device, timeout_s: float = 0.5, **kw: Any) -> WriteConnection:
    return await WriteConnection.open("127.0.0.1", dev.port, timeout_s, **kw)


def test_an_answer_in_step_is_returned() -> None:
    async def body() -> None:
        async with device(echo) as dev:
            conn = await connect(dev)
            assert await conn.request(1, FC16) == ECHO16
            assert await conn.request(1, FC16) == ECHO16
            assert [tid for tid, _, _ in dev.requests] == [1, 2]
            assert dev.requests[0][2] == FC16
            assert conn.connected
            conn.close()
    run(body)


def test_an_answer_split_across_segments_is_put_together() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()

        def slow(tid: int, unit: int, pdu: bytes) -> bytes:
            whole = frame(tid, unit, pdu[:5])
            writer = dev.writers[-1]
            writer.write(whole[:4])
            loop.call_later(0.02, writer.write, whole[4:])
            return b""

        async with device(slow) as dev:
            conn = await connect(dev)
            assert await conn.request(1, FC16) == ECHO16
            assert conn.connected
            conn.close()
    run(body)


@pytest.mark.parametrize(("answer", "why"), [
    (lambda tid, unit, pdu: frame(tid + 1, unit, pdu[:5]), "expected transaction"),
    (lambda tid, unit, pdu: frame(tid, unit + 1, pdu[:5]), "expected transaction"),
    (lambda tid, unit, pdu: frame(tid, unit, pdu[:5]) + frame(tid, unit, pdu[:5]),
     "bytes after the answer"),
    (lambda tid, unit, pdu: frame(tid, unit, pdu[:5], protocol=1), "malformed"),
    (lambda tid, unit, pdu: MBAP.pack(tid, 0, 255, unit) + bytes(254), "malformed"),
])
def test_an_answer_out_of_step_ends_the_connection(answer: Any, why: str) -> None:
    async def body() -> None:
        lost: list[bool] = []
        async with device(answer) as dev:
            conn = await connect(dev, on_lost=lambda: lost.append(True))
            with pytest.raises(ConnectionLost, match=why):
                await conn.request(1, FC16)
            assert not conn.connected
            assert lost == [True]
            await wait_until(lambda: dev.closed_by_peer == 1)
            with pytest.raises(ConnectionLost, match="not connected"):
                await conn.request(1, FC16)
            assert len(dev.requests) == 1  # nothing more was sent
    run(body)


def test_an_unsolicited_frame_ends_the_connection() -> None:
    async def body() -> None:
        lost: list[bool] = []
        async with device(echo) as dev:
            conn = await connect(dev, on_lost=lambda: lost.append(True))
            await wait_until(lambda: bool(dev.writers))
            dev.writers[0].write(frame(7, 1, ECHO16))
            await wait_until(lambda: not conn.connected)
            assert lost == [True]
    run(body)


def test_no_answer_within_the_timeout_ends_the_connection() -> None:
    """A late answer must never be taken for the next request's: the connection is closed
    at the timeout, and the device sees it closed."""

    async def body() -> None:
        async with device(lambda tid, unit, pdu: b"") as dev:
            conn = await connect(dev, timeout_s=0.2)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.request(1, FC16)
            assert 0.15 < time.monotonic() - t0 < 1.0
            assert not conn.connected
            await wait_until(lambda: dev.closed_by_peer == 1)
    run(body)


def test_a_request_abandoned_by_its_caller_ends_the_connection() -> None:
    async def body() -> None:
        async with device(lambda tid, unit, pdu: b"") as dev:
            conn = await connect(dev, timeout_s=2.0)
            task = asyncio.create_task(conn.request(1, FC16))
            await wait_until(lambda: len(dev.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not conn.connected
            await wait_until(lambda: dev.closed_by_peer == 1)
    run(body)


def test_a_device_closing_the_connection_fails_the_waiting_request() -> None:
    async def body() -> None:
        def hang_up(tid: int, unit: int, pdu: bytes) -> bytes:
            dev.writers[-1].close()
            return b""

        async with device(hang_up) as dev:
            conn = await connect(dev, timeout_s=2.0)
            with pytest.raises(ConnectionLost):
                await conn.request(1, FC16)
            assert not conn.connected
    run(body)


def test_requests_go_one_at_a_time() -> None:
    """A second caller's request leaves only once the first one's answer is in."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        sent_at: list[float] = []

        def later(tid: int, unit: int, pdu: bytes) -> bytes:
            sent_at.append(loop.time())
            loop.call_later(0.05, dev.writers[-1].write, frame(tid, unit, pdu[:5]))
            return b""

        async with device(later) as dev:
            conn = await connect(dev)
            answers = await asyncio.gather(conn.request(1, FC16), conn.request(1, FC16))
            assert answers == [ECHO16, ECHO16]
            assert sent_at[1] - sent_at[0] >= 0.045
            conn.close()
    run(body)


def test_a_refused_connection_is_an_os_error() -> None:
    async def body() -> None:
        async with device(echo) as dev:
            port = dev.port
        with pytest.raises(ConnectionRefusedError):
            await WriteConnection.open("127.0.0.1", port, 0.5)
    run(body)


# ---------------------------------------------------------------- the device client


def test_the_client_writes_every_kind_on_the_write_connection() -> None:
    """FC16, FC6 and FC5 on the lean connection reach a real pymodbus PLC, and its exception
    answer is a DeviceRejected with the code (the session goes on)."""

    async def body() -> None:
        async with TestPLC() as plc, running(plc.port, ACTUATORS,
                                             separate_write_connection=True) as (client, _):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED)
            assert isinstance(client._writer, WriteConnection)
            await client.write({"valve": 12.5, "speed": 150.0, "run": 1.0})
            got = [(w.function_code, w.address, w.values) for w in plc.writes]
            assert got == [(16, 20, [0x4148, 0x0000, 1500]), (5, 7, [True])]
            assert await plc.get_registers(HR, 20, 3) == [0x4148, 0x0000, 1500]
            await client.write({"speed": 2.0})
            assert plc.writes[-1].function_code == 6
            plc.reject[7] = 4
            with pytest.raises(DeviceRejected) as refused:
                await client.write({"run": 0.0})
            assert refused.value.code == 4
            assert await plc.get_bits(CO, 7, 1) == [True]
            assert client.state is ConnectionState.CONNECTED
            await client.write({"valve": 1.0})  # the session goes on
    run(body)


def test_an_answer_that_does_not_echo_the_write_drops_the_session() -> None:
    """The device answers in step but with another address: whether the write happened is
    unknown, so DeviceUnavailable, and the session is not reused."""

    def other_address(tid: int, unit: int, pdu: bytes) -> bytes:
        if pdu[0] != 16:  # the poll loop's reads: answer two zero registers
            return frame(tid, unit, bytes([pdu[0], 4, 0, 0, 0, 0]))
        return frame(tid, unit, bytes([16, 0, 99]) + pdu[3:5])

    async def body() -> None:
        async with device(other_address) as dev, running(
                dev.port, ACTUATORS[:1], separate_write_connection=True) as (client, _):
            await wait_until(lambda: client.state is ConnectionState.CONNECTED)
            with pytest.raises(DeviceUnavailable, match="does not echo"):
                await client.write({"valve": 1.0})
            assert client.state is not ConnectionState.CONNECTED
    run(body)
