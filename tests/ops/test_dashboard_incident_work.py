"""Incident work on the dashboard against a real safety core: the dashboard's HTTP API on
loopback, handing its actions to a running gateway's own NorthboundRequests, which records them
in its audit chain (a real SQLite database) with the user and the address."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

import gateway
from gateway.adapters.base import ACCEPTED, ClientInfo, WriteOutcome
from gateway.audit import verify
from gateway.config.schema import HttpServerSpec, OpcUaServerSpec, OpcUaUser
from gateway.incident.model import Phase
from gateway.incident.store import load_incident
from gateway.ops.http import Dashboard
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.incident.test_via_gateway import Clock, Device
from tests.ops.test_http_actions import Core, login, post

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[2]
USERS = (OpcUaUser("boss", "SG_TEST_WORK_BOSS", "admin"),
         OpcUaUser("olga", "SG_TEST_WORK_OP", "operator"),
         OpcUaUser("eye", "SG_TEST_WORK_EYE", "viewer"))


def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_WORK_BOSS", "boss-pw")
    monkeypatch.setenv("SG_TEST_WORK_OP", "op-pw")
    monkeypatch.setenv("SG_TEST_WORK_EYE", "eye-pw")


async def tripped(tmp_path: Path) -> tuple[Gateway, Path, str]:
    """A running gateway (stepped, no servers of its own) whose level transmitter failed:
    tripped, one incident open."""
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    site = dataclasses.replace(site, northbound=dataclasses.replace(
        site.northbound, opcua=OpcUaServerSpec(users=USERS, allow_insecure_passwords=True)))
    db = tmp_path / "audit.db"
    clock = Clock()
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=db, servers=False)
    for name, value in (("level", 2.5), ("inflow_rate", 0.01)):
        gw.store.update(name, value, True, clock())
    await gw.open()
    for k in range(5):
        clock.now += 0.1
        gw.store.update("level", 2.5 + 0.002 * k, k < 3, clock.now)
        gw.store.update("inflow_rate", 0.01, True, clock.now)
        await gw.cycle(clock.now)
    assert gw.incidents is not None
    (incident,) = gw.incidents.open_incidents
    return gw, db, incident.id


def test_incident_work_on_the_dashboard_goes_through_the_core(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passwords(monkeypatch)

    async def main() -> tuple[Path, str]:
        gw, db, ident = await tripped(tmp_path)
        dash = Dashboard(gw.site, HttpServerSpec(port=free_port()), gw.requests,
                         audit_path=db)
        await dash.start()
        try:
            base = f"http://127.0.0.1:{dash.port}"
            act = base + "/api/incident"
            jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP address
            async with aiohttp.ClientSession(cookie_jar=jar) as http:

                async def as_user(user: str, password: str) -> str:
                    status, me = await login(http, base, user, password)
                    assert status == 200
                    return str(me["csrf"])

                async def do(csrf: str, action: str, *args: str) -> tuple[int, dict[str, Any]]:
                    return await post(http, act, {"action": action, "incident_id": ident,
                                                  "args": list(args)}, csrf)

                # A viewer may do none of it: 403, with the core's reason.
                csrf = await as_user("eye", "eye-pw")
                for action, args in (("severity", ("high", "x")), ("action_done", ("1", "")),
                                     ("force_resolve", ("s", "r"))):
                    status, body = await do(csrf, action, *args)
                    assert (status, body["accepted"]) == (403, False), action
                    assert "may not" in body["reason"]
                # An operator raises the severity (with a reason) ...
                csrf = await as_user("olga", "op-pw")
                status, body = await do(csrf, "severity", "critical", "level unknown")
                assert (status, body["accepted"]) == (200, True), body
                status, body = await do(csrf, "severity", "high", "")
                assert (status, body["accepted"]) == (409, False)
                # ... closes an action item of the review (recorded at the console) ...
                gw.incidents.review(ident, "chief", "console", "loose cable",
                                    actions=[("check cables", "maint", "2031-01-31")])
                status, body = await do(csrf, "action_done", "1", "done on the rounds")
                assert (status, body["accepted"]) == (200, True), body
                status, body = await do(csrf, "action_done", "1", "")
                assert (status, body["accepted"]) == (409, False)
                assert "closed already" in body["reason"]
                # ... and may not resolve, nor force it.
                for action, args in (("resolve", ("fixed",)), ("force_resolve", ("f", "r"))):
                    status, body = await do(csrf, action, *args)
                    assert (status, body["accepted"]) == (403, False), action
                # The evidence bundle (built from what the audit writer committed): recorded
                # by the core before it is served.
                assert gw.records.audit is not None
                assert await asyncio.to_thread(gw.records.audit.flush, 30.0)
                async with http.get(f"{base}/api/incidents/{ident}/evidence.zip") as r:
                    assert r.status == 200, await r.text()
                    assert r.headers["Content-Type"] == "application/zip"
                # An administrator's resolve with the checklist open is refused, saying what
                # is open (before: accepted) ...
                csrf = await as_user("boss", "boss-pw")
                status, body = await do(csrf, "resolve", "cable reseated")
                assert (status, body["accepted"]) == (409, False)
                assert "required checklist item(s) open" in body["reason"]
                assert gw.incidents.get(ident).is_open
                # ... bad arguments are refused, not a crash ...
                for action, args in (("force_resolve", ("only a summary",)),
                                     ("severity", ("high", "a", "b")),
                                     ("no_such_action", ())):
                    status, body = await do(csrf, action, *args)
                    assert (status, body["accepted"]) == (409, False), action
                # A download is recorded by the download alone, never by a POST.
                status, body = await do(csrf, "evidence")
                assert (status, body["accepted"]) == (400, False)
                # ... and forcing it records the reason.
                status, body = await do(csrf, "force_resolve", "cable reseated",
                                        "checklist kept on paper")
                assert (status, body["accepted"]) == (200, True), body
                # The page's list shows what it is about.
                assert await asyncio.to_thread(gw.records.audit.flush, 30.0)
                await dash.board.refresh()
                async with http.get(f"{base}/api/incidents/{ident}") as r:
                    detail = await r.json()
                assert detail["severity"] == "critical" and detail["phase"] == "resolved"
                assert detail["reviewed"] and detail["open_actions"] == 0
                assert detail["actions"][0]["done_by"] == "olga"
                assert detail["open_requirements"] == []
        finally:
            await dash.stop()
            await gw.close()
        return db, ident

    db, ident = asyncio.run(main())
    assert verify(db).ok
    incident = load_incident(db, ident)
    assert incident.phase is Phase.RESOLVED
    assert incident.resolution is not None and incident.resolution.who == "boss"
    assert incident.resolution.forced
    assert incident.resolution.force_reason == "checklist kept on paper"
    change = incident.severity_changes[-1]
    assert (change.by, change.reason) == ("olga", "level unknown")
    assert change.source.startswith("http:127.0.0.1:")
    (download,) = [n for n in incident.notes if n.text == "evidence bundle downloaded"]
    assert download.who == "olga" and download.source.startswith("http:127.0.0.1:")


class Refusing(Core):
    """A core that refuses to record evidence downloads (as when it keeps no incidents)."""

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        self.incidents.append((client, action, incident_id, args))
        if action == "evidence":
            return WriteOutcome(False, 4, "this gateway keeps no incidents (audit off)")
        return ACCEPTED


def test_no_evidence_is_served_unless_the_core_records_the_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passwords(monkeypatch)

    async def main() -> None:
        gw, db, ident = await tripped(tmp_path)
        await gw.close()
        core = Refusing()
        dash = Dashboard(gw.site, HttpServerSpec(port=free_port()), core, audit_path=db)
        await dash.start()
        try:
            base = f"http://127.0.0.1:{dash.port}"
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                assert (await login(http, base, "olga", "op-pw"))[0] == 200
                async with http.get(f"{base}/api/incidents/{ident}/evidence.zip") as r:
                    assert r.status == 409
                    assert r.headers["Content-Type"].startswith("application/json")
                    body = await r.json()
                assert body["reason"] == "this gateway keeps no incidents (audit off)"
            (client, action, asked, args) = core.incidents[-1]
            assert (client.user, action, asked, args) == ("olga", "evidence", ident, ())
        finally:
            await dash.stop()

    asyncio.run(main())
