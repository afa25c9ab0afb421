"""The running gateway: adapters, controller, supervisor and northbound servers on one loop.

One asyncio event loop, structured with a task group: one task per southbound device (it keeps
the tag store current and reconnects by itself), the northbound servers, and the control cycle.
Each cycle:

1. snapshot the sensors from the tag store;
2. take the AI's proposal (the ONNX policy under its deadline, or the external AI's latest
   write);
3. ``supervisor.step`` decides (pure);
4. the wire gate checks what each device will hold after encoding (the invariant);
5. write each device's actuators and its heartbeat, concurrently, bounded by the cycle;
6. mirror sensors, applied values and status to the northbound servers.

Northbound writes: an external AI's write is checked against the envelope at once (refused with
code 3 if it breaks it) and becomes the proposal of the next cycles. An operator's write is a
setpoint, taken in MANUAL mode only: it is checked, encoded, checked again, forwarded to the
device before the answer (validated write-through), and then held by the supervisor in place of
that actuator's fallback until the mode leaves MANUAL. A setpoint farther away than the rate and
step limits allow in one write is a target: the first step toward it is written before the
answer, and the control cycles ramp the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

import gateway.envelope
from gateway.adapters.base import (
    ACCEPTED,
    AdapterError,
    ClientInfo,
    DeviceClient,
    NorthboundHandler,
    Refusal,
    Role,
    TagStore,
    WriteOutcome,
)
from gateway.adapters.factory import make_client
from gateway.config.schema import ControllerKind, ShutdownAction
from gateway.incident.manager import IncidentManager, Notify, QuarantineModel, RateLimit, Request
from gateway.ops import roles
from gateway.runtime.durable import (
    Previous,
    RestorePlan,
    SafetyState,
    plan_restore,
    read_previous,
)
from gateway.runtime.external import ExternalCommands
from gateway.runtime.records import Records
from gateway.runtime.refusals import RefusalLog
from gateway.runtime.schedule import CycleSchedule
from gateway.supervisor.core import Supervisor
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from gateway.audit.log import AuditSink
    from gateway.config.schema import Site
    from gateway.control.ai import AiWiring
    from gateway.control.onnx_policy import OnnxPolicy
    from gateway.envelope.compiled import F64
    from gateway.incident.model import Incident
    from gateway.incident.notify import Notifier
    from gateway.supervisor.decision import Decision, Proposal
    from gateway.supervisor.detectors import CanaryCases
    from gateway.supervisor.events import Event

log = logging.getLogger("gateway.runtime")


# How long shutdown waits for a device task to end once its client is closed and it is
# cancelled (it normally takes one loop step).
_TASK_STOP_S = 5.0

_NOT_WRITTEN = WriteOutcome(False, 4, "the write was interrupted; it may or may not have reached "
                                       "the device", Refusal.DEVICE)
_STOPPING = WriteOutcome(False, 4, "the gateway is shutting down", Refusal.STOPPING)
_STARTING = WriteOutcome(False, 4, "gateway is starting (its supervisor is not running yet)",
                         Refusal.STARTING)


def _manual_only(mode: Mode) -> WriteOutcome:
    return WriteOutcome(False, 4, f"operator setpoints are taken in MANUAL mode only "
                                  f"(mode is {mode})", Refusal.MODE)


def _request_result(events: list[Event]) -> str:
    """One line for the audit log and the requester: what a request changed, or why not."""
    refused = [e for e in events if e.kind is EventKind.REQUEST_REFUSED]
    if refused:
        return "refused: " + refused[0].reason
    if not events:
        return "applied: nothing to change"
    return "applied: " + "; ".join(e.reason for e in events)


# Group commit (as PostgreSQL's commit_delay with commit_siblings): when other clients have
# been writing through in the last _SIBLING_ACTIVE_S, a batch waits up to _SIBLING_WAIT_S for
# their next setpoints before it leaves, so that one device request carries several. A lone
# writer never waits.
_SIBLING_ACTIVE_S = 0.02
_SIBLING_WAIT_S = 0.0005


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Through(NamedTuple):
    """An operator setpoint waiting to be written through (see ``Gateway._commit``)."""

    client: str
    values: dict[str, float]
    indexes: tuple[int, ...]
    outcome: asyncio.Future[WriteOutcome]



class _Refused(Exception):
    """The model was refused at load (the registry's verdict, or a settings mismatch)."""


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


class Gateway(NorthboundHandler):
    """One site's gateway. ``clients`` replaces the southbound clients (tests).

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
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.site = site
        self.clock = clock
        # Wall-clock UTC seconds: a bypass's expiry is stored in it, so that it survives a
        # restart (the monotonic clock starts again with the process).
        self.wall_clock = wall_clock
        self.envelope = gateway.envelope.compile(site, engine)
        self.actuators = site.actuators
        self.names = tuple(t.name for t in self.actuators)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.sensor_names = tuple(t.name for t in site.sensors)
        self.store = TagStore(tuple(t.name for t in site.tags))
        self.period_s = site.site.cycle_ms / 1000.0
        self.startup_wait_s = startup_wait_s
        if clients is None:
            clients = {d.name: make_client(d, [t for t in site.tags if t.device == d.name],
                                           self.store, clock, not stepped)
                       for d in site.devices}
        self.stepped = stepped
        # The model's golden cases: the supervisor asks for them every canary period, and the
        # next cycle runs the model on them beside its proposal.
        self.canary = canary
        self._canary_due = False
        self.last_proposal: Proposal | None = None
        self._model_inputs: F64 | None = None
        # The audit database (None: no audit log, e.g. in tests) and the flight recorder.
        self.audit_path = audit_path
        # The audit writer in a child process (``safety-gateway run``): its serialising,
        # hashing and SQLite steps then never hold this process's interpreter lock.
        self.audit_process = audit_process
        self.records = Records(site, None)
        self.playbook_path = playbook
        self.incidents: IncidentManager | None = None
        self.notifier: Notifier | None = None
        # A model quarantined by the playbook (its sha256 and why): requests that would give it
        # control again (SHADOW, AUTO) are refused while it is the loaded model.
        self.quarantined: tuple[str, str] | None = None
        # What the audit chain says about the previous run (read at open), and the safety
        # state last recorded (see gateway.runtime.durable).
        self.previous: Previous = Previous(None, problem="not read yet")
        self.restored: RestorePlan | None = None
        self._state_key: tuple[object, ...] | None = None
        self.clients = clients
        self.by_device: dict[str, list[int]] = {}
        for i, tag in enumerate(self.actuators):
            self.by_device.setdefault(tag.device, []).append(i)
        self.external = ExternalCommands(self.names)
        # Refused writes, aggregated into at most one audit record per second per client and
        # reason (records is replaced when the audit log opens: looked up at emit time).
        self.refusals = RefusalLog(lambda payload: self.records.refused_writes(payload))
        # Refused connections, channels and certificates, failed logins: aggregated the same
        # way (a connection flood must not fill the disk either); the event kind rides in the
        # window's role field.
        self.security_events = RefusalLog(lambda payload: self.records.security(payload))
        self.policy: OnnxPolicy | None = None
        self.wiring: AiWiring | None = None
        self.faults = FaultLog()
        self.supervisor: Supervisor | None = None
        self.applied = np.array([t.safe_value for t in self.actuators], dtype=np.float64)
        self.heartbeat = 0
        self.last_write_s = -math.inf
        # What each actuator was last written (NaN: unknown, write it next cycle), and when
        # every actuator is next written whether it changed or not.
        self.written = np.full(len(self.actuators), math.nan)
        self.refresh_period_s = 1.0
        self.next_refresh_s = -math.inf
        # The last 100,000 cycles: when each started (self.clock) and how late it was.
        self.lateness_s: deque[float] = deque(maxlen=100_000)
        self.cycle_at_s: deque[float] = deque(maxlen=100_000)
        self.decisions: deque[Decision] = deque(maxlen=1000)  # for tests and dashboards
        self.servers_enabled = servers
        self.modbus_server: Any = None
        self.modbus_tls_server: Any = None  # beside a plain server (see _start_servers)
        self.opcua_server: Any = None
        self._write_lock = asyncio.Lock()
        # Each device's write on its way (its task and when it left, loop time): one at a time
        # per device (see _write_devices); a bug raised in one, kept for the control loop.
        self._in_flight: dict[str, tuple[asyncio.Task[bool], float]] = {}
        self._write_bug: BaseException | None = None
        self._devices = {d.name: d for d in site.devices}
        # Operator setpoints queued for the write-through task (see _commit_queued).
        self._queued: list[_Through] = []
        self._committer: asyncio.Task[None] | None = None
        self._writers: dict[str, float] = {}  # client → when it last wrote through (loop time)
        self.sibling_active_s = _SIBLING_ACTIVE_S
        self.sibling_wait_s = _SIBLING_WAIT_S
        self._siblings: tuple[asyncio.Future[None], set[str]] | None = None
        self._stopping = False
        # What stopped the gateway (a signal's name), for the shutdown record.
        self.stop_cause: str | None = None
        # (detector, monotonic expiry) -> UTC expiry, for the status mirror.
        self._bypass_wall: dict[tuple[str, float], datetime.datetime] = {}
        self._schedule: CycleSchedule | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

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
            await self._cycles(stop)
        finally:
            await self.close()

    def stopped_by(self, cause: str) -> None:
        """Name what stops the gateway (e.g. ``"SIGTERM"``); the shutdown record says it."""
        if self.stop_cause is None:
            self.stop_cause = cause

    async def open(self) -> None:
        """Start the devices' tasks, the northbound servers and the supervisor (seeded with
        the actuators' read-back). :meth:`close` undoes it, also after a failed open."""
        log.info("starting site=%s engine=%s devices=%d cycle_ms=%s", self.site.site.name,
                 self.envelope.engine, len(self.clients), self.site.site.cycle_ms)
        self._open_audit()
        self._read_previous()
        self.records.config_loaded(self.envelope.engine)
        self._load_policy()
        self._tasks = [asyncio.create_task(c.run(), name=f"device:{n}")
                       for n, c in self.clients.items()]
        await self._start_servers()
        await self._start_supervisor()
        self.ready.set()

    async def close(self) -> None:
        """Leave each actuator as its shutdown policy says, stop devices and servers."""
        tasks, self._tasks = self._tasks, []
        await self._shutdown(tasks)

    async def refresh(self) -> None:
        """Read every device's tags once now (stepped time; see the class docstring)."""
        await asyncio.gather(*(c.refresh() for c in self.clients.values()))

    def _open_audit(self) -> None:
        if self.audit_path is None:
            return
        from gateway.audit import AuditError, AuditLog
        from gateway.audit.process import AuditProcess

        def alarm(message: str) -> None:  # the writer thread: logging is thread-safe
            log.error("audit log alarm: %s (control goes on; records are kept in memory)",
                      message)

        def clear(message: str) -> None:
            log.warning("audit log: %s", message)

        spec = self.site.audit
        # The signed head (gateway.audit.signed_head): its period, its sinks, its key (None:
        # beside the database the gateway was given).
        options: dict[str, Any] = {
            "export_every_s": spec.head_export_s,
            "head_dirs": [str(p) for p in spec.head_sinks],
            "head_key": None if spec.key is None else str(spec.key)}
        try:
            audit: AuditSink = (
                AuditProcess(self.audit_path, on_alarm=alarm, on_clear=clear, options=options)
                if self.audit_process else
                AuditLog(self.audit_path, on_alarm=alarm, on_clear=clear, **options))
            self.records = Records(self.site, audit)
        except AuditError as exc:
            if spec.required:
                # audit.required (the default): no control without an audit trail; `run`
                # exits 3 with this reason.
                raise
            log.error("audit log unavailable, running WITHOUT it (audit.required: false): "
                      "%s", exc)
            return
        log.info("audit log path=%s writer=%s", self.audit_path,
                 "process" if self.audit_process else "thread")

    def _load_policy(self) -> None:
        spec = self.site.controller
        if spec.kind is not ControllerKind.ONNX:
            return
        from gateway.control.ai import AiWiring, onnx_policy_config
        from gateway.control.onnx_policy import ModelError, load_policy

        try:
            if spec.registry is not None:
                self.policy = self._load_registered()
            else:
                self.policy = load_policy(onnx_policy_config(self.site))
        except (ModelError, _Refused) as exc:
            # Refused at load: run on fallback control, loudly.
            log.error("model refused, running on fallback control: %s", exc)
            self.records.model_loaded(spec.model or spec.registry, spec.sha256, False,
                                      str(exc))
            return
        self.wiring = AiWiring(self.site)
        self.records.model_loaded(self.policy.model_path, self.policy.model_sha256, True)
        log.info("model loaded path=%s sha256=%s", self.policy.model_path,
                 self.policy.model_sha256)

    def _load_registered(self) -> OnnxPolicy:
        """The registry's current approved version, verified (signature, hashes, approval,
        not revoked); its canary cases feed the canary detector unless given explicitly."""
        from gateway.control.onnx_policy import load_policy
        from gateway.registry import PolicySettings, Registry, RegistryError

        spec = self.site.controller
        assert spec.registry is not None
        assert spec.name is not None
        # The witness (beside the audit database, out of the registry's reach) remembers the
        # registry's signed state last accepted, so an older copy put back is refused.
        witness = (None if self.audit_path is None else
                   self.audit_path.with_name(self.audit_path.name + ".registry-witness.json"))
        try:
            verified = Registry(spec.registry, witness=witness).load_verified(
                spec.name, canary_tolerance=self.site.detection.canary_tolerance)
        except RegistryError as exc:
            raise _Refused(f"registry {spec.registry}: {exc}") from None
        if verified.settings != PolicySettings.from_controller(spec):
            raise _Refused(f"{verified.version.label}: registered with other inputs, outputs "
                           "or normalisation than this site's controller section")
        policy = load_policy(verified.policy_config(spec.deadline_ms))
        if self.canary is None:
            self.canary = verified.canary
        log.info("model from registry %s: %s", spec.registry, verified.version.label)
        return policy

    async def _start_servers(self) -> None:
        if not self.servers_enabled:
            return
        nb = self.site.northbound
        if nb.modbus is not None:
            from gateway.adapters.modbus.map import NorthboundMap
            from gateway.adapters.modbus.server import ModbusServer

            nmap = NorthboundMap.from_site(self.site)
            if nb.modbus.plain:
                self.modbus_server = ModbusServer(nmap, nb.modbus, self)
                await self.modbus_server.start()
            if nb.modbus.tls is not None:
                # Modbus/TCP Security on its own port, sharing the plain server's image (one
                # mirror serves both); without plain Modbus it is the site's Modbus server.
                secure = ModbusServer(nmap, nb.modbus, self, secure=True, image=None if
                                      self.modbus_server is None else self.modbus_server.image)
                await secure.start()
                if self.modbus_server is None:
                    self.modbus_server = secure
                else:
                    self.modbus_tls_server = secure
        if nb.opcua is not None:
            from gateway.adapters.opcua.server import OpcUaServer

            self.opcua_server = OpcUaServer(self.site, self)
            # refused channels and certificates, failed logins: audited (issue 16)
            self.opcua_server.add_security_listener(
                lambda e: self.refused_connection("opcua", e.source, e.user, e.kind, e.reason))
            await self.opcua_server.start()

    async def _start_supervisor(self) -> None:
        """Seed the supervisor with the actuators' read-back (their safe values where none)."""
        # Real time, not self.clock(): a drill's clock stands still until it steps.
        deadline = time.monotonic() + self.startup_wait_s
        while time.monotonic() < deadline:
            if self.stepped:
                await self.refresh()
            if all(self.store.get(n).good for n in self.names):
                break
            await asyncio.sleep(0.02)
        initial = np.array([r.value if (r := self.store.get(n)).good else s
                            for n, s in zip(self.names, self.applied.tolist(), strict=True)])
        self.applied = initial
        start_s = self.clock()
        canary = self.canary if self.policy is not None else None
        from gateway.adapters import codec

        self.supervisor = Supervisor(self.site, self.envelope, initial, start_s, canary=canary,
                                     codec=codec)
        self.records.start(start_s, initial, canary,
                           self.policy.model_sha256 if self.policy is not None else None)
        self._start_incidents()
        self._restore(start_s)

    # ------------------------------------------------------------------ restarts

    def _read_previous(self) -> None:
        """Read how the previous run ended and the state it recorded; record an unclean end.
        Called once the writer has the database (a dead run's writer has then finished its
        last commits) and before this run's first record."""
        audit = self.records.audit
        if audit is None:
            self.previous = Previous(None, problem="no audit log: nothing to restore from")
            return
        previous = read_previous(audit.path)
        self.previous = previous
        if previous.problem is not None:
            log.error("restart: %s", previous.problem)
        if previous.clean is False:
            window = previous.unclean_window(self.wall_clock())
            log.error("restart: the previous run ended uncleanly (no shutdown record after "
                      "its start at seq %d); records after seq %d (%s) may be missing",
                      previous.run_seq, previous.last_seq, previous.last_kind)
            self.records.unclean_end(window)

    def _restore(self, start_s: float) -> None:
        """Take back the recorded safety state (never toward less safety) and write the
        start record saying what was restored."""
        sup = self.supervisor
        assert sup is not None
        previous = self.previous
        manager = self.incidents
        open_incidents = manager.open_incidents if manager is not None else ()
        sha = self.policy.model_sha256 if self.policy is not None else None
        restored = None
        if previous.state is not None or open_incidents:
            plan = plan_restore(previous.state, open_incidents, sha, self.wall_clock())
            self.restored = plan
            done = sup.modes.restore(start_s, plan.mode, plan.latched, plan.trip_reason,
                                     plan.bypasses_left_s)
            self.quarantined = plan.quarantined
            restored = plan.to_json() | {
                "recorded_mode": None if previous.state is None else previous.state.mode.value,
                "from_seq": previous.state_seq, "mode": done.mode.value,
                "latched": done.latched, "trip_reason": done.trip_reason,
                "bypasses_left_s": dict(done.bypasses_left_s), "bypasses_cut": list(done.cut)}
            log.warning("restart: restored mode=%s latched=%s trip=%s bypasses=%s "
                        "quarantined=%s open_incidents=%s", done.mode, done.latched,
                        done.trip_reason, sorted(done.bypasses_left_s),
                        plan.quarantined[0] if plan.quarantined else None,
                        ",".join(plan.open_incidents) or "none")
            if plan.quarantine_lifted is not None:
                log.warning("restart: quarantine lifted: %s", plan.quarantine_lifted)
            if manager is not None:
                manager.restarted(f"gateway restarted; mode {done.mode}"
                                  + (f", trip latched ({done.trip_reason})" if done.latched
                                     else "") + "; incident still open")
        state = self._state_json()
        self._state_key = self._state_tuple()
        self.records.run_start({
            "restored": restored, "state": state,
            "previous": {"clean": previous.clean, "last_seq": previous.last_seq,
                         "last_kind": previous.last_kind, "stopped_by": previous.stopped_by,
                         "state_seq": previous.state_seq, "problem": previous.problem}})

    def _open_ids(self) -> tuple[str, ...]:
        if self.incidents is None:
            return ()
        return tuple(i.id for i in self.incidents.open_incidents)

    def _state_tuple(self) -> tuple[object, ...]:
        sup = self.supervisor
        assert sup is not None
        modes = sup.modes
        return (modes.mode, modes.latched, modes.trip_reason,
                tuple(sorted(modes.bypasses.items())), self.quarantined, self._open_ids())

    def _state_json(self) -> dict[str, Any]:
        """The safety state as recorded: bypass expiry in wall-clock seconds."""
        sup = self.supervisor
        assert sup is not None
        modes = sup.modes
        now, wall = self.clock(), self.wall_clock()
        return SafetyState(
            modes.mode, modes.latched, modes.trip_reason,
            tuple((d, wall + (e - now)) for d, e in sorted(modes.bypasses.items())),
            self.quarantined, self._open_ids()).to_json()

    def _note_state(self) -> None:
        """Record the safety state if it changed since last recorded (cheap when not)."""
        if self.supervisor is None:
            return
        key = self._state_tuple()
        if key != self._state_key:
            self._state_key = key
            self.records.state(self._state_json())

    def _start_incidents(self) -> None:
        """Incidents open on trips, follow the playbook and live in the audit log."""
        from gateway.config import ConfigError
        from gateway.incident.notify import Notifier
        from gateway.incident.playbook import DEFAULT_PLAYBOOK, load_playbook
        from gateway.runtime.records import file_sha256

        path = self.playbook_path or DEFAULT_PLAYBOOK
        try:
            playbook = load_playbook(path)
        except ConfigError as exc:
            # Checked by `run` before start; a playbook broken since is an alarm, not a stop.
            log.error("playbook unusable, incidents are not opened: %s", exc)
            self.records.alarm(f"playbook unusable: {exc}")
            return
        existing: tuple[Incident, ...] = ()
        if self.records.audit is not None:
            from gateway.audit import AuditError
            from gateway.incident.store import load_incidents

            try:
                existing = tuple(load_incidents(self.records.audit.path))
            except (OSError, ValueError, AuditError) as exc:  # cannot fold: afresh, loudly
                log.error("previous incidents unreadable: %s", exc)
        spec = self.site.controller
        self.incidents = IncidentManager(
            self.site.site.name, playbook, self.records.audit,
            model_path=str(self.policy.model_path if self.policy else spec.model),
            model_sha256=self.policy.model_sha256 if self.policy else spec.sha256,
            config_sha256=file_sha256(self.site.source), recorder=self.records.recorder,
            after_s=self.site.audit.recorder_after_s, existing=existing)
        self.notifier = Notifier(self.incidents.notified)

    def _incident_actions(self, decision: Decision) -> None:
        manager, sup = self.incidents, self.supervisor
        if manager is None or sup is None:
            return
        for action in manager.on_decision(decision):
            if isinstance(action, Request):
                req = action.operator_request()
                events = sup.apply_request(req)
                self.records.request(req, "playbook", _request_result(events)
                                     + f" ({action.reason})")
            elif isinstance(action, Notify):
                if self.notifier is not None:
                    self.notifier.submit(action)
            elif isinstance(action, QuarantineModel):
                sha = self.policy.model_sha256 if self.policy is not None else None
                if sha is None:
                    manager.applied(action, False, "no model is loaded")
                else:
                    self.quarantined = (sha, f"{action.incident_id}: {action.reason}")
                    log.warning("model quarantined sha256=%s incident=%s", sha,
                                action.incident_id)
                    manager.applied(action, True, "SHADOW and AUTO refused while this model "
                                                  "is loaded; load another version to lift it")
            elif isinstance(action, RateLimit):
                sup.set_rate_factor(min(sup.rate_factor, action.factor))
                manager.applied(action, True, f"every actuator's rate limit x{action.factor:g} "
                                              "until the incident is resolved")
        if sup.rate_factor < 1.0 and not manager.open_incidents:
            sup.set_rate_factor(1.0)  # the incidents that asked for it are resolved
            log.info("rate limiting lifted: no incident open")

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        # No operator setpoint may land after the shutdown values: refuse new ones, let the
        # batch on its way finish (bounded by the device timeout), refuse what is queued.
        self._stopping = True
        committer = self._committer
        if committer is not None:
            _, pending = await asyncio.wait([committer], timeout=_TASK_STOP_S)
            if pending:
                committer.cancel()
                log.error("shutdown: the write-through task did not finish within %.0f s; "
                          "cancelled", _TASK_STOP_S)
        safe = {i for i, t in enumerate(self.actuators)
                if t.on_shutdown is ShutdownAction.SAFE}
        state = (self.supervisor.gate.safe_state(self._sensors_now())
                 if self.supervisor is not None else None)
        if safe and state is not None:
            values = self.applied.copy()
            for i in safe:
                values[i] = state[i]
            async with self._write_lock:
                # After the writes on their way (each ends by its device's timeout), so that
                # the safe values are the last thing the devices receive.
                await self._write_devices(values, only=safe, behind_s=_TASK_STOP_S)
            log.info("shutdown: safe values written to %s",
                     ", ".join(self.names[i] for i in sorted(safe)))
        left = None if state is None else {
            name: ("safe", float(state[i])) if i in safe
            else ("hold", float(self.applied[i]))
            for i, name in enumerate(self.names)}
        await self._settle_writes(_TASK_STOP_S)
        # Close the clients first: their run() loops end at their next step whatever happens
        # to the cancellation. Python 3.11's asyncio.wait_for (which pymodbus awaits every
        # request with) swallows a cancellation that arrives with the answer; a device task
        # that lost its cancel that way once kept this shutdown waiting for ever.
        for client in self.clients.values():
            await client.close()
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_TASK_STOP_S)
            for task in tasks:
                if task in pending:
                    log.error("shutdown: device task %s did not stop within %.0f s; left "
                              "behind", task.get_name(), _TASK_STOP_S)
                elif not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    log.error("device task %s ended with %s: %s", task.get_name(),
                              type(exc).__name__, exc)
        for server in (self.modbus_tls_server, self.modbus_server):
            if server is not None:
                await server.stop()
        if self.opcua_server is not None:
            await self.opcua_server.stop()
        if self.policy is not None:
            self.policy.close()
        if self.incidents is not None:
            self.incidents.close()
        if self.notifier is not None:
            await self.notifier.aclose()
        self.refusals.flush()
        self.security_events.flush()
        if left is not None:
            # Last, after the incidents' own records: a chain whose last run ends without
            # this record ended uncleanly (see gateway.runtime.durable).
            self.records.shutdown(left, self.stop_cause, self._state_json())
        self.records.close()
        log.info("stopped")

    @property
    def skipped(self) -> int:
        return self._schedule.skipped if self._schedule is not None else 0

    def stats(self) -> dict[str, Any]:
        """Cycle statistics: count, skipped cycles and lateness percentiles (milliseconds) over
        the last 100,000 cycles, and ``timeline``: each of those cycles' start (``at_s``, the
        gateway's clock: monotonic seconds) and lateness, so that a load test can take the
        figures of its own window."""
        late = sorted(self.lateness_s)
        if not late:
            return {"cycles": 0.0}

        def pct(q: float) -> float:
            return 1000.0 * late[min(len(late) - 1, int(q * len(late)))]

        return {"cycles": float(len(late)), "skipped": float(self.skipped),
                "lateness_ms_p50": pct(0.5), "lateness_ms_p99": pct(0.99),
                "lateness_ms_max": 1000.0 * late[-1], "period_ms": 1000.0 * self.period_s,
                "timeline": {"at_s": list(self.cycle_at_s),
                             "lateness_ms": [1000.0 * x for x in self.lateness_s]}}

    # ------------------------------------------------------------------ the cycle

    async def _cycles(self, stop: asyncio.Event) -> None:
        schedule = CycleSchedule(self.period_s, self.clock())
        self._schedule = schedule
        while not stop.is_set():
            now = self.clock()
            self.lateness_s.append(schedule.lateness_s(now))
            self.cycle_at_s.append(now)
            await self.cycle(now)
            nxt = schedule.advance(self.clock())
            delay = nxt - self.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def cycle(self, now: float) -> Decision:
        """One control cycle (public so that drills can step the gateway themselves)."""
        sup = self.supervisor
        assert sup is not None
        snapshot = self.store.snapshot(self.sensor_names, now)
        proposal = self._proposal(snapshot.sensors, now)
        self.last_proposal = proposal
        decision = sup.step(snapshot, proposal, now)
        self._canary_due = decision.canary_due
        # Recorded before the write-back below: replay re-applies it after this step.
        self.records.cycle(snapshot, self._model_inputs, proposal, decision)
        self._incident_actions(decision)
        if decision.events:  # only events change the safety state
            self._note_state()
        self.refusals.tick(now)
        self.security_events.tick(now)
        # The decision's command is what the devices will hold after encoding, checked as
        # such (the supervisor's wire gate).
        command = decision.command
        async with self._write_lock:
            # Report by exception: write what changed, and everything once a second so that
            # a value changed at the PLC (a local panel, a restart) is put right.
            if now >= self.next_refresh_s:
                self.next_refresh_s = now + self.refresh_period_s
                changed = None
            else:
                changed = {i for i, (a, b) in enumerate(zip(command.tolist(),
                                                            self.written.tolist(), strict=True))
                           if a != b}
            await self._write_devices(command, heartbeat=True, only=changed)
            self.applied = command
            self.last_write_s = now
        for event in decision.events:
            log.info("event kind=%s name=%s mode=%s reason=%s requester=%s", event.kind,
                     event.name, decision.mode, event.reason, event.requester)
        await self._mirror(decision)
        self.decisions.append(decision)
        self.records.idle()  # last: the audit writer's batch runs while the loop sleeps
        return decision

    def _proposal(self, sensors: F64, now: float) -> Proposal | None:
        if self.policy is not None and self.wiring is not None:
            self._model_inputs = self.wiring.inputs(sensors, self.applied)
            inference = self.policy.infer(self._model_inputs)
            proposal = self.wiring.proposal(inference, now)
            if self._canary_due and self.canary is not None:
                self._canary_due = False
                proposal = dataclasses.replace(proposal, canary=self._run_canary(self.policy))
            return proposal
        if self.site.controller.kind is ControllerKind.EXTERNAL:
            return self.external.proposal(self.applied)
        return None

    def _run_canary(self, policy: OnnxPolicy) -> F64:
        """The model's outputs on the golden inputs (NaN rows where it gave none: a model
        that cannot answer its own golden cases deviates)."""
        assert self.canary is not None
        rows = []
        for row in self.canary.inputs:
            out = policy.infer(np.ascontiguousarray(row, dtype=np.float64)).outputs
            rows.append(np.full(self.canary.outputs.shape[1], math.nan) if out is None
                        else np.asarray(out, dtype=np.float64))
        return np.array(rows, dtype=np.float64)

    @property
    def writes_in_flight(self) -> tuple[str, ...]:
        """The devices whose last write is still waiting for the device's answer."""
        return tuple(self._in_flight)

    def _write_bound_s(self, device: str) -> float:
        """How long a write to ``device`` may stay on its way before the runtime abandons it.

        The adapters end every request by themselves at the device's ``timeout_ms`` (and drop
        the connection then); one write is at most a few requests (the actuators' registers,
        their coils, the heartbeat), each of which may wait for a poll's read ahead of it.
        This bound only catches an adapter that breaks that promise: a client that never
        answers would otherwise keep the device's writes skipped for ever."""
        spec = self._devices.get(device)
        timeout_s = spec.timeout_ms / 1000.0 if spec is not None else 1.0
        return 8 * timeout_s + 2.0

    async def _write_devices(self, values: F64, heartbeat: bool = False,
                             only: set[int] | None = None, behind_s: float = 0.0) -> bool:
        """Write each device's actuators (those in ``only``, all when None) and, with
        ``heartbeat``, its heartbeat; True when every device confirmed within a cycle.

        A device request is never abandoned before the device's own ``timeout_ms``: each
        device's write runs in a task of its own, this call waits for them at most a cycle,
        and a write that is still on its way then is left to finish (or to time out in its
        adapter, which then drops the connection). While a device has a write on its way,
        nothing more is sent to it: a cycle skips it (its actuators stay unknown in
        :attr:`written`, so the first write after the answer carries the newest values), and
        a caller with ``behind_s`` > 0 (a write-through, the shutdown) first waits that long
        for the earlier write to end. Cancelling a device request half-way is what
        desynchronised Modbus connections (pymodbus then reads the abandoned request's late
        answer as the next one's); one request at a time per device, never cut short by the
        cycle, cannot.

        ``written[i]`` is NaN (unknown) from the moment a value leaves until the device
        confirms it, and stays NaN if the write fails or times out.
        """
        self._raise_write_bug()
        if heartbeat:
            self.heartbeat += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        chosen_by: dict[str, list[int]] = {}
        for device in self.clients:
            chosen = [i for i in self.by_device.get(device, ()) if only is None or i in only]
            if chosen or heartbeat:
                chosen_by[device] = chosen
        busy = [self._in_flight[d][0] for d in chosen_by if d in self._in_flight]
        for device in list(chosen_by):
            pending = self._in_flight.get(device)
            if pending is not None and now - pending[1] > self._write_bound_s(device):
                # The adapter did not end its request at the device's timeout: abandon it.
                # The adapters drop the connection of a cancelled request (never reused out
                # of step); the device is reported, its actuators stay unknown.
                self.faults.fault(f"write:{device}", "write still unanswered after "
                                  f"{self._write_bound_s(device):.1f} s; abandoned")
                pending[0].cancel()
        if behind_s > 0 and busy:
            await asyncio.wait(busy, timeout=behind_s)
        ok = True
        started: list[asyncio.Task[bool]] = []
        for device, chosen in chosen_by.items():
            if device in self._in_flight:
                ok = False  # skipped: its earlier write is still on its way
                continue
            for i in chosen:
                self.written[i] = math.nan  # unknown until the device confirms
            task = loop.create_task(
                self._write_device(device, {i: float(values[i]) for i in chosen},
                                   self.heartbeat if heartbeat else None),
                name=f"write:{device}")
            self._in_flight[device] = (task, now)
            task.add_done_callback(functools.partial(self._write_ended, device))
            started.append(task)
        if started:
            done, pending_tasks = await asyncio.wait(started, timeout=max(self.period_s, 0.05))
            if pending_tasks:
                ok = False
                self.faults.fault("write-slow", "device writes still waiting for an answer "
                                  "after a cycle; they finish on their own (up to the "
                                  "device's timeout_ms), later writes to those devices wait")
            else:
                self.faults.clear("write-slow")
            for task in done:
                if task.cancelled() or task.exception() is not None or not task.result():
                    ok = False
        self._raise_write_bug()
        return ok

    async def _write_device(self, device: str, values: dict[int, float],
                            heartbeat: int | None) -> bool:
        """One device's write (its own task): the actuators, then the heartbeat. Records what
        the device confirmed in :attr:`written`; True when it confirmed everything."""
        client = self.clients[device]
        ok = True
        if values:
            key = f"write:{device}"
            try:
                await client.write({self.names[i]: v for i, v in values.items()})
            except AdapterError as exc:
                ok = False
                self.faults.fault(key, f"{type(exc).__name__}: {exc}")
            else:
                self.faults.clear(key)
                for i, v in values.items():
                    self.written[i] = v
        if heartbeat is not None:
            key = f"heartbeat:{device}"
            try:
                await client.write_heartbeat(heartbeat)
            except AdapterError as exc:
                ok = False
                self.faults.fault(key, f"{type(exc).__name__}: {exc}")
            else:
                self.faults.clear(key)
        return ok

    def _write_ended(self, device: str, task: asyncio.Task[bool]) -> None:
        entry = self._in_flight.get(device)
        if entry is not None and entry[0] is task:
            del self._in_flight[device]
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a device fault (those are AdapterError, handled in the task): raise
            # it in the control loop at its next write, as an exception in the cycle would be.
            self._write_bug = task.exception()

    def _raise_write_bug(self) -> None:
        bug, self._write_bug = self._write_bug, None
        if bug is not None:
            raise bug

    async def _settle_writes(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the writes on their way; cancel what is left."""
        tasks = [task for task, _ in self._in_flight.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def _mirror(self, decision: Decision) -> None:
        """Mirror values and the true status northbound: mode, latch and its reason, the
        open incident (the newest, if several), the bypasses in force with their expiry."""
        sup = self.supervisor
        assert sup is not None
        modes = sup.modes
        latched = modes.latched
        manager = self.incidents
        open_incidents = manager.open_incidents if manager is not None else ()
        incident_id = open_incidents[-1].id if open_incidents else ""
        bypasses = modes.bypasses
        if self.modbus_server is not None:
            from gateway.adapters.modbus.map import ModeCode

            srv = self.modbus_server
            for name in self.sensor_names:
                srv.set_sensor(name, self.store.get(name).value)
            for i, name in enumerate(self.names):
                srv.set_actuator(name, float(self.applied[i]))
            srv.set_status(ModeCode.of(decision.mode.value), latched, bool(incident_id),
                           self.heartbeat % 65536)
            srv.set_bypasses(len(bypasses), min(bypasses.values()) - decision.at_s
                             if bypasses else None)
        if self.opcua_server is not None:
            srv = self.opcua_server
            for name in self.sensor_names:
                r = self.store.get(name)
                await srv.set_sensor(name, r.value, r.good)
            for i, name in enumerate(self.names):
                await srv.set_actuator(name, float(self.applied[i]))
            await srv.set_status(decision.mode.value, latched, self.heartbeat, bool(incident_id),
                                 trip_reason=modes.trip_reason or "", incident_id=incident_id,
                                 bypasses=self._bypass_expiries(bypasses, decision.at_s))

    def _bypass_expiries(self, bypasses: dict[str, float], now_s: float
                         ) -> list[tuple[str, datetime.datetime]]:
        """Each bypass's expiry as UTC wall time (the supervisor's times are monotonic),
        computed once per bypass so that the mirrored value does not jitter."""
        known = self._bypass_wall
        for key in [k for k in known if bypasses.get(k[0]) != k[1]]:
            del known[key]
        out = []
        for detector, expiry_s in sorted(bypasses.items(), key=lambda kv: kv[1]):
            wall = known.get((detector, expiry_s))
            if wall is None:
                wall = datetime.datetime.fromtimestamp(
                    round(time.time() + (expiry_s - now_s), 3), datetime.UTC)
                known[(detector, expiry_s)] = wall
            out.append((detector, wall))
        return out

    # ------------------------------------------------------------------ northbound

    def _sensors_now(self) -> F64:
        sup = self.supervisor
        assert sup is not None
        masked, _ = sup.inputs.check(*self.store.columns(self.sensor_names, self.clock()))
        return np.array(masked, dtype=np.float64)

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        outcomes: dict[str, WriteOutcome] = {}
        # Until the supervisor runs every write is refused, and recorded and logged as any
        # refusal is: a SCADA that writes too early learns why from the log.
        starting = self.supervisor is None
        for name in values:
            if starting:
                outcomes[name] = _STARTING
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
        sensors = self._sensors_now() if groups else np.empty(0)
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
            self.records.operator_write(
                client.user or client.address, f"{client.protocol}:{client.address}",
                accepted, "ok")
        if refused:
            # Evidence, aggregated per client and reason (gateway/runtime/refusals.py): a
            # flood of refused writes cannot fill the disk, and none goes unrecorded.
            by_reason: dict[WriteOutcome, dict[str, float]] = {}
            for name, outcome in refused:
                by_reason.setdefault(outcome, {})[name] = values[name]
            for outcome, tried in by_reason.items():
                self.refused(client, tried, outcome.reason, outcome.code)
        key = f"refused:{client.address}"
        if refused:
            name, outcome = refused[0]
            # One line while a client keeps being refused, not one per write (a hostile
            # client must not be able to flood the log); the audit chain counts every one.
            self.faults.fault(key, f"write refused tag={name} code={outcome.code} "
                                   f"reason={outcome.reason}")
            await self._show_rejection(name, outcome)
        else:
            self.faults.clear(key)
        return outcomes

    def refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                code: int) -> None:
        """A refused write, counted as evidence (also for writes the northbound servers
        refuse themselves, before they reach :meth:`write`)."""
        self.refusals.refused(self.clock(), protocol=client.protocol, address=client.address,
                              user=client.user, role=str(client.role), reason=reason,
                              code=code, values=values)

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        """A refused connection, channel or certificate, or a failed login: evidence,
        aggregated per client, event and reason like refused writes."""
        self.security_events.refused(self.clock(), protocol=protocol, address=address,
                                     user=user, role=event, reason=reason, code=0, values={})

    async def _show_rejection(self, name: str, outcome: WriteOutcome) -> None:
        """Let operators read the latest refusal on the northbound status: its kind as a
        Modbus ``status.rejection`` code, and ``"<tag> refused (<kind>): <reason>"`` on the
        OPC UA ``Status/LastRejection``."""
        why = Refusal.UNKNOWN_TAG if name not in self.index else outcome.why
        if self.modbus_server is not None:
            from gateway.adapters.modbus.map import RejectionCode

            code = (RejectionCode.UNKNOWN_TAG if name not in self.index
                    else RejectionCode.of(outcome))
            self.modbus_server.set_rejection(code, self.index.get(name))
        if self.opcua_server is not None:
            kind = str(why).replace("_", " ") if why is not None else "refused"
            await self.opcua_server.set_rejection(f"{name} refused ({kind}): {outcome.reason}")

    async def _write_group(self, client: ClientInfo, group: dict[str, float], sensors: F64
                           ) -> WriteOutcome:
        sup = self.supervisor
        assert sup is not None
        candidate = self.applied.copy()
        for name, value in group.items():
            candidate[self.index[name]] = value
        # The setpoint itself must lie inside the envelope (rate and step limits apply to
        # the movement, which the control cycle paces; they are not judged here).
        verdict = self.envelope.check(candidate, candidate, sensors, self.period_s)
        if not verdict.ok:
            return WriteOutcome(False, 3, "outside the envelope: " + ", ".join(
                verdict.violations))
        now = self.clock()
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
            self.external.write(group, now)
            return ACCEPTED
        if sup.mode is not Mode.MANUAL:
            return _manual_only(sup.mode)
        if self._stopping:
            return _STOPPING
        loop = asyncio.get_running_loop()
        item = _Through(client.address, group, tuple(self.index[n] for n in group),
                        loop.create_future())
        self._queued.append(item)
        self._note_writer(client.address, loop.time())
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued(), name="write-through")
        outcome = await item.outcome
        if outcome.accepted:
            log.debug("operator write by=%s from=%s values=%s", client.user, client.address,
                      group)
        return outcome

    async def _commit_queued(self) -> None:
        """Write the queued operator setpoints through, in batches: everything that queued
        while one batch was on its way to the devices goes out together in the next (one
        request per device instead of one per client). Runs in a task of its own, so that a
        client that disconnects never cuts a device write short."""
        try:
            while self._queued:
                await self._wait_for_siblings()
                batch, self._queued = self._queued, []
                try:
                    await self._commit(batch)
                finally:
                    for item in batch:  # cancelled or a bug: the client still gets an answer
                        if not item.outcome.done():
                            item.outcome.set_result(_NOT_WRITTEN)
        finally:
            self._committer = None
            for item in self._queued:  # only when this task was cancelled (shutdown)
                if not item.outcome.done():
                    item.outcome.set_result(_STOPPING)
            self._queued = []

    def _note_writer(self, client: str, at_s: float) -> None:
        writers = self._writers
        writers[client] = at_s
        if len(writers) > 64:  # addresses come from clients: keep the recent ones only
            for key in [k for k, t in writers.items() if at_s - t > self.sibling_active_s]:
                del writers[key]
        waiting = self._siblings
        if waiting is not None:
            fut, expected = waiting
            expected.discard(client)
            if not expected:
                _settle(fut)

    async def _wait_for_siblings(self) -> None:
        """Before a batch leaves: wait a moment for the other recent writers' setpoints."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        queued = {item.client for item in self._queued}
        expected = {c for c, t in self._writers.items()
                    if now - t < self.sibling_active_s and c not in queued}
        if not expected:
            return
        fut: asyncio.Future[None] = loop.create_future()
        self._siblings = (fut, expected)
        timer = loop.call_later(self.sibling_wait_s, _settle, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._siblings = None

    async def _commit(self, batch: list[_Through]) -> None:
        """Check the batch's setpoints one after another, each on top of those before it
        (the envelope's linear constraints span actuators), write the accepted ones' first
        steps in one go, and answer each client."""
        sup = self.supervisor
        assert sup is not None
        wire = sup.wire
        assert wire is not None
        async with self._write_lock:
            now = self.clock()
            # The setpoint is the target; the first step toward it (within the rate and step
            # limits since the last write) goes to the device before the answer, and the
            # control cycle ramps the rest.
            dt = now - self.last_write_s
            if not math.isfinite(dt):
                dt = self.period_s  # nothing written yet: allow one cycle's movement
            dt = max(dt, 1e-3)
            sensors = self._sensors_now()
            previous = self.applied
            target = previous.copy()
            taken: list[_Through] = []
            for item in batch:
                if self._stopping or sup.mode is not Mode.MANUAL:  # changed while queued
                    item.outcome.set_result(_STOPPING if self._stopping
                                            else _manual_only(sup.mode))
                    continue
                candidate = target.copy()
                for name, value in item.values.items():
                    candidate[self.index[name]] = value
                admitted = sup.gate.admit(candidate, previous, sensors, dt)
                if any(admitted.safe[i] for i in item.indexes):
                    item.outcome.set_result(WriteOutcome(
                        False, 3, "outside the envelope now: " + ", ".join(admitted.violations)))
                    continue
                trial = target.copy()
                for i in item.indexes:
                    trial[i] = admitted.command[i]
                written = wire.admit(trial, previous, sensors, dt)
                if any(written.safe) or not sup.gate.admissible(written.values, previous,
                                                                sensors, dt):
                    item.outcome.set_result(WriteOutcome(
                        False, 3, "no representable first step inside the envelope"))
                    continue
                for i in item.indexes:
                    target[i] = written.values[i]
                taken.append(item)
            if not taken:
                return
            changed = {i for item in taken for i in item.indexes}
            # What the devices will hold, as a whole, is what was checked last; checked once
            # more as the vector actually written (the invariant, after encoding).
            if not sup.gate.admissible(target, previous, sensors, dt):
                for item in taken:
                    item.outcome.set_result(WriteOutcome(
                        False, 3, "the setpoints together leave the envelope"))
                return
            if not await self._write_devices(target, only=changed,
                                             behind_s=max(self.period_s, 0.05)):
                for item in taken:
                    item.outcome.set_result(WriteOutcome(
                        False, 4, "the device did not confirm the write (it failed or timed "
                        "out); the next cycle writes the actuator again"))
                return
            for i in changed:
                self.applied[i] = target[i]
            self.last_write_s = now
            self.records.write(self.applied)
            sup.record_write(self.applied, now)
            for item in taken:
                for name, value in item.values.items():
                    self.records.setpoint(self.index[name], value)
                    sup.set_operator_setpoint(self.index[name], value)
                item.outcome.set_result(ACCEPTED)

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        """Apply an operator request at once (between two cycles: this loop runs the cycle
        too, so there is no race) and answer its real outcome: applied, with what changed, or
        refused, with the reason. Its events reach the audit log and the incident manager
        with the next cycle's decision, as a cycle's own do."""
        sup = self.supervisor
        if sup is None:
            return _STARTING
        if self._stopping:
            return _STOPPING
        try:
            request_kind = RequestKind(kind)
        except ValueError:
            return WriteOutcome(False, 3, f"unknown request {kind!r}", Refusal.MODE)
        authorised = roles.may_request(client.role, request_kind)
        who = client.user or client.address
        source = f"{client.protocol}:{client.address}"
        if (self.quarantined is not None and authorised
                and request_kind in (RequestKind.TO_SHADOW, RequestKind.TO_AUTO)):
            reason = f"the loaded model is quarantined ({self.quarantined[1]})"
            req = OperatorRequest(request_kind, who, False, detector, duration_s, reason)
            self.records.request(req, source, f"refused: {reason}")
            return WriteOutcome(False, 4, reason, Refusal.MODE)
        req = OperatorRequest(request_kind, who, authorised, detector, duration_s)
        events = sup.apply_request(req)
        result = _request_result(events)
        self.records.request(req, source, result)
        log.info("operator request %s by %s from %s: %s", request_kind, who, source, result)
        if not authorised:
            return WriteOutcome(False, 2, f"role {client.role} may not {kind}",
                                Refusal.NOT_AUTHORISED)
        if result.startswith("refused: "):
            return WriteOutcome(False, 4, result.removeprefix("refused: "), Refusal.MODE)
        return WriteOutcome(True, 0, result.removeprefix("applied: "))

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        """An operator's note, acknowledgement, checklist item or resolution, recorded by the
        running gateway in its own audit chain (the CLI cannot write it while we hold it)."""
        from gateway.incident.model import BadRequest, IncidentError

        manager = self.incidents
        if manager is None:
            return WriteOutcome(False, 4, "this gateway keeps no incidents (audit off)")
        allowed = roles.INCIDENT_ROLES.get(action)
        if allowed is None:
            return WriteOutcome(False, 3, f"unknown incident action {action!r}")
        if client.role not in allowed:
            return WriteOutcome(False, 2, f"role {client.role} may not {action} incidents")
        who = client.user or client.address
        source = f"{client.protocol}:{client.address}"
        try:
            if action == "note" and len(args) == 1:
                incident = manager.note(incident_id, who, source, args[0])
            elif action == "acknowledge" and len(args) == 1:
                incident = manager.acknowledge(incident_id, who, source, args[0])
            elif action == "check" and len(args) == 2:
                incident = manager.check(incident_id, args[0], args[1], who, source)
            elif action == "resolve" and len(args) == 1:
                incident = manager.resolve(incident_id, who, source, args[0])
            else:
                return WriteOutcome(False, 3, f"wrong arguments for {action}")
        except BadRequest as exc:
            return WriteOutcome(False, 3, str(exc))
        except IncidentError as exc:
            return WriteOutcome(False, 4, str(exc))
        log.info("incident %s: %s by %s from %s; phase %s", incident_id, action, who, source,
                 incident.phase)
        self._note_state()  # a resolved incident is no longer open
        return WriteOutcome(True, 0, f"{action} recorded; phase {incident.phase}")
