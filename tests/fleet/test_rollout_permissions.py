"""A model rollout under the fleet's own nats-server permissions (``fleet nats-config``): a
site reads its own assignment and the approved models with exactly the rights it is given,
and reports its steps; another site's assignment stays out of its reach."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.adapters.base import WriteOutcome
from gateway.config.schema import FleetSpec
from gateway.fleet import models
from gateway.fleet.central import central_options
from gateway.fleet.connection import connect
from gateway.fleet.permissions import auth_config, write_fleet_config
from gateway.fleet.rollout import run_rollout_watcher
from simulators.zoo import policies
from tests.fleet.helpers import until
from tests.fleet.test_rollout import _tank, make_central

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from tests.fleet.natsserver import NatsServer


class Core:
    """The core as the watcher asks it: records every request, loads nothing."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, str]]] = []

    async def rollout(self, action: str, args: Mapping[str, str]) -> WriteOutcome:
        self.asked.append((action, dict(args)))
        return WriteOutcome(True, 0, f"{action} taken")


def test_a_site_takes_its_rollout_with_only_its_own_rights(
        nats_server_factory: Callable[..., NatsServer], tmp_path: Path) -> None:
    import nats

    certs = tmp_path / "fleet"
    write_fleet_config(certs, ["north", "south"], host="127.0.0.1")
    server = nats_server_factory(config=auth_config(certs, ["north", "south"]))
    url = f"tls://127.0.0.1:{server.port}"
    (tmp_path / "centre").mkdir()
    central = make_central(tmp_path / "centre")
    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    running = tmp_path / "running.onnx"
    running.write_bytes(policies.build("water_tank", "swapped"))
    north_site = replace(
        _tank(tmp_path, model=running, sha256=hashlib.sha256(running.read_bytes()).hexdigest()),
        fleet=FleetSpec(url=url, site_id="north", ca=certs / "ca.pem",
                        certificate=certs / "north.pem", private_key=certs / "north.key",
                        trusted_keys=central.registry.trusted_dir,
                        models_dir=tmp_path / "north-models"))

    async def scenario() -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
        errors: list[str] = []

        async def error(exc: Exception) -> None:
            errors.append(str(exc))

        centre = await nats.connect(**central_options(
            url, ca=certs / "ca.pem", certificate=certs / "central.pem",
            private_key=certs / "central.key"))
        assert north_site.fleet is not None
        north = await connect(north_site.fleet, error=error)
        core = Core()
        stop = asyncio.Event()
        try:
            js = centre.jetstream()
            await models.ensure_buckets(js)
            await models.publish(js, central.registry, "tank", version, "release-manager")
            await models.assign(js, ["north", "south"], "tank", version, "rm", stage=2,
                                rollout="r-perm")
            watcher = asyncio.create_task(run_rollout_watcher(north, north_site, core, stop))
            await until(lambda: any(a == "load_shadow" for a, _ in core.asked), 60,
                        f"north asks its core to load the version; errors {errors}")
            # South's assignment is not north's to read.
            kv_get = "$JS.API.DIRECT.GET.KV_sg_assignments.$KV.sg_assignments.south"
            try:
                await north.request(kv_get, b"", timeout=2)
            except Exception as exc:
                errors.append(f"request failed: {type(exc).__name__}")
            await until(lambda: any("sg_assignments.south" in e for e in errors), 10,
                        f"north reading south's assignment refused; errors {errors}")
            stop.set()
            await asyncio.wait_for(watcher, 30)
            return core.asked, errors
        finally:
            stop.set()
            await north.close()
            await centre.close()

    asked, _errors = asyncio.run(asyncio.wait_for(scenario(), 120))
    steps = [args.get("step") or action for action, args in asked]
    assert steps[:4] == ["assigned", "fetched", "verified", "load_shadow"], steps
    assert asked[3][1]["name"] == "tank" and asked[3][1]["version"] == str(version)
