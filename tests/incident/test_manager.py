"""The incident manager driven by a real supervisor on the water tank, with a real audit log."""

from __future__ import annotations

import math
import time

import pytest

from gateway.audit.store import read_records, verify
from gateway.forensics.recorder import read_jsonl
from gateway.incident import manager as manager_module
from gateway.incident.manager import (
    IncidentManager,
    Notify,
    QuarantineModel,
    RateLimit,
    Request,
)
from gateway.incident.model import (
    BadRequest,
    ChecklistPhase,
    ContainmentStatus,
    IncidentError,
    Phase,
    UnknownIncident,
)
from gateway.incident.notify import NotifyResult
from gateway.incident.playbook import (
    ContainmentKind,
    ContainmentStep,
    HookKind,
    NotificationSpec,
    Playbook,
    Rule,
)
from gateway.incident.store import load_incident, load_incidents, load_window
from gateway.supervisor.decision import Source
from gateway.supervisor.events import Event, EventKind
from gateway.supervisor.modes import Mode, RequestKind
from tests.incident.rig import CONFIG_SHA, MODEL_SHA, WALL0, Rig, reached, recorder_of


def trip_events(rig: Rig) -> list[Event]:
    return [e for d in rig.decisions for e in d.events if e.kind is EventKind.TRIP]


def reloaded(rig: Rig):
    assert rig.audit is not None
    assert rig.audit.flush()
    return load_incidents(rig.db)


# ------------------------------------------------------------------------------ opening


