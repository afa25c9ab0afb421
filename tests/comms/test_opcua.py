"""The communications process with an OPC UA server (a real child, asyncua client): the mirror
reaches the nodes, writes reach the stub core with its outcome, and a failed login reaches the
core as a refused connection (the security listener's evidence)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import TYPE_CHECKING, Any

import pytest
from asyncua import Client, ua

from gateway.adapters.base import Role
from gateway.comms.supervisor import CommsSupervisor
from gateway.config.loader import load_config
from gateway.link.mirror import MirrorLayout, MirrorWriter
from tests.comms.conftest import StubCore, publish, site_file, until

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from pathlib import Path

G = "ns=2;s=Gateway."


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def test_opcua_nodes_follow_the_mirror_and_writes_reach_the_core(tmp_path: Path) -> None:
    async def main() -> None:
        path, port = site_file(tmp_path, opcua=True)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        core = StubCore()
        env = dict(os.environ, SG_TEST_BOSS="boss-pw")
        sup = CommsSupervisor(path, writer.name, core, lambda e: None, env=env)
        endpoint = f"opc.tcp://127.0.0.1:{port}/gateway/"
        client = Client(endpoint, timeout=5)
        connected = False
        try:
            expiry = 1_000_000.0 + 90.0
            publish(writer, 1, mode="safe_stop", latched=True, incident_id="INC-7",
                    bypasses=(("drift", expiry),))
            writer.publish(cycle=2, heartbeat=42, wall_s=1_000_000.0, mode="safe_stop",
                           latched=True, sensor_values=[2.5, 0.01, 0.5, 99.0],
                           sensor_good=[True, True, True, False], sensor_read_s=[0.0] * 4,
                           applied=[0.0, 0.0, 100.0], proposal=None, source=[4, 4, 4],
                           trip_reason="level above 4.8 m", incident_id="INC-7",
                           bypasses=(("drift", expiry),))
            await sup.start()

            async def up() -> bool:
                nonlocal connected
                try:
                    await client.connect()
                except (OSError, ua.UaError, TimeoutError, ConnectionError):
                    return False
                connected = True
                return True

            await until(up, 60, "the child's OPC UA server accepts")

            async def node(path: str) -> Any:
                return await client.get_node(G + path).read_value()

            await until(lambda: _is(node("Status.Heartbeat"), 42), 30, "the mirror arrives")
            assert await node("Status.Mode") == "safe_stop"
            assert await node("Status.Latched") is True
            assert await node("Status.TripReason") == "level above 4.8 m"
            assert await node("Status.IncidentId") == "INC-7"
            assert await node("Status.Bypasses") == ["drift"]
            [when] = await node("Status.BypassExpiries")
            assert when.replace(tzinfo=dt.UTC).timestamp() == pytest.approx(expiry, abs=0.01)
            assert await node("Sensors.level") == pytest.approx(2.5)
            assert await node("Actuators.drain_valve") == 100.0
            bad = await client.get_node(G + "Sensors.uptime_s").read_data_value(
                raise_on_bad_status=False)
            assert bad.StatusCode.value == ua.StatusCodes.BadNoCommunication

            valve = client.get_node(G + "Actuators.inflow_valve")
            await valve.write_value(ua.Variant(40.0, ua.VariantType.Double))
            who, values, atomic = core.writes[-1]
            assert values == {"inflow_valve": 40.0} and not atomic
            assert who.protocol == "opcua" and who.role is Role.OPERATOR
            with pytest.raises(ua.uaerrors.BadOutOfRange):
                await valve.write_value(ua.Variant(80.0, ua.VariantType.Double))
            assert (await node("Status.LastRejection")).startswith(
                "inflow_valve refused (envelope): ")

            # a failed login: evidence for the core, through the channel
            intruder = Client(endpoint, timeout=5)
            intruder.set_user("boss")
            intruder.set_password("guess")
            with pytest.raises(ua.UaError):
                await intruder.connect()
            intruder.disconnect_socket()
            await until(lambda: any(r[0] == "opcua" for r in core.reports), 10,
                        "the failed login reaches the core")
            login = next(r for r in core.reports if r[0] == "opcua")
            assert login[2:] == ("boss", "login_failed", "wrong password", 1)
        finally:
            if connected:
                await client.disconnect()
            await sup.stop()
            writer.close()
    run(main())


async def _is(value: Any, expected: Any) -> bool:
    try:
        return bool(await value == expected)
    except (OSError, ua.UaError):
        return False
