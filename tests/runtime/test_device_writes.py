"""The cycle's device writes: never cut short before the device's own timeout.

A write that takes longer than a control cycle (a slow but healthy device) finishes in its
own task; meanwhile the cycles send nothing more to that device, and what it holds is unknown
(``written`` NaN) until it confirms. Only a write that outlives every timeout its adapter
promised is abandoned. (Cancelling device requests after one cycle is what desynchronised the
Modbus connections: see tests/runtime/test_slow_device.py for the whole story on the wire.)
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

from gateway.config.schema import ControllerKind
from tests.runtime.test_northbound_handler import FakeDevice, started


class Slow(FakeDevice):
    """Answers each write after ``delay_s`` (None: never); records cancellations."""

    def __init__(self, delay_s: float | None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.cancelled = 0
        self.confirmed: list[dict[str, float]] = []
        self.beats: list[int] = []

    async def write(self, values: dict[str, float]) -> None:
        self.writes.append(dict(values))
        try:
            if self.delay_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.confirmed.append(dict(values))

    async def write_heartbeat(self, counter: int) -> None:
        self.beats.append(counter)


def good_sensors(gw) -> None:
    for tag in gw.site.sensors:  # every sensor good and mid-range: the cycles stay MANUAL
        gw.store.update(tag.name, (tag.range_min + tag.range_max) / 2, True, gw.clock())


async def until(condition, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


def test_a_write_slower_than_a_cycle_but_within_the_timeout_is_never_cut_short():
    async def body() -> None:
        device = Slow(0.3)  # three cycles; the water tank's PLC has timeout_ms 500
        gw, _ = await started(ControllerKind.NONE, device)
        good_sensors(gw)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await gw.cycle(gw.clock())
        assert loop.time() - t0 < 0.25  # the cycle waited a cycle's time, not the device's
        first = dict(device.writes[0])
        assert all(math.isnan(x) for x in gw.written)  # unknown until confirmed
        for _ in range(2):  # the next cycles send nothing more to the busy device
            good_sensors(gw)
            await gw.cycle(gw.clock())
        assert (device.cancelled, len(device.writes)) == (0, 1)
        assert gw.writes_in_flight == ("plc",)
        await until(lambda: not gw.writes_in_flight, 5.0, "the write never ended")
        assert device.cancelled == 0
        assert device.confirmed == [first]
        assert device.beats == [1]  # the heartbeat went out after the actuators
        # What the device confirmed is what it is known to hold.
        assert [float(gw.written[gw.index[n]]) for n in first] == list(first.values())
        # The next cycle writes what changed since: the newest admitted values.
        device.delay_s = 0.0
        good_sensors(gw)
        await gw.cycle(gw.clock())
        assert device.cancelled == 0
        assert not gw.writes_in_flight
        for name, value in device.writes[-1].items():
            assert value == float(gw.applied[gw.index[name]])
    asyncio.run(body())


def test_a_write_that_outlives_its_adapters_timeouts_is_abandoned_and_reported(caplog):
    async def body() -> None:
        device = Slow(None)  # never answers (a broken adapter: ours time out by themselves)
        gw, _ = await started(ControllerKind.NONE, device)
        south = gw.southbound
        south.devices = {"plc": replace(south.devices["plc"], timeout_ms=50.0)}
        bound = south.write_bound_s("plc")
        assert bound == 8 * 0.05 + 2.0
        good_sensors(gw)
        await gw.cycle(gw.clock())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < bound / 2:  # within the bound: left alone, skipped
            good_sensors(gw)
            await gw.cycle(gw.clock())
            await asyncio.sleep(0.05)
        assert device.cancelled == 0 and len(device.writes) == 1
        while not device.cancelled:
            assert loop.time() - t0 < 2 * bound, "never abandoned"
            good_sensors(gw)
            await gw.cycle(gw.clock())
            await asyncio.sleep(0.05)
        assert loop.time() - t0 >= bound - 0.2
        await until(lambda: not gw.writes_in_flight, 5.0, "the abandoned write never ended")
        device.delay_s = 0.0
        good_sensors(gw)
        await gw.cycle(gw.clock())
        assert len(device.writes) == 2  # written again, as a fresh decision
    asyncio.run(body())
    assert any("abandoned" in r.getMessage() for r in caplog.records)
