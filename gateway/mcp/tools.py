"""The MCP tools, by role, rate limited and audited; no SDK here (``gateway.mcp.server`` puts
them on the wire, drills and tests may call them directly).

Roles (``northbound.mcp.agents[].role``):

- ``viewer``: ``read_plant``, ``describe_envelope``, ``check_command``, ``incident_status``,
  ``explain_refusal``;
- ``ai``: those, and ``propose``: an external AI's write, answered with the real outcome of the
  cycle that judged it (``gateway.runtime.proposals``);
- ``operator``: those, and ``set_setpoint`` (MANUAL only, written through before the answer,
  as a SCADA's write) and ``request_mode`` toward safety only (``to_manual``,
  ``to_safe_stop``).

No agent may reset a trip, bypass a detector, or ask for SHADOW or AUTO: those are for an
authorised person (dashboard, OPC UA, ``ctl``); an agent that asks is refused and recorded.

Every call, done or refused, is counted in the audit chain with the agent's name, its
arguments and the outcome (:mod:`gateway.mcp.calls`); a call beyond the agent's rate limit is
refused before anything else. Every answer is plain JSON data: ``status`` is ``done`` or
``refused`` (with ``refusal.kind``, a fixed word, and ``refusal.reason``).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import gateway.envelope
from gateway.adapters.base import ClientInfo, Role
from gateway.mcp.calls import CallLog, bounded
from gateway.mcp.limits import RateLimit
from gateway.mcp.outcome import Result
from gateway.mcp.plant import BadCommand, PlantFacts, num

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.adapters.base import NorthboundHandler
    from gateway.config.schema import McpAgent, McpServerSpec, Site
    from gateway.runtime.view import PlantView

READ_TOOLS: Final = ("read_plant", "describe_envelope", "check_command", "incident_status",
                     "explain_refusal")
TOOLS: Final = (*READ_TOOLS, "propose", "set_setpoint", "request_mode")
ROLE_TOOLS: Final[dict[Role, frozenset[str]]] = {
    Role.VIEWER: frozenset(READ_TOOLS),
    Role.AI: frozenset((*READ_TOOLS, "propose")),
    Role.OPERATOR: frozenset((*READ_TOOLS, "set_setpoint", "request_mode")),
}
# Mode requests an operator agent may make: toward safety only.
AGENT_REQUESTS: Final = frozenset({"to_manual", "to_safe_stop"})
KEEP_REFUSALS: Final = 16  # per agent, for explain_refusal


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated agent and where its call came from (``host:port``, or ``stdio``)."""

    agent: McpAgent
    address: str

    @property
    def role(self) -> Role:
        return Role(self.agent.role)

    @property
    def client(self) -> ClientInfo:
        return ClientInfo("mcp", self.address, self.agent.name, self.role)


def refusal(kind: str, reason: str, **data: Any) -> dict[str, Any]:
    return {"status": "refused", "refusal": {"kind": kind, "reason": reason, **data}}


