"""Escalation per severity and reporting clocks, on an injected wall clock; and escalations off
the control path (a webhook that never answers delays no cycle)."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from gateway.incident.cli import add_parser, format_incident
from gateway.incident.manager import IncidentManager, Notify
from gateway.incident.notify import Notifier
from gateway.incident.people import Severity
from gateway.incident.playbook import (
    DEFAULT_PLAYBOOK,
    HookKind,
    NotificationSpec,
    Playbook,
    load_playbook,
)
from gateway.incident.store import load_incident, load_incidents
from gateway.runtime.incidents import PlaybookActions
from tests.incident.rig import Rig

if TYPE_CHECKING:
    from pathlib import Path

MIN = 60.0
HOUR = 3600.0


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", *argv])
    return int(args.func(args))


def told(actions: list[Notify]) -> list[str]:
    """The contacts named in the escalation messages, in order."""
    return [a.message.split("; to ")[1].split(" (")[0] for a in actions
            if "; to " in a.message]


def high_incident(tmp_path: Path, **kw: object) -> tuple[Rig, str, float]:
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0, **kw)  # type: ignore[arg-type]
    rig.to_auto()
    rig.hijack()
    rig.good(15)
    inc = rig.manager.incidents[0]
    assert inc.severity is Severity.HIGH
    return rig, inc.id, inc.severity_changes[-1].wall_s


def test_high_escalates_at_once_then_to_the_next_contacts_unless_acknowledged(tmp_path):
    rig, ident, t0 = high_incident(tmp_path)
    m = rig.manager
    first = m.tick(t0)
    assert told(first) == ["shift_lead", "security_team"]
    assert all(a.spec.name == "ops_log" and a.incident_id == ident for a in first)
    assert "(high)" in first[0].message
    assert m.tick(t0) == []  # once each
    assert m.tick(t0 + 30 * MIN - 0.001) == []
    assert told(m.tick(t0 + 30 * MIN)) == ["plant_safety_engineer", "model_owner"]
    m.acknowledge(ident, "carol", "test")
    assert m.tick(t0 + 3 * HOUR) == []  # business_owner is not needed: someone has it
    # Raised by an operator: the critical plan starts, from now.
    m.raise_severity(ident, "critical", "carol", "test", "pump cavitating")
    now = m.get(ident).severity_since()
    assert now is not None
    assert told(m.tick(now)) == ["shift_lead", "plant_safety_engineer", "security_team"]
    assert m.tick(now + 2 * HOUR) == []  # acknowledged: no later critical steps
    rig.close()
    inc = load_incident(rig.db, ident)
    assert [(e.severity, e.step, e.contact) for e in inc.escalations] == [
        (Severity.HIGH, 0, "shift_lead"), (Severity.HIGH, 0, "security_team"),
        (Severity.HIGH, 1, "plant_safety_engineer"), (Severity.HIGH, 1, "model_owner"),
        (Severity.CRITICAL, 0, "shift_lead"), (Severity.CRITICAL, 0, "plant_safety_engineer"),
        (Severity.CRITICAL, 0, "security_team")]
    assert inc.escalations[2].reason == "severity high: not acknowledged within 30 min"
    assert inc.escalations[2].wall_s == t0 + 30 * MIN


def test_steps_missed_while_the_gateway_was_down_fire_once_after_a_restart(tmp_path):
    rig, _, t0 = high_incident(tmp_path)
    assert told(rig.manager.tick(t0)) == ["shift_lead", "security_team"]
    rig.close()
    again = IncidentManager("water_tank", rig.playbook, None, clock=rig.wall,
                            existing=load_incidents(rig.db))
    assert told(again.tick(t0 + 3 * HOUR)) == ["plant_safety_engineer", "model_owner",
                                               "business_owner"]
    assert again.tick(t0 + 4 * HOUR) == []


def test_a_hook_the_running_playbook_lacks_is_recorded_as_failed(tmp_path):
    rig, ident, t0 = high_incident(tmp_path)
    # The running playbook changed since the incident opened: the incident's own plan still
    # names the contacts, but their hook is gone.
    rig.manager.playbook = Playbook(name="other", rules=())
    assert rig.manager.tick(t0) == []
    inc = rig.manager.get(ident)
    assert [e.contact for e in inc.escalations] == ["shift_lead", "security_team"]
    assert [(n.hook, n.ok) for n in inc.notifications] == [("ops_log", False)] * 2
    rig.close()


def test_reporting_clocks_show_deadlines_and_remind_before_they_pass(tmp_path, capsys):
    rig, ident, t0 = high_incident(tmp_path)
    m = rig.manager
    m.tick(t0)  # the escalations at once
    inc = m.get(ident)
    deadlines = {d.obligation: d for d in inc.deadlines()}
    assert deadlines["early_warning"].due_wall_s == t0 + 24 * HOUR
    assert deadlines["notification"].due_wall_s == t0 + 72 * HOUR
    assert deadlines["early_warning"].remind_wall_s == t0 + 20 * HOUR  # lead time 240 min
    text = format_incident(inc, now_wall_s=t0 + 21 * HOUR)
    assert "early_warning      due 2023-11-15 22:13:23.000Z  [due soon]" in text
    assert "notification       due 2023-11-17 22:13:23.000Z  [open]" in text
    m.acknowledge(ident, "carol", "test")  # no more escalations: only the clocks speak
    assert m.tick(t0 + 20 * HOUR - 1) == []
    reminder = m.tick(t0 + 20 * HOUR)
    assert told(reminder) == ["regulator_liaison", "shift_lead"]  # each via ops_log
    assert "report early_warning is due at 2023-11-15 22:13:23.000Z" in reminder[0].message
    assert m.tick(t0 + 20 * HOUR) == []
    overdue = m.tick(t0 + 24 * HOUR)
    assert told(overdue) == ["regulator_liaison", "shift_lead"]
    assert "WAS DUE" in overdue[0].message
    m.report_made(ident, "notification", "dana", "test", "CSIRT ref 2023-117")
    assert m.tick(t0 + 72 * HOUR) == []  # made: no reminder, no overdue notice
    rig.close()
    db = str(rig.db)
    assert cli("reported", ident, "early_warning", "--ref", "late, ref 2023-116", "--by",
               "dana", "--db", db) == 0
    assert cli("reported", ident, "early_warning", "--by", "dana", "--db", db) == 1
    assert "already recorded" in capsys.readouterr().err
    assert cli("reported", ident, "nonsense", "--by", "dana", "--db", db) == 1
    assert "no reporting clock 'nonsense'" in capsys.readouterr().err
    assert cli("show", ident, "--db", db) == 0
    out = capsys.readouterr().out
    assert "[met by dana at" in out and "(CSIRT ref 2023-117)" in out
    inc = load_incident(db, ident)
    assert [(n.obligation, n.notice) for n in inc.deadline_notices] == [
        ("early_warning", "reminder"), ("early_warning", "overdue")]


def test_a_medium_incident_starts_no_clock(tmp_path):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.good(3)
    rig.freeze_level()
    rig.good(5)
    inc = rig.manager.incidents[0]
    assert inc.severity is Severity.MEDIUM and inc.deadlines() == ()
    text = format_incident(inc)
    assert "early_warning      not running (starts at severity high)" in text
    t0 = inc.opened_wall_s
    assert told(rig.manager.tick(t0 + 100 * HOUR)) == ["shift_lead", "model_owner"]
    rig.close()


class StubRecords:
    def request(self, *args: object) -> None:
        raise AssertionError("no mode request expected")


async def hung_webhook() -> tuple[asyncio.Server, int, asyncio.Event, asyncio.Event]:
    """A webhook that takes the request and never answers (until the client gives up)."""
    reached = asyncio.Event()
    ended = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        reached.set()
        await reader.read()  # returns when the client closes
        writer.close()
        await writer.wait_closed()
        ended.set()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], reached, ended


def test_a_webhook_that_never_answers_delays_no_cycle(tmp_path):
    """The cycle trips, the playbook's escalation posts to a webhook that hangs (timeout 2 s):
    the escalation goes out from the notifier's timer, and the cycles go on meanwhile, each as
    quick as before."""

    async def body() -> tuple[list[float], int, bool, list[str]]:
        server, port, reached, ended = await hung_webhook()
        hook = NotificationSpec("soc", HookKind.WEBHOOK, url=f"http://127.0.0.1:{port}/x",
                                timeout_s=2.0)
        book = load_playbook(DEFAULT_PLAYBOOK)
        contacts = {n: replace(c, reach=("soc",)) for n, c in book.people.contacts.items()}
        book = replace(book, hooks={**book.hooks, "soc": hook},
                       people=replace(book.people, contacts=contacts))
        rig = Rig(tmp_path, playbook=book, after_s=1.0, window_s=2.0)
        rig.to_auto()
        notifier = Notifier(rig.manager.notified)
        actions = PlaybookActions(rig.manager, notifier, rig.sup, StubRecords(),  # type: ignore[arg-type]
                                  None, None)  # type: ignore[arg-type]
        durations: list[float] = []
        cycles_while_hung = 0
        deadline = time.monotonic() + 30.0
        tripped = False
        while time.monotonic() < deadline:
            start = time.perf_counter()
            decision = rig.hijack() if not tripped else rig.good(1)
            tripped = True
            actions.after(decision)
            durations.append(time.perf_counter() - start)
            await asyncio.sleep(0.01)  # the cycle's period: the loop runs other tasks here
            if reached.is_set() and notifier.pending:
                cycles_while_hung += 1
                if cycles_while_hung >= 30:
                    break
        pending = notifier.pending > 0
        await notifier.aclose(timeout_s=0.1)
        async with asyncio.timeout(10):
            await ended.wait()
        server.close()
        await server.wait_closed()
        rig.close()
        inc = load_incident(rig.db, rig.manager.incidents[0].id)
        return durations, cycles_while_hung, pending, [e.contact for e in inc.escalations]

    durations, cycles_while_hung, pending, escalated = asyncio.run(body())
    assert cycles_while_hung >= 30  # the webhook hung, the cycles went on
    assert pending
    assert escalated == ["shift_lead", "security_team"]
    assert max(durations) < 0.5  # far below the webhook's 2 s timeout: nothing waited on it


def test_the_timer_survives_a_failing_tick_and_stops_on_aclose():
    calls: list[int] = []
    three = asyncio.Event()

    def tick() -> list[Notify]:
        calls.append(1)
        if len(calls) == 3:
            three.set()
        if len(calls) == 1:
            raise RuntimeError("boom")
        return []

    async def body() -> None:
        notifier = Notifier()
        notifier.start_timer(tick, 0.01)
        with pytest.raises(RuntimeError, match="runs already"):
            notifier.start_timer(tick, 0.01)
        async with asyncio.timeout(10):
            await three.wait()
        await notifier.aclose()
        n = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == n

    asyncio.run(body())
    with pytest.raises(ValueError, match="period_s"):
        Notifier().start_timer(tick, 0.0)
