"""Faults in the log: one line when a fault starts, one when it clears."""

from __future__ import annotations

import logging

log = logging.getLogger("gateway.runtime")


class FaultLog:
    """One log line when a fault starts, one when it clears; debug lines while it persists.

    At most ``limit`` faults are remembered (the oldest is forgotten first): keys that come
    from clients (their addresses) must not grow memory without bound."""

    def __init__(self, limit: int = 1024) -> None:
        self.active: dict[str, str] = {}
        self.limit = limit

    def fault(self, key: str, message: str) -> None:
        if key in self.active:
            log.debug("fault=%s still: %s", key, message)
            return
        if len(self.active) >= self.limit:
            del self.active[next(iter(self.active))]
        self.active[key] = message
        log.warning("fault=%s %s", key, message)

    def clear(self, key: str) -> None:
        if self.active.pop(key, None) is not None:
            log.info("fault=%s cleared", key)
