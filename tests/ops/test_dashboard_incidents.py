"""The dashboard's incidents, recent events and evidence download (gateway.ops.incidents and
the routes of gateway.ops.http), against a real audit database holding a real incident (the
incident tests' rig: an AI hijack in AUTO, taken through the incident manager)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import zipfile
from typing import TYPE_CHECKING

import aiohttp
import pytest

from gateway.config.schema import HttpServerSpec, OpcUaServerSpec
from gateway.ops.http import Dashboard
from gateway.ops.incidents import MAX_TEXT, IncidentBoard, event_of, valid_id
from simulators.ports import free_port
from tests.incident.rig import Rig
from tests.ops.test_http_actions import USERS, Core, login
from tests.ops.test_margins import SITE, view

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.audit.chain import Record


@pytest.fixture(scope="module")
def incident_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One open incident (acknowledged: investigating), a trip event among the records."""
    rig = Rig(tmp_path_factory.mktemp("dash-incident"), after_s=1.0, window_s=2.0)
    rig.good(30)
    rig.to_auto()
    rig.hijack()
    rig.good(15)
    assert rig.audit is not None
    rig.audit.append("event", {"kind": "trip", "name": "envelope.gross",
                               "reason": "<b>inflow</b> far outside", "at_s": 1.0})
    ident = rig.manager.incidents[0].id
    rig.manager.acknowledge(ident, "alice", "hmi-1")
    rig.close()
    return rig.db, ident


def test_the_board_lists_incidents_with_progress_and_recent_events(
        incident_db: tuple[Path, str]) -> None:
    db, ident = incident_db
    board = IncidentBoard(db)
    assert board.document["error"] == "not read yet"
    board.read()
    doc = board.document
    assert doc["error"] is None
    (listed,) = doc["incidents"]
    assert (listed["id"], listed["phase"], listed["open"]) == (ident, "investigating", True)
    assert listed["detector"] == "envelope.gross"
    assert listed["total"] > 0 and 0 <= listed["done"] <= listed["total"]
    assert sum(p["total"] for p in listed["progress"]) == listed["total"]
    detail = board.detail(ident)
    assert detail is not None
    assert detail["timeline"][0]["kind"] == "opened"
    assert any(e["kind"] == "note" and e["who"] == "alice" for e in detail["timeline"])
    assert detail["checklist"][0]["phase"] == "detection"
    assert board.detail("INC-nope") is None
    # Recent events, newest first: the incident's records and the trip, text kept as text.
    events = doc["events"]
    assert events[0]["seq"] > events[-1]["seq"]
    trip = next(e for e in events if e["kind"] == "event")
    assert trip["text"] == "trip envelope.gross: <b>inflow</b> far outside"
    assert any(e["kind"] == "incident" and ident in e["text"] for e in events)
    # A second read takes only new records: nothing is listed twice.
    board.read()
    assert [e["seq"] for e in board.document["events"]] == [e["seq"] for e in events]


def test_a_missing_database_is_said_not_hidden(tmp_path: Path) -> None:
    board = IncidentBoard(tmp_path / "nothing.db")
    board.read()
    assert board.document["incidents"] == []
    assert board.document["error"] == f"no audit database at {tmp_path / 'nothing.db'}"


def test_event_texts_are_bounded_and_ids_checked() -> None:
    from gateway.audit.chain import Record

    rec: Record = Record(1, 0.0, "alarm", "gateway", "", json.dumps({"message": "x" * 5000}),
                         "", "")
    text = event_of(rec)["text"]
    assert len(text) == MAX_TEXT and text.endswith("…")
    assert event_of(Record(2, 0.0, "mode", "g", "", "not json", "", ""))["kind"] == "mode"
    assert valid_id("INC-water-tank-20261205T170016-1")
    for bad in ("", "../etc/passwd", "a/b", "x" * 65, "<b>"):
        assert not valid_id(bad)


def test_the_incidents_are_read_only_while_someone_looks() -> None:
    """(The server is never started here: the port is not bound.)"""
    now = [100.0]
    dash = Dashboard(SITE, HttpServerSpec(port=8099), clock=lambda: now[0])
    assert not dash.board.wanted()
    dash.state()
    assert dash.board.wanted()
    now[0] += 6.0
    assert not dash.board.wanted()


