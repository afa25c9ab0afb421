"""What every adapter shares: connection states, the error hierarchy, readings and the tag store.

Pure: no protocol library is imported here, so the runtime and the supervisor can depend on it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from gateway.supervisor.decision import Snapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from gateway.mcp.outcome import ProposalOutcome


class ConnectionState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting before the next reconnect attempt
    CLOSED = "closed"


class AdapterError(Exception):
    """Base of every error an adapter raises; never a foreign library's own exception."""


class DeviceUnavailable(AdapterError):
    """No answer: not connected, connection lost, timeout. The write did not happen (or it is
    unknown whether it did: treat it as not done, and never replay it)."""


class DeviceRejected(AdapterError):
    """The device answered with an error (Modbus exception code, OPC UA bad status)."""

    def __init__(self, message: str, code: int | str) -> None:
        super().__init__(message)
        self.code = code


class EncodingError(AdapterError, ValueError):
    """A value cannot be represented in its tag's wire type (NaN, out of range)."""


class Reading(NamedTuple):
    """One tag's latest value in engineering units, its quality, and when it was read
    (monotonic seconds of the adapter's injected clock)."""

    value: float
    good: bool
    at_s: float


@dataclass
class TagStore:
    """Latest reading of every tag, written by the adapters, read by the control loop.

    Single event loop: no locking. A tag never read has value NaN, bad quality, and infinite age.
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        self._readings: dict[str, Reading] = {
            n: Reading(math.nan, False, -math.inf) for n in self.names}

    def update(self, name: str, value: float, good: bool, at_s: float) -> None:
        if name not in self._readings:
            raise KeyError(f"unknown tag {name!r}")
        self._readings[name] = Reading(value, good, at_s)

    def mark_bad(self, names: Iterable[str]) -> None:
        """The device holding these tags is gone: keep the last value and when it was read
        (its age keeps growing), flag it bad."""
        for name in names:
            old = self._readings[name]
            self._readings[name] = Reading(old.value, False, old.at_s)

    def get(self, name: str) -> Reading:
        return self._readings[name]

    def snapshot(self, sensors: Sequence[str], now_s: float) -> Snapshot:
        """The supervisor's view of ``sensors`` at ``now_s`` (ages from the read times)."""
        values, good, age_s = self.columns(sensors, now_s)
        return Snapshot(np.array(values, dtype=np.float64), np.array(good, dtype=np.bool_),
                        np.array(age_s, dtype=np.float64))

    def columns(self, sensors: Sequence[str], now_s: float
                ) -> tuple[list[float], list[bool], list[float]]:
        """The same as :meth:`snapshot`, as plain lists (values, quality, ages): what a check
        between cycles needs, without the arrays (an operator's write pays for this)."""
        readings = [self._readings[n] for n in sensors]
        return ([r.value for r in readings], [r.good for r in readings],
                [now_s - r.at_s for r in readings])


class DeviceClient(Protocol):
    """What the runtime needs of a southbound client (Modbus, OPC UA, or a new protocol's
    adapter): keep the tag store current (``run`` until closed, reconnecting by itself), write
    actuators and the heartbeat (raising :class:`AdapterError` on failure, never a library's
    own exception), read once on demand (stepped drills)."""

    async def run(self) -> None: ...

    async def write(self, values: Mapping[str, float]) -> None: ...

    async def write_heartbeat(self, counter: int) -> None: ...

    async def refresh(self) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- northbound


