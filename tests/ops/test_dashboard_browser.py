"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
gateway on loopback: a simulated Modbus PLC, the gateway's southbound client, supervisor and
cycle, and its northbound servers with the dashboard in this process (``Gateway(servers=True)``,
as drills run it), reading incidents and events from the audit database the core writes.
Screenshots go into the test's tmp folder.

Waits are on page state with deadlines (``expect(...)``), never sleeps.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.async_api import Page, async_playwright, expect

from gateway.audit import read_records
from gateway.config.schema import HttpServerSpec, OpcUaServerSpec, OpcUaUser, Table
from gateway.runtime.gateway import Gateway
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port
from tests.runtime.test_gateway_modbus import site_for

if TYPE_CHECKING:
    import pytest

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a long test secret"
# How soon the page must show a trip: the cycle (100 ms), the event stream's throttle (200 ms)
# and the page's drawing fit well inside; the rest is slack for a loaded host.
TRIP_SHOWN_S = 2.0


async def shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def scenario(folder: Path) -> dict[str, float]:
    measured: dict[str, float] = {}
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)  # level, m
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])  # inflow rate
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])  # 30 %, 30 %
        base = site_for(plc.port, free_port())
        http_port = free_port()
        # The test moves the level in steps: no rate-of-change check on it here (the trip
        # must come from the range check, when the test says so); and a loaded host that
        # stalls this process (the browser shares two cores) must not trip it on staleness.
        # The site's users are its OPC UA users (the server runs too): one admin.
        opcua = OpcUaServerSpec(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/gateway/",
                                users=(OpcUaUser("boss", "SG_TEST_BROWSER_BOSS", "admin"),),
                                allow_insecure_passwords=True)
        site = replace(base, northbound=replace(
            base.northbound, http=HttpServerSpec(host="127.0.0.1", port=http_port),
            opcua=opcua), detection=replace(base.detection, max_rate_per_s=(),
                                            stale_after_ms=10_000.0))
        url = f"http://127.0.0.1:{http_port}/"
        audit = folder / "audit.db"
        # The dashboard reads incidents from the site's audit database: the one the core writes.
        site = replace(site, audit=replace(site.audit, path=audit))

        async def start() -> tuple[Gateway, asyncio.Event, asyncio.Task[None]]:
            gw = Gateway(site, engine="cython", audit_path=audit)
            stop = asyncio.Event()
            task = asyncio.create_task(gw.run(stop))
            await asyncio.wait_for(gw.ready.wait(), 20)
            return gw, stop, task

        gw, stop, runner = await start()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=["--no-sandbox"])
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(url)
                    # The page loads and shows the site and the mode (the site starts MANUAL).
                    await expect(page.locator("#site")).to_have_text("water-tank",
                                                                     timeout=15_000)
                    await expect(page.locator("#mode")).to_have_text("MANUAL", timeout=15_000)
                    await expect(page.locator("#link-lost")).to_be_hidden()
                    await expect(page.locator("#latch")).to_be_hidden()
                    # The header: the audit and the device link are healthy, no incident.
                    await expect(page.locator("#audit-health")).to_have_attribute(
                        "data-level", "ok")
                    await expect(page.locator("#device-health")).to_have_text(
                        re.compile(r"^plc connected \(0 reconnects\)$"))
                    await expect(page.locator("#device-health")).to_have_attribute(
                        "data-level", "ok")
                    await expect(page.locator("#audit-bad")).to_be_hidden()
                    await expect(page.locator("#devices-bad")).to_be_hidden()
                    await expect(page.locator("#incident")).to_have_text("none")
                    # Detectors: the level's range check well inside its threshold.
                    level_range = page.locator("#detectors tr[data-name='input.range.level']")
                    await expect(level_range).to_have_attribute("data-level", "ok")
                    await expect(level_range.locator(".limit")).to_have_text("0")
                    # Per actuator: applied value and source; per sensor: the level's value.
                    inflow = page.locator("#actuators tr[data-name='inflow_valve']")
                    await expect(inflow.locator(".source")).to_have_text("fallback")
                    await expect(inflow.locator(".applied")).to_have_text(re.compile(r"\d+ %"))
                    level = page.locator("#sensors tr[data-name='level']")
                    await expect(level.locator(".value")).to_have_text("2.5 m")
                    await expect(level.locator(".quality")).to_have_text("good")
                    # Margins: every limit, constraint, interlock and kept range, with numbers.
                    await expect(page.locator("#margins tbody tr")).to_have_count(8)
                    interlock = page.locator("#margins tr[data-name='high_level_closes_inflow']")
                    await expect(interlock.locator(".margin")).to_have_text("2")  # 4.5 - 2.5
                    await shot(page, folder, "1-manual")

                    # A drift: the level rises toward the interlock; its margin shrinks live.
                    await plc.set_float32(Table.INPUT_REGISTER, 0, 4.25)
                    await expect(interlock.locator(".margin")).to_have_text("0.25",
                                                                            timeout=5_000)
                    await expect(page.locator("#mode")).to_have_text("MANUAL")

                    # The level transmitter reads out of its range: the gateway trips into
                    # SAFE_STOP and latches; the page shows it within TRIP_SHOWN_S.
                    await plc.set_float32(Table.INPUT_REGISTER, 0, 7.0)
                    t0 = time.monotonic()
                    await expect(page.locator("#mode")).to_have_text(
                        "SAFE_STOP", timeout=TRIP_SHOWN_S * 1000)
                    measured["trip_shown_s"] = time.monotonic() - t0
                    await expect(page.locator("#latch")).to_be_visible()
                    await expect(page.locator("#trip-reason")).not_to_have_text("")
                    await expect(inflow.locator(".source")).to_have_text("safe")
                    assert gw.supervisor is not None
                    assert gw.supervisor.modes.latched  # the page shows what the core did
                    # The range check's statistic is above its threshold, and shown so.
                    await expect(level_range).to_have_attribute("data-level", "bad")
                    excursion = float(await level_range.locator(".value").inner_text())
                    assert excursion > 0, excursion
                    # The incident: in the header with its phase and age, in the list, and
                    # selected with its checklist and timeline; the trip among recent events.
                    incident_id = gw.incidents.open_incidents[-1].id if gw.incidents else ""
                    assert incident_id
                    await expect(page.locator("#incident")).to_have_text(
                        re.compile(rf"^{re.escape(incident_id)} · (DETECTED|CONTAINED) · "
                                   r"\d+ s old$"), timeout=5_000)
                    row = page.locator(f"#incidents tr[data-id='{incident_id}']")
                    await expect(row.locator(".phase")).to_have_text(
                        re.compile("^(detected|contained)$"))
                    await expect(row.locator(".checklist")).to_have_text(re.compile(r"^\d+/\d+$"))
                    await expect(page.locator("#sel-id")).to_have_text(incident_id)
                    await expect(page.locator("#sel-checklist > li").first).to_have_text(
                        re.compile(r"^detection: \d+/\d+ done"))
                    await expect(page.locator("#sel-timeline tbody tr").first).to_be_visible()
                    await expect(page.locator(
                        "#events tr[data-kind='event'] .text").first).to_have_text(
                        re.compile("input.range.level"))
                    # Evidence is not for anyone who can see the page: refused without login.
                    await page.click("#evidence")
                    await expect(page.locator("#evidence-result")).to_have_text(
                        "refused: log in to download evidence")
                    await shot(page, folder, "2-safe-stop")

                    # Read-only without login: a reset is refused, and nothing changes.
                    result = page.locator("#action-result")
                    await page.click("#reset-trip")
                    await expect(result).to_have_text("reset trip: refused: log in first")
                    await expect(page.locator("#latch")).to_be_visible()
                    # The level is back in range; the admin logs in and resets the trip.
                    await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
                    await expect(level.locator(".value")).to_have_text("2.5 m", timeout=5_000)
                    await page.fill("#login-user", "boss")
                    await page.fill("#login-password", "wrong")
                    await page.click("#login")
                    await expect(result).to_have_text(re.compile("^login refused"))
                    await page.fill("#login-password", PASSWORD)
                    await page.click("#login")
                    await expect(page.locator("#who-user")).to_have_text("boss")
                    note = "<b>seen</b> on the dashboard"  # shown as text, never as markup
                    await page.fill("#incident-text", note)
                    await page.click("#acknowledge")
                    await expect(result).to_have_text(re.compile("^acknowledge: "))
                    await expect(result).to_have_attribute("data-ok", "true")
                    # Acknowledged: the incident moves to investigating, on the page too.
                    await expect(row.locator(".phase")).to_have_text("investigating",
                                                                     timeout=5_000)
                    await expect(page.locator("#incident")).to_have_text(
                        re.compile(" · INVESTIGATING · "))
                    await expect(page.locator("#sel-timeline tbody")).to_contain_text(note)
                    assert await page.locator("#sel-timeline b, #events b").count() == 0
                    # Resolving with the checklist and review open: the refusal, saying what
                    # is open, never "accepted".
                    await expect(page.locator("#sel-requires")).to_have_text(
                        re.compile(r"^\d+ open: "))
                    await expect(page.locator("#sel-review")).to_have_text("not recorded yet")
                    work = page.locator("#incident-result")
                    await page.fill("#resolve-summary", "level transmitter replaced")
                    await page.click("#resolve")
                    await expect(work).to_have_text(re.compile(
                        r"^resolve: refused: .* cannot be resolved: \d+ required checklist"))
                    await expect(work).to_have_attribute("data-ok", "false")
                    # Raising the severity starts the reporting clocks, shown with their state.
                    # (The playbook may have made it critical already when the recorder's
                    # window completed, racing this click: then the core refuses, and the page
                    # must say so; either way it shows the core's real answer.)
                    await page.select_option("#severity-level", "critical")
                    await page.fill("#severity-reason", "level unknown for minutes")
                    await page.click("#raise-severity")
                    await expect(work).to_have_text(re.compile("^severity critical: "))
                    assert gw.incidents is not None
                    raised = any(c.by == "boss" for c in
                                 gw.incidents.get(incident_id).severity_changes)
                    await expect(work).to_have_attribute("data-ok",
                                                         "true" if raised else "false")
                    await expect(page.locator("#sel-severity")).to_have_text("critical",
                                                                             timeout=5_000)
                    await expect(page.locator("#sel-deadlines li").first).to_have_text(
                        re.compile(r"^early_warning: due in "))
                    await expect(page.locator("#sel-deadlines li").first).to_have_attribute(
                        "data-state", "due")
                    # Logged in (an administrator), the evidence bundle downloads: a zip of
                    # the export, with the incident and its manifest.
                    async with page.expect_download(timeout=60_000) as download_info:
                        await page.click("#evidence")
                    download = await download_info.value
                    bundle = folder / "evidence.zip"
                    await download.save_as(bundle)
                    with zipfile.ZipFile(io.BytesIO(bundle.read_bytes())) as zf:
                        names = set(zf.namelist())
                        assert f"{incident_id}/incident.json" in names, names
                        assert f"{incident_id}/manifest.json" in names, names
                        exported = json.loads(zf.read(f"{incident_id}/incident.json"))
                        assert exported["incident"]["id"] == incident_id
                    await page.click("#reset-trip")
                    await expect(result).to_have_text(re.compile("^reset trip: "))
                    await expect(result).to_have_attribute("data-ok", "true")
                    await expect(page.locator("#latch")).to_be_hidden(timeout=5_000)
                    # Unlatched, the plant stays in SAFE_STOP until someone asks for more.
                    await page.select_option("#mode-request", "to_manual")
                    await page.click("#request-mode")
                    await expect(result).to_have_text(re.compile("^mode request to_manual: "))
                    await expect(result).to_have_attribute("data-ok", "true")
                    await expect(page.locator("#mode")).to_have_text("MANUAL", timeout=5_000)
                    assert not gw.supervisor.modes.latched
                    await shot(page, folder, "2b-reset-by-boss")

                    # The gateway goes away: the page says the link is lost...
                    stop.set()
                    await runner
                    await expect(page.locator("#link-lost")).to_be_visible(timeout=5_000)
                    await shot(page, folder, "3-link-lost")
                    # ...and when it is back, the page reconnects by itself (no reload).
                    gw, stop, runner = await start()
                    await expect(page.locator("#link-lost")).to_be_hidden(timeout=15_000)
                    await expect(page.locator("#cycle")).not_to_have_text("…")
                    await shot(page, folder, "4-reconnected")
                    # The PLC goes away: the device link's health turns bad, impossible to miss.
                    await plc.stop()
                    await expect(page.locator("#devices-bad")).to_be_visible(timeout=10_000)
                    await expect(page.locator("#devices-why")).to_have_text(re.compile("^plc "))
                    await expect(page.locator("#device-health")).to_have_attribute(
                        "data-level", "bad")
                    await shot(page, folder, "4b-device-lost")
                    assert errors == []
                except BaseException:
                    await shot(page, folder, "failure")  # kept for each failure
                    raise
                finally:
                    await browser.close()
        finally:
            stop.set()
            await runner
    # The core audited the dashboard's actions with the user, as it does OPC UA methods.
    ops = [r for r in read_records(audit) if r.kind == "operator"]
    assert [(r.actor, r.source.split(":")[0], r.data()["action"]) for r in ops] == [
        ("boss", "http", "reset_trip"), ("boss", "http", "to_manual")], ops
    return measured


