"""The rollout watcher runs in the site's real communications process: a version the centre
assigns reaches the safety core through the request channel and lands in SHADOW, nowhere
else, with the cycles going on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import TYPE_CHECKING

import nats
import yaml

from gateway.audit import read_records
from gateway.comms.link import CommsLink
from gateway.config.loader import load_config
from gateway.fleet import models
from gateway.runtime.gateway import Gateway
from gateway.supervisor.modes import Mode
from simulators.zoo import policies
from tests.comms.conftest import site_file
from tests.fleet.test_rollout import make_central
from tests.incident.test_via_gateway import Clock, Device

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fleet.natsserver import NatsServer

DEADLINE_S = 90.0


def _onnx_site(tmp_path: Path, url: str, trusted: Path) -> Path:
    path, _ = site_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    running = tmp_path / "running.onnx"
    running.write_bytes(policies.build("water_tank", "swapped"))
    iface = policies.INTERFACES["water_tank"]
    data["controller"] = {
        "kind": "onnx", "model": str(running),
        "sha256": hashlib.sha256(running.read_bytes()).hexdigest(),
        "inputs": list(iface.inputs), "outputs": list(iface.outputs),
        "input_offset": list(iface.input_offset), "input_scale": list(iface.input_scale),
        "output_offset": list(iface.output_offset), "output_scale": list(iface.output_scale),
    }
    data["fleet"] = {"url": url, "site_id": "works-1", "trusted_keys": str(trusted)}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_an_assigned_version_lands_in_shadow_through_the_communications_process(
        nats_server: NatsServer, tmp_path: Path) -> None:
    (tmp_path / "centre").mkdir()
    central = make_central(tmp_path / "centre")
    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    rolled = central.registry.get("tank", version).sha256
    path = _onnx_site(tmp_path, nats_server.url, central.registry.trusted_dir)
    site = load_config(path)

    async def scenario() -> tuple[str | None, Mode, int]:
        link = CommsLink(site, path, ping_interval_s=0.1)
        clock = Clock()
        gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                     startup_wait_s=0.0, servers=False, northbound=link,
                     audit_path=site.audit.path)
        link.handler = gw
        centre = await nats.connect(nats_server.url)
        await gw.open()
        cycles = 0
        try:
            js = centre.jetstream()
            await models.ensure_buckets(js)
            await models.publish(js, central.registry, "tank", version, "release-manager")
            await models.assign(js, ["works-1"], "tank", version, "rm", stage=1,
                                rollout="r-e2e")
            deadline = time.monotonic() + DEADLINE_S
            while gw.policy is None or gw.policy.model_sha256 != rolled:
                assert time.monotonic() < deadline, "the version never reached the core"
                clock.now += site.site.cycle_ms / 1000.0
                # live readings (a frozen one would trip), changing slower than their limits
                wobble = 0.001 * (cycles % 20)
                for name, value in (("level", 2.5 + wobble), ("inflow_rate", 0.01 + wobble / 10),
                                    ("demand", 0.005), ("uptime_s", clock.now)):
                    gw.store.update(name, value, True, clock.now)
                await gw.cycle(clock())
                cycles += 1
                await asyncio.sleep(0.01)  # the channel and the comms process get their turn
            assert gw.supervisor is not None
            return gw.policy.model_sha256, gw.supervisor.mode, cycles
        finally:
            await centre.close()
            await gw.close()

    sha, mode, cycles = asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S + 60))
    assert sha == rolled
    assert mode is Mode.SHADOW
    assert cycles > 0
    steps = [json.loads(r.payload).get("step") for r in read_records(site.audit.path)
             if r.kind == "rollout"]
    assert steps[:4] == ["assigned", "fetched", "verified", "load_shadow"], steps
