"""The status heartbeat against a real nats-server: a tripped site's heartbeat reaches the
central status stream with its mode, latch, incidents (from its real audit database), link
state and backlog, and its metrics; the centre reads it back and judges it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

import nats

from gateway.config.schema import FleetSpec
from gateway.fleet.connection import connect
from gateway.fleet.heartbeat import (
    AuditReading,
    gateway_version,
    run_heartbeat,
    status_document,
)
from gateway.fleet.status import Health, ensure_status_stream, judge, read_fleet
from gateway.fleet.subjects import STATUS_STREAM, SiteSubjects
from gateway.link.mirror import MirrorLayout
from tests.ops.test_dashboard_incident_work import passwords, tripped

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from gateway.runtime.gateway import Gateway
    from gateway.runtime.view import PlantView
    from tests.fleet.natsserver import NatsServer

SITE = "north-works"
DEADLINE_S = 30.0


class Link:
    """What the fleet publisher would tell the heartbeat."""

    link_state = "disconnected"
    backlog_records: int | None = 42


async def until(condition: Any, what: str) -> None:
    """Wait for ``await condition()`` to be true, up to the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.02)


async def tripped_site(tmp_path: Path, url: str, heartbeat_s: float
                       ) -> tuple[Gateway, Path, str, PlantView]:
    gw, db, ident = await tripped(tmp_path)
    assert gw.records.audit is not None and gw.control is not None
    assert await asyncio.to_thread(gw.records.audit.flush, 30.0)
    gw.site = dataclasses.replace(gw.site, fleet=FleetSpec(url=url, site_id=SITE,
                                                           heartbeat_s=heartbeat_s))
    return gw, db, ident, gw.control.view(gw.control.decisions[-1])


