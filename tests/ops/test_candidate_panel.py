"""The dashboard's candidate panel: the candidate site's verdicts, carried in the view's gauge
block under ``candidate.`` names (gateway.runtime.candidate), graded by gateway.ops.panels and
shown by the page in a real browser (Debian's chromium, driven by Playwright) against a real
gateway on loopback with a simulated Modbus PLC. Waits are on page state, never sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from dataclasses import replace
from pathlib import Path

from playwright.async_api import async_playwright, expect

from gateway.config.schema import Commissioning, HttpServerSpec, Table
from gateway.ops.panels import candidate, detectors
from gateway.runtime.gateway import Gateway
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port
from tests.ops.test_dashboard_browser import CHROMIUM, shot
from tests.ops.test_margins import view
from tests.runtime.test_gateway_modbus import site_for

NAN = math.nan


def test_no_candidate_no_panel_and_the_detector_panel_never_shows_candidate_gauges() -> None:
    v = view()
    assert candidate(v) is None
    names = ("violation_rate", "candidate.judged", "candidate.disagreements", "candidate.clamp",
             "candidate.reject", "candidate.trip", "candidate.mode", "candidate.errors",
             "candidate.last_disagreement_utc", "candidate.clamp.valve.max",
             "candidate.trip.violation_rate")
    values = (3.0, 120.0, 7.0, 9.0, 0.0, 2.0, 2.0, 0.0, 1.7e9, 9.0, 2.0)
    v = dataclasses.replace(v, detector_names=names, detector_values=values,
                            detector_limits=(20.0,) + (NAN,) * 10)
    assert [d["name"] for d in detectors(v)] == ["violation_rate"]
    c = candidate(v)
    assert c == {"judged": 120, "disagreements": 7, "clamp": 9, "reject": 0, "trip": 2,
                 "mode": 2, "errors": 0, "last_disagreement_utc": 1.7e9, "level": "warn",
                 "verdicts": [{"action": "clamp", "name": "valve.max", "count": 9},
                              {"action": "trip", "name": "violation_rate", "count": 2}]}
    off = dataclasses.replace(v, detector_values=(*values[:7], 1.0, NAN, 9.0, 2.0))
    c = candidate(off)
    assert c is not None
    assert c["level"] == "bad" and c["errors"] == 1 and c["last_disagreement_utc"] is None


async def scenario(folder: Path) -> None:
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)  # level, m
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])  # inflow rate
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])  # 30 %, 30 %
        base = site_for(plc.port, free_port())
        http_port = free_port()
        site = replace(base, northbound=replace(
            base.northbound, http=HttpServerSpec(host="127.0.0.1", port=http_port)),
            detection=replace(base.detection, max_rate_per_s=(), stale_after_ms=10_000.0))
        # The candidate: the same site with the pump's max at 10 %, under the 30 % the
        # fallback holds it at (a fixed value): every cycle it would clamp the pump.
        cand = replace(site, envelope=replace(site.envelope, limits=tuple(
            replace(lim, max=10.0) if lim.actuator == "outflow_pump" else lim
            for lim in site.envelope.limits)))
        site = replace(site, commissioning=Commissioning(candidate=Path("cand.yaml"),
                                                         candidate_site=cand))
        audit = folder / "audit.db"
        site = replace(site, audit=replace(site.audit, path=audit))
        gw = Gateway(site, engine="cython", audit_path=audit)
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        try:
            await asyncio.wait_for(gw.ready.wait(), 20)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=["--no-sandbox"])
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 1400})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(f"http://127.0.0.1:{http_port}/")
                    await expect(page.locator("#mode")).to_have_text("MANUAL", timeout=15_000)
                    await expect(page.locator("#candidate-panel")).to_be_visible()
                    row = page.locator("#candidate-verdicts tr[data-name='outflow_pump.max']")
                    await expect(row.locator("td").nth(1)).to_have_text("clamp")
                    await expect(row.locator("td").nth(2)).to_have_text(re.compile(r"^[1-9]\d*$"))
                    await expect(page.locator("#candidate-status")).to_have_attribute(
                        "data-level", "warn")
                    await expect(page.locator("#candidate-last")).to_have_text(
                        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
                    await expect(page.locator("#candidate-judged")).to_have_text(
                        re.compile(r"^[1-9]\d*$"))
                    # The count moves on, cycle after cycle.
                    first = int(await row.locator("td").nth(2).text_content() or "0")
                    await expect(row.locator("td").nth(2)).not_to_have_text(str(first))
                    # The candidate's gauges are not detectors of the enforced site.
                    await expect(page.locator("#detectors tr[data-name^='candidate.']")
                                 ).to_have_count(0)
                    await expect(page.locator("#detectors tr[data-name='violation_rate']")
                                 ).to_have_count(1)
                    await shot(page, folder, "candidate")
                    # Nothing reached the pump but the enforced side's 30 %.
                    assert gw.applied[1] == 30.0
                    assert errors == []
                finally:
                    await browser.close()
        finally:
            stop.set()
            await runner


def test_the_page_shows_the_candidates_verdicts_live(tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "install Debian's chromium (apt-get install -y chromium)"
    asyncio.run(scenario(tmp_path))