def test_a_trip_opens_one_incident_with_its_evidence(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    assert rig.sup.mode is Mode.AUTO
    assert not rig.manager.incidents
    d = rig.hijack()
    assert d.mode is Mode.MANUAL

    (inc,) = rig.manager.incidents
    assert inc.id.startswith("INC-water_tank-20231114T")
    assert inc.id.endswith("-1")
    assert inc.site == "water_tank"
    assert inc.trigger.detector == "envelope.gross"
    trip = next(e for e in d.events if e.kind is EventKind.TRIP)
    assert inc.trigger.reason == trip.reason
    assert inc.trigger.evidence == trip.evidence  # every pair, as the detector gave it
    assert ("actuator", "inflow_valve") in inc.trigger.evidence
    assert inc.trigger.target == "manual"
    assert inc.opened_at_s == pytest.approx(trip.at_s)
    assert inc.opened_wall_s == pytest.approx(WALL0 + trip.at_s)
    assert inc.mode_at_trip == "auto"
    assert inc.mode_after_trip == "manual"
    assert inc.model.path == "models/nominal.onnx"
    assert inc.model.sha256 == MODEL_SHA
    assert inc.config_sha256 == CONFIG_SHA
    assert inc.playbook.name == "default"
    assert inc.playbook.rule == "ai_behaviour"
    assert inc.playbook.sha256 is not None
    # The checklist of the five phases, with the rule's own forensics item.
    phases = {item.phase for item in inc.checklist}
    assert phases == set(ChecklistPhase)
    assert any("localise" in i.text for i in inc.checklist_of(ChecklistPhase.FORENSICS))
    assert not any(item.done for item in inc.checklist)
    # The trip's own decision applies the fallback: contained at once.
    assert d.source is Source.FALLBACK
    assert inc.phase is Phase.CONTAINED
    assert reached(inc, Phase.CONTAINED).at_s == pytest.approx(trip.at_s)
    steps = {(c.step, c.status) for c in inc.containment}
    assert ("manual", ContainmentStatus.ALREADY) in steps  # the supervisor already did it
    assert ("fallback", ContainmentStatus.APPLIED) in steps
    # Only a notification to execute: no mode request (already MANUAL), no shutdown.
    assert [type(a) for a in rig.actions] == [Notify]
    note = rig.actions[0]
    assert isinstance(note, Notify)
    assert note.spec.name == "ops_log"
    assert inc.id in note.message and "envelope.gross" in note.message
    assert inc.notifications_planned == ("ops_log",)
    # The mode change of the same step is on the timeline.
    assert any("auto -> manual" in e.text for e in inc.timeline)
    rig.close()
    assert load_incidents(rig.db) == [rig.manager.incidents[0]]
    assert verify(rig.db).ok


def test_the_incident_waits_for_containment_until_the_output_leaves_the_ai(tmp_path):
    # Hand-built decisions: a trip reported while the applied output still came from the AI.
    rig = Rig(tmp_path, audit=False)
    m = IncidentManager("site", rig.playbook, None, clock=lambda: WALL0)
    base = rig.good(1)
    trip = Event(5.0, EventKind.TRIP, "canary", "canary deviates", None,
                 (("target", "manual"), ("deviation", 0.3)))
    ai = base._replace(at_s=5.0, mode=Mode.AUTO, source=Source.AI, events=(trip,))
    actions = m.on_decision(ai)
    (inc,) = m.incidents
    assert inc.phase is Phase.DETECTED
    assert inc.playbook.rule == "model_integrity"
    # The playbook's containment: MANUAL requested (mode was AUTO), model quarantined.
    kinds = [type(a) for a in actions]
    assert Request in kinds and QuarantineModel in kinds and Notify in kinds
    request = next(a for a in actions if isinstance(a, Request))
    assert request.kind is RequestKind.TO_MANUAL
    assert request.operator_request().requester == "playbook"
    assert request.operator_request().authorised
    assert m.busy
    # Still the AI: still waiting.
    m.on_decision(ai._replace(at_s=5.1, events=()))
    assert m.get(inc.id).phase is Phase.DETECTED
    # The supervisor grants the request: the first non-AI decision contains it.
    change = Event(5.2, EventKind.MODE_CHANGE, "mode", "auto -> manual: operator request",
                   "playbook", (("from", "auto"), ("to", "manual")))
    m.on_decision(ai._replace(at_s=5.2, mode=Mode.MANUAL, source=Source.FALLBACK,
                              events=(change,)))
    inc = m.get(inc.id)
    assert inc.phase is Phase.CONTAINED
    assert reached(inc, Phase.CONTAINED).at_s == 5.2
    statuses = [(c.step, c.status) for c in inc.containment]
    assert ("manual", ContainmentStatus.REQUESTED) in statuses
    assert ("manual", ContainmentStatus.APPLIED) in statuses  # the supervisor's answer
    assert ("quarantine_model", ContainmentStatus.REQUESTED) in statuses
    assert not m.busy  # no recorder: nothing left to wait for
    # The runtime reports the quarantine.
    quarantine = next(a for a in actions if isinstance(a, QuarantineModel))
    m.applied(quarantine, True, "registry: version 3 marked quarantined")
    assert (m.get(inc.id).containment[-1].status is ContainmentStatus.APPLIED)


def test_a_refused_playbook_request_is_recorded(tmp_path):
    book = Playbook(name="t", rules=(Rule("stop", ("*",), (ContainmentStep(
        ContainmentKind.SAFE_STOP),)),))
    rig = Rig(tmp_path, playbook=book)
    rig.to_auto()
    rig.hijack()  # -> MANUAL; the playbook asks for SAFE_STOP on top
    request = next(a for a in rig.actions if isinstance(a, Request))
    assert request.kind is RequestKind.TO_SAFE_STOP
    d = rig.good(1)
    assert d.mode is Mode.SAFE_STOP  # what the playbook says, and only because it says so
    (inc,) = rig.manager.incidents
    assert [(c.step, c.status) for c in inc.containment if c.step == "safe_stop"] == [
        ("safe_stop", ContainmentStatus.REQUESTED), ("safe_stop", ContainmentStatus.APPLIED)]
    rig.close()


def test_rate_limit_is_an_action_and_the_outcome_is_recorded(tmp_path):
    book = Playbook(name="t", rules=(Rule("slow", ("*",), (
        ContainmentStep(ContainmentKind.MANUAL),
        ContainmentStep(ContainmentKind.RATE_LIMIT, 0.5))),))
    rig = Rig(tmp_path, playbook=book)
    rig.to_auto()
    rig.hijack()
    (limit,) = [a for a in rig.actions if isinstance(a, RateLimit)]
    assert limit.factor == 0.5
    rig.manager.applied(limit, False, "this runtime cannot scale rate limits", supported=False)
    (inc,) = rig.manager.incidents
    last = inc.containment[-1]
    assert (last.step, last.status, last.factor) == ("rate_limit",
                                                     ContainmentStatus.UNSUPPORTED, 0.5)
    rig.close()
    assert load_incidents(rig.db) == list(rig.manager.incidents)


# ------------------------------------------------------------------------------ joining


def test_further_trips_join_the_open_incident(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.hijack()
    rig.good(5)
    d = rig.freeze_level()  # a second fault during the same attack: SAFE_STOP
    assert d.mode is Mode.SAFE_STOP
    names = [e.name for e in trip_events(rig)]
    assert names[0] == "envelope.gross" and "input.quality.level" in names
    (inc,) = rig.manager.incidents  # one attack, one incident
    assert [t.detector for t in inc.trips] == names
    # The sensing rule's containment (SAFE_STOP) is what the supervisor already did.
    assert ("safe_stop", ContainmentStatus.ALREADY) in {(c.step, c.status)
                                                         for c in inc.containment}
    # Its checklist item joined; no second page.
    assert any("sensor" in i.text for i in inc.checklist_of(ChecklistPhase.INVESTIGATION))
    assert sum(isinstance(a, Notify) for a in rig.actions) == 1
    assert not any(isinstance(a, Request) for a in rig.actions)
    rig.close()
    assert load_incidents(rig.db) == list(rig.manager.incidents)


def test_a_rule_can_open_a_new_incident_for_each_trip(tmp_path):
    book = Playbook(name="t", join_open_incident=False,
                    rules=(Rule("any", ("*",), (ContainmentStep(ContainmentKind.MANUAL),)),))
    rig = Rig(tmp_path, playbook=book)
    rig.to_auto()
    rig.hijack()
    rig.good(3)
    rig.freeze_level()
    names = [e.name for e in trip_events(rig)]
    assert len(names) >= 2
    assert [i.trigger.detector for i in rig.manager.incidents] == names
    assert len({i.id for i in rig.manager.incidents}) == len(names)
    rig.close()


def test_a_trip_after_resolution_opens_a_new_incident(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.hijack()
    first = rig.manager.incidents[0].id
    rig.manager.resolve(first, "alice", "hmi-1", "false alarm drill")
    rig.request(RequestKind.RESET_TRIP, "admin")
    rig.good(1)
    rig.to_auto()
    assert rig.sup.mode is Mode.AUTO
    rig.hijack()
    assert [i.phase for i in rig.manager.incidents] == [Phase.RESOLVED, Phase.CONTAINED]
    assert rig.manager.open_incidents == (rig.manager.incidents[1],)
    rig.close()
    assert load_incidents(rig.db) == list(rig.manager.incidents)


# ------------------------------------------------------------------------------ operators


def test_notes_acknowledgement_checklist_and_resolution(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.hijack()
    ident = rig.manager.incidents[0].id
    m = rig.manager
    inc = m.acknowledge(ident, "alice", "hmi-1")
    assert inc.phase is Phase.INVESTIGATING
    assert reached(inc, Phase.INVESTIGATING).by == "alice"
    inc = m.note(ident, "bob", "hmi-2", "inflow pinned at 100 % by the AI")
    assert inc.phase is Phase.INVESTIGATING  # forward only, once
    assert [(n.who, n.text, n.acknowledge) for n in inc.notes] == [
        ("alice", "", True), ("bob", "inflow pinned at 100 % by the AI", False)]
    inc = m.check(ident, "forensics", 0, "bob")
    assert inc.checklist_of(ChecklistPhase.FORENSICS)[0].done
    assert inc.checklist_of(ChecklistPhase.FORENSICS)[0].by == "bob"
    text = inc.checklist_of(ChecklistPhase.RECOVERY)[2].text
    inc = m.check(ident, ChecklistPhase.RECOVERY, text, "bob")
    assert inc.checklist_of(ChecklistPhase.RECOVERY)[2].done
    with pytest.raises(IncidentError, match="already done"):
        m.check(ident, "forensics", 0, "bob")
    with pytest.raises(IncidentError, match="no item"):
        m.check(ident, "forensics", 99, "bob")
    with pytest.raises(BadRequest, match="phase"):
        m.check(ident, "lunch", 0, "bob")
    with pytest.raises(BadRequest, match="summary"):
        m.resolve(ident, "alice", "hmi-1", "  ")
    with pytest.raises(IncidentError, match="not authorised"):
        m.resolve(ident, "mallory", "hmi-9", "nothing to see", authorised=False)
    inc = m.resolve(ident, "alice", "hmi-1", "hijacked policy; rolled back to v2")
    assert inc.phase is Phase.RESOLVED
    assert inc.resolution is not None and inc.resolution.who == "alice"
    assert [c.phase for c in inc.phases] == list(Phase)
    with pytest.raises(IncidentError, match="already resolved"):
        m.resolve(ident, "alice", "hmi-1", "again")
    inc = m.note(ident, "carol", "hmi-3", "post-incident review on Monday")
    assert inc.phase is Phase.RESOLVED  # notes after resolution are kept, nothing reopens
    rig.close()
    (stored,) = load_incidents(rig.db)
    assert stored == m.get(ident)
    # Operator records carry who and from where.
    actors = {(r.actor, r.source) for r in read_records(rig.db, kinds=("incident",))}
    assert ("alice", "hmi-1") in actors and ("bob", "hmi-2") in actors


@pytest.mark.parametrize("call", [
    lambda m: m.note("INC-nope", "a", "", "x"),
    lambda m: m.acknowledge("INC-nope", "a"),
    lambda m: m.resolve("INC-nope", "a", "", "x"),
    lambda m: m.check("INC-nope", "detection", 0, "a"),
])
def test_unknown_incidents_are_refused(tmp_path, call):
    rig = Rig(tmp_path)
    with pytest.raises(UnknownIncident, match="INC-nope"):
        call(rig.manager)
    rig.close()
    assert list(read_records(rig.db)) == []  # nothing written


def test_empty_names_and_texts_are_refused(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.hijack()
    ident = rig.manager.incidents[0].id
    with pytest.raises(BadRequest, match="who"):
        rig.manager.note(ident, " ", "", "x")
    with pytest.raises(BadRequest, match="text"):
        rig.manager.note(ident, "alice", "", "  ")
    rig.close()


# ------------------------------------------------------------------------------ recorder


def test_the_flight_recorder_window_is_stored_once_complete(tmp_path):
    rig = Rig(tmp_path, after_s=2.0, window_s=4.0)
    rig.good(20)
    rig.to_auto()
    d = rig.hijack()
    trip_s = d.at_s
    ident = rig.manager.incidents[0].id
    assert rig.manager.busy
    rig.good(10)  # 1 s after the trip: the window is still collecting
    assert recorder_of(rig.manager.get(ident)).parts_stored == 0
    assert rig.audit is not None and rig.audit.flush()
    assert load_window(rig.db, ident) is None
    rig.good(15)
    fr = recorder_of(rig.manager.get(ident))
    assert fr.stored
    assert not rig.manager.busy
    assert fr.trigger_s == trip_s
    assert (fr.start_s, fr.end_s) == (trip_s - 4.0, trip_s + 2.0)
    assert fr.frames == 61  # 4 s before, the trip, 2 s after, at 100 ms
    rig.good(30)
    rig.close()
    window = load_window(rig.db, ident)
    assert window is not None and window.complete and window.frames == 61
    stored = tmp_path / "stored.jsonl"
    stored.write_text(window.text())
    recording = read_jsonl(stored)  # replay reads it
    assert recording.info is not None and recording.info.model_sha256 == MODEL_SHA
    assert [f.now_s for f in recording.frames] == pytest.approx(
        [trip_s - 4.0 + 0.1 * k for k in range(61)])
    assert Mode.AUTO in [f.decision.mode for f in recording.frames]
    assert Mode.MANUAL in [f.decision.mode for f in recording.frames]
    # One flight_recorder record (small window), and the chain verifies.
    parts = [r for r in read_records(rig.db, kinds=("incident",))
             if '"action":"flight_recorder"' in r.payload]
    assert len(parts) == 1
    assert verify(rig.db).ok


def test_the_stored_window_is_the_frozen_window_byte_for_byte(tmp_path):
    rig = Rig(tmp_path, after_s=1.0, window_s=3.0)
    rig.to_auto()
    d = rig.hijack()
    # A second recorder window frozen at the same moment, kept aside by the test.
    twin = rig.recorder.freeze(d.at_s, 1.0)
    rig.good(15)
    assert twin.complete
    expected = tmp_path / "twin.jsonl"
    twin.to_jsonl(expected)
    rig.close()
    window = load_window(rig.db, rig.manager.incidents[0].id)
    assert window is not None
    assert window.text() == expected.read_text()


def test_a_large_window_is_stored_in_several_parts_a_few_frames_per_cycle(tmp_path, monkeypatch):
    monkeypatch.setattr(manager_module, "PART_CHARS", 8 * 1024)
    monkeypatch.setattr(manager_module, "FRAMES_PER_CYCLE", 4)
    rig = Rig(tmp_path, after_s=1.0, window_s=6.0)
    rig.to_auto()
    d = rig.hijack()
    twin = rig.recorder.freeze(d.at_s, 1.0)
    ident = rig.manager.incidents[0].id
    rig.good(11)  # the window completes...
    assert twin.complete
    assert not recorder_of(rig.manager.get(ident)).stored  # ...and is stored bit by bit
    cycles = 0
    while rig.manager.busy:
        rig.good(1)
        cycles += 1
    assert cycles >= len(twin) // 4 - 2
    fr = recorder_of(rig.manager.get(ident))
    assert fr.stored and fr.parts > 2 and fr.frames == len(twin)
    rig.close()
    expected = tmp_path / "twin.jsonl"
    twin.to_jsonl(expected)
    window = load_window(rig.db, ident)
    assert window is not None and window.complete and window.parts == fr.parts
    assert window.text() == expected.read_text()
    assert load_incidents(rig.db) == list(rig.manager.incidents)
    assert verify(rig.db).ok


def test_close_stores_a_window_still_collecting(tmp_path):
    rig = Rig(tmp_path, after_s=30.0)
    rig.to_auto()
    rig.hijack()
    rig.good(3)
    ident = rig.manager.incidents[0].id
    assert not recorder_of(rig.manager.get(ident)).stored
    rig.close()  # shutdown: the window keeps what it has
    fr = recorder_of(rig.manager.get(ident))
    assert fr.stored and fr.frames > 3
    assert load_incident(rig.db, ident) == rig.manager.get(ident)


# ------------------------------------------------------------------------------ the loop


def test_nothing_happens_and_nothing_is_written_on_quiet_cycles(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.good(100)
    assert not rig.manager.incidents
    assert rig.actions == []
    rig.close()
    assert list(read_records(rig.db, kinds=("incident",))) == []


def test_a_quiet_cycle_costs_well_under_a_microsecond_or_two(tmp_path):
    rig = Rig(tmp_path, audit=False)
    d = rig.good(1)
    assert not d.events
    on_decision = rig.manager.on_decision
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        on_decision(d)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 5e-6, per_call  # generous: shared CI cores


def test_repeated_events_are_folded_into_one_timeline_entry(tmp_path):
    m = IncidentManager("s", Playbook(name="t", rules=()), None, clock=lambda: WALL0)
    rig = Rig(tmp_path, audit=False)
    base = rig.good(1)
    trip = Event(1.0, EventKind.TRIP, "x", "r", None, (("target", "manual"),))
    m.on_decision(base._replace(at_s=1.0, source=Source.FALLBACK, events=(trip,)))
    for k in range(50):  # a bypassed detector reporting every cycle
        at = 1.1 + 0.1 * k
        m.on_decision(base._replace(at_s=at, events=(Event(
            at, EventKind.ANOMALY, "divergence.inflow_valve", "bypassed", None),)))
    (inc,) = m.incidents
    entries = [e for e in inc.timeline if "divergence" in e.text]
    assert len(entries) == 1  # 5 s of them, inside the 10 s repeat window
    m.on_decision(base._replace(at_s=20.0, events=(Event(
        20.0, EventKind.ANOMALY, "divergence.inflow_valve", "bypassed", None),)))
    entries = [e for e in m.incidents[0].timeline if "divergence" in e.text]
    assert len(entries) == 2 and "49 more" in entries[1].text


def test_nonfinite_evidence_survives_the_round_trip(tmp_path):
    rig = Rig(tmp_path)
    base = rig.good(1)
    trip = Event(1.0, EventKind.TRIP, "input.range.level", "reading nan", None,
                 (("target", "safe_stop"), ("value", math.nan), ("age_s", math.inf)))
    rig.manager.on_decision(base._replace(at_s=1.0, events=(trip,)))
    (inc,) = rig.manager.incidents
    key, value = inc.trigger.evidence[1]
    assert key == "value" and isinstance(value, float) and math.isnan(value)
    rig.close()
    (stored,) = load_incidents(rig.db)
    value = stored.trigger.evidence[1][1]
    assert isinstance(value, float) and math.isnan(value)
    assert stored.trigger.evidence[2] == ("age_s", math.inf)


# ------------------------------------------------------------------------------ restarts


def test_an_open_incident_survives_a_restart_and_later_trips_join_it(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.hijack()
    rig.good(30)
    rig.close()
    existing = load_incidents(rig.db)
    rig2 = Rig(tmp_path)
    rig2.manager = IncidentManager("water_tank", rig2.playbook, rig2.audit,
                                   recorder=rig2.recorder, clock=rig2.wall, existing=existing)
    rig2.to_auto()
    rig2.hijack()
    (inc,) = rig2.manager.incidents
    assert inc.id == existing[0].id and len(inc.trips) == 2
    rig2.close()
    assert load_incidents(rig.db) == list(rig2.manager.incidents)
    assert verify(rig.db).ok


def test_ids_stay_unique(tmp_path):
    rig = Rig(tmp_path, audit=False)
    base = rig.good(1)
    book = Playbook(name="t", join_open_incident=False, rules=(Rule("any", ("*",)),))
    m = IncidentManager("tank #2 / east", book, None, clock=lambda: WALL0)
    for k in range(3):
        m.on_decision(base._replace(at_s=float(k), events=(Event(
            float(k), EventKind.TRIP, "x", "r", None),)))
    ids = [i.id for i in m.incidents]
    assert ids == ["INC-tank-2-east-20231114T221320-1", "INC-tank-2-east-20231114T221320-2",
                   "INC-tank-2-east-20231114T221320-3"]


# ------------------------------------------------------------------------------ notify


def test_notification_outcomes_are_recorded(tmp_path):
    hook = NotificationSpec("soc", HookKind.WEBHOOK, url="http://user:secret@127.0.0.1:9/x")
    book = Playbook(name="t", hooks={"soc": hook}, rules=(Rule("any", ("*",), notify=("soc",)),))
    rig = Rig(tmp_path, playbook=book)
    rig.to_auto()
    rig.hijack()
    (action,) = [a for a in rig.actions if isinstance(a, Notify)]
    rig.manager.notified(action, NotifyResult(False, "ConnectionRefusedError: refused", 0.01))
    (inc,) = rig.manager.incidents
    (n,) = inc.notifications
    assert (n.hook, n.kind, n.ok) == ("soc", "webhook", False)
    assert n.target == "http://127.0.0.1:9/x"  # never the credentials
    rig.close()
    assert "secret" not in "".join(r.payload for r in read_records(rig.db))


def test_payloads_name_their_incident_and_action(tmp_path):
    rig = Rig(tmp_path)
    rig.to_auto()
    rig.hijack()
    rig.good(40)
    ident = rig.manager.incidents[0].id
    rig.manager.note(ident, "alice", "hmi", "x")
    rig.close()
    actions = [r.data()["action"] for r in read_records(rig.db, kinds=("incident",))]
    assert actions[0] == "open"
    assert {"open", "containment", "event", "phase", "flight_recorder", "note"} <= set(actions)
    assert all(r.data()["incident"] == ident for r in read_records(rig.db, kinds=("incident",)))
