"""The fleet page in a real browser (Debian's chromium, driven by Playwright) against a real
nats-server holding the sites' heartbeats: the table, a stale site shown unreachable, the
drill-down to a site's incidents, and, once the server is gone, the page saying so and a site
whose last heartbeat ages past three periods turning stale on the page itself. Waits are on
page state with deadlines, never sleeps; screenshots go into the test's tmp folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import nats
from playwright.async_api import async_playwright, expect

from gateway.fleet.fleet_page import FleetPage
from gateway.fleet.status import ensure_status_stream
from gateway.fleet.subjects import SiteSubjects
from tests.fleet.test_status_cli import status

if TYPE_CHECKING:
    from tests.fleet.natsserver import NatsServer

CHROMIUM = Path("/usr/bin/chromium")


def test_the_fleet_page_shows_every_site_and_a_silent_one_as_unreachable(
        nats_server: NatsServer, tmp_path: Path) -> None:
    async def main() -> tuple[list[str], dict[str, Any], int, list[dict[str, Any]]]:
        client = await nats.connect(nats_server.url)
        js = client.jetstream()
        await ensure_status_stream(js)
        for doc in (status("east", heartbeat_s=600.0, open_incidents=2, mode="manual"),
                    status("west", heartbeat_s=600.0, open_incidents=0),
                    status("quiet", heartbeat_s=0.001, open_incidents=0),
                    # Healthy now; silent from here on: stale after 4.5 s.
                    status("fading", heartbeat_s=1.5, open_incidents=0)):
            await js.publish(SiteSubjects(doc["site"]).status, json.dumps(doc).encode())
        # The site "east" answers incident requests: here a stand-in that records what came
        # and accepts it (the real site's decisions: test_fleet_page_actions, test_commands).
        asked: list[dict[str, Any]] = []

        async def east_site(msg: Any) -> None:
            asked.append(json.loads(msg.data))
            await msg.respond(json.dumps({"format": 1, "site": "east", "accepted": True,
                                          "code": 0, "reason": "note recorded; phase "
                                          "investigating", "refusal": None}).encode())

        await client.subscribe(SiteSubjects("east").command("incident"), cb=east_site)
        page_server = FleetPage(js, client=client, port=0, period_s=0.2)
        await page_server.start()
        errors: list[str] = []
        try:
            url = f"http://127.0.0.1:{page_server.port}/"
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as r:
                    headers = dict(r.headers)
                async with http.get(url + "api/sites/nowhere") as r:
                    missing = r.status
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=["--no-sandbox"])
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 900})
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(url)
                    rows = page.locator("#sites tbody tr")
                    await expect(rows).to_have_count(4, timeout=15_000)
                    east = page.locator("#sites tr[data-site='east']")
                    await expect(east).to_have_attribute("data-health", "incident")
                    await expect(east.locator("td").nth(2)).to_have_text("MANUAL")
                    await expect(east.locator("td").nth(3)).to_have_text("2 (high)")
                    west = page.locator("#sites tr[data-site='west']")
                    await expect(west).to_have_attribute("data-health", "ok")
                    await expect(west.locator("td").nth(7)).to_have_text(
                        "tank-v3.onnx (abababababab)")
                    quiet = page.locator("#sites tr[data-site='quiet']")
                    await expect(quiet).to_have_attribute("data-health", "stale")
                    await expect(quiet.locator("td.health")).to_have_text(
                        "STALE (unreachable)")
                    await expect(quiet.locator("td").nth(2)).to_have_text("AUTO (last known)")
                    await expect(page.locator("#stale-banner")).to_be_visible()
                    await page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)
                    # Drill-down: the site's incidents, from its last heartbeat.
                    await east.click()
                    incidents = page.locator("#site-incidents tbody tr")
                    await expect(incidents).to_have_count(2)
                    await expect(incidents.first.locator("td").first).to_have_text(
                        "INC-east-0")
                    await expect(incidents.first.locator("td").nth(3)).to_have_text("high")
                    await expect(page.locator("#detail-site")).to_have_text("east")
                    # Work an incident: the site's answer is shown, the password cleared.
                    await page.locator("#work-user").fill("olga")
                    await page.locator("#work-password").fill("op-pw")
                    await page.locator("#work-incident").select_option("INC-east-1")
                    await page.locator("#work-action").select_option("note")
                    await page.locator("#work-text").fill("called the site")
                    await page.locator("#work-send").click()
                    await expect(page.locator("#work-result")).to_have_text(
                        "accepted by east: note recorded; phase investigating")
                    await expect(page.locator("#work-password")).to_have_value("")
                    await page.screenshot(path=str(tmp_path / "fleet-east.png"),
                                          full_page=True)
                    # The server goes away: the page says it cannot read, and a site whose
                    # last heartbeat ages past three periods turns stale on the page itself.
                    nats_server.kill()
                    await expect(page.locator("#link-lost")).to_be_visible(timeout=30_000)
                    fading = page.locator("#sites tr[data-site='fading']")
                    await expect(fading).to_have_attribute("data-health", "stale",
                                                           timeout=15_000)
                    await expect(page.locator("#stale-sites")).to_have_text(
                        "fading, quiet")
                    await expect(west).to_have_attribute("data-health", "ok")
                finally:
                    await browser.close()
        finally:
            await page_server.stop()
            # nats-py's close flushes to the server the test killed: it may say so.
            with contextlib.suppress(ConnectionResetError):
                await client.close()
        return errors, headers, missing, asked

    errors, headers, missing, asked = asyncio.run(main())
    assert [(a["user"], a["password"], a["action"], a["incident_id"], a["args"],
             a["requester"]) for a in asked] == [
        ("olga", "op-pw", "note", "INC-east-1", ["called the site"], "fleet-page")]
    assert errors == []
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert missing == 404
