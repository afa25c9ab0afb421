"""The fleet's nats-server configuration (``fleet nats-config``) on a real server: TLS with a
client certificate per site; a site publishes its own chain and nothing of another site's;
the centre reads everything and writes no site's records."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from gateway.cli import main
from gateway.config.schema import FleetSpec
from gateway.fleet.central import central_options
from gateway.fleet.connection import connect
from gateway.fleet.permissions import auth_config, write_fleet_config
from gateway.fleet.publisher import Publisher
from tests.fleet.helpers import until, write_records

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nats.aio.client import Client

    from tests.fleet.natsserver import NatsServer


def test_sites_are_confined_and_the_centre_cannot_write_their_records(
        nats_server_factory: Callable[..., NatsServer], tmp_path: Path) -> None:
    import nats

    certs = tmp_path / "fleet"
    write_fleet_config(certs, ["north", "south"], host="127.0.0.1")
    server = nats_server_factory(config=auth_config(certs, ["north", "south"]))
    url = f"tls://127.0.0.1:{server.port}"
    db = tmp_path / "audit.db"
    write_records(db, 12)
    server_args = ["--server", url, "--ca", str(certs / "ca.pem")]
    central_args = [*server_args, "--certificate", str(certs / "central.pem"),
                    "--private-key", str(certs / "central.key")]
    admin_args = [*server_args, "--certificate", str(certs / "fleet-admin.pem"),
                  "--private-key", str(certs / "fleet-admin.key")]
    assert main(["fleet", "init", "--sites", "north,south", *admin_args]) == 0

    def site_spec(name: str) -> FleetSpec:
        return FleetSpec(url=url, site_id=name, ca=certs / "ca.pem",
                         certificate=certs / f"{name}.pem", private_key=certs / f"{name}.key")

    async def scenario() -> None:
        errors: list[str] = []

        async def error(exc: Exception) -> None:
            errors.append(str(exc))

        north = await connect(site_spec("north"), error=error)
        centre = await nats.connect(**central_options(
            url, ca=certs / "ca.pem", certificate=certs / "central.pem",
            private_key=certs / "central.key"), error_cb=error)
        try:
            # the site's own chain goes through with exactly the rights it is given
            publisher = Publisher(north, "north", db, poll_s=0.02)
            task = asyncio.create_task(publisher.run())
            await until(lambda: publisher.state.acked_seq == 12, 30, "north's records held")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # another site's subjects and stream: refused by the server
            await north.publish("sg.site.south.audit", b"{}")
            await north.flush()
            await until(lambda: _seen(errors, 'publish to "sg.site.south.audit"'), 10,
                        "north's publish to south refused")
            answer = await _request(north, "$JS.API.STREAM.MSG.GET.SG_south")
            assert answer is None  # no answer: the request never reached JetStream
            await until(lambda: _seen(errors, "STREAM.MSG.GET.SG_south"), 10,
                        "north reading south's stream refused")
            await _subscribe(north, "sg.site.south.cmd.>")
            await until(lambda: _seen(errors, 'subscription to "sg.site.south.cmd.>"'), 10,
                        "north subscribing to south's commands refused")
            # the centre reads everything but cannot write a site's records
            for subject in ("sg.site.north.audit", "sg.site.north.event.trip",
                            "sg.site.north.heads"):
                await centre.publish(subject, b"{}")
                await centre.flush()
                await until(lambda s=subject: _seen(errors, f'publish to "{s}"'), 10,
                            f"the centre's publish to {subject} refused")
            held = await centre.jetstream().stream_info("SG_north")
            assert held.state.messages >= 12
            for api in ("$JS.API.STREAM.DELETE.SG_north", "$JS.API.STREAM.UPDATE.SG_north",
                        "$JS.API.STREAM.MSG.DELETE.SG_north"):
                assert await _request(centre, api) is None
                await until(lambda a=api: _seen(errors, a), 10, f"the centre's {api} refused")
        finally:
            await north.close()
            await centre.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    # and the central verify reads it all through its own rights
    assert main(["fleet", "verify", "north", *central_args, "--db", str(db)]) == 0


def _seen(errors: list[str], text: str) -> bool:
    # nats-py lowercases the server's message
    return any("permissions violation" in e.lower() and text.lower() in e.lower()
               for e in errors)


async def _request(client: Client, subject: str) -> Any:
    import nats.errors

    try:
        return await client.request(subject, b"{}", timeout=1.0)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None


async def _subscribe(client: Client, subject: str) -> None:
    await client.subscribe(subject)
    await client.flush()


def test_nats_config_writes_a_server_configuration(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    assert main(["fleet", "nats-config", "--sites", "a,b", "--out", str(out)]) == 0
    text = (out / "nats-server.conf").read_text()
    assert '"CN=a,OU=safety-gateway-fleet"' in text and "verify_and_map" in text
    assert (out / "a.key").stat().st_mode & 0o077 == 0
    context = ssl.create_default_context(cafile=str(out / "ca.pem"))
    context.load_cert_chain(str(out / "b.pem"), str(out / "b.key"))
    assert main(["fleet", "nats-config", "--sites", "a.b", "--out", str(out)]) == 2
    assert main(["fleet", "nats-config", "--sites", "central", "--out", str(out)]) == 2
