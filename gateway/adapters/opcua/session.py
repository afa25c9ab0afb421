"""A short OPC UA session with a running gateway, for the command line.

``safety-gateway incidents ... --via`` and ``safety-gateway ctl`` both open one session to the
gateway's northbound OPC UA server (see :mod:`gateway.adapters.opcua.server` for the address
space), do one thing (call a method, or read the status nodes) and close it. asyncua's
exceptions are translated here into two of ours, so that callers can tell a gateway that could
not be reached from one that answered no:

* :class:`GatewayUnreachable`: nothing answered at the endpoint, or not in time (connection
  refused, timeout, a peer that does not speak OPC UA);
* :class:`GatewayRefused`: the server answered with a bad status (the login was refused, the
  user's role may not call the method, the arguments were invalid).

A method's own answer, ``(Accepted, Message)``, is returned as it is: a refusal there is the
gateway's decision on the request, not an error of the session.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.adapters.opcua.server import NAMESPACE_INDEX

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

__all__ = ["GatewayRefused", "GatewayStatus", "GatewayUnreachable", "call_method",
           "read_status"]


class GatewayUnreachable(Exception):
    """Nothing (or nothing speaking OPC UA) answered at the endpoint in time."""


class GatewayRefused(Exception):
    """The gateway's server answered with a bad status (login, access or arguments)."""


@dataclass(frozen=True)
class GatewayStatus:
    """What ``Objects/Gateway/Status`` says: the mode, whether a trip is latched and why
    (``trip_reason``, "" when not latched), the open incident (``incident_id``, "" when
    none), the bypasses in force (detector, expiry in UTC), the heartbeat and the last
    refused write."""

    mode: str
    latched: bool
    trip_reason: str
    active_incident: bool
    incident_id: str
    bypasses: tuple[tuple[str, datetime], ...]
    heartbeat: int
    last_rejection: str

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """JSON-ready: expiries as ISO 8601 UTC, with the seconds left at ``now``."""
        return {"mode": self.mode, "latched": self.latched, "trip_reason": self.trip_reason,
                "active_incident": self.active_incident, "incident_id": self.incident_id,
                "bypasses": [{"detector": d, "expires_utc": e.isoformat(),
                              "seconds_left": max(0.0, round((e - now).total_seconds(), 1))}
                             for d, e in self.bypasses],
                "heartbeat": self.heartbeat, "last_rejection": self.last_rejection}


def _nid(path: str) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns={NAMESPACE_INDEX};s=Gateway{'.' if path else ''}{path}")


@contextlib.asynccontextmanager
async def _session(url: str, user: str | None, password: str | None, timeout_s: float
                   ) -> AsyncIterator[Client]:
    client = Client(url, timeout=timeout_s)
    if user is not None:
        client.set_user(user)
        if password is not None:
            client.set_password(password)
    try:
        await client.connect()
    except UaStatusCodeError as exc:
        # The server answered: the session or the login was refused.
        raise GatewayRefused(f"the gateway refused the session: {exc}") from None
    except (TimeoutError, OSError, UaError) as exc:
        raise GatewayUnreachable(f"cannot reach the gateway at {url}: "
                                 f"{exc or type(exc).__name__}") from None
    try:
        yield client
    except UaStatusCodeError as exc:
        raise GatewayRefused(f"the gateway refused the call: {exc}") from None
    except (TimeoutError, OSError) as exc:
        raise GatewayUnreachable(f"the gateway at {url} stopped answering: "
                                 f"{exc or type(exc).__name__}") from None
    finally:
        # The answer is in (or the failure is): a failed goodbye changes nothing.
        with contextlib.suppress(TimeoutError, OSError, UaError):
            await client.disconnect()


def _variant(value: str | float) -> ua.Variant:
    if isinstance(value, str):
        return ua.Variant(value, ua.VariantType.String)
    return ua.Variant(float(value), ua.VariantType.Double)


async def call_method(url: str, user: str | None, password: str | None, method: str,
                      args: Sequence[str | float], timeout_s: float = 10.0
                      ) -> tuple[bool, str]:
    """Call ``Objects/Gateway/<method>`` with ``args`` (str as String, numbers as Double) as
    ``user`` (anonymous when None) and return its ``(Accepted, Message)``. Raises
    :class:`GatewayUnreachable` or :class:`GatewayRefused`."""
    async with _session(url, user, password, timeout_s) as client:
        result = await client.get_node(_nid("")).call_method(
            _nid(method), *(_variant(v) for v in args))
    accepted, message = result
    return bool(accepted), str(message)


async def read_status(url: str, user: str | None, password: str | None,
                      timeout_s: float = 10.0) -> GatewayStatus:
    """Read the gateway's status nodes. Raises :class:`GatewayUnreachable` or
    :class:`GatewayRefused`."""
    names = ("Mode", "Latched", "TripReason", "ActiveIncident", "IncidentId", "Bypasses",
             "BypassExpiries", "Heartbeat", "LastRejection")
    async with _session(url, user, password, timeout_s) as client:
        nodes = [client.get_node(_nid(f"Status.{n}")) for n in names]
        values = await client.read_values(nodes)
    v = dict(zip(names, values, strict=True))
    expiries = [e if e.tzinfo is not None else e.replace(tzinfo=UTC)
                for e in (v["BypassExpiries"] or [])]
    return GatewayStatus(str(v["Mode"]), bool(v["Latched"]), str(v["TripReason"] or ""),
                         bool(v["ActiveIncident"]), str(v["IncidentId"] or ""),
                         tuple(zip(v["Bypasses"] or [], expiries, strict=True)),
                         int(v["Heartbeat"]), str(v["LastRejection"] or ""))
