"""The safety core of one site: what decides and writes, put together.

One asyncio event loop carries the southbound device tasks (``southbound``), the control cycle
(``cycle``) and the core's side of northbound requests (``northbound``, ``write_through``).
What talks to people and other systems lives elsewhere: ``safety-gateway run`` hosts the
northbound servers in a communications process (``gateway.comms``) that reads the plant's view
from shared memory and sends requests over a bounded channel; tests and drills may host them
in this process (``gateway.comms.servers``, ``Gateway(servers=True)``).

This class owns the lifecycle: open (audit, previous run, model, devices, northbound,
supervisor, incidents, restored safety state), run the cycles, close (shutdown values, then
everything else, then the shutdown record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import gateway.envelope
from gateway.adapters.base import NorthboundHandler, TagStore
from gateway.adapters.factory import make_client
from gateway.config.schema import ShutdownAction
from gateway.link.counters import CoreCounters, CounterLayout
from gateway.runtime.ai_source import AiSource
from gateway.runtime.candidate import (
    REPORT_REQUEST,
    CandidateJudge,
    report_outcome,
    start_candidate,
)
from gateway.runtime.cycle import ControlCycle
from gateway.runtime.external import ExternalCommands
from gateway.runtime.faults import FaultLog
from gateway.runtime.incidents import PlaybookActions, start_incidents
from gateway.runtime.model_loading import load_model
from gateway.runtime.model_swap import ModelSwap
from gateway.runtime.northbound import NorthboundRequests
from gateway.runtime.records import Records
from gateway.runtime.refusals import RefusalLog
from gateway.runtime.reload import Outcome, Status, file_sha256
from gateway.runtime.reloader import Reloader
from gateway.runtime.safety_state import DurableState
from gateway.runtime.southbound import Southbound
from gateway.runtime.startup import open_records, read_back
from gateway.runtime.write_through import WriteThrough
from gateway.supervisor.core import Supervisor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from pathlib import Path

    import numpy as np

    from gateway.adapters.base import ClientInfo, DeviceClient, WriteOutcome
    from gateway.config.schema import Site
    from gateway.control.onnx_policy import OnnxPolicy
    from gateway.control.proposal import Proposal
    from gateway.incident.manager import IncidentManager
    from gateway.incident.notify import Notifier
    from gateway.mcp.outcome import ProposalOutcome
    from gateway.runtime.sdnotify import ServiceNotifier
    from gateway.runtime.view import PlantView, Publisher
    from gateway.supervisor.decision import Decision
    from gateway.supervisor.detectors import CanaryCases

log = logging.getLogger("gateway.runtime")

# How long shutdown waits for a device task to end once its client is closed and it is
# cancelled (it normally takes one loop step), and for the writes on their way.
_TASK_STOP_S = 5.0


# The northbound request kinds of a reload (OPC UA ReloadSite's modes).
_RELOADS = frozenset({"reload", "reload_dry_run", "reload_commit"})


def _sha256_of(path: Path) -> str:
    """The sha256 of the file's bytes ("" when it cannot be read: a site built in code)."""
    try:
        return file_sha256(path.read_bytes())
    except OSError:
        return ""


