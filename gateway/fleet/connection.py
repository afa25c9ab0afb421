"""A site's connection to the fleet's NATS server, authenticated as ``fleet:`` says.

The connection belongs to the communications process. With these options nats-py keeps
trying, the first connection included (it raises only on errors it does not retry, such as a
refused TLS handshake), and the caller copes with either (the audit database is the site's
outbox, so nothing waits on the link). Central one-shot tools pass a bounded setting instead.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

    from gateway.config.schema import FleetSpec


def tls_context(spec: FleetSpec) -> ssl.SSLContext | None:
    """The client TLS context: the server checked against ``ca`` (else the system's roots),
    and the site's certificate presented when set. None for a plain ``nats://`` link."""
    if not spec.uses_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=None if spec.ca is None else str(spec.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if spec.certificate is not None and spec.private_key is not None:
        context.load_cert_chain(str(spec.certificate), str(spec.private_key))
    return context


def connect_options(spec: FleetSpec) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: the site's name and credentials, reconnecting
    without end once connected, and a bounded outgoing buffer while the link is down."""
    options: dict[str, Any] = {
        "servers": [spec.url],
        "name": f"safety-gateway/{spec.site_id}",
        "connect_timeout": spec.connect_timeout_s,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        # Published while disconnected: kept up to this size, then refused; the publisher
        # resends from the audit database, so a refusal costs nothing.
        "pending_size": 8 * 1024 * 1024,
    }
    context = tls_context(spec)
    if context is not None:
        options["tls"] = context
    if spec.credentials is not None:
        options["user_credentials"] = str(spec.credentials)
    return options


async def connect(spec: FleetSpec,
                  *, disconnected: Callable[[], Awaitable[None]] | None = None,
                  reconnected: Callable[[], Awaitable[None]] | None = None,
                  error: Callable[[Exception], Awaitable[None]] | None = None) -> Client:
    """Connect (trying again as :func:`connect_options` says; an error it does not retry
    raises, e.g. ``ssl.SSLError``); the returned client reconnects by itself afterwards."""
    import nats  # only the communications process and central tools import nats-py

    options = connect_options(spec)
    if disconnected is not None:
        options["disconnected_cb"] = disconnected
    if reconnected is not None:
        options["reconnected_cb"] = reconnected
    if error is not None:
        options["error_cb"] = error
    return await nats.connect(**options)
