"""The safety core never depends on the fleet: the real core (``Gateway``, stepped on an
injected clock) with a site in a fleet, its communications process publishing the audit chain
(and its status heartbeat) to a real nats-server, decides exactly what the same core decides
without a fleet, while the server is killed, the communications process (the publisher) is
killed and restarted, and the server comes back; afterwards the centre holds the chain and
``fleet verify`` passes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import yaml

from gateway.audit.store import last_head
from gateway.cli import main
from gateway.comms.link import CommsLink
from gateway.config.loader import load_config
from gateway.fleet.subjects import SiteSubjects
from gateway.runtime.gateway import Gateway
from tests.comms.conftest import site_file
from tests.fleet.helpers import make_stream, until
from tests.incident.test_via_gateway import Clock, Device

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fleet.natsserver import NatsServer

SITE = "tank-1"
CYCLES = 240


class RecordingDevice(Device):
    def __init__(self) -> None:
        self.writes: list[dict[str, float]] = []

    async def write(self, values: dict[str, float]) -> None:
        self.writes.append(dict(values))


def level(k: int) -> float:
    """A level that rises through the high interlock and falls back: trips, mode changes and
    refusals give the chain (and the fleet) something to carry."""
    return 2.5 + 2.4 * (k / 80) if k < 80 else max(1.0, 4.9 - 0.05 * (k - 80))


async def drive(gw: Gateway, clock: Clock, device: RecordingDevice,
                between: dict[int, Any]) -> tuple[list[Any], list[float]]:
    """Step ``CYCLES`` cycles; before cycle k, await ``between[k]()`` if present. Returns
    the decisions (mode, command) and each cycle's wall time."""
    decisions = []
    durations = []
    for k in range(CYCLES):
        if k in between:
            await between[k]()
        clock.now += 0.1
        for name, value in (("level", level(k)), ("inflow_rate", 0.01 + 0.001 * (k % 3)),
                            ("demand", 0.005), ("uptime_s", clock.now)):
            gw.store.update(name, value, True, clock.now)
        began = time.perf_counter()
        decision = await gw.cycle(clock.now)
        durations.append(time.perf_counter() - began)
        decisions.append((str(decision.mode), tuple(float(v) for v in decision.command)))
        await asyncio.sleep(0.01)  # the communications process and the publisher run
    return decisions, durations


def test_a_dead_link_or_publisher_changes_nothing_the_core_decides(
        nats_server: NatsServer, tmp_path: Path) -> None:
    import nats

    path, _ = site_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["fleet"] = {"url": nats_server.url, "site_id": SITE}
    data["audit"]["sample_every_n"] = 1  # every cycle in the chain: plenty to publish
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    site = load_config(path)
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()

    async def setup() -> None:
        client = await nats.connect(nats_server.url)
        try:
            await make_stream(client, SITE)
        finally:
            await client.close()

    asyncio.run(setup())

    async def held() -> int:
        client = await nats.connect(nats_server.url, allow_reconnect=False)
        try:
            msg = await client.jetstream().get_last_msg(SiteSubjects(SITE).stream,
                                                        SiteSubjects(SITE).audit)
            return int(json.loads(msg.data or b"{}")["seq"])
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await client.close()

    async def in_fleet() -> tuple[list[Any], list[float], int]:
        link = CommsLink(site, path, ping_interval_s=0.1)
        clock = Clock()
        device = RecordingDevice()
        gw = Gateway(site, clock=clock, clients={"plc": device}, stepped=True,
                     startup_wait_s=0.0, servers=False, northbound=link,
                     audit_path=site.audit.path)
        link.handler = gw

        beats: list[dict[str, Any]] = []
        watcher = await nats.connect(nats_server.url)

        async def beat(msg: Any) -> None:
            beats.append(json.loads(msg.data))

        await watcher.subscribe(SiteSubjects(SITE).status, cb=beat)

        async def published_some() -> None:
            await until(lambda: _ok(held()), 60, "the communications process publishes")
            # the heartbeat rides the same link and carries the publisher's state
            await until(lambda: any(b.get("link_state") == "up" for b in beats), 60,
                        "a heartbeat with the link up")
            await watcher.close()

        async def server_killed() -> None:
            await asyncio.to_thread(nats_server.kill)

        async def publisher_killed() -> None:
            assert link.supervisor is not None and link.supervisor.pid is not None
            os.kill(link.supervisor.pid, signal.SIGKILL)

        async def server_back() -> None:
            await asyncio.to_thread(nats_server.start)

        await gw.open()
        try:
            decisions, durations = await drive(gw, clock, device, {
                20: published_some, 60: server_killed, 100: publisher_killed,
                160: server_back})
            assert gw.records.audit is not None
            gw.records.audit.flush()
            last = last_head(site.audit.path).seq

            async def caught_up() -> bool:
                return await held() >= last

            await until(caught_up, 90, f"the centre holds records up to {last}")
            restarts = link.restarts
        finally:
            await gw.close()
        return decisions, durations, restarts

    async def alone() -> tuple[list[Any], list[float]]:
        solo = load_config(path)
        clock = Clock()
        device = RecordingDevice()
        gw = Gateway(solo, clock=clock, clients={"plc": device}, stepped=True,
                     startup_wait_s=0.0, servers=False,
                     audit_path=alone_dir / "audit.db")
        await gw.open()
        try:
            return await drive(gw, clock, device, {})
        finally:
            await gw.close()

    decisions, durations, restarts = asyncio.run(asyncio.wait_for(in_fleet(), 240))
    reference, _ = asyncio.run(asyncio.wait_for(alone(), 120))
    assert restarts >= 1  # the publisher's process was killed and replaced
    assert decisions == reference
    assert len({mode for mode, _ in decisions}) > 1  # the scenario did change modes
    # nothing in a cycle waits on the link (a wait would last the 10 s ack timeout)
    assert max(durations) < 2.0, max(durations)
    assert main(["fleet", "verify", SITE, "--server", nats_server.url,
                 "--db", str(site.audit.path)]) == 0


async def _ok(value: Any) -> bool:
    return bool(await value)
