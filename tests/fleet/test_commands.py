"""Incidents worked from the centre, against a real nats-server and a real safety core: the
site's responder checks the user against the site's own accounts, the core checks the role and
records the action in the site's audit chain; the centre only forwards and prints the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import nats

from gateway.audit import verify
from gateway.audit.store import read_records
from gateway.config.schema import FleetSpec
from gateway.fleet.commands import Unreachable, ask_incident, run_command_responder
from gateway.fleet.connection import connect
from gateway.incident.store import load_incident
from tests.ops.test_dashboard_incident_work import ROOT, passwords, tripped

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from gateway.fleet.commands import IncidentAnswer
    from tests.fleet.natsserver import NatsServer

SITE = "north-works"


def test_the_site_decides_incident_work_asked_by_the_centre(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passwords(monkeypatch)

    async def main() -> tuple[Path, str, dict[str, IncidentAnswer], dict[str, Any]]:
        gw, db, ident = await tripped(tmp_path)
        gw.site = dataclasses.replace(gw.site, fleet=FleetSpec(url=nats_server.url,
                                                               site_id=SITE))
        assert gw.site.fleet is not None
        site_client = await connect(gw.site.fleet)
        central = await nats.connect(nats_server.url)
        stop = asyncio.Event()
        responder = asyncio.create_task(run_command_responder(site_client, gw.site,
                                                              gw.requests, stop))
        answers: dict[str, IncidentAnswer] = {}
        cli: dict[str, Any] = {}
        try:
            async def ask(user: str, password: str, action: str, *args: str
                          ) -> IncidentAnswer:
                # The responder subscribes in its own task: retry until it answers.
                for _ in range(500):
                    try:
                        return await ask_incident(central, SITE, user=user, password=password,
                                                  action=action, incident_id=ident, args=args,
                                                  timeout_s=10.0)
                    except Unreachable:
                        await asyncio.sleep(0.02)
                raise AssertionError("the site's responder never answered")

            answers["operator"] = await ask("olga", "op-pw", "acknowledge", "seen from HQ")
            answers["viewer"] = await ask("eye", "eye-pw", "note", "a viewer's note")
            answers["wrong password"] = await ask("olga", "not-it", "note", "forged")
            answers["unknown user"] = await ask("mallory", "x", "note", "forged")
            answers["operator resolves"] = await ask("olga", "op-pw", "resolve", "fixed")
            answers["bad arguments"] = await ask("boss", "boss-pw", "severity", "high")
            # The command line, in its own process, through the same path.
            env = {**os.environ, "SG_TEST_FLEET_PW": "boss-pw"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "fleet", "incident", SITE, "note", ident,
                "checked from the centre", "--server", nats_server.url, "--user", "boss",
                "--password-env", "SG_TEST_FLEET_PW", "--json", cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            cli["code"], cli["out"], cli["err"] = proc.returncode, out.decode(), err.decode()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "fleet", "incident", SITE, "resolve",
                ident, "fixed", "--server", nats_server.url, "--user", "eye",
                "--password-env", "SG_TEST_FLEET_EYE", cwd=ROOT,
                env={**os.environ, "SG_TEST_FLEET_EYE": "eye-pw"},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            cli["refused_code"], cli["refused_err"] = proc.returncode, err.decode()
            assert gw.records.audit is not None
            # A refused login is evidence at the site: recorded once its (1 s) window closes.
            gw.clock.now += 1.5  # type: ignore[attr-defined]
            await gw.cycle(gw.clock.now)  # type: ignore[attr-defined]
            assert await asyncio.to_thread(gw.records.audit.flush, 30.0)
        finally:
            stop.set()
            await responder
            await site_client.close()
            await central.close()
            await gw.close()
        return db, ident, answers, cli

    db, ident, answers, cli = asyncio.run(main())
    accepted = {k: (a.accepted, a.code) for k, a in answers.items()}
    assert accepted == {"operator": (True, 0), "viewer": (False, 2),
                        "wrong password": (False, 1), "unknown user": (False, 1),
                        "operator resolves": (False, 2), "bad arguments": (False, 3)}
    assert answers["viewer"].refusal == "not_authorised"
    assert "may not note" in answers["viewer"].reason
    assert answers["wrong password"].reason == "wrong user name or password"
    assert cli["code"] == 0, cli["err"]
    assert json.loads(cli["out"])["accepted"] is True
    assert cli["refused_code"] == 1 and "may not resolve" in cli["refused_err"]
    # At the site: the operator's acknowledgement and the administrator's note, by name,
    # from the fleet; nothing of the refused ones; the chain verifies.
    assert verify(db).ok
    incident = load_incident(db, ident)
    notes = [(n.who, n.text, n.source) for n in incident.notes]
    assert ("boss", "checked from the centre", "fleet:central") in notes
    assert not any(text in ("a viewer's note", "forged") for _, text, _ in notes)
    assert incident.is_open
    acks = [e for e in incident.timeline if "seen from HQ" in e.text]
    assert acks and acks[0].who == "olga"
    failed = [(r.actor, r.source, json.loads(r.payload)) for r in read_records(
        db, kinds=("security",))]
    assert sorted((actor, source, p["event"], p["reason"]) for actor, source, p in failed) == [
        ("mallory", "fleet:central", "login_failed", "unknown user"),
        ("olga", "fleet:central", "login_failed", "wrong password")]


def test_a_site_that_does_not_answer_is_unreachable(nats_server: NatsServer,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main

    monkeypatch.setenv("SG_TEST_FLEET_PW", "x")
    base = ["fleet", "incident", SITE, "note", "INC-1", "text", "--server", nats_server.url,
            "--user", "olga"]
    assert main([*base, "--password-env", "SG_TEST_FLEET_PW", "--timeout", "2"]) == 3
    assert "nobody answers" in capsys.readouterr().err
    assert main([*base, "--password-env", "SG_TEST_UNSET_VARIABLE"]) == 2
    assert main([*base, "--password-env", "SG_TEST_FLEET_PW", "--password-file", "x"]) == 2
    assert main(["fleet", "incident", "a.b", "note", "INC-1", "--server", nats_server.url,
                 "--user", "u", "--password-env", "SG_TEST_FLEET_PW"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
