"""What the safety core does with requests from the northbound side (the communications
process, or servers in this process): setpoint writes, operator requests, incident work, and
refusals kept as evidence.

Northbound writes: an external AI's write is checked against the envelope at once (refused with
code 3 if it breaks it) and becomes the proposal of the next cycles. An operator's write is a
setpoint, taken in MANUAL mode only: checked, encoded, checked again, and written through
(``gateway.runtime.write_through``) before the answer, then held by the supervisor in place of
that actuator's fallback until the mode leaves MANUAL. Every answer is the real outcome.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from gateway.adapters.base import ACCEPTED, NorthboundHandler, Refusal, Role, WriteOutcome
from gateway.config.schema import ControllerKind
from gateway.mcp.outcome import refused as proposal_refused
from gateway.ops import roles
from gateway.runtime.proposals import BUSY_REASON, ProposalWaiters
from gateway.runtime.requests_log import request_result
from gateway.runtime.write_through import STOPPING, manual_only
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from gateway.adapters.base import ClientInfo, TagStore
    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64
    from gateway.envelope.engine import Envelope
    from gateway.incident.manager import IncidentManager
    from gateway.link.counters import CoreCounters
    from gateway.mcp.outcome import ProposalOutcome
    from gateway.runtime.external import ExternalCommands
    from gateway.runtime.faults import FaultLog
    from gateway.runtime.records import Records
    from gateway.runtime.refusals import RefusalLog
    from gateway.runtime.safety_state import DurableState
    from gateway.runtime.southbound import Southbound
    from gateway.runtime.write_through import WriteThrough
    from gateway.supervisor.core import Supervisor

log = logging.getLogger("gateway.runtime")

_OUTSIDE: Final = "outside the envelope: "
# The largest window of an agent's calls kept whole in the audit chain (JSON characters).
MAX_CALL_WINDOW_CHARS: Final = 16_384

STARTING = WriteOutcome(False, 4, "gateway is starting (its supervisor is not running yet)",
                        Refusal.STARTING)


class NorthboundRequests(NorthboundHandler):
    """The core's side of every northbound call. Until :meth:`attach` (the supervisor runs),
    every write and request is refused as STARTING, and recorded as any refusal is."""

    def __init__(self, site: Site, envelope: Envelope, store: TagStore,
                 southbound: Southbound, external: ExternalCommands, durable: DurableState,
                 records: Callable[[], Records], refusals: RefusalLog,
                 security_events: RefusalLog, faults: FaultLog,
                 clock: Callable[[], float], counters: CoreCounters | None = None) -> None:
        self.site = site
        self.envelope = envelope
        self.store = store
        self.southbound = southbound
        self.external = external
        self.durable = durable
        self._records = records
        self.refusals = refusals
        self.security_events = security_events
        self.faults = faults
        self.clock = clock
        self.counters = counters  # refused writes by kind
        self.names = tuple(t.name for t in site.actuators)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.sensor_names = tuple(t.name for t in site.sensors)
        self.period_s = site.site.cycle_ms / 1000.0
        self.supervisor: Supervisor | None = None
        self.write_through: WriteThrough | None = None
        self.incidents: IncidentManager | None = None
        self.stopping = False
        # Called after each refused write with the tag and the outcome (the servers in this
        # process show the latest refusal on their status; None: nobody to show it).
        self.on_refusal: Callable[[str, WriteOutcome], Awaitable[None]] | None = None
        # MCP agents' proposals waiting for the cycle that judges them (the cycle resolves
        # them: ControlCycle.on_decision).
        self.proposals = ProposalWaiters(self.names, external)

    def attach(self, supervisor: Supervisor, write_through: WriteThrough,
               incidents: IncidentManager | None) -> None:
        self.supervisor = supervisor
        self.write_through = write_through
        self.incidents = incidents

    def sensors_now(self) -> F64:
        """The sensors as the supervisor trusts them now (NaN where masked)."""
        sup = self.supervisor
        assert sup is not None
        masked, _ = sup.inputs.check(*self.store.columns(self.sensor_names, self.clock()))
        return np.array(masked, dtype=np.float64)

    # ------------------------------------------------------------------ writes

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        outcomes: dict[str, WriteOutcome] = {}
        # Until the supervisor runs every write is refused, and recorded and logged as any
        # refusal is: a SCADA that writes too early learns why from the log.
        starting = self.supervisor is None
        for name in values:
            if starting:
                outcomes[name] = STARTING
            elif name not in self.index:
                outcomes[name] = WriteOutcome(False, 2, f"{name} is not a writable setpoint",
                                              Refusal.UNKNOWN_TAG)
            elif client.role not in roles.WRITERS:
                outcomes[name] = WriteOutcome(False, 2, f"role {client.role} may not write",
                                              Refusal.NOT_AUTHORISED)
        if starting:
            groups: list[dict[str, float]] = []
        elif atomic:
            groups = [dict(values)]
        else:
            groups = [{k: v} for k, v in values.items()]
        sensors = self.sensors_now() if groups else np.empty(0)
        for group in groups:
            if any(k in outcomes for k in group):
                continue
            outcome = await self._write_group(client, group, sensors)
            for name in group:
                outcomes[name] = outcome
        refused = [(name, o) for name, o in outcomes.items() if not o.accepted]
        if atomic and refused:  # none of an atomic write is applied: all of it is refused
            outcomes = dict.fromkeys(values, refused[0][1])
            refused = [(name, refused[0][1]) for name in values]
        accepted = {n: v for n, v in values.items() if outcomes[n].accepted}
        if accepted and client.role is not Role.AI:  # an AI's are in the decisions' records
            self._records().operator_write(
                client.user or client.address, f"{client.protocol}:{client.address}",
                accepted, "ok")
        if refused:
            # Evidence, aggregated per client and reason (gateway/runtime/refusals.py): a
            # flood of refused writes cannot fill the disk, and none goes unrecorded.
            by_reason: dict[WriteOutcome, dict[str, float]] = {}
            for name, outcome in refused:
                by_reason.setdefault(outcome, {})[name] = values[name]
            for outcome, tried in by_reason.items():
                self._refused(client, tried, outcome.reason, outcome.code, 1, outcome.why)
        key = f"refused:{client.address}"
        if refused:
            name, outcome = refused[0]
            # One line while a client keeps being refused, not one per write (a hostile
            # client must not be able to flood the log); the audit chain counts every one.
            self.faults.fault(key, f"write refused tag={name} code={outcome.code} "
                                   f"reason={outcome.reason}")
            if self.on_refusal is not None:
                await self.on_refusal(name, outcome)
        else:
            self.faults.clear(key)
        return outcomes

    async def _write_group(self, client: ClientInfo, group: dict[str, float], sensors: F64
                           ) -> WriteOutcome:
        sup = self.supervisor
        through = self.write_through
        assert sup is not None
        assert through is not None
        candidate = self.southbound.applied.copy()
        for name, value in group.items():
            candidate[self.index[name]] = value
        # The setpoint itself must lie inside the envelope (rate and step limits apply to
        # the movement, which the control cycle paces; they are not judged here).
        verdict = self.envelope.check(candidate, candidate, sensors, self.period_s)
        if not verdict.ok:
            return WriteOutcome(False, 3, "outside the envelope: " + ", ".join(
                verdict.violations))
        if client.role is Role.AI:
            # Accepting what would never be used would tell the AI its commands count.
            if self.site.controller.kind is not ControllerKind.EXTERNAL:
                return WriteOutcome(False, 4, "this site's AI controller is not external",
                                    Refusal.NOT_AUTHORISED)
            driven = self.site.controller.outputs
            refused = [n for n in group if n not in driven]
            if refused:
                return WriteOutcome(False, 2, f"not driven by the AI: {', '.join(refused)}",
                                    Refusal.NOT_AUTHORISED)
            self.external.write(group, self.clock())
            return ACCEPTED
        if sup.mode is not Mode.MANUAL:
            return manual_only(sup.mode)
        if self.stopping:
            return STOPPING
        outcome = await through.submit(client.address, group)
        if outcome.accepted:
            log.debug("operator write by=%s from=%s values=%s", client.user, client.address,
                      group)
        return outcome

    async def propose(self, client: ClientInfo, values: dict[str, float]) -> ProposalOutcome:
        """An MCP agent's proposal: taken exactly as an external AI's write (the same checks,
        the same refusals recorded as evidence), then answered with what the next cycle
        decided (``gateway.runtime.proposals``). Only role ``ai`` proposes."""
        if client.role is not Role.AI:
            outcome = WriteOutcome(False, 2, f"role {client.role} may not propose",
                                   Refusal.NOT_AUTHORISED)
            self._refused(client, values, outcome.reason, outcome.code, 1, outcome.why)
            return proposal_refused(outcome.reason)
        if not values:
            return proposal_refused("a proposal of no values")
        if self.stopping:
            return proposal_refused(STOPPING.reason)
        if self.proposals.full:
            self.proposals.busy += 1
            self._refused(client, values, BUSY_REASON, 6, 1, Refusal.BUSY)
            return proposal_refused(BUSY_REASON)
        outcomes = await self.write(client, values, atomic=True)
        first = next(iter(outcomes.values()))
        if not first.accepted:
            reason = first.reason
            violations: tuple[str, ...] = ()
            if first.why is Refusal.ENVELOPE and reason.startswith(_OUTSIDE):
                violations = tuple(reason.removeprefix(_OUTSIDE).split(", "))
                reason = "outside the envelope as a setpoint; never entered a cycle"
            return proposal_refused(reason, violations)
        # No await since the write took the values: the next cycle cannot have run yet.
        return await self.proposals.wait(values)

    def agent_calls(self, window: dict[str, Any]) -> None:
        """One agent's calls of one tool with one outcome over a window (already aggregated
        by the communications process): into the audit chain. A window larger than
        :data:`MAX_CALL_WINDOW_CHARS` of JSON (the communications process cuts arguments far
        below that; more means it misbehaves) is kept as its counts and a cut of its text."""
        text = json.dumps(window, separators=(",", ":"), default=str)
        if len(text) > MAX_CALL_WINDOW_CHARS:
            window = {k: window.get(k) for k in ("agent", "role", "tool", "outcome", "count")
                      if isinstance(window.get(k), str | int)}
            window["oversized_json"] = text[:MAX_CALL_WINDOW_CHARS // 2]
            window["chars"] = len(text)
        self._records().agent_calls(window)

    def refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                code: int) -> None:
        """A refused write, counted as evidence (also for writes the northbound servers
        refuse themselves, before they reach :meth:`write`)."""
        self.refused_many(client, values, reason, code, 1)

    def refused_many(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                     code: int, count: int) -> None:
        """``count`` refused writes, already aggregated by the communications process (their
        kind, for the counters, follows from ``code``: see ``WriteOutcome.why``; 6, server
        device busy, is a full request channel)."""
        kind = Refusal.BUSY if code == 6 else WriteOutcome(False, code, reason).why
        self._refused(client, values, reason, code, count, kind)

    def _refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                 code: int, count: int, kind: Refusal | None) -> None:
        if self.counters is not None:
            self.counters.refused(str(kind), count)
        self.refusals.refused(self.clock(), protocol=client.protocol, address=client.address,
                              user=client.user, role=str(client.role), reason=reason,
                              code=code, values=values, count=count)

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        """A refused connection, channel or certificate, or a failed login: evidence,
        aggregated per client, event and reason like refused writes."""
        self.refused_connections_many(protocol, address, user, event, reason, 1)

    def refused_connections_many(self, protocol: str, address: str, user: str | None,
                                 event: str, reason: str, count: int) -> None:
        """``count`` refused connections, already aggregated by the communications process."""
        self.security_events.refused(self.clock(), protocol=protocol, address=address,
                                     user=user, role=event, reason=reason, code=0, values={},
                                     count=count)

    # ------------------------------------------------------------------ requests

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        """Apply an operator request at once (between two cycles: this loop runs the cycle
        too, so there is no race) and answer its real outcome: applied, with what changed, or
        refused, with the reason. Its events reach the audit log and the incident manager
        with the next cycle's decision, as a cycle's own do."""
        sup = self.supervisor
        if sup is None:
            return STARTING
        if self.stopping:
            return STOPPING
        try:
            request_kind = RequestKind(kind)
        except ValueError:
            return WriteOutcome(False, 3, f"unknown request {kind!r}", Refusal.MODE)
        authorised = roles.may_request(client.role, request_kind)
        who = client.user or client.address
        source = f"{client.protocol}:{client.address}"
        records = self._records()
        quarantined = self.durable.quarantined
        if (quarantined is not None and authorised
                and request_kind in (RequestKind.TO_SHADOW, RequestKind.TO_AUTO)):
            reason = f"the loaded model is quarantined ({quarantined[1]})"
            req = OperatorRequest(request_kind, who, False, detector, duration_s, reason)
            records.request(req, source, f"refused: {reason}")
            return WriteOutcome(False, 4, reason, Refusal.MODE)
        req = OperatorRequest(request_kind, who, authorised, detector, duration_s)
        events = sup.apply_request(req)
        result = request_result(events)
        records.request(req, source, result)
        log.info("operator request %s by %s from %s: %s", request_kind, who, source, result)
        if not authorised:
            return WriteOutcome(False, 2, f"role {client.role} may not {kind}",
                                Refusal.NOT_AUTHORISED)
        if result.startswith("refused: "):
            return WriteOutcome(False, 4, result.removeprefix("refused: "), Refusal.MODE)
        return WriteOutcome(True, 0, result.removeprefix("applied: "))

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        """Incident work through the running gateway, recorded in its own audit chain (the CLI
        cannot write it while we hold it), each with the client's user and source: note,
        acknowledge, check, severity (level, reason), reported (obligation, ref), review (one
        JSON object, see :func:`review_args`), action_done (number, note), approve_draft
        (audience, text), evidence (no argument: recorded before the dashboard serves a
        bundle), resolve (summary) and force_resolve (summary, reason). Resolve enforces the
        playbook's requirements as the CLI does: refused, naming what is open, while required
        checklist items or the review are open; force_resolve (administrators) resolves
        anyway and records the reason and what was open. Codes: 2 role may not, 3 unknown
        action or malformed arguments, 4 refused by the incident."""
        from gateway.incident.model import BadRequest, IncidentError

        manager = self.incidents
        if manager is None:
            return WriteOutcome(False, 4, "this gateway keeps no incidents (audit off)")
        allowed = roles.INCIDENT_ROLES.get(action)
        if allowed is None:
            return WriteOutcome(False, 3, f"unknown incident action {action!r}")
        if client.role not in allowed:
            # NOT_AUTHORISED: the dashboard answers 403 and OPC UA BadUserAccessDenied (the
            # code alone would read as a read-only tag's refusal).
            return WriteOutcome(False, 2, f"role {client.role} may not {action} incidents",
                                Refusal.NOT_AUTHORISED)
        who = client.user or client.address
        source = f"{client.protocol}:{client.address}"
        n = len(args)
        try:
            if action == "note" and n == 1:
                incident = manager.note(incident_id, who, source, args[0])
            elif action == "acknowledge" and n == 1:
                incident = manager.acknowledge(incident_id, who, source, args[0])
            elif action == "check" and n == 2:
                incident = manager.check(incident_id, args[0], args[1], who, source)
            elif action == "severity" and n == 2:
                incident = manager.raise_severity(incident_id, args[0], who, source, args[1])
            elif action == "reported" and n == 2:
                incident = manager.report_made(incident_id, args[0], who, source, args[1])
            elif action == "review" and n == 1:
                review = review_args(args[0])
                incident = manager.review(incident_id, who, source, review.root_cause,
                                          factors=review.factors, went_well=review.went_well,
                                          went_badly=review.went_badly,
                                          actions=review.actions)
            elif action == "action_done" and n == 2:
                incident = manager.action_done(incident_id, args[0], who, source, args[1])
            elif action == "approve_draft" and n == 2:
                incident = manager.approve_draft(incident_id, args[0], args[1], who, source)
            elif action == "evidence" and n == 0:
                incident = manager.evidence_served(incident_id, who, source)
            elif action == "resolve" and n == 1:
                incident = manager.resolve(incident_id, who, source, args[0], enforce=True)
            elif action == "force_resolve" and n == 2:
                incident = manager.resolve(incident_id, who, source, args[0], enforce=True,
                                           force_reason=args[1])
            else:
                return WriteOutcome(False, 3, f"wrong arguments for {action} ({n} given)")
        except BadRequest as exc:
            return WriteOutcome(False, 3, str(exc))
        except IncidentError as exc:
            return WriteOutcome(False, 4, str(exc))
        log.info("incident %s: %s by %s from %s; phase %s", incident_id, action, who, source,
                 incident.phase)
        self.durable.note()  # a resolved incident is no longer open
        return WriteOutcome(True, 0, f"{action} recorded; phase {incident.phase}")


MAX_REVIEW_CHARS: Final = 16_000  # a review's JSON through the running gateway
MAX_REVIEW_ENTRIES: Final = 50  # factors, lessons or action items, each


@dataclass(frozen=True, slots=True)
class ReviewArgs:
    """A post-incident review as it comes through the running gateway."""

    root_cause: str
    factors: tuple[str, ...]
    went_well: tuple[str, ...]
    went_badly: tuple[str, ...]
    actions: tuple[tuple[str, str, str], ...]


def review_args(text: str) -> ReviewArgs:
    """Parse a review sent as one JSON object: ``root_cause`` (text), optional ``factors``,
    ``went_well``, ``went_badly`` (lists of texts) and ``actions`` (a list of objects with
    ``text``, ``owner`` and ``due`` YYYY-MM-DD); at most :data:`MAX_REVIEW_CHARS` characters
    and :data:`MAX_REVIEW_ENTRIES` entries per list. Raises ``BadRequest`` naming what is
    wrong (the manager then checks the texts and dates themselves)."""
    from gateway.incident.model import BadRequest

    if len(text) > MAX_REVIEW_CHARS:
        raise BadRequest(f"the review has {len(text)} characters; at most {MAX_REVIEW_CHARS}")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the review is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequest("the review must be a JSON object")
    known = {"root_cause", "factors", "went_well", "went_badly", "actions"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BadRequest(f"the review has unknown keys {unknown}; use {sorted(known)}")
    root_cause = raw.get("root_cause")
    if not isinstance(root_cause, str):
        raise BadRequest("the review needs `root_cause`: a text")

    def texts(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"`{key}` must be a list of texts")
        if len(value) > MAX_REVIEW_ENTRIES:
            raise BadRequest(f"`{key}` has {len(value)} entries; at most {MAX_REVIEW_ENTRIES}")
        return tuple(value)

    actions = raw.get("actions", [])
    if not isinstance(actions, list) or len(actions) > MAX_REVIEW_ENTRIES:
        raise BadRequest(f"`actions` must be a list of at most {MAX_REVIEW_ENTRIES} items")
    items = []
    for k, item in enumerate(actions):
        if (not isinstance(item, dict) or set(item) != {"text", "owner", "due"}
                or not all(isinstance(item[f], str) for f in ("text", "owner", "due"))):
            raise BadRequest(f"`actions` item {k}: an object with `text`, `owner` and `due` "
                             "(texts)")
        items.append((item["text"], item["owner"], item["due"]))
    return ReviewArgs(root_cause, texts("factors", raw.get("factors", [])),
                      texts("went_well", raw.get("went_well", [])),
                      texts("went_badly", raw.get("went_badly", [])), tuple(items))
