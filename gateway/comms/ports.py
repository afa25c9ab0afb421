"""The northbound ports, checked free before the core starts.

The communications process binds them; when it cannot, it exits and its supervisor retries
with backoff while the core keeps controlling. At start-up a taken port is a setup error, and
``run`` says so at once (exit 3) rather than leave the plant without a northbound side.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.config.schema import Site


def northbound_addresses(site: Site) -> list[tuple[str, str, int]]:
    """(what, host, port) of each northbound listener the site configures."""
    nb = site.northbound
    out: list[tuple[str, str, int]] = []
    if nb.modbus is not None:
        if nb.modbus.plain:
            out.append(("northbound Modbus", nb.modbus.host, nb.modbus.port))
        if nb.modbus.tls is not None:
            out.append(("northbound Modbus/TLS", nb.modbus.host, nb.modbus.tls.port))
    if nb.opcua is not None:
        url = urlsplit(nb.opcua.endpoint)
        out.append(("northbound OPC UA", url.hostname or "0.0.0.0", url.port or 4840))
    if nb.http is not None:
        out.append(("dashboard (HTTP)", nb.http.host, nb.http.port))
    if nb.mcp is not None:
        out.append(("MCP server", nb.mcp.host, nb.mcp.port))
    return out


def check_free(site: Site, wait_s: float = 5.0) -> None:
    """Raise ``OSError`` naming the first northbound address that cannot be bound within
    ``wait_s``: after a crash, the dead core's communications process holds the ports until
    it sees its channel close (a moment), and a restart must not trip over that."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _check_once(site)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _check_once(site: Site) -> None:
    for what, host, port in northbound_addresses(site):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise OSError(f"{what} {host}:{port}: {exc}") from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        with contextlib.closing(sock):
            # As asyncio's servers bind (SO_REUSEADDR): a port in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"{what} {host}:{port} cannot be bound: "
                                         f"{exc.strerror}") from None
