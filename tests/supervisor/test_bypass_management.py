"""Bypass management (IEC 61511; issue 16, item 9): a cap on the bypasses in force at once,
and a second, different approver for a bypass longer than the site allows one person to set."""

from __future__ import annotations

from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import ModeConfig, ModeMachine, OperatorRequest, RequestKind


def machine(**kw: object) -> ModeMachine:
    m = ModeMachine(ModeConfig(clean_shadow_s=10.0, bypass_max_s=3600.0, **kw))  # type: ignore[arg-type]
    m.tick(0.0)
    return m


def bypass(who: str, detector: str, duration_s: float) -> OperatorRequest:
    return OperatorRequest(RequestKind.BYPASS, who, True, detector, duration_s)


def test_no_more_bypasses_than_the_cap_are_in_force_at_once() -> None:
    m = machine(bypass_max_concurrent=2)
    assert m.request(1.0, bypass("ann", "a", 60))[0].kind is EventKind.BYPASS_START
    assert m.request(1.0, bypass("ann", "b", 60))[0].kind is EventKind.BYPASS_START
    refused = m.request(1.0, bypass("ann", "c", 60))
    assert refused[0].kind is EventKind.REQUEST_REFUSED
    assert "bypass_max_concurrent 2" in refused[0].reason and "a, b" in refused[0].reason
    assert set(m.bypasses) == {"a", "b"}
    # Renewing one in force is not a new one; and once one expires there is room again.
    assert m.request(2.0, bypass("ann", "a", 100))[0].kind is EventKind.BYPASS_START
    m.tick(61.0)
    assert m.request(61.0, bypass("ann", "c", 60))[0].kind is EventKind.BYPASS_START


def test_a_long_bypass_needs_a_second_different_approver() -> None:
    m = machine(bypass_second_approval_s=600.0)
    # Short: one person suffices.
    assert m.request(1.0, bypass("ann", "a", 600))[0].kind is EventKind.BYPASS_START
    # Long: the first request is pending, not applied, and says what is needed.
    first = m.request(2.0, bypass("ann", "b", 1800))
    assert first[0].kind is EventKind.REQUEST_REFUSED
    assert "second approver" in first[0].reason
    assert "b" not in m.bypasses
    # The same person again does not count.
    again = m.request(3.0, bypass("ann", "b", 1800))
    assert "someone else" in again[0].reason and "b" not in m.bypasses
    # A different duration is a different request.
    other = m.request(4.0, bypass("bob", "b", 1200))
    assert other[0].kind is EventKind.REQUEST_REFUSED and "b" not in m.bypasses
    # Someone else asking for the same bypass in time applies it, naming both.
    m.request(5.0, bypass("ann", "b", 1800))
    done = m.request(6.0, bypass("bob", "b", 1800))
    assert done[0].kind is EventKind.BYPASS_START
    assert dict(done[0].evidence)["first_approver"] == "ann"
    assert dict(done[0].evidence)["second_approver"] == "bob"
    assert m.bypasses["b"] == 6.0 + 1800


def test_a_second_approval_after_the_window_starts_over() -> None:
    m = machine(bypass_second_approval_s=600.0, second_approval_window_s=300.0)
    m.request(1.0, bypass("ann", "b", 1800))
    late = m.request(400.0, bypass("bob", "b", 1800))
    assert late[0].kind is EventKind.REQUEST_REFUSED and "b" not in m.bypasses
    # bob's late request is now the pending one: ann may second it.
    assert m.request(401.0, bypass("ann", "b", 1800))[0].kind is EventKind.BYPASS_START
