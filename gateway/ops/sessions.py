"""Logged-in dashboard sessions: a pure table, time passed in (no I/O, no asyncio).

A session is created at login and named by a random token (the cookie); it carries the user,
the role and a CSRF token of its own (sent back by the page in a header with every action).
It ends at logout, after ``idle_s`` without use, or ``max_s`` after login, whichever comes
first. At most ``max_sessions`` live at once: a new login beyond that ends the oldest.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.adapters.base import Role


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    csrf: str
    user: str
    role: Role
    created_s: float
    used_s: float


class Sessions:
    """The live sessions. Raises ValueError for limits that are not positive."""

    def __init__(self, idle_s: float = 900.0, max_s: float = 12 * 3600.0,
                 max_sessions: int = 64) -> None:
        if not (idle_s > 0 and max_s > 0 and max_sessions > 0):
            raise ValueError("idle_s, max_s and max_sessions must be > 0")
        self.idle_s = idle_s
        self.max_s = max_s
        self.max_sessions = max_sessions
        self._live: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._live)

    def create(self, user: str, role: Role, now_s: float) -> Session:
        """A new session for ``user``; the oldest is ended when the table is full."""
        self._expire(now_s)
        while len(self._live) >= self.max_sessions:
            oldest = min(self._live.values(), key=lambda s: s.created_s)
            del self._live[oldest.token]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, role,
                          now_s, now_s)
        self._live[session.token] = session
        return session

    def get(self, token: str | None, now_s: float) -> Session | None:
        """The live session named by ``token`` (its idle time restarts), else None."""
        if not token:
            return None
        self._expire(now_s)
        session = self._live.get(token)
        if session is None:
            return None
        session = Session(session.token, session.csrf, session.user, session.role,
                          session.created_s, now_s)
        self._live[token] = session
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._live.pop(token, None)

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        """Whether ``sent`` is the session's CSRF token (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())

    def _expire(self, now_s: float) -> None:
        dead = [t for t, s in self._live.items()
                if now_s - s.used_s > self.idle_s or now_s - s.created_s > self.max_s]
        for token in dead:
            del self._live[token]
