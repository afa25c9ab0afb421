"""Incident actions from the fleet page, against a real nats-server and a real safety core:
the page forwards the person's site account with each action, the site decides, and the page
answers with the site's decision (HTTP status and reason); nothing is decided at the centre."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import aiohttp
import nats

from gateway.config.schema import FleetSpec
from gateway.fleet.commands import run_command_responder
from gateway.fleet.connection import connect
from gateway.fleet.fleet_page import FleetPage
from gateway.incident.store import load_incident
from tests.ops.test_dashboard_incident_work import passwords, tripped

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from tests.fleet.natsserver import NatsServer

SITE = "north-works"


def test_the_page_forwards_actions_and_answers_the_sites_decision(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passwords(monkeypatch)

    async def main() -> tuple[Path, str, dict[str, tuple[int, dict[str, Any]]]]:
        gw, db, ident = await tripped(tmp_path)
        gw.site = dataclasses.replace(gw.site, fleet=FleetSpec(url=nats_server.url,
                                                               site_id=SITE))
        assert gw.site.fleet is not None
        site_client = await connect(gw.site.fleet)
        central = await nats.connect(nats_server.url)
        stop = asyncio.Event()
        responder = asyncio.create_task(run_command_responder(site_client, gw.site,
                                                              gw.requests, stop))
        page = FleetPage(central.jetstream(), client=central, port=0, action_timeout_s=2.0)
        await page.start()
        answers: dict[str, tuple[int, dict[str, Any]]] = {}
        try:
            url = f"http://127.0.0.1:{page.port}/api/incident"
            async with aiohttp.ClientSession() as http:

                async def post(body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
                    async with http.post(url, json=body, headers=headers) as r:
                        return r.status, await r.json()

                def action(user: str, password: str, kind: str, text: str,
                           site: str = SITE) -> dict[str, Any]:
                    return {"site": site, "user": user, "password": password,
                            "action": kind, "incident_id": ident, "args": [text]}

                # Until the responder listens, the site does not answer (504): retry.
                for _ in range(500):
                    answers["operator"] = await post(action("olga", "op-pw", "acknowledge",
                                                            "seen on the fleet page"))
                    if answers["operator"][0] != 504:
                        break
                    await asyncio.sleep(0.02)
                answers["viewer"] = await post(action("eye", "eye-pw", "note", "viewer"))
                answers["wrong password"] = await post(action("olga", "nope", "note", "x"))
                answers["other site"] = await post(action("olga", "op-pw", "note", "x",
                                                          site="nowhere"))
                answers["cross origin"] = await post(action("olga", "op-pw", "note", "x"),
                                                     Origin="http://evil.example")
                answers["no password"] = await post(action("olga", "", "note", "x"))
                answers["bad site"] = await post(action("olga", "op-pw", "note", "x",
                                                        site="a.b"))
            assert gw.records.audit is not None
            assert await asyncio.to_thread(gw.records.audit.flush, 30.0)
        finally:
            await page.stop()
            stop.set()
            await responder
            await site_client.close()
            await central.close()
            await gw.close()
        return db, ident, answers

    db, ident, answers = asyncio.run(main())
    status = {k: (code, body["accepted"]) for k, (code, body) in answers.items()}
    assert status == {"operator": (200, True), "viewer": (403, False),
                      "wrong password": (403, False), "other site": (504, False),
                      "cross origin": (403, False), "no password": (400, False),
                      "bad site": (400, False)}
    assert "may not note" in answers["viewer"][1]["reason"]
    assert answers["wrong password"][1]["reason"] == "wrong user name or password"
    assert "nobody answers" in answers["other site"][1]["reason"]
    incident = load_incident(db, ident)
    entries = [(e.who, e.text) for e in incident.timeline if "fleet page" in e.text]
    assert entries and entries[0][0] == "olga"
    assert not any(e.text in ("viewer", "x") for e in incident.timeline)
