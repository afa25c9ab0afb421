"""The runtime's answers to northbound writes and requests, without sockets (the servers and
the end-to-end test cover the wire)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import gateway
from gateway.adapters.base import ClientInfo, Refusal, Role
from gateway.config.schema import ControllerKind
from gateway.runtime.gateway import Gateway

AI = ClientInfo("modbus", "127.0.0.2:5000", None, Role.AI)
OPERATOR = ClientInfo("modbus", "127.0.0.1:5000", None, Role.OPERATOR)
VIEWER = ClientInfo("opcua", "127.0.0.1:5001", "v", Role.VIEWER)


class FakeDevice:
    def __init__(self) -> None:
        self.writes: list[dict[str, float]] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def write(self, values: dict[str, float]) -> None:
        self.writes.append(dict(values))

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def close(self) -> None:
        return None


async def started(kind: ControllerKind = ControllerKind.EXTERNAL,
                  device: FakeDevice | None = None) -> tuple[Gateway, FakeDevice]:
    site = gateway.load_config("configs/water_tank.yaml")
    site = replace(site, controller=replace(site.controller, kind=kind))
    device = device or FakeDevice()
    gw = Gateway(site, clients={"plc": device}, servers=False, startup_wait_s=0.0)
    for name in ("level", "inflow_rate"):
        gw.store.update(name, 2.5 if name == "level" else 0.01, True, gw.clock())
    await gw.start_supervisor()
    return gw, device


def test_ai_writes_only_what_it_drives():
    async def body() -> None:
        gw, device = await started()
        out = await gw.write(AI, {"inflow_valve": 10.0}, atomic=True)
        assert out["inflow_valve"].accepted
        out = await gw.write(AI, {"drain_valve": 1.0}, atomic=True)  # not a controller output
        assert out["drain_valve"] == (False, 2, "not driven by the AI: drain_valve",
                                      Refusal.NOT_AUTHORISED)
        assert device.writes == []  # AI writes are proposals, never written through
    asyncio.run(body())


def test_ai_write_refused_when_the_ai_is_not_external():
    async def body() -> None:
        gw, _ = await started(ControllerKind.NONE)
        out = await gw.write(AI, {"inflow_valve": 10.0}, atomic=True)
        assert not out["inflow_valve"].accepted
        assert out["inflow_valve"].code == 4
        assert gw.external.written_at_s is None
    asyncio.run(body())


def test_out_of_envelope_and_unknown_and_viewer_writes_are_refused():
    async def body() -> None:
        gw, device = await started()
        out = await gw.write(OPERATOR, {"inflow_valve": 130.0}, atomic=True)
        assert out["inflow_valve"].code == 3
        assert "inflow_valve.max" in out["inflow_valve"].reason
        out = await gw.write(OPERATOR, {"level": 1.0}, atomic=True)
        assert out["level"].code == 2
        out = await gw.write(VIEWER, {"inflow_valve": 10.0}, atomic=False)
        assert out["inflow_valve"].code == 2
        # atomic: one refused tag refuses the whole request
        out = await gw.write(OPERATOR, {"inflow_valve": 31.0, "outflow_pump": 130.0},
                             atomic=True)
        assert not any(o.accepted for o in out.values())
        assert device.writes == []
    asyncio.run(body())


def test_operator_setpoint_in_manual_is_written_through():
    async def body() -> None:
        gw, device = await started()
        out = await gw.write(OPERATOR, {"outflow_pump": 45.0}, atomic=True)
        assert out["outflow_pump"].accepted
        assert len(device.writes) == 1
        (first,) = device.writes
        assert set(first) == {"outflow_pump"}
        assert 0.0 < first["outflow_pump"] <= 45.0  # a first step from the safe state (off)
    asyncio.run(body())


def test_requests_are_authorised_by_role():
    async def body() -> None:
        gw, _ = await started()
        assert (await gw.request(OPERATOR, "to_shadow", None, None)).accepted
        refused = await gw.request(OPERATOR, "bypass", "ai_silent", 10.0)
        assert not refused.accepted
        assert refused.code == 2
        # A latched trip is reset by an administrator (as the OPC UA method requires).
        assert (await gw.request(OPERATOR, "reset_trip", None, None)).code == 2
        assert (await gw.request(AI, "to_auto", None, None)).code == 2
        assert (await gw.request(OPERATOR, "nonsense", None, None)).code == 3
    asyncio.run(body())


ADMIN = ClientInfo("opcua", "127.0.0.1:5003", "chief", Role.ADMIN)


def test_requests_answer_their_real_outcome_in_the_same_call():
    # Issue 15: RequestMode('auto'), ResetTrip with nothing latched, Bypass('nosuch') and a
    # 1e9 s bypass were all answered "accepted" (queued); the refusal was only in the log.
    async def body() -> None:
        gw, _ = await started()
        sup = gw.supervisor
        assert sup is not None
        out = await gw.request(OPERATOR, "to_auto", None, None)
        assert (out.accepted, out.refusal) == (False, Refusal.MODE)
        assert "allowed only from shadow" in out.reason
        out = await gw.request(ADMIN, "reset_trip", None, None)
        assert not out.accepted and "no trip is latched" in out.reason
        out = await gw.request(ADMIN, "bypass", "nosuch", 60.0)
        assert not out.accepted and "nosuch" in out.reason and "ai_silent" in out.reason
        out = await gw.request(ADMIN, "bypass", "ai_silent", 1e9)
        assert not out.accepted and "3600" in out.reason
        assert sup.modes.bypasses == {}
        out = await gw.request(ADMIN, "bypass", "ai_silent", 60.0)
        assert out.accepted and "bypass for 60.0 s" in out.reason
        assert set(sup.modes.bypasses) == {"ai_silent"}
        out = await gw.request(OPERATOR, "to_shadow", None, None)
        assert out.accepted and "manual -> shadow" in out.reason
        assert sup.mode.value == "shadow"  # applied at once, not at the next cycle
        out = await gw.request(OPERATOR, "to_manual", None, None)
        assert out.accepted and "shadow -> manual" in out.reason
        out = await gw.request(OPERATOR, "to_manual", None, None)
        assert out.accepted and out.reason == "nothing to change"
    asyncio.run(body())


def test_fault_log_lines_and_bound(caplog):
    from gateway.runtime.gateway import FaultLog

    caplog.set_level("DEBUG", logger="gateway.runtime")
    faults = FaultLog(limit=3)
    for _ in range(5):
        faults.fault("a", "broken")
    faults.clear("a")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    infos = [r for r in caplog.records if r.levelname == "INFO"]
    assert len(warnings) == 1  # one line when it starts, not one per occurrence
    assert len(infos) == 1  # one when it clears
    for k in range(10):
        faults.fault(f"client{k}", "refused")
    assert len(faults.active) == 3
    assert list(faults.active) == ["client7", "client8", "client9"]


class SwallowsCancel(FakeDevice):
    """A device task that loses its cancellation, as Python 3.11's asyncio.wait_for (pymodbus
    awaits every request with it) does when the answer arrives with the cancel; it still ends
    once its client is closed, like the real clients' run loops."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()
        self.swallowed = 0

    async def run(self) -> None:
        while not self.closing.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.swallowed += 1

    async def close(self) -> None:
        self.closing.set()