class Northbound(Protocol):
    """Whatever serves the northbound side: servers in this process, or the link to the
    communications process. ``publish`` must never wait on a northbound peer."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, view: PlantView) -> Awaitable[None] | None: ...


class Gateway(NorthboundHandler):
    """One site's safety core. ``clients`` replaces the southbound clients (tests).

    ``servers=True`` hosts the site's northbound servers in this process (tests, drills);
    ``northbound`` puts something else there (``run``: the communications process link).

    ``stepped=True`` is for drills, which own the clock and step plant and gateway in lockstep:
    the southbound clients read only when :meth:`refresh` is awaited, and the drill calls
    :meth:`open`, then :meth:`refresh` and :meth:`cycle` once per step, then :meth:`close`.
    """

    def __init__(self, site: Site, *, engine: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 clients: dict[str, DeviceClient] | None = None,
                 servers: bool = True, startup_wait_s: float = 2.0,
                 stepped: bool = False, canary: CanaryCases | None = None,
                 audit_path: Path | None = None, audit_process: bool = False,
                 playbook: Path | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 northbound: Northbound | None = None,
                 service: ServiceNotifier | None = None) -> None:
        self.site = site
        self.clock = clock
        # Wall-clock UTC seconds: a bypass's expiry is stored in it, so that it survives a
        # restart (the monotonic clock starts again with the process).
        self.wall_clock = wall_clock
        self.envelope = gateway.envelope.compile(site, engine)
        self.names = tuple(t.name for t in site.actuators)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.sensor_names = tuple(t.name for t in site.sensors)
        self.store = TagStore(tuple(t.name for t in site.tags))
        self.period_s = site.site.cycle_ms / 1000.0
        self.startup_wait_s = startup_wait_s
        self.stepped = stepped
        # Whether the gateway made its device clients (a reload may then reconnect a device
        # whose settings changed) or was given them (tests, drills).
        self.own_clients = clients is None
        if clients is None:
            clients = {d.name: make_client(d, [t for t in site.tags if t.device == d.name],
                                           self.store, clock, not stepped)
                       for d in site.devices}
        self.clients = clients
        self.faults = FaultLog()
        self.southbound = Southbound(site, clients, self.faults, self.period_s)
        self.audit_path = audit_path
        self.audit_process = audit_process
        self.playbook_path = playbook
        self.records = Records(site, None)  # replaced when the audit log opens
        self.durable = DurableState(lambda: self.records, clock, wall_clock)
        # What the core counts for the metrics; they live here, so that a restart of the
        # communications process that serves them loses nothing.
        self.counters = CoreCounters(CounterLayout.for_site(site))
        self.external = ExternalCommands(self.names)
        self.ai = AiSource(site, None, None, canary, self.external)
        # Refused writes, aggregated into at most one audit record per second per client and
        # reason (records is replaced when the audit log opens: looked up at emit time).
        self.refusals = RefusalLog(lambda payload: self.records.refused_writes(payload))
        # Refused connections, channels and certificates, failed logins: aggregated the same
        # way (a connection flood must not fill the disk either); the event kind rides in the
        # window's role field.
        self.security_events = RefusalLog(lambda payload: self.records.security(payload))
        self.requests = NorthboundRequests(
            site, self.envelope, self.store, self.southbound, self.external, self.durable,
            lambda: self.records, self.refusals, self.security_events, self.faults, clock,
            self.counters)
        # Fleet model rollouts: a verified version loaded in SHADOW (gateway.runtime.model_swap).
        self.model_swap = ModelSwap(
            site, self.ai, self.durable, lambda: self.records, lambda: self.supervisor,
            None if audit_path is None
            else audit_path.with_name(audit_path.name + ".fleet-witness.json"),
            self._model_swapped)
        self.inline: Any = None
        if northbound is None and servers:
            from gateway.comms.servers import NorthboundServers

            self.inline = NorthboundServers(site, self, clock)
            self.requests.on_refusal = self.inline.show_rejection
            northbound = self.inline
        self.northbound = northbound
        # systemd (``run`` under a unit): READY before the first cycle, the watchdog fed by
        # each completed cycle (a publisher), STOPPING when close begins.
        self.service = service
        self.supervisor: Supervisor | None = None
        self.write_through: WriteThrough | None = None
        self.control: ControlCycle | None = None
        self.candidate: CandidateJudge | None = None  # commissioning.candidate, when named
        self.incidents: IncidentManager | None = None
        self.notifier: Notifier | None = None
        # What stopped the gateway (a signal's name), for the shutdown record.
        self.stop_cause: str | None = None
        self.ready = asyncio.Event()
        # The running site file's sha256 (a reload names it and the new one); the reloader
        # exists once the cycle does.
        self.site_sha256 = _sha256_of(site.source)
        self.reloader: Reloader | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event, on_open: Callable[[], object] | None = None
                  ) -> None:
        """Run until ``stop`` is set, then leave each actuator as its shutdown policy says.
        ``on_open`` is called once everything is open, just before the first cycle (the
        gateway process freezes its start-up heap there: see ``gateway.runtime.heap``)."""
        try:
            await self.open()
            if on_open is not None:
                on_open()
            if self.service is not None:
                self.service.ready()
            assert self.control is not None
            await self.control.run(stop)
        finally:
            await self.close()

    def stopped_by(self, cause: str) -> None:
        """Name what stops the gateway (e.g. ``"SIGTERM"``); the shutdown record says it."""
        if self.stop_cause is None:
            self.stop_cause = cause

    async def open(self) -> None:
        """Start the devices' tasks, the northbound side and the supervisor (seeded with
        the actuators' read-back). :meth:`close` undoes it, also after a failed open."""
        log.info("starting site=%s engine=%s devices=%d cycle_ms=%s", self.site.site.name,
                 self.envelope.engine, len(self.clients), self.site.site.cycle_ms)
        self.records = open_records(self.site, self.audit_path, self.audit_process)
        self.durable.read_previous()
        self.records.config_loaded(self.envelope.engine)
        model = load_model(self.site, self.records, self.audit_path, self.ai.canary)
        self.ai.policy, self.ai.wiring, self.ai.canary = model
        self.southbound.start()
        if self.northbound is not None:
            await self.northbound.start()
        await self.start_supervisor()
        self.ready.set()

    async def start_supervisor(self) -> None:
        """Seed the supervisor with the actuators' read-back (their safe values where none),
        start incidents, take back the recorded safety state, and build the cycle."""
        south = self.southbound
        initial = await read_back(self.store, self.names, south.applied, self.startup_wait_s,
                                  self.refresh if self.stepped else None)
        south.applied = initial
        start_s = self.clock()
        policy = self.ai.policy
        canary = self.ai.canary if policy is not None else None
        sha = policy.model_sha256 if policy is not None else None
        from gateway.adapters import codec

        sup = Supervisor(self.site, self.envelope, initial, start_s, canary=canary,
                         codec=codec)
        self.supervisor = sup
        from gateway.forensics.checkpoint import capture

        # The supervisor of the moment: a reload swaps in another one.
        self.records.start(start_s, initial, canary, sha,
                           checkpoint=lambda: capture(self.supervisor or sup))
        candidate_site = self.site.commissioning.candidate_site
        if candidate_site is not None:
            self.candidate = start_candidate(candidate_site, self.envelope.engine, initial,
                                             start_s, codec, lambda: self.records.audit,
                                             self.wall_clock)
        playbook = None
        started = start_incidents(self.site, self.playbook_path, self.records,
                                  str(policy.model_path if policy else
                                      self.site.controller.model), sha or
                                  self.site.controller.sha256)
        if started is not None:
            self.incidents, self.notifier = started
            playbook = PlaybookActions(self.incidents, self.notifier, sup, self.records,
                                       self.durable, sha)
        self.durable.restore(sup, self.incidents, sha, start_s)
        self.write_through = WriteThrough(sup, south, lambda: self.records, self.clock,
                                          self.period_s, self.index,
                                          self.requests.sensors_now, self.counters)
        if self.candidate is not None:
            self.write_through.on_write = self.candidate.judge_write
        self.requests.attach(sup, self.write_through, self.incidents)
        publishers: list[Publisher] = [self.northbound] if self.northbound is not None else []
        if self.service is not None:
            publishers.append(self.service)
        # The communications link counts its process's restarts (servers in this process
        # have none).
        northbound = self.northbound
        restarts = ((lambda: int(getattr(northbound, "restarts", 0)))
                    if isinstance(getattr(northbound, "restarts", None), int) else None)
        self.control = ControlCycle(
            sup, self.store, self.sensor_names, self.ai, south, self.records, self.durable,
            playbook, self.incidents, (self.refusals, self.security_events), publishers,
            self.period_s, self.clock, self.wall_clock, self.counters, restarts)
        self.control.candidate = self.candidate
        self.control.on_decision = self.requests.proposals.judged
        self.reloader = Reloader(self, self.site_sha256)
        self.control.between = self.reloader.between

    async def close(self) -> None:
        """Leave each actuator as its shutdown policy says, stop devices and the northbound
        side, and write the shutdown record last."""
        if self.service is not None:
            self.service.stopping()
        self.requests.stopping = True
        self.requests.proposals.close("the gateway is shutting down")
        if self.write_through is not None:
            await self.write_through.stop(_TASK_STOP_S, log.error)
        south = self.southbound
        safe = {i for i, t in enumerate(self.site.actuators)
                if t.on_shutdown is ShutdownAction.SAFE}
        sup = self.supervisor
        state = sup.gate.safe_state(self.requests.sensors_now()) if sup is not None else None
        if safe and state is not None:
            values = south.applied.copy()
            for i in safe:
                values[i] = state[i]
            async with south.lock:
                # After the writes on their way (each ends by its device's timeout), so that
                # the safe values are the last thing the devices receive.
                await south.write(values, only=safe, behind_s=_TASK_STOP_S)
            log.info("shutdown: safe values written to %s",
                     ", ".join(self.names[i] for i in sorted(safe)))
        left = None if state is None else {
            name: ("safe", float(state[i])) if i in safe
            else ("hold", float(south.applied[i]))
            for i, name in enumerate(self.names)}
        await south.settle(_TASK_STOP_S)
        await south.close(_TASK_STOP_S, log.error)
        if self.northbound is not None:
            await self.northbound.stop()
        if self.ai.policy is not None:
            self.ai.policy.close()
        if self.incidents is not None:
            self.incidents.close()
        if self.notifier is not None:
            await self.notifier.aclose()
        self.refusals.flush()
        self.security_events.flush()
        if self.candidate is not None:
            self.candidate.close(self.clock())
        if left is not None:
            # Last, after the incidents' own records: a chain whose last run ends without
            # this record ended uncleanly (see gateway.runtime.durable).
            self.records.shutdown(left, self.stop_cause, self.durable.to_json())
        self.records.close()
        log.info("stopped")

    async def reload(self, user: str, *, dry_run: bool = False) -> Outcome:
        """Re-read the site file this gateway was started with, check it, and (unless
        ``dry_run``) stage or commit it between two cycles; see
        :mod:`gateway.runtime.reloader`. The outcome says what happened; never raises for
        a bad file or a refused change."""
        if self.reloader is None:
            return Outcome(Status.REFUSED, "the gateway is not running its cycle yet; "
                           "nothing changed", self.site_sha256)
        return await self.reloader.request(user, dry_run=dry_run)

    async def refresh(self) -> None:
        """Read every device's tags once now (stepped time; see the class docstring)."""
        await self.southbound.refresh()

    async def cycle(self, now: float) -> Decision:
        """One control cycle (drills step the gateway themselves)."""
        assert self.control is not None
        return await self.control.step(now)

    # ------------------------------------------------------------------ northbound calls

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        return await self.requests.write(client, values, atomic)

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        if kind == REPORT_REQUEST:  # read only (the server allowed the client's role)
            return report_outcome(self.candidate, self.clock())
        if kind in _RELOADS:
            return await self._reload_request(client, kind)
        return await self.requests.request(client, kind, detector, duration_s)

    async def _reload_request(self, client: ClientInfo, kind: str) -> WriteOutcome:
        """A reload asked for northbound (OPC UA ``ReloadSite``): the answer's reason is the
        outcome as one JSON object. Only an admin may stage or commit; anyone the method
        admits (operator, admin) may see the difference."""
        import json

        from gateway.adapters.base import Refusal, Role, WriteOutcome

        dry_run = kind == "reload_dry_run"
        if not dry_run and client.role is not Role.ADMIN:
            out = Outcome(Status.REFUSED, f"only an admin may stage or commit a reload, not "
                          f"{client.user or client.address} ({client.role}); nothing changed",
                          self.reloader.state.sha256 if self.reloader else self.site_sha256)
            if self.reloader is not None:
                self.reloader.refused(out, client.user or client.address)
            return WriteOutcome(False, 4, json.dumps(out.as_json()), Refusal.NOT_AUTHORISED)
        user = client.user or f"{client.protocol}:{client.address}"
        if self.requests.stopping:
            out = Outcome(Status.REFUSED, "the gateway is stopping; nothing changed",
                          self.site_sha256)
        elif self.reloader is None:
            out = Outcome(Status.REFUSED, "the gateway is not running its cycle yet; "
                          "nothing changed", self.site_sha256)
        else:
            out = await self.reloader.request(user, dry_run=dry_run,
                                              commit_only=kind == "reload_commit")
        return WriteOutcome(out.accepted, 0 if out.accepted else 4, json.dumps(out.as_json()),
                            None if out.accepted else Refusal.MODE)

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        return await self.requests.incident(client, action, incident_id, args)

    async def rollout(self, action: str, args: Mapping[str, str]) -> WriteOutcome:
        return await self.model_swap.handle(action, args)

    def _model_swapped(self, path: str, sha256: str) -> None:
        """A rollout put a new model on trial: new incidents and a quarantine name it."""
        if self.incidents is not None:
            self.incidents.set_model(path, sha256)
        playbook = self.control.playbook if self.control is not None else None
        if playbook is not None:
            playbook.model_sha256 = sha256

    async def propose(self, client: ClientInfo, values: dict[str, float]) -> ProposalOutcome:
        return await self.requests.propose(client, values)

    def agent_calls(self, window: dict[str, Any]) -> None:
        self.requests.agent_calls(window)

    def refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                code: int) -> None:
        self.requests.refused(client, values, reason, code)

    def refused_many(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                     code: int, count: int) -> None:
        self.requests.refused_many(client, values, reason, code, count)

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        self.requests.refused_connection(protocol, address, user, event, reason)

    def refused_connections_many(self, protocol: str, address: str, user: str | None,
                                 event: str, reason: str, count: int) -> None:
        self.requests.refused_connections_many(protocol, address, user, event, reason, count)

    # ------------------------------------------------------------------ what tests read

    def stats(self) -> dict[str, Any]:
        """Cycle statistics (see :meth:`ControlCycle.stats`)."""
        return self.control.stats() if self.control is not None else {"cycles": 0.0}

    @property
    def skipped(self) -> int:
        return self.control.skipped if self.control is not None else 0

    @property
    def decisions(self) -> list[Decision]:
        return list(self.control.decisions) if self.control is not None else []

    @property
    def applied(self) -> np.ndarray[Any, Any]:
        return self.southbound.applied

    @property
    def written(self) -> np.ndarray[Any, Any]:
        return self.southbound.written

    @property
    def heartbeat(self) -> int:
        return self.southbound.heartbeat

    @property
    def writes_in_flight(self) -> tuple[str, ...]:
        """The devices whose last write is still waiting for the device's answer."""
        return self.southbound.in_flight

    @property
    def policy(self) -> OnnxPolicy | None:
        return self.ai.policy

    @policy.setter
    def policy(self, policy: OnnxPolicy | None) -> None:
        self.ai.policy = policy  # drills swap in a compromised model between cycles

    @property
    def canary(self) -> CanaryCases | None:
        return self.ai.canary

    @property
    def last_proposal(self) -> Proposal | None:
        return self.ai.last

    @property
    def quarantined(self) -> tuple[str, str] | None:
        return self.durable.quarantined

    @property
    def modbus_server(self) -> Any:
        return self.inline.modbus if self.inline is not None else None

    @property
    def opcua_server(self) -> Any:
        return self.inline.opcua if self.inline is not None else None
