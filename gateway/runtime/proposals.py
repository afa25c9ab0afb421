"""Agents' proposals waiting for the control cycle that judges them.

An MCP agent in role ``ai`` proposes as an external AI writes: its values become the latest
external command (``gateway.runtime.external``) and the next cycle judges them. Unlike a
Modbus write, whose answer only says the values were taken, ``propose`` answers what that
cycle decided: applied, clamped (with the values written), refused (with the constraints
named), judged in SHADOW, or not taken (the AI is out of control). :class:`ProposalWaiters`
holds one future per waiting proposal and resolves them all from the decision of the cycle,
after that cycle's write (:meth:`ProposalWaiters.judged`: a loop over the waiting, a few
microseconds; nothing awaits).

Bounded: at most ``max_waiting`` proposals wait at once; one more is refused at once (busy),
never queued. Nothing here waits on the core: the cycle never blocks for a waiter, and a
waiter whose caller went away is simply resolved into a dropped future.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, NamedTuple

from gateway.envelope.compiled import Action
from gateway.mcp.outcome import ProposalOutcome, Result, refused
from gateway.supervisor.decision import Source
from gateway.supervisor.modes import Mode

if TYPE_CHECKING:
    from gateway.runtime.external import ExternalCommands
    from gateway.supervisor.decision import Decision

BUSY_REASON = "too many proposals wait for the next cycle; try again"


class _Waiting(NamedTuple):
    values: dict[str, float]
    indexes: tuple[int, ...]
    future: asyncio.Future[ProposalOutcome]
    seq: int  # the external command's write count once this proposal was written


class ProposalWaiters:
    """The proposals waiting for their cycle (see the module docstring). ``external`` is
    the external AI's latest command, where a later write that replaced a waiting proposal's
    value shows."""

    def __init__(self, names: tuple[str, ...], external: ExternalCommands,
                 max_waiting: int = 64) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, not {max_waiting}")
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.external = external
        self.max_waiting = max_waiting
        self._waiting: list[_Waiting] = []
        self.busy = 0  # proposals refused because max_waiting were waiting

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self.max_waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, values: dict[str, float]) -> asyncio.Future[ProposalOutcome]:
        """A future resolved with the outcome of the next cycle for ``values`` (already
        written to ``external``). Check :attr:`full` first (RuntimeError when full)."""
        if self.full:
            raise RuntimeError("ProposalWaiters is full")
        future: asyncio.Future[ProposalOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(dict(values), tuple(self.index[n] for n in values),
                                      future, self.external.writes))
        return future

    def judged(self, decision: Decision) -> None:
        """Resolve, from ``decision`` (the cycle's, after its write), every waiting proposal
        that the cycle's proposal included; one written after the cycle took its proposal
        (while it was writing to the devices) waits for the next cycle."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        ext = self.external
        taken = ext.taken_values  # what this cycle judged
        for item in waiting:
            if item.future.done():  # its caller went away
                continue
            if item.seq > ext.taken:
                self._waiting.append(item)
                continue
            superseded = any(not _same(taken[i], v)
                             for i, v in zip(item.indexes, item.values.values(), strict=True))
            outcome = (ProposalOutcome(Result.SUPERSEDED, decision.mode.value,
                                       reason="a later proposal replaced it before a cycle "
                                              "took it", cycle_at_s=decision.at_s)
                       if superseded else self.outcome(decision, item.indexes))
            item.future.set_result(outcome)

    def close(self, reason: str) -> None:
        """Resolve every waiting proposal as not taken (the gateway stops: no cycle will
        judge them, and the external command is never applied after the shutdown values)."""
        waiting, self._waiting = self._waiting, []
        for item in waiting:
            if not item.future.done():
                item.future.set_result(refused(reason))

    def outcome(self, decision: Decision, indexes: tuple[int, ...]) -> ProposalOutcome:
        """What ``decision`` did with a proposal for the actuators at ``indexes``."""
        mode = decision.mode
        verdict = decision.verdict
        command = decision.command
        applied = tuple((self.names[i], float(command[i])) for i in indexes)
        if verdict is None:
            return ProposalOutcome(Result.REFUSED, mode.value, "", (), (), applied,
                                   "the cycle took no usable proposal", decision.at_s)
        action = Action(verdict.action)
        name = action.name.lower()
        violations = tuple(verdict.violations)
        if action in (Action.REJECT, Action.TRIP):
            why = ("outside the envelope; not applied" if action is Action.REJECT else
                   "outside the envelope (a trip constraint); not applied")
            return ProposalOutcome(Result.REFUSED, mode.value, name, violations, (), applied,
                                   why, decision.at_s)
        if mode is Mode.SHADOW:
            return ProposalOutcome(Result.SHADOW, mode.value, name, violations, (), applied,
                                   "judged in SHADOW; not applied, the fallback controls",
                                   decision.at_s)
        if mode is not Mode.AUTO:
            return ProposalOutcome(Result.NOT_IN_CONTROL, mode.value, name, violations, (),
                                   applied, f"not applied: the AI is out of control in {mode}",
                                   decision.at_s)
        sources = decision.sources
        if any(sources[i] is not Source.AI for i in indexes):
            return ProposalOutcome(Result.REFUSED, mode.value, name, violations, (), applied,
                                   "replaced at the gate (safe values)", decision.at_s)
        result = (Result.CLAMPED if action is Action.CLAMP or decision.clamped
                  else Result.APPLIED)
        why = ("projected into the envelope; the clamped values were written"
               if result is Result.CLAMPED else "written as proposed")
        return ProposalOutcome(result, mode.value, name, violations, applied, applied, why,
                               decision.at_s)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
