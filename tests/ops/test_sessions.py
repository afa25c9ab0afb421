"""Dashboard sessions (gateway.ops.sessions): a pure table with time passed in."""

from __future__ import annotations

import pytest

from gateway.adapters.base import Role
from gateway.ops.sessions import Sessions


def test_a_session_is_found_by_its_token_and_ends_at_logout() -> None:
    table = Sessions()
    s = table.create("boss", Role.ADMIN, 0.0)
    found = table.get(s.token, 1.0)
    assert found is not None and (found.user, found.role) == ("boss", Role.ADMIN)
    assert table.get("not-a-token", 1.0) is None
    assert table.get(None, 1.0) is None
    table.end(s.token)
    assert table.get(s.token, 2.0) is None


def test_tokens_are_random_and_distinct() -> None:
    table = Sessions()
    a, b = table.create("x", Role.OPERATOR, 0.0), table.create("x", Role.OPERATOR, 0.0)
    assert a.token != b.token and a.csrf != b.csrf and a.token != a.csrf
    assert len(a.token) >= 40


def test_idle_sessions_end_and_use_keeps_them_alive_up_to_the_maximum() -> None:
    table = Sessions(idle_s=10.0, max_s=25.0)
    s = table.create("op", Role.OPERATOR, 0.0)
    assert table.get(s.token, 9.0) is not None  # used: idle time restarts
    assert table.get(s.token, 18.0) is not None
    assert table.get(s.token, 26.0) is None  # past max_s, however busy
    t = table.create("op", Role.OPERATOR, 100.0)
    assert table.get(t.token, 110.5) is None  # idle longer than idle_s


def test_a_full_table_ends_the_oldest_session() -> None:
    table = Sessions(max_sessions=2)
    first = table.create("a", Role.VIEWER, 0.0)
    second = table.create("b", Role.VIEWER, 1.0)
    third = table.create("c", Role.VIEWER, 2.0)
    assert len(table) == 2
    assert table.get(first.token, 3.0) is None
    assert table.get(second.token, 3.0) is not None and table.get(third.token, 3.0) is not None


def test_csrf_token_must_match() -> None:
    s = Sessions().create("a", Role.OPERATOR, 0.0)
    assert Sessions.csrf_ok(s, s.csrf)
    assert not Sessions.csrf_ok(s, None)
    assert not Sessions.csrf_ok(s, "")
    assert not Sessions.csrf_ok(s, s.token)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        Sessions(idle_s=0)
