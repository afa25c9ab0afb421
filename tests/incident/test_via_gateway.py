"""Incident work while the gateway runs: the CLI's ``--via`` goes through the gateway's real
OPC UA server on loopback, and the running gateway records it in its own audit chain (the CLI
cannot write the database the gateway holds)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

import gateway
from gateway.adapters.opcua.session import GatewayRefused, call_method
from gateway.audit import verify
from gateway.cli import main
from gateway.config.schema import OpcUaUser
from gateway.incident.model import Phase
from gateway.incident.store import load_incident
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Device:
    """A southbound device that takes writes and has nothing to read."""

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def refresh(self) -> None:
        return None

    async def write(self, values: dict[str, float]) -> None:
        return None

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def close(self) -> None:
        return None


def cli(*argv: str) -> int:
    return main(["incidents", *argv])


async def scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
    north = site.northbound
    assert north.modbus is not None and north.opcua is not None
    site = replace(site, northbound=replace(
        north, modbus=replace(north.modbus, port=free_port()),
        opcua=replace(north.opcua, endpoint=url, allow_anonymous=True,
                      users=(OpcUaUser("chief", "GW_TEST_CHIEF_PW", "admin"),
                             OpcUaUser("watcher", "GW_TEST_WATCHER_PW", "viewer")),
                      allow_insecure_passwords=True)))  # loopback test
    db = tmp_path / "audit.db"
    clock = Clock()
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=db)
    for name, value in (("level", 2.5), ("inflow_rate", 0.01)):
        gw.store.update(name, value, True, clock())
    await gw.open()
    try:
        # The level transmitter reports bad quality: the gateway trips and opens an incident.
        for k in range(5):
            clock.now += 0.1
            gw.store.update("level", 2.5 + 0.002 * k, k < 3, clock.now)
            gw.store.update("inflow_rate", 0.01, True, clock.now)
            await gw.cycle(clock.now)
        assert gw.incidents is not None
        (incident,) = gw.incidents.open_incidents
        ident = incident.id
        capsys.readouterr()

        def run(*argv: str) -> tuple[int, str, str]:
            code = cli(*argv)
            out = capsys.readouterr()
            return code, out.out, out.err

        # The database is held by the gateway: writing directly is refused, naming --via.
        code, _, err = await asyncio.to_thread(run, "note", ident, "direct", "--by", "ann",
                                               "--db", str(db))
        assert code == 1 and "--via" in err
        # An anonymous session is an operator: it may note and work the checklist ...
        code, out, err = await asyncio.to_thread(run, "note", ident, "transmitter cable loose",
                                                 "--via", url)
        assert code == 0, err
        assert "phase investigating" in out
        code, _, err = await asyncio.to_thread(run, "check", ident, "detection", "0",
                                               "--via", url)
        assert code == 0, err
        # ... the same item twice is refused by the incident, with its reason ...
        code, _, err = await asyncio.to_thread(run, "check", ident, "detection", "0",
                                               "--via", url)
        assert code == 1 and "already done" in err
        # ... but not resolve: that needs an administrator.
        code, _, err = await asyncio.to_thread(run, "resolve", ident, "--summary", "fixed",
                                               "--via", url)
        assert code == 1 and "BadUserAccessDenied" in err
        assert gw.incidents.get(ident).phase is Phase.INVESTIGATING
        # Bad arguments never reach the gateway.
        code, _, err = await asyncio.to_thread(run, "note", ident, "x", "--by", "ann",
                                               "--via", url)
        assert code == 2 and "--user" in err
        code, _, err = await asyncio.to_thread(run, "resolve", ident, "--summary", "fixed",
                                               "--via", url, "--user", "chief",
                                               "--password-env", "GW_TEST_UNSET_VAR")
        assert code == 2 and "GW_TEST_UNSET_VAR" in err
        # A wrong password cannot log in.
        code, _, err = await asyncio.to_thread(run, "resolve", ident, "--summary", "fixed",
                                               "--via", url, "--user", "chief",
                                               "--password-env", "GW_TEST_WRONG_PW")
        assert code == 1 and gw.incidents.get(ident).phase is Phase.INVESTIGATING
        chief = ("--via", url, "--user", "chief", "--password-env", "GW_TEST_CHIEF_PW")
        watcher = ("--via", url, "--user", "watcher", "--password-env", "GW_TEST_WATCHER_PW")
        # Resolving enforces the playbook's requirements as the CLI does: refused while
        # checklist items and the review are open, saying so (before: accepted).
        code, out, err = await asyncio.to_thread(
            run, "resolve", ident, "--summary", "cable reseated; level reads true again",
            *chief, "--json")
        assert code == 1, out
        assert '"accepted": false' in out and "no post-incident review recorded" in err
        assert gw.incidents.get(ident).phase is Phase.INVESTIGATING
        # Severity, the review and its action items, each refused for a viewer ...
        for argv in (("severity", ident, "high", "--reason", "x"),
                     ("review", ident, "--root-cause", "x"),
                     ("action-done", ident, "1")):
            code, _, err = await asyncio.to_thread(run, *argv, *watcher)
            assert code == 1 and "BadUserAccessDenied" in err, argv
        # ... and taken from an operator, recorded with who and from where.
        code, out, err = await asyncio.to_thread(
            run, "severity", ident, "critical", "--reason", "level unknown for minutes",
            "--via", url)
        assert code == 0, err
        code, _, err = await asyncio.to_thread(run, "severity", ident, "low", "--reason",
                                               "calmer", "--via", url)
        assert code == 1 and "can only be raised" in err
        code, out, err = await asyncio.to_thread(
            run, "review", ident, "--root-cause", "loose transmitter cable",
            "--factor", "no cable check in the rounds", "--action", "add cable check",
            "maint", "2031-01-31", "--via", url)
        assert code == 0, err
        code, _, err = await asyncio.to_thread(run, "review", ident, "--root-cause", "x",
                                               "--action", "a", "b", "31/01/2031",
                                               "--via", url)
        assert code == 1 and "2031" in err  # the due date, named by the core
        # A malformed review through the OPC UA method is refused with the reason, never a
        # crash: not JSON, too long, unknown keys, a malformed action item, missing arguments.
        for review, why in (("{not json", "not JSON"), ("[]", "JSON object"),
                            ('{"root_cause": "x", "blame": "y"}', "unknown keys"),
                            ('{"root_cause": "x", "actions": [["a", "b", "c"]]}',
                             "`actions` item 0"),
                            ('{"root_cause": "' + "x" * 20_000 + '"}', "at most 16000")):
            accepted, message = await call_method(url, None, None, "IncidentReview",
                                                  (ident, review))
            assert not accepted and why in message, message
        with pytest.raises(GatewayRefused, match="BadInvalidArgument"):
            await call_method(url, None, None, "IncidentReview", (ident,))
        assert len(gw.incidents.get(ident).actions) == 1
        code, out, err = await asyncio.to_thread(run, "action-done", ident, "1", "--note",
                                                 "in the rounds now", "--via", url)
        assert code == 0, err
        # Forcing is an administrator's: refused for an operator, recorded with the reason.
        code, _, err = await asyncio.to_thread(
            run, "resolve", ident, "--summary", "fixed", "--force", "--reason", "x",
            "--via", url)
        assert code == 1 and "BadUserAccessDenied" in err
        code, out, err = await asyncio.to_thread(
            run, "resolve", ident, "--summary", "cable reseated; level reads true again",
            "--force", "--reason", "checklist kept on paper during the night shift",
            *chief, "--json")
        assert code == 0, err
        assert '"accepted": true' in out
        assert gw.incidents.get(ident).phase is Phase.RESOLVED
        # Nobody listens there: exit 1 with the reason.
        code, _, err = await asyncio.to_thread(
            run, "note", ident, "late", "--via", f"opc.tcp://127.0.0.1:{free_port()}/gateway/")
        assert code == 1 and "cannot reach the gateway" in err
    finally:
        await gw.close()
    return db, ident


def test_an_operator_works_an_incident_through_the_running_gateway(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("GW_TEST_CHIEF_PW", "correct horse")
    monkeypatch.setenv("GW_TEST_WRONG_PW", "battery staple")
    monkeypatch.setenv("GW_TEST_WATCHER_PW", "just looking")
    monkeypatch.delenv("GW_TEST_UNSET_VAR", raising=False)
    db, ident = asyncio.run(scenario(tmp_path, capsys))
    # The gateway wrote it all to its own chain, with who did it and from where.
    assert verify(db).ok
    incident = load_incident(db, ident)
    assert incident.phase is Phase.RESOLVED
    (note,) = incident.notes
    assert note.text == "transmitter cable loose"
    assert note.source.startswith("opcua:127.0.0.1:")
    assert incident.resolution is not None
    assert incident.resolution.who == "chief"
    assert incident.resolution.summary == "cable reseated; level reads true again"
    assert incident.resolution.forced
    assert incident.resolution.force_reason == "checklist kept on paper during the night shift"
    change = incident.severity_changes[-1]
    assert change.level == "critical" and change.reason == "level unknown for minutes"
    assert change.source.startswith("opcua:127.0.0.1:")
    assert incident.review is not None
    assert incident.review.root_cause == "loose transmitter cable"
    assert incident.review.factors == ("no cable check in the rounds",)
    (item,) = incident.actions
    assert item.done_by is not None and item.note == "in the rounds now"
    done = [i for i in incident.checklist if i.done]
    assert len(done) == 1 and done[0].phase == "detection"
