"""Operator setpoints written through in batches: what queues while one batch is on its way
to the device goes out together, each setpoint checked on top of those before it, and nothing
lands after the shutdown values. Fake devices here (the order of what lands is what is under
test); tests/runtime/test_gateway_modbus.py covers the same path on real sockets."""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient

import gateway
from gateway.adapters.base import ClientInfo, Refusal, Role, WriteOutcome
from gateway.runtime.gateway import Gateway
from gateway.supervisor.modes import Mode
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

SCADA = [ClientInfo("modbus", f"127.0.0.1:{5000 + k}", None, Role.OPERATOR) for k in range(4)]

# Two actuators that each may go to 80, but not both: a + b <= 100. No rate limit, so a
# setpoint is written whole and the sum is decided by the batch alone.
SITE = """\
site: {name: through, cycle_ms: 100}
devices:
  plc: {protocol: modbus_tcp, host: 127.0.0.1, port: 1502, unit: 1}
tags:
  s: {device: plc, kind: sensor, table: input_register, address: 0, type: float32,
      range: [-10, 10]}
  a: {device: plc, kind: actuator, table: holding_register, address: 0, type: float32,
      safe_value: 0, on_shutdown: safe}
  b: {device: plc, kind: actuator, table: holding_register, address: 2, type: float32,
      safe_value: 0, on_shutdown: safe}
envelope:
  limits:
    a: {min: 0, max: 80, policy: clamp}
    b: {min: 0, max: 80, policy: clamp}
  constraints:
    - {name: shared_main, expr: 'a + b <= 100', policy: reject}
fallback:
  a: {kind: hold}
  b: {kind: hold}
"""