class Role(StrEnum):
    """Who a northbound client is, as the site config says (OPC UA user, Modbus source)."""

    AI = "ai"  # an external AI controller: its writes are proposals
    OPERATOR = "operator"  # SCADA / HMI: its writes are operator setpoints
    VIEWER = "viewer"  # read only
    ADMIN = "admin"  # operator rights plus trip resets and bypasses


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A northbound client: protocol ("modbus" or "opcua"), its address ("ip:port"), its
    authenticated user name if any, and its role."""

    protocol: str
    address: str
    user: str | None
    role: Role


class Refusal(StrEnum):
    """Why a northbound write or request was refused, finer than its Modbus exception code:
    the Modbus ``status.rejection`` register and the OPC UA status code tell these apart."""

    ENVELOPE = "envelope"  # outside the safety envelope
    READ_ONLY = "read_only"  # not a writable setpoint
    DEVICE = "device"  # the device did not confirm the write (failed, timed out, interrupted)
    UNKNOWN_TAG = "unknown_tag"  # no such tag
    MODE = "mode"  # not taken in the current mode (or refused by the mode machine)
    NOT_AUTHORISED = "not_authorised"  # the client's role may not do this
    STARTING = "starting"  # the supervisor is not running yet
    STOPPING = "stopping"  # the gateway is shutting down
    # The safety core has as many requests in flight as it takes (the request channel is
    # full): refused at once, never queued; Modbus exception 6, server device busy.
    BUSY = "busy"


class WriteOutcome(NamedTuple):
    """The answer to one tag's write or one operator request: accepted, or refused with a
    reason.

    ``code`` is 0 when accepted, else the Modbus exception code to answer with (3: illegal
    data value, i.e. outside the envelope; 2: illegal address, e.g. a read-only tag; 4: device
    failure, e.g. the write could not be forwarded). ``refusal`` says why more precisely; when
    it is None it follows from ``code`` (3: envelope, 2: read-only, 4: device). OPC UA servers
    map a refusal to a status code by its ``refusal`` (see
    :mod:`gateway.adapters.opcua.server`).
    """

    accepted: bool
    code: int
    reason: str
    refusal: Refusal | None = None

    @property
    def why(self) -> Refusal | None:
        """The refusal's kind (None when accepted), from ``refusal`` or else from ``code``."""
        if self.accepted:
            return None
        if self.refusal is not None:
            return self.refusal
        return {2: Refusal.READ_ONLY, 3: Refusal.ENVELOPE}.get(self.code, Refusal.DEVICE)


ACCEPTED = WriteOutcome(True, 0, "")


class NorthboundHandler(ABC):
    """What the northbound servers call; the runtime implements it (tests subclass it)."""

    @abstractmethod
    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        """Validate and apply setpoint writes (engineering units), one outcome per tag.

        ``atomic`` (a Modbus FC16 request): if any tag is refused, none is applied, and every
        tag's outcome is the refusal. Otherwise (OPC UA) each tag stands alone.
        """

    @abstractmethod
    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        """An operator request (``gateway.supervisor.modes.RequestKind`` value), applied
        before the answer: accepted with what changed, or refused with the reason (never
        accepted for something only queued)."""

    def refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                code: int) -> None:
        """A write the server refused itself, before :meth:`write` (a frame to an address
        that holds no setpoint, a viewer's write, a wrong type...): reported so that the
        runtime can keep it as evidence. Must not block or raise. Ignored by default."""
        return None

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        """A connection the server refused (not allowed, no slot, an untrusted certificate,
        a failed login): ``address`` is ``host:port``, ``event`` a short kind. Reported as
        evidence; must not block or raise. Ignored by default."""
        return None

    def refused_many(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                     code: int, count: int) -> None:
        """``count`` refusals like :meth:`refused`, aggregated by the communications process
        (``values`` is the latest tried). A handler that keeps counts overrides this; by
        default it is reported once. Must not block or raise."""
        self.refused(client, values, reason, code)

    def refused_connections_many(self, protocol: str, address: str, user: str | None,
                                 event: str, reason: str, count: int) -> None:
        """``count`` refusals like :meth:`refused_connection`, aggregated by the
        communications process. By default reported once. Must not block or raise."""
        self.refused_connection(protocol, address, user, event, reason)

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        """An operator's work on an incident while the gateway runs: ``action`` is "note"
        (args: text), "acknowledge" (text), "check" (phase, item) or "resolve" (summary).
        Refused by default: a handler without incidents."""
        return WriteOutcome(False, 4, "this gateway keeps no incidents")

    async def rollout(self, action: str, args: Mapping[str, str]) -> WriteOutcome:
        """A step of a fleet model rollout from the communications process: ``record`` a
        step in the audit chain, or ``load_shadow`` a staged version (the core verifies it
        again; ``gateway.runtime.model_swap``). Refused by default."""
        return WriteOutcome(False, 4, "this gateway takes no model rollouts")

    async def propose(self, client: ClientInfo, values: dict[str, float]) -> ProposalOutcome:
        """An AI agent's proposal (MCP ``propose``): taken as an external AI's write, and
        answered with the real outcome of the control cycle that judged it (see
        :mod:`gateway.mcp.outcome`). Refused by default: a handler without a control cycle."""
        from gateway.mcp.outcome import refused

        return refused("this gateway takes no proposals")

    def agent_calls(self, window: dict[str, Any]) -> None:
        """MCP tool calls of one agent, tool and outcome over one window, aggregated by the
        communications process (:mod:`gateway.mcp.calls`): evidence for the audit chain.
        Must not block or raise. Ignored by default."""
        return None
