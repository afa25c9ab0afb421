"""The site's side of the fleet, as one task of the communications process.

:class:`SiteLink` owns the site's NATS connection (``fleet:``, :mod:`gateway.fleet.connection`):
it connects, retrying with backoff while the server is unreachable, then runs the audit
:class:`~gateway.fleet.publisher.Publisher` and every extra site task (a coroutine function
taking the connected client: the status heartbeat, command replies, model assignments) side by
side until cancelled. Nothing here is awaited by the servers or the core: the link may be down
for days, and the audit database keeps what is to be sent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from gateway.fleet.publisher import LinkState, Publisher, PublisherState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from nats.aio.client import Client

    from gateway.config.schema import FleetSpec

log = logging.getLogger("gateway.fleet")

class SiteLink:
    """The fleet link of one site: ``spec`` (the site's ``fleet:`` section), the audit database
    at ``audit_path``, and ``tasks`` to run with the connected client beside the publisher.
    ``retry_max_s`` bounds the wait between connection attempts."""

    def __init__(self, spec: FleetSpec, audit_path: Path,
                 tasks: Sequence[Callable[[Client], Awaitable[None]]] = (), *,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0,
                 publisher_options: dict[str, float] | None = None) -> None:
        self.spec = spec
        self.audit_path = audit_path
        self.tasks = tuple(tasks)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.publisher_options = dict(publisher_options or {})
        self.publisher: Publisher | None = None
        self.client: Client | None = None

    @property
    def state(self) -> PublisherState:
        """The publisher's state (link ``connecting`` before the first connection)."""
        if self.publisher is None:
            return PublisherState(LinkState.CONNECTING, 0, 0, 0, 0, None)
        return self.publisher.state

    @property
    def link_state(self) -> str:
        """The link's state as text (for the status heartbeat,
        :class:`gateway.fleet.heartbeat.PublisherState`)."""
        return str(self.state.link)

    @property
    def backlog_records(self) -> int | None:
        """Audit records the centre has not acknowledged; None until known."""
        if self.publisher is None or not self.publisher.knows_backlog:
            return None
        return self.state.backlog

    async def run(self) -> None:
        """Connect and run until cancelled; closes the connection on the way out. A task that
        fails is logged and the others go on (never raises but cancellation)."""
        from gateway.fleet.connection import connect

        client = await self._connect(connect)
        self.client = client
        try:
            self.publisher = Publisher(client, self.spec.site_id, self.audit_path,
                                       **self.publisher_options)  # type: ignore[arg-type]
            runs = [asyncio.create_task(self.publisher.run(), name="fleet publisher")]
            runs += [asyncio.create_task(_guarded(task, client), name=f"fleet task {i}")
                     for i, task in enumerate(self.tasks)]
            try:
                await asyncio.gather(*runs)
            finally:
                for run in runs:
                    run.cancel()
                await asyncio.gather(*runs, return_exceptions=True)
        finally:
            await client.close()

    async def _connect(self, connect: Callable[..., Awaitable[Client]]) -> Client:
        from nats.errors import Error as NatsError

        delay = self.retry_initial_s
        quiet = False
        while True:
            try:
                return await connect(self.spec, error=_log_error)
            except (TimeoutError, NatsError, OSError, ssl.SSLError) as exc:
                (log.debug if quiet else log.warning)(
                    "fleet: cannot connect to %s (%s: %s); retrying every %.0f s at most",
                    self.spec.url, type(exc).__name__, exc, self.retry_max_s)
                quiet = True
            await asyncio.sleep(delay)
            delay = min(self.retry_max_s, delay * 2)


async def _log_error(exc: Exception) -> None:
    # nats-py reports every failed reconnection here; the publisher's state says the rest.
    log.debug("fleet: connection: %s: %s", type(exc).__name__, exc)


async def _guarded(task: Callable[[Client], Awaitable[None]], client: Client) -> None:
    try:
        await task(client)
    except asyncio.CancelledError:
        raise
    except Exception:  # a site task's bug must not end the publisher (logged, with its trace)
        log.exception("fleet: a site task failed: %r", task)
