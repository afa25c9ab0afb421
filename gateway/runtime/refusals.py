"""Refused writes as evidence, aggregated so that a flood cannot fill the disk.

Every refused write (an AI's, an operator's, over Modbus or OPC UA, refused by the northbound
server or by the runtime) is counted here, per client and reason. A client is its protocol, its
host (not its port: a client that reconnects for every write is still one client) and its user.
A window opens with a key's first refusal and closes one second (``window_s``) later; the
record of a window holds the count, the first and the last refused values with their times,
and the span between them. So at most one record per second per (client, reason) reaches the
audit chain, however fast the client writes, and nothing is left out: :meth:`flush` at shutdown
closes every window still open.

Pure: no I/O and no clock of its own; the time is passed in (the runtime's clock), and the
records go to ``emit``. At most ``max_keys`` windows are open at once; beyond that a new key's
refusals join one window per reason under the client ``"(other clients)"`` (a flood from many
addresses stays bounded, and is still counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["OTHER_CLIENTS", "RefusalLog"]

OTHER_CLIENTS: Final = "(other clients)"


def _json_values(values: Mapping[str, float]) -> dict[str, float | str]:
    # NaN and inf are the evidence here: kept as their text, not lost to a JSON null.
    return {k: (float(v) if math.isfinite(v) else repr(float(v))) for k, v in values.items()}


@dataclass
class _Window:
    protocol: str
    client: str
    user: str | None
    role: str
    reason: str
    code: int
    opened_s: float
    first_values: dict[str, float | str]
    first_s: float
    last_values: dict[str, float | str] = field(default_factory=dict)
    last_s: float = 0.0
    count: int = 0
    addresses: set[str] = field(default_factory=set)

    def payload(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "client": self.client, "user": self.user,
                "role": self.role, "reason": self.reason, "code": self.code,
                "count": self.count, "first": {"values": self.first_values, "at_s": self.first_s},
                "last": {"values": self.last_values, "at_s": self.last_s},
                "span_s": self.last_s - self.first_s,
                "addresses": sorted(self.addresses)[:16], "n_addresses": len(self.addresses)}


class RefusalLog:
    """Counts refused writes and emits ``emit(payload)`` once per closed window (see the
    module docstring). ``window_s`` must be finite and > 0 (ValueError)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], *, window_s: float = 1.0,
                 max_keys: int = 1024) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"`window_s` must be finite and > 0, not {window_s!r}")
        self.emit = emit
        self.window_s = float(window_s)
        self.max_keys = max_keys
        self._open: dict[tuple[str, str, str | None, str], _Window] = {}
        self.total = 0  # refusals counted since start

    def refused(self, now_s: float, *, protocol: str, address: str, user: str | None,
                role: str, reason: str, code: int, values: Mapping[str, float],
                count: int = 1) -> None:
        """One refused write: ``address`` is the client's ``host:port`` (the host is the
        client), ``values`` what it tried to write (by tag, or e.g. a register address).
        ``count`` > 1: that many refusals already aggregated elsewhere (the communications
        process sends one report per second per client and reason), ``values`` the latest."""
        if count < 1:
            raise ValueError(f"`count` must be >= 1, not {count}")
        self.total += count
        host = _host(address)
        key = (protocol, host, user, reason)
        window = self._open.get(key)
        if window is None:
            if len(self._open) >= self.max_keys:
                key = (protocol, OTHER_CLIENTS, None, reason)
                window = self._open.get(key)
                host, user = OTHER_CLIENTS, None
            if window is None:
                window = _Window(protocol, host, user, role, reason, int(code), now_s,
                                 _json_values(values), now_s)
                self._open[key] = window
        window.count += count
        window.last_values = _json_values(values)
        window.last_s = now_s
        if len(window.addresses) < 1024:
            window.addresses.add(address)

    def tick(self, now_s: float) -> int:
        """Emit the windows that have lasted ``window_s``; call once per cycle. Returns how
        many records were emitted."""
        if not self._open:
            return 0
        due = [k for k, w in self._open.items() if now_s - w.opened_s >= self.window_s
               or not now_s >= w.opened_s]  # a clock that went back: close, never hold
        for key in due:
            self.emit(self._open.pop(key).payload())
        return len(due)

    def flush(self) -> int:
        """Emit every open window (at shutdown)."""
        windows = list(self._open.values())
        self._open.clear()
        for window in windows:
            self.emit(window.payload())
        return len(windows)


def _host(address: str) -> str:
    """``"10.0.0.5:50312"`` -> ``"10.0.0.5"``; ``"[::1]:5"`` -> ``"::1"``; else unchanged."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    head, sep, tail = address.rpartition(":")
    return head if sep and tail.isdigit() and ":" not in head else address
