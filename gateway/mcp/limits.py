"""Per-agent call rate limits: a token bucket per agent (pure; the time is passed in).

An agent may make ``burst`` calls at once and ``calls_per_s`` on average; a call beyond that
is refused (and recorded like any refused call), never queued: an agent in a loop costs the
gateway a refusal, not a backlog.
"""

from __future__ import annotations

import math


class RateLimit:
    """One agent's bucket: ``rate_per_s`` tokens a second, at most ``burst`` held."""

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0) or burst < 1:
            raise ValueError("rate_per_s must be finite and > 0, burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at_s = now_s
        self.refused = 0

    def allow(self, now_s: float) -> bool:
        """Take one token if there is one (True), else count a refusal (False). A clock
        that went back adds nothing."""
        if now_s > self.at_s:
            self.tokens = min(self.burst, self.tokens + (now_s - self.at_s) * self.rate_per_s)
            self.at_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False
