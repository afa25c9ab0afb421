"""A drill people can watch and work: its gateway's dashboard and OPC UA endpoint, and the
pacing of its lockstep to wall time.

A plain drill gives its in-process gateway no northbound servers and steps as fast as it can.
``drill --dashboard [HOST:]PORT`` (and ``drill --live``) instead give it the dashboard
(``gateway.ops.http``) on that address and an OPC UA endpoint on a free loopback port, so that
people can log in to the page, and ``ctl`` and ``incidents --via`` reach the running gateway.
The drill's accounts (``--user NAME[:ROLE]``) share one password, read from
:data:`PASSWORD_ENV` (generated and printed when unset): a drill is an exercise on loopback,
not a deployment, so its OPC UA endpoint uses no security policy and says so.

:class:`WallPacer` paces the lockstep to wall time (plant seconds = wall seconds) with a
sleep-until on an injected clock, so that a person sees a trip and a failover happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.schema import (
    HttpServerSpec,
    Northbound,
    OpcUaServerSpec,
    OpcUaUser,
)
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

__all__ = ["PASSWORD_ENV", "DrillServing", "WallPacer", "parse_address", "parse_user"]

# The drill accounts' shared password (dashboard login and OPC UA user tokens).
PASSWORD_ENV = "SG_DRILL_PASSWORD"
OPCUA_PATH = "/drill/"
DEFAULT_USERS: tuple[tuple[str, str], ...] = (("operator", "operator"),
                                              ("supervisor", "admin"))
_ROLES = ("operator", "admin", "viewer")


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` → (host, port); host defaults to 127.0.0.1, port 0 means a free one.
    Raises ValueError with the reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number ([HOST:]PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be 0..65535 (0: a free one)")
    return host, port


def parse_user(text: str) -> tuple[str, str]:
    """``NAME[:ROLE]`` → (name, role); role defaults to operator. Raises ValueError."""
    name, _, role = text.partition(":")
    role = role or "operator"
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"{text!r}: a user name is letters, digits, '-', '_' or '.'")
    if role not in _ROLES:
        raise ValueError(f"{text!r}: the role must be one of {', '.join(_ROLES)}")
    return name, role


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DrillServing:
    """Where the drill's gateway serves people: the dashboard on ``http_host``:``http_port``
    and OPC UA on 127.0.0.1:``opcua_port`` (ports resolved: never 0), with ``users``
    ((name, role) pairs) whose password is in the environment variable :data:`PASSWORD_ENV`."""

    http_host: str
    http_port: int
    opcua_port: int
    users: tuple[tuple[str, str], ...]
    password_generated: bool = False

    @classmethod
    def create(cls, address: tuple[str, int] | None,
               users: tuple[tuple[str, str], ...] = ()) -> DrillServing:
        """Resolve free ports, and make sure the password variable is set (a random password
        for this process when it is not, which :meth:`lines` then prints)."""
        host, port = address if address is not None else ("127.0.0.1", 0)
        generated = not os.environ.get(PASSWORD_ENV)
        if generated:
            os.environ[PASSWORD_ENV] = secrets.token_urlsafe(12)
        if port == 0:
            port = free_port() if host in ("127.0.0.1", "localhost") else _free_on(host)
        return cls(host, port, free_port(), users or DEFAULT_USERS, generated)

    @property
    def dashboard_url(self) -> str:
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"http://{host}:{self.http_port}/"

    @property
    def opcua_endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.opcua_port}{OPCUA_PATH}"

    def northbound(self, base: Northbound, pki: Path) -> Northbound:
        """``base`` (the drill's own northbound: none, or the external AI's Modbus server)
        with the dashboard and the OPC UA endpoint added."""
        users = tuple(OpcUaUser(name, PASSWORD_ENV, role) for name, role in self.users)
        opcua = OpcUaServerSpec(endpoint=self.opcua_endpoint, users=users, pki=pki,
                                # Loopback only, for an exercise: no certificates to make.
                                allow_insecure_passwords=True)
        return dataclasses.replace(base, opcua=opcua,
                                   http=HttpServerSpec(host=self.http_host,
                                                       port=self.http_port))

    def lines(self) -> list[str]:
        """What the drill prints at start: where to watch, who may log in."""
        names = ", ".join(f"{n} ({r})" for n, r in self.users)
        out = [f"drill dashboard: {self.dashboard_url}",
               f"drill OPC UA endpoint (ctl, incidents --via): {self.opcua_endpoint}",
               f"drill users: {names}; password in ${PASSWORD_ENV}"]
        if self.password_generated:
            out.append(f"  {PASSWORD_ENV} was unset; this drill's password: "
                       f"{os.environ[PASSWORD_ENV]}")
        if not is_loopback(self.http_host):
            out.append(f"  warning: the dashboard listens on {self.http_host} over plain "
                       "HTTP; passwords cross that network in clear")
        return out


def _free_on(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class WallPacer:
    """Paces a stepped drill to wall time: :meth:`until` returns once ``clock()`` has reached
    the wall instant of plant time ``plant_s`` (the first call fixes plant time 0's instant).
    Behind schedule (a slow host), it does not sleep to catch up wall time it lost; it still
    yields once, so that the servers on the same event loop answer between steps."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        self.origin: float | None = None

    async def until(self, plant_s: float) -> None:
        now = self.clock()
        if self.origin is None:
            self.origin = now - plant_s
        await self.sleep(max(0.0, self.origin + plant_s - now))
