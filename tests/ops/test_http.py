"""The dashboard's HTTP server on loopback: the page, /api/state and the event stream."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config.schema import HttpServerSpec
from gateway.ops.http import KEEPALIVE_S, MAX_RATE_HZ, Dashboard
from simulators.ports import free_port
from tests.ops.test_margins import SITE, view


def dashboard() -> Dashboard:
    # No audit database (not the shipped site's, which a demo run may have left behind).
    return Dashboard(SITE, HttpServerSpec(host="127.0.0.1", port=free_port()),
                     audit_path=Path("/nonexistent-sg-test/audit.db"))


async def read_events(resp: aiohttp.ClientResponse, n: int, timeout_s: float = 10.0
                      ) -> tuple[list[str], list[tuple[float, dict[str, Any]]]]:
    """The stream's field lines, and ``n`` state events with the loop time each arrived."""
    loop = asyncio.get_running_loop()
    lines: list[str] = []
    events: list[tuple[float, dict[str, Any]]] = []
    async with asyncio.timeout(timeout_s):
        while len(events) < n:
            raw = await resp.content.readline()
            assert raw, "stream ended"
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if line.startswith("data: "):
                events.append((loop.time(), json.loads(line[6:])))
    return lines, events


def test_state_before_and_after_the_first_view() -> None:
    async def main() -> None:
        dash = dashboard()
        await dash.start()
        base = f"http://127.0.0.1:{dash.port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/api/state") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                assert body["view"] is None
                assert body["site"]["site"] == "water-tank"
                assert [a["name"] for a in body["site"]["actuators"]] == [
                    "inflow_valve", "outflow_pump", "drain_valve"]
                assert body["site"]["actuators"][0]["limits"]["max"] == 100.0
                assert body["site"]["sensors"][0] == {"name": "level", "unit": "m",
                                                      "range": [0.0, 5.0]}
                assert body["site"]["interlocks"][0]["then"] == ["inflow_valve <= 0"]

                dash.publish(dataclasses.replace(view(level=4.6), mode="SAFE_STOP",
                                                 latched=True, trip_reason="range: level",
                                                 bypass_left_s=math.inf))
                async with http.get(base + "/api/state") as resp:
                    text = await resp.text()
                # JSON a browser can parse: no proposal (NaN) and an unbounded time are null
                assert "NaN" not in text and "Infinity" not in text
                assert json.loads(text)["view"]["bypass_left_s"] is None
                v = json.loads(text)["view"]
                assert (v["mode"], v["latched"], v["trip_reason"]) == (
                    "SAFE_STOP", True, "range: level")
                assert v["actuators"][0] == {"name": "inflow_valve", "applied": 30.0,
                                             "source": "fallback", "proposal": None}
                margin = {m["name"]: m["margin"] for m in v["margins"]}
                assert math.isclose(margin["high_level_closes_inflow"], -0.1)
        finally:
            await dash.stop()

    asyncio.run(main())


def test_the_page_is_our_own_files_under_a_strict_policy() -> None:
    async def main() -> None:
        dash = dashboard()
        await dash.start()
        base = f"http://127.0.0.1:{dash.port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/") as resp:
                    assert resp.status == 200
                    assert resp.content_type == "text/html"
                    page = await resp.text()
                    csp = resp.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp
                assert "http://" not in page and "https://" not in page  # nothing from outside
                assert "<script>" not in page  # no inline script (the policy forbids it too)
                async with http.get(base + "/dashboard.js") as resp:
                    assert resp.status == 200
                    script = await resp.text()
                assert "innerHTML" not in script  # data goes in as text only
                async with http.get(base + "/../pyproject.toml") as resp:
                    assert resp.status == 404
        finally:
            await dash.stop()

    asyncio.run(main())


