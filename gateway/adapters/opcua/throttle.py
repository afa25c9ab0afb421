"""Failed-login throttle: a pure state machine, time passed in (no I/O, no asyncio).

Every login attempt names two keys, its user name and its source address. Each key counts its
attempts that did not succeed, each within ``window_s`` of the previous one (a quiet gap of
``window_s`` forgets the count). From the ``max_failures``-th such attempt on, the key's next
attempt may only be checked ``delay_s`` later, then ``2 * delay_s`` after that one, doubling up
to ``max_delay_s``. :meth:`LoginThrottle.admit` reserves the attempt's turn and says how long
the caller must wait before checking the password; an attempt whose turn is more than
``max_delay_s`` away is refused without being checked (a burst of parallel guesses is not
queued up). A success clears both keys.

Why delay and not lock out: a lockout of the admin is a denial of service that an attacker
can trigger at will by guessing the admin's name, and on an OT system the admin may be the
person who has to reset a trip. A capped delay keeps a guesser to one try per ``max_delay_s``
per user name and source while the real user, once the guessing stops, waits at most
``max_delay_s`` for one attempt. While a guesser keeps hammering one user name, that user's
attempts wait or are refused too: that is the price of stopping distributed guessing.

Attempts are counted when admitted (not when they fail), so parallel attempts cannot all pass
before the first failure is known; :meth:`succeeded` then clears the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from gateway.config.schema import LoginThrottleSpec

MAX_KEYS: Final = 4096
"""Bound on the keys kept (user names are chosen by the client): past it, keys quiet for
``window_s`` are forgotten first, then the oldest."""


@dataclass
class _Key:
    count: int = 0
    last_s: float = 0.0     # time of the last counted attempt's turn
    next_free_s: float = 0.0  # earliest time the key's next attempt may be checked


@dataclass(frozen=True)
class Admission:
    """The answer to one attempt: ``wait_s`` before checking it, or ``refused`` (not checked;
    ``wait_s`` is then how long until an attempt would be admitted without refusal)."""

    wait_s: float
    refused: bool = False


@dataclass
class LoginThrottle:
    spec: LoginThrottleSpec = field(default_factory=LoginThrottleSpec)
    _keys: dict[tuple[str, str], _Key] = field(default_factory=dict)

    @staticmethod
    def _names(user: str | None, source: str) -> tuple[tuple[str, str], ...]:
        # A user name is the client's choice: bounded (its first 256 characters name the key).
        return (("user", user[:256] if user is not None else "(anonymous)"),
                ("source", source))

    def _get(self, name: tuple[str, str], now_s: float) -> _Key:
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= MAX_KEYS:
                self._prune(now_s)
            key = self._keys[name] = _Key()
        elif now_s - key.last_s > self.spec.window_s and now_s >= key.next_free_s:
            key.count = 0
        return key

    def _prune(self, now_s: float) -> None:
        quiet = [n for n, k in self._keys.items()
                 if now_s - k.last_s > self.spec.window_s and now_s >= k.next_free_s]
        for name in quiet:
            del self._keys[name]
        while len(self._keys) >= MAX_KEYS:
            oldest = min(self._keys, key=lambda n: self._keys[n].last_s)
            del self._keys[oldest]

    def wait_s(self, user: str | None, source: str, now_s: float) -> float:
        """How long an attempt arriving at ``now_s`` would wait (0 if none); no side effect."""
        return max(0.0, max((self._keys[n].next_free_s - now_s
                             for n in self._names(user, source) if n in self._keys),
                            default=0.0))

    def admit(self, user: str | None, source: str, now_s: float) -> Admission:
        """Reserve the attempt's turn and count it, or refuse it (not counted) if its turn is
        more than ``max_delay_s`` away."""
        keys = [self._get(n, now_s) for n in self._names(user, source)]
        wait = max(0.0, *(k.next_free_s - now_s for k in keys))  # keys: always two
        if wait > self.spec.max_delay_s:
            return Admission(wait - self.spec.max_delay_s, refused=True)
        turn = now_s + wait
        for key in keys:
            key.count += 1
            key.last_s = turn
            excess = key.count - self.spec.max_failures
            key.next_free_s = turn if excess < 0 else turn + min(
                self.spec.delay_s * 2.0 ** min(excess, 64), self.spec.max_delay_s)
        return Admission(wait)

    def succeeded(self, user: str | None, source: str) -> None:
        """The attempt succeeded: forget both keys' failures."""
        for name in self._names(user, source):
            self._keys.pop(name, None)

    def failures(self, user: str | None, source: str) -> int:
        """The larger of the two keys' counts (for logs and tests)."""
        return max((self._keys[n].count for n in self._names(user, source)
                    if n in self._keys), default=0)
