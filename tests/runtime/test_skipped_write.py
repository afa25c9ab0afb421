"""A device write skipped because the previous one is still on its way: the next value the
device receives must still be within the step and rate limits of the last one it was sent.

The supervisor limits each decision against its previous decision; when a cycle's write to a
slow device is skipped, the device never receives that decision, so the next write would
carry two cycles' moves in one. The cycle tells the supervisor what was really sent instead.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import gateway
from gateway.runtime.gateway import Gateway

ROOT = Path(__file__).resolve().parents[2]
MAX_STEP = 3.0  # % per write; the rate (100 %/s, 10 % a cycle) does not bind before it
CYCLE_S = 0.1


class SlowValve:
    """A device whose writes block until the test releases them; it keeps every value it
    received, in order."""

    def __init__(self) -> None:
        self.received: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def refresh(self) -> None:
        return None

    async def write(self, values: dict[str, float]) -> None:
        await self.gate.wait()
        if "inflow_valve" in values:
            self.received.append(values["inflow_valve"])

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def close(self) -> None:
        return None


def _site(tmp_path: Path) -> gateway.config.Site:
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    old = "inflow_valve: {min: 0.0, max: 100.0, max_rate_per_s: 20.0, max_step: 10.0,"
    assert old in text
    text = text.replace(old, "inflow_valve: {min: 0.0, max: 100.0, max_rate_per_s: 100.0, "
                             f"max_step: {MAX_STEP},")
    text = text.replace("path: ../reports/water_tank_audit.db", f"path: {tmp_path}/audit.db")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return gateway.load_config(path)


def test_a_skipped_write_does_not_double_the_next_step_at_the_device(tmp_path: Path) -> None:
    site = _site(tmp_path)
    valve = SlowValve()

    async def scenario() -> list[float]:
        now = [1000.0]
        gw = Gateway(site, clock=lambda: now[0], clients={"plc": valve}, stepped=True,
                     startup_wait_s=0.0, servers=False, audit_path=tmp_path / "audit.db")
        await gw.open()
        try:
            # An operator's setpoint far from the valve's position: the valve travels there
            # as fast as the limits allow.
            assert gw.supervisor is not None
            gw.supervisor.set_operator_setpoint(0, 95.0)
            for k in range(60):
                for name, value in (("level", 2.5 + 0.001 * (k % 10)),
                                    ("inflow_rate", 0.01 + 0.0001 * (k % 10)),
                                    ("demand", 0.005), ("uptime_s", now[0])):
                    gw.store.update(name, value, True, now[0])
                if k % 4 == 1:
                    valve.gate.clear()  # this write hangs for the next cycles
                elif k % 4 == 3:
                    valve.gate.set()
                    await asyncio.sleep(0)  # the hung write lands before this cycle
                now[0] += CYCLE_S
                await gw.cycle(now[0])
            valve.gate.set()
            await asyncio.sleep(0.05)  # the last hung write lands
            return list(valve.received)  # before the shutdown's move to the safe value
        finally:
            await gw.close()

    received = asyncio.run(asyncio.wait_for(scenario(), 120))
    moves = [b - a for a, b in itertools.pairwise(received)]
    assert max(moves) > 0.9 * MAX_STEP, received  # the valve was driven at the step limit
    assert all(abs(m) <= MAX_STEP + 0.01 for m in moves), (
        [m for m in moves if abs(m) > MAX_STEP + 0.01], received)
