"""A proposal that arrives while a cycle is writing its command (after that cycle took its
proposal) is judged by the next cycle, and answered with that cycle's outcome, never with the
outcome of a cycle that did not see it."""

from __future__ import annotations

import asyncio

from gateway.adapters.base import ClientInfo, Role
from gateway.mcp.outcome import Result
from tests.runtime.test_northbound_handler import started

AI = ClientInfo("mcp", "127.0.0.1:1", "planner", Role.AI)


class GatedDevice:
    """Takes writes; while ``gate`` is clear, a write waits (a slow device)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = asyncio.Event()
        self.writes: list[dict[str, float]] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def write(self, values: dict[str, float]) -> None:
        self.writing.set()
        await self.gate.wait()
        self.writes.append(dict(values))

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def refresh(self) -> None:
        return None

    async def close(self) -> None:
        return None


def test_a_proposal_made_during_a_cycles_write_waits_for_the_next_cycle() -> None:
    async def main() -> None:
        device = GatedDevice()
        gw, _ = await started(device=device)  # type: ignore[arg-type]
        now = gw.clock()
        device.gate.clear()
        device.writing.clear()
        first = asyncio.create_task(gw.cycle(now))
        await asyncio.wait_for(device.writing.wait(), 10)  # the cycle took its proposal
        proposal = asyncio.create_task(gw.propose(AI, {"inflow_valve": 10.0}))
        await asyncio.sleep(0)
        assert len(gw.requests.proposals) == 1
        device.gate.set()
        await first
        await asyncio.sleep(0)
        assert not proposal.done(), "answered by a cycle that never saw it"
        second = await gw.cycle(now + 0.1)
        out = await asyncio.wait_for(proposal, 10)
        assert out.cycle_at_s == second.at_s
        assert out.result is not Result.SUPERSEDED
    asyncio.run(main())
