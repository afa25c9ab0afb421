"""The request channel over a real Unix socketpair: outcomes round trip, a full channel refuses
at once, the core side bounds what it handles, malformed or oversized frames close it, a dead
peer answers every waiter, refusal floods are aggregated, pings tell a live peer."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.adapters.base import (
    ACCEPTED,
    ClientInfo,
    NorthboundHandler,
    Refusal,
    Role,
    WriteOutcome,
)
from gateway.link.channel import BUSY, FAILED, GONE, LOST, ChannelClient, ChannelServer, encode

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

OP = ClientInfo("modbus", "127.0.0.1:5020", None, Role.OPERATOR)
ENVELOPE = WriteOutcome(False, 3, "inflow_valve above 100", Refusal.ENVELOPE)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class Core(NorthboundHandler):
    """A stub core: refuses writes above 100, holds calls while ``gate`` is set and clear."""

    def __init__(self) -> None:
        self.writes: list[tuple[ClientInfo, dict[str, float], bool]] = []
        self.requests: list[tuple[Any, ...]] = []
        self.reports: list[tuple[Any, ...]] = []
        self.gate: asyncio.Event | None = None
        self.busy_now = 0
        self.busy_max = 0
        self.fail = False

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        self.writes.append((client, values, atomic))
        self.busy_now += 1
        self.busy_max = max(self.busy_max, self.busy_now)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise RuntimeError("a bug in the core")
        finally:
            self.busy_now -= 1
        return {k: ACCEPTED if v <= 100 else ENVELOPE for k, v in values.items()}

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        self.requests.append((client, kind, detector, duration_s))
        if self.gate is not None:
            await self.gate.wait()
        return WriteOutcome(True, 0, f"{kind} done")

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        self.requests.append((client, action, incident_id, args))
        return WriteOutcome(False, 4, "no such incident", Refusal.MODE)

    def refused_many(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                     code: int, count: int) -> None:
        self.reports.append(("refused", client, dict(values), reason, code, count))

    def refused_connections_many(self, protocol: str, address: str, user: str | None,
                                 event: str, reason: str, count: int) -> None:
        self.reports.append(("connection", protocol, address, user, event, reason, count))


async def pair(core: NorthboundHandler, **client_kw: Any
               ) -> tuple[ChannelServer, ChannelClient]:
    a, b = socket.socketpair()
    server = ChannelServer(a, core)
    client = ChannelClient(b, **client_kw)
    await server.start()
    await client.start()
    return server, client


def test_outcomes_round_trip() -> None:
    async def main() -> None:
        core = Core()
        server, client = await pair(core)
        out = await client.write(OP, {"inflow_valve": 50.0, "outflow_pump": 150.0}, False)
        assert out == {"inflow_valve": ACCEPTED, "outflow_pump": ENVELOPE}
        assert out["outflow_pump"].why is Refusal.ENVELOPE
        assert core.writes == [(OP, {"inflow_valve": 50.0, "outflow_pump": 150.0}, False)]
        # NaN and infinities reach the core as they are (the envelope decides)
        await client.write(OP, {"a": math.nan, "b": -math.inf}, True)
        _, values, atomic = core.writes[-1]
        assert math.isnan(values["a"]) and values["b"] == -math.inf and atomic
        admin = ClientInfo("opcua", "10.0.0.9:40000", "alice", Role.ADMIN)
        assert await client.request(admin, "bypass", "drift", 60.0) == WriteOutcome(
            True, 0, "bypass done")
        assert await client.incident(admin, "note", "INC-1", ("hello", "ü")) == WriteOutcome(
            False, 4, "no such incident", Refusal.MODE)
        assert core.requests == [(admin, "bypass", "drift", 60.0),
                                 (admin, "note", "INC-1", ("hello", "ü"))]
        assert server.handled == 4 and not server.closed
        client.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    run(main())


def test_a_failing_core_handler_refuses_that_call_and_keeps_the_channel() -> None:
    async def main() -> None:
        core = Core()
        core.fail = True
        server, client = await pair(core)
        assert await client.write(OP, {"x": 1.0}, True) == {"x": FAILED}
        core.fail = False
        assert await client.write(OP, {"x": 1.0}, True) == {"x": ACCEPTED}
        assert not server.closed
        client.close()
    run(main())


def test_a_full_channel_refuses_at_once_and_the_rest_are_answered() -> None:
    async def main() -> None:
        core = Core()
        core.gate = asyncio.Event()
        _, client = await pair(core, max_in_flight=4)
        waiting = [asyncio.create_task(client.write(OP, {"x": float(i)}, True))
                   for i in range(4)]
        await until(lambda: len(core.writes) == 4)
        t = time.monotonic()
        assert await client.write(OP, {"x": 1.0, "y": 2.0}, True) == {"x": BUSY, "y": BUSY}
        assert await client.request(OP, "to_manual", None, None) == BUSY
        assert time.monotonic() - t < 0.5
        assert BUSY.code == 6 and BUSY.why is Refusal.BUSY
        assert client.busy == 2 and len(core.writes) == 4  # never reached the core
        core.gate.set()
        results = await asyncio.gather(*waiting)
        assert results == [{"x": ACCEPTED}] * 4
        assert await client.write(OP, {"x": 1.0}, True) == {"x": ACCEPTED}
        client.close()
    run(main())


def test_the_core_handles_at_most_max_in_flight_and_reads_the_rest_later() -> None:
    async def main() -> None:
        core = Core()
        core.gate = asyncio.Event()
        a, b = socket.socketpair()
        server = ChannelServer(a, core, max_in_flight=8)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(sock=b)
        writer.write(b"".join(encode({"id": i, "op": "write", "client": ["modbus", "h:1", None,
                                                                            "operator"],
                                      "values": {"x": 1.0}, "atomic": True})
                              for i in range(1, 101)))
        await until(lambda: len(core.writes) == 8)
        await asyncio.sleep(0.1)  # give it every chance to take more: it must not
        assert len(core.writes) == 8 and server.in_flight == 8
        core.gate.set()
        ids = set()
        while len(ids) < 100:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            ids.add(json.loads(await reader.readexactly(size))["re"])
        assert ids == set(range(1, 101)) and core.busy_max == 8
        writer.close()
    run(main())


BAD_FRAMES = {
    "oversized": struct.pack(">I", 10_000_000) + b"{}",
    "zero length": struct.pack(">I", 0),
    "not json": struct.pack(">I", 5) + b"hello",
    "not an object": struct.pack(">I", 2) + b"[]",
    "deep nesting": struct.pack(">I", 200_000) + b"[" * 100_000 + b"]" * 100_000,
    "unknown op": encode({"id": 1, "op": "format_disk"}),
    "no id": encode({"op": "write", "client": ["modbus", "h:1", None, "operator"],
                     "values": {"x": 1}, "atomic": True}),
    "bad role": encode({"id": 1, "op": "write", "client": ["modbus", "h:1", None, "root"],
                        "values": {"x": 1}, "atomic": True}),
    "bool value": encode({"id": 1, "op": "write", "client": ["modbus", "h:1", None, "ai"],
                          "values": {"x": True}, "atomic": True}),
    "missing key": encode({"id": 1, "op": "request", "client": ["modbus", "h:1", None, "ai"]}),
    "bad count": encode({"op": "refused", "client": ["modbus", "h:1", None, "ai"],
                         "values": {}, "reason": "r", "code": 3, "count": 0}),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_a_malformed_frame_closes_the_channel_without_reaching_the_core(
        name: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        core = Core()
        a, b = socket.socketpair()
        closed: list[str] = []
        server = ChannelServer(a, core, on_close=closed.append)
        await server.start()
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(b, BAD_FRAMES[name])
        await asyncio.wait_for(server.wait_closed(), 5)
        assert closed and "protocol error" in closed[0]
        assert core.writes == [] and core.requests == [] and core.reports == []
        assert await loop.sock_recv(b, 100) == b""  # the core closed its end
        b.close()
    run(main())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "closing the channel" in errors[0].getMessage()


def test_a_malformed_answer_is_never_taken_as_accepted() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        client = ChannelClient(b)
        await client.start()
        reader, writer = await asyncio.open_unix_connection(sock=a)
        call = asyncio.create_task(client.write(OP, {"x": 1.0}, True))
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        rid = json.loads(await reader.readexactly(size))["id"]
        writer.write(encode({"re": rid, "outcomes": {"x": [True, 3, "", None]}}))
        assert await call == {"x": FAILED}
        await asyncio.wait_for(client.wait_closed(), 5)
        writer.close()
    run(main())


def test_a_dead_peer_answers_every_waiter_and_every_new_call() -> None:
    async def main() -> None:
        core = Core()
        core.gate = asyncio.Event()
        server, client = await pair(core)
        waiting = [asyncio.create_task(client.write(OP, {"x": 1.0}, True)) for _ in range(3)]
        waiting.append(asyncio.create_task(client.request(OP, "to_manual", None, None)))
        await until(lambda: len(core.writes) == 3 and len(core.requests) == 1)
        server.close("the core died")
        results = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert results == [{"x": LOST}] * 3 + [LOST]
        assert all(not o.accepted for o in (LOST, GONE))
        assert await client.write(OP, {"x": 1.0}, True) == {"x": GONE}
        assert await client.incident(OP, "note", "INC-1", ("t",)) == GONE
        assert client.closed
        core.gate.set()
    run(main())


def test_refusal_floods_cost_the_core_one_message_per_window_and_reason() -> None:
    async def main() -> None:
        core = Core()
        _, client = await pair(core, window_s=0.2)
        for i in range(5000):
            client.refused(ClientInfo("modbus", f"10.0.0.5:{40000 + i % 7}", None, Role.VIEWER),
                           {"function_code": 5.0, "address": float(i)}, "viewers may not write",
                           2)
            client.refused_connection("opcua", f"10.0.0.6:{i}", "eve", "login", "bad password")
        client.refused(OP, {"x": 1.0}, "other reason", 3)
        await until(lambda: len(core.reports) == 3)
        await asyncio.sleep(0.3)
        assert len(core.reports) == 3
        by_kind = {r[0] + r[3 if r[0] == "refused" else 5]: r for r in core.reports}
        viewer = by_kind["refusedviewers may not write"]
        assert viewer[1].address.startswith("10.0.0.5:") and viewer[1].role is Role.VIEWER
        assert viewer[2] == {"function_code": 5.0, "address": 4999.0}  # the latest tried
        assert viewer[4:] == (2, 5000)
        assert by_kind["connectionbad password"][1:] == ("opcua", "10.0.0.6:0", "eve", "login",
                                                         "bad password", 5000)
        assert by_kind["refusedother reason"][-1] == 1
        client.close()
    run(main())


def test_refusal_windows_are_bounded_and_flushed_at_close() -> None:
    async def main() -> None:
        core = Core()
        server, client = await pair(core, window_s=60.0, max_windows=10)
        for i in range(100):
            client.refused(ClientInfo("modbus", f"10.0.1.{i}:502", None, Role.VIEWER),
                           {"x": 1.0}, "no", 2)
        client.close()  # sends what is open, then closes
        await asyncio.wait_for(server.wait_closed(), 5)
        assert len(core.reports) == 11
        assert sum(r[-1] for r in core.reports) == 100
        assert any(r[1].address == "(other clients)" and r[-1] == 90 for r in core.reports)
    run(main())


def test_ping_is_answered_by_a_live_peer() -> None:
    async def main() -> None:
        now = [100.0]
        a, b = socket.socketpair()
        server = ChannelServer(a, Core(), clock=lambda: now[0])
        client = ChannelClient(b)
        await server.start()
        await client.start()
        assert server.last_pong_s == 100.0
        now[0] = 107.0
        server.ping()
        await until(lambda: server.last_pong_s == 107.0)
        client.close()
    run(main())


def test_a_peer_that_stops_reading_is_closed() -> None:
    class Big(Core):
        async def request(self, client: ClientInfo, kind: str, detector: str | None,
                          duration_s: float | None) -> WriteOutcome:
            return WriteOutcome(False, 4, "x" * 100_000, Refusal.MODE)

    async def main() -> None:
        a, b = socket.socketpair()
        server = ChannelServer(a, Big(), write_limit_bytes=256 * 1024)
        await server.start()
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        frame = encode({"id": 1, "op": "request", "client": ["modbus", "h:1", None, "admin"],
                        "kind": "reset", "detector": None, "duration_s": None})
        for _ in range(60):  # never read the answers (6 MB)
            await loop.sock_sendall(b, frame)
            if server.closed:
                break
        await asyncio.wait_for(server.wait_closed(), 5)
        assert server.reason == "the peer stopped reading"
        b.close()
    run(main())
