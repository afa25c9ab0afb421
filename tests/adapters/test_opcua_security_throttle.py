"""The login throttle, pure, on virtual time."""

from __future__ import annotations

import pytest

from gateway.adapters.opcua.throttle import MAX_KEYS, LoginThrottle
from gateway.config.schema import LoginThrottleSpec

SPEC = LoginThrottleSpec(max_failures=5, window_s=60.0, delay_s=1.0, max_delay_s=30.0)


def fail_n(throttle: LoginThrottle, n: int, user: str = "admin", source: str = "10.0.0.9",
           now: float = 0.0, step: float = 0.0) -> list[float]:
    """n failed attempts, each as soon as admitted (or ``step`` s apart): the waits."""
    waits = []
    for _ in range(n):
        admission = throttle.admit(user, source, now)
        assert not admission.refused
        waits.append(admission.wait_s)
        now += admission.wait_s + step
    return waits


def test_five_failures_free_then_doubling_delays_capped() -> None:
    throttle = LoginThrottle(SPEC)
    assert fail_n(throttle, 12) == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 30, 30]


def test_parallel_attempts_beyond_the_cap_are_refused_unchecked() -> None:
    throttle = LoginThrottle(SPEC)
    answers = [throttle.admit("admin", "10.0.0.9", 0.0) for _ in range(60)]
    waits = [a.wait_s for a in answers if not a.refused]
    assert waits == [0, 0, 0, 0, 0, 1, 3, 7, 15]  # each turn after the one before it
    assert sum(a.refused for a in answers) == 51
    assert throttle.failures("admin", "10.0.0.9") == 9  # refusals are not counted


def test_success_clears_user_and_source() -> None:
    throttle = LoginThrottle(SPEC)
    fail_n(throttle, 7)
    assert throttle.wait_s("admin", "10.0.0.9", 0.0) > 0
    throttle.succeeded("admin", "10.0.0.9")
    assert throttle.failures("admin", "10.0.0.9") == 0
    assert throttle.admit("admin", "10.0.0.9", 0.0).wait_s == 0


def test_user_key_holds_across_sources_and_source_key_across_users() -> None:
    throttle = LoginThrottle(SPEC)
    fail_n(throttle, 5, user="admin", source="10.0.0.9")
    # the same user from another address waits: guessing is spread over addresses
    assert throttle.admit("admin", "10.0.0.7", 0.0).wait_s == 1.0
    # the guessing address waits whatever user name it tries
    assert throttle.admit("operator", "10.0.0.9", 0.0).wait_s == 1.0
    # an unrelated user from an unrelated address does not
    assert throttle.admit("viewer", "10.0.0.5", 0.0).wait_s == 0.0


def test_quiet_window_forgets_but_a_capped_guesser_is_never_forgiven() -> None:
    throttle = LoginThrottle(SPEC)
    fail_n(throttle, 5, step=20.0)  # within 60 s of each other: counted
    assert throttle.admit("admin", "10.0.0.9", 80.0 + 1.0).wait_s == 0.0  # 6th, turn was due
    assert throttle.failures("admin", "10.0.0.9") == 6
    # quiet for more than window_s after the last attempt: forgotten
    assert throttle.admit("admin", "10.0.0.9", 81.0 + 61.0).wait_s == 0.0
    assert throttle.failures("admin", "10.0.0.9") == 1
    # a guesser at the cap (one try per 30 s < 60 s window) stays at the cap
    slow = LoginThrottle(SPEC)
    waits = fail_n(slow, 20)
    assert waits[-5:] == [30, 30, 30, 30, 30]


def test_admin_waits_at_most_max_delay_once_guessing_stops() -> None:
    throttle = LoginThrottle(SPEC)
    now = 0.0
    for _ in range(100):  # a long attack, one try per turn
        now += throttle.admit("admin", "10.6.6.6", now).wait_s
    admission = throttle.admit("admin", "10.0.0.1", now)
    assert not admission.refused
    assert admission.wait_s <= SPEC.max_delay_s


def test_keys_are_bounded() -> None:
    throttle = LoginThrottle(SPEC)
    for i in range(MAX_KEYS * 2):
        throttle.admit(f"user{i}", "10.0.0.9", float(i))
    assert len(throttle._keys) <= MAX_KEYS


def test_spec_is_validated() -> None:
    with pytest.raises(ValueError, match="max_delay_s"):
        LoginThrottleSpec(delay_s=5.0, max_delay_s=1.0)
    with pytest.raises(ValueError, match="max_failures"):
        LoginThrottleSpec(max_failures=0)
    with pytest.raises(ValueError, match="window_s"):
        LoginThrottleSpec(window_s=float("nan"))