class ToolBox:
    """The tools of one site for the agents of ``spec``; ``handler`` is the core (over the
    channel in the communications process). :meth:`publish` gives it each view."""

    def __init__(self, site: Site, spec: McpServerSpec, handler: NorthboundHandler, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.site = site
        self.spec = spec
        self.handler = handler
        self.clock = clock
        self.wall_clock = wall_clock
        self.facts = PlantFacts(site, gateway.envelope.compile(site))
        self.view: PlantView | None = None
        now = clock()
        self.limits = {a.name: RateLimit(a.calls_per_s, a.burst, now) for a in spec.agents}
        self.calls = CallLog(handler.agent_calls)
        self.refusals: dict[str, deque[dict[str, Any]]] = {
            a.name: deque(maxlen=KEEP_REFUSALS) for a in spec.agents}
        self.counts = {"calls": 0, "refused": 0, "out_of_role": 0, "rate_limited": 0}

    def publish(self, view: PlantView) -> None:
        """The core's latest view; also closes the call windows that are due."""
        self.view = view
        self.calls.tick(self.clock())

    def close(self) -> None:
        self.calls.flush()

    # ------------------------------------------------------------------ dispatch

    async def call(self, caller: Caller, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run ``tool`` for ``caller`` with ``args``; never raises for anything an agent
        sends. Every call is recorded."""
        now = self.clock()
        name = caller.agent.name
        self.counts["calls"] += 1
        if not self.limits[name].allow(now):
            self.counts["rate_limited"] += 1
            answer = refusal("rate_limited", f"over {caller.agent.calls_per_s:g} calls/s "
                                             f"(burst {caller.agent.burst})")
        elif tool not in TOOLS:
            answer = refusal("unknown_tool", "no such tool", tool=tool)
        elif tool not in ROLE_TOOLS[caller.role]:
            self.counts["out_of_role"] += 1
            answer = refusal("not_authorised", f"role {caller.role} may not call {tool}",
                             role=str(caller.role))
            if tool in ("propose", "set_setpoint"):
                # Also evidence among refused writes, as a Modbus client's would be.
                values = args.get("values")
                self.handler.refused(caller.client, _floats(values),
                                     answer["refusal"]["reason"], 2)
        else:
            try:
                answer = await getattr(self, "_" + tool)(caller, args)
            except BadCommand as exc:
                answer = refusal("bad_arguments", str(exc))
        outcome = _outcome_word(answer)
        if answer["status"] == "refused":
            self.counts["refused"] += 1
            self.refusals[name].append({"at_wall_s": self.wall_clock(), "tool": tool,
                                        "args": bounded(args, 2000), **answer["refusal"]})
        self.calls.call(now, agent=name, role=str(caller.role), address=caller.address,
                        tool=tool, args=args, outcome=outcome,
                        detail=answer.get("refusal") or answer.get("outcome"))
        return answer

    # ------------------------------------------------------------------ the tools

    async def _read_plant(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"status": "done", **self.facts.read_plant(self.view, self.clock(),
                                                          self.wall_clock())}

    async def _describe_envelope(self, caller: Caller, args: dict[str, Any]
                                 ) -> dict[str, Any]:
        return {"status": "done", **self.facts.describe_envelope(self.view)}

    async def _check_command(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"status": "done", **self.facts.check_command(self.view, args.get("values"))}

    async def _incident_status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        view = self.view
        if view is None:
            return {"status": "done", "available": False, "why": "no_view_yet"}
        return {"status": "done", "available": True, "mode": view.mode,
                "latched": view.latched, "trip_reason": view.trip_reason,
                "incident_id": view.incident_id or None,
                "bypasses": [{"detector": d, "expires_utc": w.isoformat()}
                             for d, w in view.bypasses],
                "detectors": [{"name": n, "value": num(v), "limit": num(lim)}
                              for n, v, lim in zip(view.detector_names, view.detector_values,
                                                   view.detector_limits, strict=True)]}

    async def _explain_refusal(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The agent's own latest refusals (newest last), each violated constraint with
        its definition from the envelope."""
        mine = list(self.refusals[caller.agent.name])
        envelope = self.facts.describe_envelope(self.view)
        defs: dict[str, Any] = {}
        for lim in envelope["actuator_limits"]:
            for slot in ("min", "max", "rate", "step", "allowed", "finite"):
                defs[f"{lim['actuator']}.{slot}"] = {"kind": "actuator_limit", **lim}
        for c in envelope["constraints"]:
            defs[c["name"]] = {"kind": "constraint", **c}
        for i in envelope["interlocks"]:
            defs[i["name"]] = {"kind": "interlock", **i}
        pred = envelope["prediction"]
        if pred is not None:
            for k in pred["keep"]:
                defs[f"predict.{k['sensor']}"] = {"kind": "prediction", **k,
                                                  "horizon_steps": pred["horizon_steps"],
                                                  "step_s": pred["step_s"]}
        named = {v for r in mine for v in r.get("violations", ())}
        return {"status": "done", "refusals": mine,
                "constraints": {n: defs.get(n, {"kind": "unknown"}) for n in sorted(named)}}

    async def _propose(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        values = self.facts.command(args.get("values"))
        not_driven = [n for n in values if n not in self.facts.driven]
        if not_driven:
            self.handler.refused(caller.client, values, "not driven by the AI", 2)
            return refusal("not_driven_by_ai", "the AI does not drive these actuators",
                           actuators=not_driven)
        outcome = await self.handler.propose(caller.client, values)
        data = outcome.to_json()
        data["cycle_at_s"] = num(outcome.cycle_at_s)
        if outcome.result is Result.REFUSED:
            return refusal("refused_by_gateway", outcome.reason, outcome=data,
                           violations=list(outcome.violations))
        return {"status": "done", "outcome": data}

    async def _set_setpoint(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        values = self.facts.command(args.get("values"))
        outcomes = await self.handler.write(caller.client, values, atomic=True)
        first = next(iter(outcomes.values()))
        if not first.accepted:
            why = first.why
            return refusal(str(why) if why is not None else "refused", first.reason)
        return {"status": "done", "outcome": {"result": "applied", "values": values,
                                              "note": "written_through_first_step"}}

    async def _request_mode(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        kind = args.get("kind")
        if kind not in AGENT_REQUESTS:
            return refusal("not_authorised", "an agent may only ask for to_manual or "
                                             "to_safe_stop; the rest needs an authorised person",
                           requested=str(kind))
        outcome = await self.handler.request(caller.client, str(kind), None, None)
        if not outcome.accepted:
            why = outcome.why
            return refusal(str(why) if why is not None else "refused", outcome.reason)
        return {"status": "done", "outcome": {"result": "applied", "kind": kind,
                                              "what_changed": outcome.reason}}


def _floats(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) for k, v in list(values.items())[:64]
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _outcome_word(answer: dict[str, Any]) -> str:
    if answer["status"] == "refused":
        return f"refused: {answer['refusal']['kind']}"
    outcome = answer.get("outcome")
    if isinstance(outcome, dict) and isinstance(outcome.get("result"), str):
        return str(outcome["result"])
    return "ok"