def test_the_page_follows_the_gateway_through_a_trip_and_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CHROMIUM.exists(), "install Debian's chromium (apt-get install -y chromium)"
    monkeypatch.setenv("SG_TEST_BROWSER_BOSS", PASSWORD)
    measured = asyncio.run(scenario(tmp_path))
    print(f"trip shown in {measured['trip_shown_s']:.2f} s; screenshots in {tmp_path}")


async def stalled_core(folder: Path) -> None:
    from gateway.ops.http import Dashboard
    from tests.ops.test_margins import SITE, view

    dash = Dashboard(SITE, HttpServerSpec(host="127.0.0.1", port=free_port()))
    hostile = "<img src=x onerror=\"document.title='owned'\"><b>bold</b>"
    dash.publish(replace(view(), at_wall_s=time.time(), mode="safe_stop", latched=True,
                         trip_reason=hostile))
    await dash.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM),
                                               args=["--no-sandbox"])
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{dash.port}/")
                await expect(page.locator("#mode")).to_have_text("SAFE_STOP", timeout=15_000)
                # Data from the gateway is text, never markup.
                await expect(page.locator("#trip-reason")).to_have_text(hostile)
                assert await page.locator("#trip-reason b, #trip-reason img").count() == 0
                assert await page.title() != "owned"
                # The stream is up but the core publishes nothing new: the view ages and the
                # page says so (five cycles of 100 ms, at least 1 s).
                await expect(page.locator("#link-lost")).to_be_visible(timeout=5_000)
                await expect(page.locator("#link-why")).to_have_text(
                    re.compile("publishes nothing new"))
                await shot(page, folder, "5-stalled-core")
                # The core comes back: fresh views, cycle after cycle.
                async def cycles() -> None:
                    n = 2
                    while True:
                        dash.publish(replace(view(), at_wall_s=time.time(), cycle=n))
                        n += 1
                        await asyncio.sleep(0.1)

                publisher = asyncio.create_task(cycles())
                try:
                    await expect(page.locator("#link-lost")).to_be_hidden(timeout=5_000)
                finally:
                    publisher.cancel()
            finally:
                await browser.close()
    finally:
        await dash.stop()


def test_the_page_shows_a_stalled_core_and_escapes_what_it_shows(tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "install Debian's chromium (apt-get install -y chromium)"
    asyncio.run(stalled_core(tmp_path))