def test_a_tripped_sites_heartbeat_reaches_the_centre(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passwords(monkeypatch)

    async def main() -> tuple[list[Any], dict[str, Any], list[Any], list[Any], str, str]:
        gw, db, ident, view = await tripped_site(tmp_path, nats_server.url, 0.5)
        central = await nats.connect(nats_server.url)
        assert gw.site.fleet is not None
        site_client = await connect(gw.site.fleet)
        stop = asyncio.Event()
        try:
            js = central.jetstream()
            assert await ensure_status_stream(js)  # created ...
            assert not await ensure_status_stream(js)  # ... once: a second call leaves it
            beat = asyncio.create_task(run_heartbeat(site_client, gw.site, lambda: view,
                                                     Link(), stop=stop, audit_path=db))

            async def two_beats() -> bool:
                sites = await read_fleet(js, time.time())
                return bool(sites) and sites[0].document is not None and \
                    sites[0].document["number"] >= 2

            await until(two_beats, "two heartbeats stored")
            stop.set()
            await beat
            fresh = await read_fleet(js, time.time())
            received = fresh[0].received_wall_s
            # Judged by the server's receipt time: within three periods it is current; past
            # three periods (1.5 s) the same message makes the site stale.
            current = await read_fleet(js, received + 1.4)
            late = await read_fleet(js, received + 1.6)
            metrics = await js.get_last_msg(STATUS_STREAM, SiteSubjects(SITE).metrics)
            info = await js.stream_info(STATUS_STREAM)
            assert info.config.max_msgs_per_subject == 1
            assert info.state.messages == 2  # one status and one metrics, the latest only
            severity = gw.incidents.get(ident).severity if gw.incidents else None
            return (fresh, json.loads(metrics.data or b""), current, late, ident,
                    "" if severity is None else severity.value)
        finally:
            stop.set()
            await site_client.close()
            await central.close()
            await gw.close()

    fresh, metrics, current, late, ident, severity = asyncio.run(main())
    (site,) = fresh
    doc = site.document
    assert doc is not None
    assert site.site == SITE and site.health is Health.TRIPPED
    assert doc["core"]["latched"] is True and doc["core"]["trip_reason"]
    assert doc["core"]["mode"] in ("manual", "safe_stop")
    assert doc["core"]["incident_id"] == ident
    assert doc["open_incidents"] == 1 and doc["audit_error"] is None
    (incident,) = doc["incidents"]
    assert incident["id"] == ident and incident["open"] and incident["severity"] == severity
    assert (doc["link_state"], doc["backlog"]) == ("disconnected", 42)
    assert doc["gateway_version"] == gateway_version()
    assert doc["model"] is None  # an external AI: no model loaded at the site
    row = site.row()
    assert row["worst_severity"] == severity and row["mode"] == doc["core"]["mode"]
    assert [s.health for s in current] == [Health.TRIPPED]
    assert [s.health for s in late] == [Health.STALE]
    assert "unreachable" in (late[0].problem or "")
    counters = metrics["counters"]
    assert metrics["site"] == SITE and isinstance(counters, dict)
    assert counters and max(counters.values()) > 0  # the core's real counts, by name


def test_without_a_publisher_or_a_view_nothing_is_made_up(tmp_path: Path) -> None:
    # No audit database, no view yet, no publisher: each is null and said so, never a 0 or
    # "healthy".
    audit = AuditReading(tmp_path / "missing.db")
    audit.read()
    doc = status_document(SITE, now_wall_s=1000.0, heartbeat_s=5.0, number=1, view=None,
                          audit=audit, publisher=None, version="x")
    assert doc["core"] is None and doc["incidents"] is None and doc["open_incidents"] is None
    assert "no audit database" in doc["audit_error"]
    assert doc["link_state"] is None and doc["backlog"] is None
    assert judge(doc, 1.0)[0] is Health.DEGRADED
    assert judge(doc, 16.0)[0] is Health.STALE
    assert judge(None, 0.0)[0] is Health.UNREADABLE
    with_core = {**doc, "core": {"mode": "auto", "latched": False}}
    health, why = judge(with_core, 1.0)
    assert health is Health.INCIDENT and "cannot read its incidents" in (why or "")
    assert judge({**with_core, "open_incidents": 0}, 1.0) == (Health.OK, None)
    assert judge({**with_core, "open_incidents": 0}, 15.1)[0] is Health.STALE


def test_a_status_that_names_another_site_is_unreadable(nats_server: NatsServer) -> None:
    async def main() -> list[Any]:
        client = await nats.connect(nats_server.url)
        try:
            js = client.jetstream()
            await ensure_status_stream(js)
            forged = {"format": 1, "site": SITE, "heartbeat_s": 5.0, "core": None}
            await js.publish(SiteSubjects("other").status, json.dumps(forged).encode())
            await js.publish(SiteSubjects("garbled").status, b"\xff not json")
            return await read_fleet(js, time.time())
        finally:
            await client.close()

    sites = asyncio.run(main())
    assert [(s.site, s.health) for s in sites] == [("garbled", Health.UNREADABLE),
                                                   ("other", Health.UNREADABLE)]


def test_metrics_are_null_before_the_core_counted(tmp_path: Path) -> None:
    from gateway import load_config
    from gateway.fleet.heartbeat import metrics_document
    from tests.ops.test_dashboard_incident_work import ROOT

    site = load_config(ROOT / "configs" / "water_tank.yaml")
    layout = MirrorLayout.for_site(site).counters
    assert metrics_document(SITE, now_wall_s=1.0, view=None, layout=layout)["counters"] is None


def test_the_mirrors_snapshot_is_read_as_the_core_published_it(tmp_path: Path) -> None:
    # In the communications process the view is the mirror's snapshot (its time is wall_s).
    from gateway.link.mirror import MirrorSnapshot

    snap = MirrorSnapshot(cycle=7, heartbeat=3, wall_s=990.0, generation=1, mode="shadow",
                          latched=False, trip_reason="", incident_id="", bypasses=(),
                          sensor_values=(), sensor_good=(), sensor_read_s=(), applied=(),
                          proposal=(), source=())
    audit = AuditReading(tmp_path / "none.db")
    doc = status_document(SITE, now_wall_s=1000.0, heartbeat_s=5.0, number=1, view=snap,
                          audit=audit, publisher=None, version="x")
    assert doc["core"] == {"mode": "shadow", "latched": False, "trip_reason": None,
                           "incident_id": None, "cycle": 7, "last_cycle_wall_s": 990.0,
                           "age_s": 10.0}
