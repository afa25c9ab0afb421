"""The request channel's ``propose`` op and ``calls`` reports, over a real socketpair: the
cycle's outcome round trips, an unreadable or lost answer is never a refusal nor an
acceptance but "unknown", and a window of an agent's calls reaches the core's handler."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

from gateway.adapters.base import ClientInfo, NorthboundHandler, Role, WriteOutcome
from gateway.link.channel import ChannelClient, ChannelServer, encode
from gateway.mcp.outcome import ProposalOutcome, Result

AI = ClientInfo("mcp", "127.0.0.1:5000", "planner", Role.AI)
CLAMPED = ProposalOutcome(Result.CLAMPED, "auto", "clamp", ("inflow_valve.rate",),
                          (("inflow_valve", 32.0),), (("inflow_valve", 32.0),),
                          "projected", 12.5)


class Core(NorthboundHandler):
    def __init__(self) -> None:
        self.proposals: list[tuple[ClientInfo, dict[str, float]]] = []
        self.windows: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        raise AssertionError("not used")

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        raise AssertionError("not used")

    async def propose(self, client: ClientInfo, values: dict[str, float]) -> ProposalOutcome:
        self.proposals.append((client, values))
        if self.gate is not None:
            await self.gate.wait()
        return CLAMPED

    def agent_calls(self, window: dict[str, Any]) -> None:
        self.windows.append(window)


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def test_a_proposal_outcome_and_call_windows_round_trip() -> None:
    async def main() -> None:
        core = Core()
        a, b = socket.socketpair()
        server, client = ChannelServer(a, core), ChannelClient(b)
        await server.start()
        await client.start()
        assert await client.propose(AI, {"inflow_valve": 40.0}) == CLAMPED
        assert core.proposals == [(AI, {"inflow_valve": 40.0})]
        client.agent_calls({"agent": "planner", "tool": "read_plant", "outcome": "ok",
                            "count": 7, "first": {}, "last": {}})
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not core.windows:
            assert loop.time() < end
            await asyncio.sleep(0.005)
        assert core.windows[0]["count"] == 7 and core.windows[0]["agent"] == "planner"
        # The core going away while a proposal waits: unknown, never refused or applied.
        core.gate = asyncio.Event()
        waiting = asyncio.create_task(client.propose(AI, {"inflow_valve": 41.0}))
        end = loop.time() + 5
        while len(core.proposals) < 2:
            assert loop.time() < end, "the proposal never reached the core"
            await asyncio.sleep(0.005)
        server.close("the core died")
        lost = await asyncio.wait_for(waiting, 5)
        assert lost.result is Result.UNKNOWN and not lost.reached_plant
        gone = await client.propose(AI, {"inflow_valve": 1.0})
        assert gone.result is Result.REFUSED
        core.gate.set()
    run(main())


def test_an_unreadable_proposal_answer_is_unknown() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        client = ChannelClient(b)
        await client.start()
        reader, writer = await asyncio.open_unix_connection(sock=a)
        call = asyncio.create_task(client.propose(AI, {"x": 1.0}))
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        rid = json.loads(await reader.readexactly(size))["id"]
        writer.write(encode({"re": rid, "judged": {"result": "applied!!"}}))
        out = await call
        assert out.result is Result.UNKNOWN
        await asyncio.wait_for(client.wait_closed(), 5)
        writer.close()
    run(main())


def test_outcome_json_refuses_the_wrong_shape() -> None:
    assert ProposalOutcome.from_json(CLAMPED.to_json()) == CLAMPED
    for bad in ([], {"result": "nope"}, {"result": "applied", "violations": "x"},
                {"result": "applied", "written": {"a": "1"}},
                {"result": "applied", "cycle_at_s": True}):
        try:
            ProposalOutcome.from_json(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
