"""``safety-gateway fleet status`` against a real nats-server: the table, the JSON, the
drill-down to one site's incidents, a stale site shown as unreachable, and the exit codes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import nats

from gateway.cli import main
from gateway.fleet.status import ensure_status_stream
from gateway.fleet.subjects import SiteSubjects

if TYPE_CHECKING:
    import pytest

    from tests.fleet.natsserver import NatsServer


def status(site: str, *, heartbeat_s: float, open_incidents: int, mode: str = "auto",
           latched: bool = False) -> dict[str, Any]:
    incidents = [{"id": f"INC-{site}-{k}", "open": True, "phase": "detected",
                  "severity": "high" if k == 0 else "low", "opened_wall_s": 1.7e9,
                  "detector": "input.quality.level", "reason": "level: bad quality"}
                 for k in range(open_incidents)]
    return {"format": 1, "site": site, "at_wall_s": time.time(), "number": 1,
            "heartbeat_s": heartbeat_s, "gateway_version": "9.9",
            "core": {"mode": mode, "latched": latched, "trip_reason": "x" if latched else None,
                     "incident_id": None, "cycle": 10, "last_cycle_wall_s": time.time(),
                     "age_s": 0.0},
            "open_incidents": open_incidents, "incidents": incidents, "audit_error": None,
            "model": {"path": "/m/tank-v3.onnx", "sha256": "ab" * 32},
            "link_state": "connected", "backlog": 0}


def publish(url: str, *docs: dict[str, Any]) -> None:
    async def go() -> None:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            await ensure_status_stream(js)
            for doc in docs:
                await js.publish(SiteSubjects(doc["site"]).status, json.dumps(doc).encode())
        finally:
            await client.close()

    asyncio.run(go())


def test_fleet_status_lists_every_site_and_never_shows_a_silent_one_healthy(
        nats_server: NatsServer, capsys: pytest.CaptureFixture[str]) -> None:
    # Before any site: the stream is created, the table is empty, exit 0.
    assert main(["fleet", "status", "--server", nats_server.url]) == 0
    assert "no site has sent a heartbeat yet" in capsys.readouterr().out
    # A healthy site, one with incidents, and one whose last heartbeat (every 1 ms) is older
    # than three periods by the time the command has connected and reads it.
    publish(nats_server.url, status("quiet", heartbeat_s=0.001, open_incidents=0),
            status("east", heartbeat_s=600.0, open_incidents=2, mode="manual"),
            status("west", heartbeat_s=600.0, open_incidents=0))
    assert main(["fleet", "status", "--server", nats_server.url, "--json"]) == 0
    rows = {r["site"]: r for r in json.loads(capsys.readouterr().out)["sites"]}
    assert [rows[s]["health"] for s in ("east", "quiet", "west")] == ["incident", "stale", "ok"]
    assert rows["quiet"]["stale"] and "unreachable" in rows["quiet"]["problem"]
    assert rows["east"]["worst_severity"] == "high" and rows["east"]["open_incidents"] == 2
    assert rows["west"]["model"]["path"] == "/m/tank-v3.onnx"
    assert (rows["west"]["link_state"], rows["west"]["backlog"]) == ("connected", 0)
    assert main(["fleet", "status", "--server", nats_server.url]) == 0
    out = capsys.readouterr().out
    (quiet,) = [line for line in out.splitlines() if line.startswith("quiet ")]
    assert "STALE" in quiet and "ok" not in quiet.split()
    assert "quiet: STALE, unreachable" in out
    (east,) = [line for line in out.splitlines() if line.startswith("east ")]
    assert "MANUAL" in east and "2 open (high)" in east and "tank-v3.onnx (abababababab)" in east
    # Drill-down: one site with its incidents.
    assert main(["fleet", "status", "--server", nats_server.url, "--site", "east"]) == 0
    out = capsys.readouterr().out
    assert "INC-east-0  OPEN  detected  severity high" in out
    assert "INC-east-1  OPEN  detected  severity low" in out


def test_fleet_status_exit_codes(nats_server: NatsServer,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    url = nats_server.url
    assert main(["fleet", "status", "--server", url, "--site", "nowhere"]) == 2
    assert "never sent a heartbeat" in capsys.readouterr().err
    assert main(["fleet", "status", "--server", url, "--site", "a.b"]) == 2
    assert main(["fleet", "status", "--server", "http://x"]) == 2
    assert main(["fleet", "status", "--server", url, "--timeout", "0"]) == 2
    nats_server.kill()
    assert main(["fleet", "status", "--server", url, "--timeout", "2"]) == 3
    err = capsys.readouterr().err
    assert "cannot reach" in err and "Traceback" not in err