def test_shutdown_ends_even_if_a_device_task_swallows_its_cancellation():
    async def body() -> None:
        site = gateway.load_config("configs/water_tank.yaml")
        device = SwallowsCancel()
        gw = Gateway(site, clients={"plc": device}, servers=False, startup_wait_s=0.0)
        gw.southbound.start()
        tasks = list(gw.southbound.tasks)
        await asyncio.sleep(0.05)
        shutdown = asyncio.create_task(gw.close())
        try:
            done, _ = await asyncio.wait([shutdown], timeout=10)
            hung = not done
        finally:
            device.closing.set()  # so that a failing run ends instead of hanging the suite
            await asyncio.wait([shutdown, *tasks], timeout=5)
        assert not hung, "shutdown hung on the device task"
        assert tasks[0].done()

    asyncio.run(body())


class Hangs(FakeDevice):
    """A device that takes a write but does not confirm it until ``answer`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.answer = asyncio.Event()

    async def write(self, values: dict[str, float]) -> None:
        self.writes.append(dict(values))
        if self.hang:
            await self.answer.wait()


def test_a_write_through_the_device_never_confirms_is_refused_and_written_again():
    async def body() -> None:
        device = Hangs()
        gw, _ = await started(ControllerKind.NONE, device)
        for tag in gw.site.sensors:  # every sensor good and mid-range: the cycles stay MANUAL
            assert tag.range_min is not None and tag.range_max is not None
            gw.store.update(tag.name, (tag.range_min + tag.range_max) / 2, True, gw.clock())
        pump = gw.index["outflow_pump"]
        await gw.cycle(gw.clock())  # the devices hold the cycle's command now
        assert float(gw.written[pump]) == float(gw.applied[pump])
        before = float(gw.applied[pump])
        device.hang = True
        t0 = asyncio.get_running_loop().time()
        out = await gw.write(OPERATOR, {"outflow_pump": 45.0}, atomic=True)
        waited = asyncio.get_running_loop().time() - t0
        assert out["outflow_pump"].code == 4, out
        assert "did not confirm" in out["outflow_pump"].reason
        assert waited < 1.0  # a cycle's time (at least 50 ms), not the device's 5 s
        # The device may hold the step it was sent, or not: nothing counts it as applied,
        # and the next cycle writes the actuator again.
        assert float(gw.applied[pump]) == before
        assert device.writes[-1]["outflow_pump"] > before
        assert math.isnan(gw.written[pump])  # unknown, so written again whatever the cycle
        # The write is never cut short (that desynchronised Modbus connections): while it
        # waits for the device, nothing more goes to that device.
        assert gw.writes_in_flight == ("plc",)
        n = len(device.writes)
        await gw.cycle(gw.clock())
        assert len(device.writes) == n
        device.hang = False
        device.answer.set()  # the device answers, late
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while gw.writes_in_flight:
            assert loop.time() < deadline, "the late answer was not taken"
            await asyncio.sleep(0.01)
        n = len(device.writes)
        await gw.cycle(gw.clock())
        rewritten = [w for w in device.writes[n:] if "outflow_pump" in w]
        assert rewritten, device.writes[n:]
        # What the device holds is known again: what the cycle decided and applied.
        assert rewritten[-1]["outflow_pump"] == float(gw.applied[pump])
    asyncio.run(body())