class Device:
    """Records what *landed* (when the write completed), in that order; ``gate`` holds writes
    on their way while it is clear."""

    def __init__(self) -> None:
        self.landed: list[dict[str, float]] = []
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def write(self, values: Mapping[str, float]) -> None:
        self.calls += 1
        self.arrived.set()
        await self.gate.wait()
        self.landed.append(dict(values))

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def refresh(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def started(tmp_path: Path, site: str = SITE) -> tuple[Gateway, Device]:
    path = tmp_path / "site.yaml"
    path.write_text(site)
    device = Device()
    gw = Gateway(gateway.load_config(path), clients={"plc": device}, servers=False,
                 startup_wait_s=0.0)
    gw.store.update("s", 1.0, True, gw.clock())
    await gw.start_supervisor()
    assert gw.supervisor is not None and gw.supervisor.mode is Mode.MANUAL
    return gw, device


async def held_on_its_way(gw: Gateway, device: Device, values: dict[str, float]
                          ) -> asyncio.Task[dict[str, WriteOutcome]]:
    """SCADA[0] writes ``values``; returns once that batch has reached the device, where it
    is held until ``device.gate`` is set."""
    device.gate.clear()
    task = asyncio.create_task(gw.write(SCADA[0], values, atomic=True))
    await device.arrived.wait()
    return task


def test_concurrent_setpoints_go_out_in_one_request(tmp_path: Path) -> None:
    async def body() -> None:
        gw, device = await started(tmp_path)
        a, b = await asyncio.gather(gw.write(SCADA[0], {"a": 30.0}, atomic=True),
                                    gw.write(SCADA[1], {"b": 40.0}, atomic=True))
        assert a["a"].accepted and b["b"].accepted
        assert device.landed == [{"a": 30.0, "b": 40.0}]
        assert gw.applied.tolist() == [30.0, 40.0]
    asyncio.run(body())


def test_each_setpoint_of_a_batch_is_checked_on_top_of_those_before_it(tmp_path: Path) -> None:
    """Each alone fits the envelope; together they break ``a + b <= 100``: the first is
    written, the second refused, and the device never holds the sum."""
    async def body() -> None:
        gw, device = await started(tmp_path)
        a, b = await asyncio.gather(gw.write(SCADA[0], {"a": 60.0}, atomic=True),
                                    gw.write(SCADA[1], {"b": 60.0}, atomic=True))
        assert a["a"].accepted
        assert b["b"].code == 3 and "shared_main" in b["b"].reason, b
        assert device.landed == [{"a": 60.0}]
        # The next batch starts from what the device holds: b fits beside a = 60 up to 40.
        b = await gw.write(SCADA[1], {"b": 40.0}, atomic=True)
        assert b["b"].accepted
        assert device.landed[-1] == {"b": 40.0}
        held = {"a": 0.0, "b": 0.0}
        for write in device.landed:
            held.update(write)
            assert held["a"] + held["b"] <= 100.0, device.landed
    asyncio.run(body())


def test_setpoints_queued_behind_a_batch_go_out_together_next(tmp_path: Path) -> None:
    async def body() -> None:
        gw, device = await started(tmp_path)
        first = await held_on_its_way(gw, device, {"a": 10.0})  # three more queue behind
        rest = [asyncio.create_task(gw.write(SCADA[k], {"b": 10.0 * k}, atomic=True))
                for k in (1, 2, 3)]
        await asyncio.sleep(0.01)
        assert device.calls == 1
        device.gate.set()
        outcomes = await asyncio.gather(first, *rest)
        assert all(o[n].accepted for o, n in zip(outcomes, "abbb", strict=True))
        # The queued three in one request, in arrival order (the last one wins).
        assert device.landed == [{"a": 10.0}, {"b": 30.0}]
        assert device.calls == 2
    asyncio.run(body())


def test_nothing_lands_after_the_shutdown_values(tmp_path: Path) -> None:
    async def body() -> None:
        gw, device = await started(tmp_path)
        on_its_way = await held_on_its_way(gw, device, {"a": 50.0})
        queued = asyncio.create_task(gw.write(SCADA[1], {"b": 20.0}, atomic=True))
        await asyncio.sleep(0)
        closing = asyncio.create_task(gw.close())
        await asyncio.sleep(0.01)
        late = await gw.write(SCADA[2], {"b": 30.0}, atomic=True)
        assert late["b"] == WriteOutcome(False, 4, "the gateway is shutting down",
                                         Refusal.STOPPING)
        device.gate.set()
        await closing
        assert (await on_its_way)["a"].accepted
        assert (await queued)["b"].code == 4
        assert device.landed == [{"a": 50.0}, {"a": 0.0, "b": 0.0}]  # the safe values last
    asyncio.run(body())


def test_a_batch_waits_a_moment_for_the_other_recent_writers(tmp_path: Path) -> None:
    async def body() -> None:
        gw, device = await started(tmp_path)
        through = gw.write_through
        assert through is not None
        through.sibling_active_s, through.sibling_wait_s = 5.0, 1.0
        await asyncio.gather(gw.write(SCADA[0], {"a": 10.0}, atomic=True),
                             gw.write(SCADA[1], {"b": 10.0}, atomic=True))
        calls = device.calls
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.create_task(gw.write(SCADA[0], {"a": 20.0}, atomic=True))
        await asyncio.sleep(0.05)  # the other writer comes a moment later
        second = await gw.write(SCADA[1], {"b": 20.0}, atomic=True)
        assert (await first)["a"].accepted and second["b"].accepted
        assert device.calls == calls + 1  # one request for both
        assert device.landed[-1] == {"a": 20.0, "b": 20.0}
        assert loop.time() - t0 < 0.5  # it left once both were in, not after the full wait
    asyncio.run(body())


def test_a_lone_writer_never_waits(tmp_path: Path) -> None:
    async def body() -> None:
        gw, device = await started(tmp_path)
        through = gw.write_through
        assert through is not None
        through.sibling_active_s, through.sibling_wait_s = 5.0, 1.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for value in (10.0, 20.0, 30.0):
            assert (await gw.write(SCADA[0], {"a": value}, atomic=True))["a"].accepted
        assert loop.time() - t0 < 0.5
        assert device.landed == [{"a": 10.0}, {"a": 20.0}, {"a": 30.0}]
    asyncio.run(body())


def test_a_setpoint_is_judged_on_trusted_readings_only(tmp_path: Path) -> None:
    """A constraint on a sensor is judged on the reading as the supervisor trusts it: a
    reading of bad quality or too old counts as unknown, and the setpoint is refused."""
    site = SITE.replace("'a + b <= 100'", "'a - 10 * s <= 50'")

    async def body() -> None:
        gw, device = await started(tmp_path, site)
        assert (await gw.write(SCADA[0], {"a": 55.0}, atomic=True))["a"].accepted  # s = 1
        gw.store.mark_bad(["s"])
        refused = (await gw.write(SCADA[0], {"a": 56.0}, atomic=True))["a"]
        assert refused.code == 3 and "shared_main" in refused.reason, refused
        gw.store.update("s", 1.0, True, gw.clock() - 3600.0)  # good, but an hour old
        refused = (await gw.write(SCADA[0], {"a": 57.0}, atomic=True))["a"]
        assert refused.code == 3, refused
        gw.store.update("s", 1.0, True, gw.clock())
        assert (await gw.write(SCADA[0], {"a": 58.0}, atomic=True))["a"].accepted
        assert device.landed == [{"a": 55.0}, {"a": 58.0}]
    asyncio.run(body())


def test_before_the_first_cycle_the_status_says_starting_and_writes_are_refused(
        tmp_path: Path) -> None:
    """Real northbound socket: until the supervisor runs, status.mode reads STARTING (not
    MANUAL, which a SCADA would take as "my setpoints count"), a write gets exception 4 and
    the refusal is logged; after the first cycle the mode is MANUAL and writes go through."""
    port = free_port()
    path = tmp_path / "site.yaml"
    path.write_text(SITE + f"northbound:\n  modbus: {{host: 127.0.0.1, port: {port}, "
                           f"allow: [127.0.0.1]}}\n")
    device = Device()

    async def body() -> None:
        gw = Gateway(gateway.load_config(path), clients={"plc": device}, startup_wait_s=0.0)
        await gw.northbound.start()
        scada = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        try:
            assert await scada.connect()
            status = await scada.read_input_registers(1000, count=4, device_id=1)
            assert status.registers[0] == 4 and status.registers[3] == 0  # STARTING, no beat
            a = list(struct.unpack(">HH", struct.pack(">f", 30.0)))
            rr = await scada.write_registers(0, a, device_id=1)  # actuator a
            assert rr.isError() and rr.exception_code == 4, rr
            assert any("starting" in m for m in gw.faults.active.values()), gw.faults.active
            assert device.landed == []
            gw.store.update("s", 1.0, True, gw.clock())
            await gw.start_supervisor()
            await gw.cycle(gw.clock())
            status = await scada.read_input_registers(1000, count=4, device_id=1)
            assert status.registers[0] == 2 and status.registers[3] > 0  # MANUAL, beating
            rr = await scada.write_registers(0, a, device_id=1)
            assert not rr.isError(), rr
            assert device.landed[-1] == {"a": 30.0}
            assert not any("starting" in m for m in gw.faults.active.values())
        finally:
            scada.close()
            await gw.modbus_server.stop()
    asyncio.run(body())
