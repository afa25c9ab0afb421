"""Commands from an external AI controller that writes through the northbound servers.

Each write updates the latest command for its actuators; the supervisor takes the latest
command as the proposal of every cycle, with the time of the last write, so that silence beyond
``controller.silence_timeout_ms`` is detected. Actuators the AI has not written yet hold the
value last applied to them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from gateway.supervisor.decision import Proposal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.envelope.compiled import F64


class ExternalCommands:
    """The latest command written by the external AI, per actuator (site order)."""

    def __init__(self, actuators: tuple[str, ...]) -> None:
        self.index = {name: i for i, name in enumerate(actuators)}
        self.values = np.full(len(actuators), math.nan)
        self.written_at_s: float | None = None
        # Writes so far, and how many of them the latest proposal taken included, with its
        # values: a write after a cycle took its proposal is judged by the next cycle only
        # (gateway.runtime.proposals).
        self.writes = 0
        self.taken = 0
        self.taken_values = self.values.copy()

    def write(self, values: Mapping[str, float], now_s: float) -> None:
        """Record a write (engineering units); unknown names raise KeyError."""
        for name, value in values.items():
            self.values[self.index[name]] = value
        self.written_at_s = now_s
        self.writes += 1

    def proposal(self, applied: F64) -> Proposal | None:
        """This cycle's proposal: None before the first write."""
        if self.written_at_s is None:
            return None
        self.taken = self.writes
        self.taken_values = self.values.copy()
        values = np.where(np.isnan(self.values), applied, self.values)
        return Proposal(values, None, self.written_at_s)