def test_events_throttled_kept_alive_and_told_to_reconnect() -> None:
    async def main() -> None:
        dash = dashboard()
        dash.publish(view())
        await dash.start()
        stop = asyncio.Event()

        async def cycle() -> None:  # a core publishing at 50 Hz, faster than any page needs
            n = 1
            while not stop.is_set():
                n += 1
                dash.publish(dataclasses.replace(view(), cycle=n))
                await asyncio.sleep(0.02)

        try:
            async with (aiohttp.ClientSession() as http,
                        http.get(f"http://127.0.0.1:{dash.port}/api/events") as resp):
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                lines, first = await read_events(resp, 1)
                assert lines[0].startswith("retry: ")  # the browser reconnects by itself
                assert first[0][1]["incidents"]["error"] == "not read yet"
                publisher = asyncio.create_task(cycle())
                _, fast = await read_events(resp, 8)
                stop.set()
                await publisher
                # Throttled: no faster than MAX_RATE_HZ (some slack for a busy host's
                # timer), and every event shows a newer cycle.
                span = fast[-1][0] - fast[0][0]
                assert span >= (len(fast) - 1) / MAX_RATE_HZ * 0.9
                cycles = [e["view"]["cycle"] for _, e in fast]
                assert cycles == sorted(cycles) and cycles[-1] > cycles[0]
                # The incidents (read at most once a second) go out when they change: the
                # first message has them, the next ones say null until they are read again.
                assert fast[0][1]["incidents"] is None  # the stream's first had them
                dash.board.read()  # (no database here: its error is the news)
                _, after = await read_events(resp, 1)
                assert after[0][1]["incidents"]["error"].startswith("no audit database")
                # Nothing new: the same view comes again, older (a stalled core shows).
                _, still = await read_events(resp, 3)
                assert len({e["view"]["cycle"] for _, e in still}) == 1
                assert still[-1][1]["age_s"] > still[0][1]["age_s"]
                gaps = [b[0] - a[0] for a, b in itertools.pairwise(still)]
                assert all(g >= KEEPALIVE_S * 0.9 for g in gaps), gaps
                # Stopping the server ends the stream at once rather than at a timeout.
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await dash.stop()
                async with asyncio.timeout(5):
                    while await resp.content.readline():
                        pass
                assert loop.time() - t0 < 3.0
        finally:
            await dash.stop()

    asyncio.run(main())


def test_a_taken_port_is_an_os_error() -> None:
    async def main() -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            dash = Dashboard(SITE, HttpServerSpec(host="127.0.0.1", port=port))
            with pytest.raises(OSError, match=str(port)):
                await dash.start()
            await dash.stop()  # nothing started: a no-op

    asyncio.run(main())


def test_stopped_and_started_again_it_streams_again() -> None:
    async def main() -> None:
        dash = dashboard()
        dash.publish(view())
        await dash.start()
        await dash.stop()
        await dash.start()
        try:
            async with (aiohttp.ClientSession() as http,
                        http.get(f"http://127.0.0.1:{dash.port}/api/events") as resp):
                _, events = await read_events(resp, 2, timeout_s=10)
            assert events[0][1]["view"]["cycle"] == 1
        finally:
            await dash.stop()

    asyncio.run(main())


def test_metrics_are_served_beside_the_page() -> None:
    # Prometheus scrapes the communications process's HTTP server; the text follows the latest
    # view and passes promtool.
    from tests.ops.test_metrics import promtool_problems

    async def main() -> None:
        dash = dashboard()
        await dash.start()
        base = f"http://127.0.0.1:{dash.port}"
        try:
            async with aiohttp.ClientSession() as http:
                dash.publish(dataclasses.replace(view(level=4.6), mode="safe_stop",
                                                 latched=True))
                async with http.get(base + "/metrics") as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith("text/plain")
                    text = await resp.read()
            lines = text.decode().splitlines()
            assert 'safety_gateway_mode{mode="safe_stop",site="water-tank"} 1.0' in lines
            assert 'safety_gateway_latched{site="water-tank"} 1.0' in lines
            assert promtool_problems(text) == ""
        finally:
            await dash.stop()

    asyncio.run(main())
