"""Every MCP tool call as evidence, aggregated so that a flood cannot fill the disk.

Each call is counted per (agent, tool, outcome). A window opens with a key's first call and
closes ``window_s`` later; its record holds the count, the first and the last call's arguments
and outcome with their times. So at most one record per window per agent, tool and outcome
reaches the audit chain, however fast an agent calls, and nothing is left out (:meth:`flush`
at stop closes every window). At most ``max_keys`` windows are open; beyond that the calls of a
new key join one window per tool and outcome under the agent ``"(other agents)"``.

Pure: the time is passed in, the windows go to ``emit`` (the request channel, or the core's
handler in this process: ``NorthboundHandler.agent_calls``). Arguments are kept as JSON data,
cut to ``max_arg_chars`` characters of their JSON text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

OTHER_AGENTS: Final = "(other agents)"


def bounded(args: Any, max_chars: int) -> Any:
    """``args`` as JSON data, or its JSON text cut to ``max_chars`` (marked) when longer."""
    try:
        text = json.dumps(args, separators=(",", ":"), default=repr, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(args)
    if len(text) <= max_chars:
        return json.loads(text)
    return {"truncated_json": text[:max_chars], "chars": len(text)}


@dataclass
class _Window:
    agent: str
    role: str
    address: str
    tool: str
    outcome: str
    opened_s: float
    first: dict[str, Any]
    last: dict[str, Any] = field(default_factory=dict)
    count: int = 0

    def payload(self) -> dict[str, Any]:
        return {"agent": self.agent, "role": self.role, "address": self.address,
                "tool": self.tool, "outcome": self.outcome, "count": self.count,
                "first": self.first, "last": self.last,
                "span_s": self.last.get("at_s", self.opened_s) - self.first["at_s"]}


class CallLog:
    """Counts calls and emits ``emit(payload)`` once per closed window."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], *, window_s: float = 1.0,
                 max_keys: int = 256, max_arg_chars: int = 2000) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be finite and > 0, not {window_s!r}")
        self.emit = emit
        self.window_s = window_s
        self.max_keys = max_keys
        self.max_arg_chars = max_arg_chars
        self._open: dict[tuple[str, str, str], _Window] = {}
        self.total = 0

    def call(self, now_s: float, *, agent: str, role: str, address: str, tool: str,
             args: Any, outcome: str, detail: Any = None) -> None:
        """One call: ``outcome`` a short fixed word ("ok", "refused: rate limited",
        "applied"...), ``detail`` the answer's data worth keeping (bounded like ``args``)."""
        self.total += 1
        key = (agent, tool, outcome)
        window = self._open.get(key)
        if window is None and len(self._open) >= self.max_keys:
            key = (OTHER_AGENTS, tool, outcome)
            window = self._open.get(key)
            agent, address = OTHER_AGENTS, ""
        entry = {"at_s": now_s, "args": bounded(args, self.max_arg_chars),
                 "detail": bounded(detail, self.max_arg_chars)}
        if window is None:
            window = _Window(agent, role, address, tool, outcome, now_s, entry)
            self._open[key] = window
        window.count += 1
        window.last = entry

    def tick(self, now_s: float) -> int:
        """Emit the windows that have lasted ``window_s`` (a clock that went back closes
        them); returns how many."""
        due = [k for k, w in self._open.items()
               if now_s - w.opened_s >= self.window_s or now_s < w.opened_s]
        for key in due:
            self.emit(self._open.pop(key).payload())
        return len(due)

    def flush(self) -> int:
        """Emit every open window (at stop)."""
        windows = list(self._open.values())
        self._open.clear()
        for window in windows:
            self.emit(window.payload())
        return len(windows)
