"""What a starting gateway takes back from the chain (pure: gateway.runtime.durable)."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.runtime.durable import SafetyState, plan_restore
from gateway.supervisor.modes import Mode


def incident(ident: str, after: str = "safe_stop") -> SimpleNamespace:
    return SimpleNamespace(id=ident, mode_after_trip=after,
                           trigger=SimpleNamespace(detector="input.range.level",
                                                   reason="7.0 outside [0, 5]"))


def test_the_state_round_trips_through_json() -> None:
    state = SafetyState(Mode.SAFE_STOP, True, "x: y", (("divergence", 1.8e9),),
                        ("ab" * 32, "INC-1: canary"), ("INC-1",))
    assert SafetyState.from_json(state.to_json()) == state


def test_an_open_incident_the_state_did_not_know_latches_its_trip() -> None:
    # The run died after opening the incident and before its state record reached the disk.
    state = SafetyState(Mode.AUTO, False, None)
    plan = plan_restore(state, [incident("INC-2")], None, 0.0)
    assert plan.latched and plan.mode is Mode.SAFE_STOP
    assert "INC-2" in (plan.trip_reason or "")
    assert plan.latched_by_incidents == ("INC-2",)
    # No state recorded at all (a database from before state records): the same.
    plan = plan_restore(None, [incident("INC-2", "manual")], None, 0.0)
    assert plan.latched and plan.mode is Mode.MANUAL


def test_a_known_incident_does_not_undo_a_reset() -> None:
    # Reset by an authorised operator with the incident still open (being investigated).
    state = SafetyState(Mode.MANUAL, False, None, open_incidents=("INC-1",))
    plan = plan_restore(state, [incident("INC-1")], None, 0.0)
    assert not plan.latched and plan.mode is Mode.MANUAL


def test_a_quarantine_holds_while_that_model_is_loaded() -> None:
    state = SafetyState(Mode.MANUAL, True, "canary: off", quarantined=("a" * 64, "INC-1"))
    kept = plan_restore(state, [], "a" * 64, 0.0)
    assert kept.quarantined == ("a" * 64, "INC-1") and kept.quarantine_lifted is None
    lifted = plan_restore(state, [], "b" * 64, 0.0)
    assert lifted.quarantined is None and "b" * 64 in (lifted.quarantine_lifted or "")


def test_bypass_expiry_is_wall_clock() -> None:
    state = SafetyState(Mode.MANUAL, False, None, (("a", 1000.0), ("b", 1100.0)))
    plan = plan_restore(state, [], None, 1050.0)
    assert plan.bypasses_left_s == {"b": 50.0}
    assert plan.expired == ("a",)