def test_state_carries_the_open_incident_with_phase_and_when_it_opened(
        incident_db: tuple[Path, str]) -> None:
    db, ident = incident_db
    dash = Dashboard(SITE, HttpServerSpec(port=8099), audit_path=db)
    dash.board.read()
    dash.publish(dataclasses.replace(view(), incident_id=ident))
    body = dash.state()
    assert body["incident"]["id"] == ident
    assert body["incident"]["phase"] == "investigating"
    assert body["incident"]["opened_wall_s"] == body["incidents"]["incidents"][0][
        "opened_wall_s"]
    # The view's detector gauges and health travel in the same document.
    assert body["view"]["detectors"] == [] and body["view"]["health"]["counted"] is False


def test_evidence_needs_a_login_with_a_role_that_may_read_the_audit(
        incident_db: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    db, ident = incident_db
    monkeypatch.setenv("SG_TEST_DASH_BOSS", "boss-pw")
    monkeypatch.setenv("SG_TEST_DASH_EYE", "eye-pw")
    monkeypatch.delenv("SG_TEST_DASH_GHOST", raising=False)
    site = dataclasses.replace(SITE, northbound=dataclasses.replace(
        SITE.northbound, opcua=OpcUaServerSpec(users=USERS, allow_insecure_passwords=True)))

    async def main() -> None:
        dash = Dashboard(site, HttpServerSpec(port=free_port()), Core(), audit_path=db)
        await dash.start()
        try:
            await dash.board.refresh()
            base = f"http://127.0.0.1:{dash.port}"
            evidence = f"{base}/api/incidents/{ident}/evidence.zip"
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                # The list and an incident's detail are read-only, like the page.
                async with http.get(f"{base}/api/incidents/{ident}") as r:
                    assert r.status == 200
                    assert (await r.json())["phase"] == "investigating"
                async with http.get(f"{base}/api/incidents/INC-none") as r:
                    assert r.status == 404
                # The evidence: refused without a session, and to a viewer.
                async with http.get(evidence) as r:
                    assert r.status == 401
                    assert (await r.json())["error"] == "log in to download evidence"
                assert (await login(http, base, "eye", "eye-pw"))[0] == 200
                async with http.get(evidence) as r:
                    assert r.status == 403
                    assert (await r.json())["error"] == "role viewer may not read the audit"
                # An administrator gets the bundle, built on request, as a zip.
                assert (await login(http, base, "boss", "boss-pw"))[0] == 200
                async with http.get(evidence) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"] == "application/zip"
                    assert r.headers["Content-Disposition"] == (
                        f'attachment; filename="evidence-{ident}.zip"')
                    data = await r.read()
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    names = set(zf.namelist())
                    assert {f"{ident}/incident.json", f"{ident}/manifest.json",
                            f"{ident}/audit_excerpt.jsonl", f"{ident}/report.md"} <= names
                    manifest = json.loads(zf.read(f"{ident}/manifest.json"))
                    assert manifest  # the export's own manifest, unchanged
                async with http.get(f"{base}/api/incidents/INC-none/evidence.zip") as r:
                    assert r.status == 404
                async with http.get(f"{base}/api/incidents/..%2Fx/evidence.zip") as r:
                    assert r.status == 404
        finally:
            await dash.stop()

    asyncio.run(main())


def test_evidence_without_a_database_is_a_clear_refusal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_DASH_BOSS", "boss-pw")
    monkeypatch.setenv("SG_TEST_DASH_EYE", "eye-pw")
    site = dataclasses.replace(SITE, northbound=dataclasses.replace(
        SITE.northbound, opcua=OpcUaServerSpec(users=USERS, allow_insecure_passwords=True)))

    async def main() -> None:
        dash = Dashboard(site, HttpServerSpec(port=free_port()), Core(),
                         audit_path=tmp_path / "none.db")
        await dash.start()
        try:
            base = f"http://127.0.0.1:{dash.port}"
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                assert (await login(http, base, "boss", "boss-pw"))[0] == 200
                async with http.get(f"{base}/api/incidents/INC-1/evidence.zip") as r:
                    assert r.status == 503
                    assert "cannot be built" in (await r.json())["error"]
        finally:
            await dash.stop()

    asyncio.run(main())


def test_new_records_appear_at_the_top(incident_db: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    from gateway.audit.log import AuditLog

    db = tmp_path / "audit.db"
    shutil.copy(incident_db[0], db)
    board = IncidentBoard(db)
    board.read()
    before = board.document["events"]
    with AuditLog(db) as audit:
        audit.append("alarm", {"message": "audit disk 95 % full"})
        assert audit.flush()
        board.read()
    after = board.document["events"]
    assert after[0]["kind"] == "alarm" and after[0]["text"] == "audit disk 95 % full"
    assert after[1:] == before
