"""The communications process: northbound servers in front of the safety core.

It loads the site, attaches to the core's mirror, takes over the request channel's socket,
and starts the servers the site configures, as the core did before the split: plain Modbus,
Modbus/TLS sharing the plain server's register image (one mirror serves both), OPC UA with its
security listener reporting refused channels, certificates and logins, the dashboard, and
the MCP server for LLM agents (``gateway.mcp``). Their handler is the
channel (:class:`~gateway.link.channel.ChannelClient`) behind :class:`Front`, which shows each
refusal the core answered on the servers' status. asyncua is imported only when the site has
``northbound.opcua``. A site with ``fleet:`` also gets its fleet link
(:class:`gateway.fleet.site_link.SiteLink`: the audit chain published to the centre) as one
more task; nothing here waits on it, and its failure is logged without stopping the servers.

It ends on SIGTERM or SIGINT (exit 0), and when the channel closes (exit 3): without a core
there is nothing true to serve, so it never serves stale values. It fails to start with exit
4 (mirror missing or of another layout, a port taken); exit 2 is a bad command line or site.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any, Final

from gateway.adapters.base import (
    AdapterError,
    ClientInfo,
    NorthboundHandler,
    WriteOutcome,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nats.aio.client import Client

    from gateway.comms.servers import NorthboundServers
    from gateway.config.schema import Site
    from gateway.fleet.site_link import SiteLink
    from gateway.link.channel import ChannelClient
    from gateway.link.mirror import MirrorReader
    from gateway.mcp.outcome import ProposalOutcome

log = logging.getLogger("gateway.comms")

EXIT_STOPPED: Final = 0
EXIT_BAD_CONFIG: Final = 2
EXIT_CORE_GONE: Final = 3
EXIT_START_FAILED: Final = 4


class Front(NorthboundHandler):
    """The servers' handler: every call goes to the core over ``channel``; a refused write
    is shown on the servers' status (Modbus ``status.rejection``, OPC UA
    ``Status/LastRejection``) as the core did before the split."""

    def __init__(self, channel: ChannelClient) -> None:
        self.channel = channel
        self.servers: NorthboundServers | None = None
        self._reloads: set[asyncio.Task[None]] = set()  # site files being read for display
        channel.on_site = self.site_reloaded

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        outcomes = await self.channel.write(client, values, atomic)
        refused = [(name, o) for name, o in outcomes.items() if not o.accepted]
        if refused and self.servers is not None:
            await self.servers.show_rejection(*refused[0])
        return outcomes

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        return await self.channel.request(client, kind, detector, duration_s)

    def site_reloaded(self, sha256: str) -> None:
        """The core's notice that a reload applied the site file hashing to ``sha256``
        (``ctl reload`` or SIGHUP): show it, read in the background, without restarting a
        server."""
        task = asyncio.get_running_loop().create_task(self._show(sha256), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _show(self, sha256: str) -> None:
        import hashlib

        from gateway.config import ConfigError, load_config

        servers = self.servers
        if servers is None:
            return
        path = servers.site.source
        try:
            data = await asyncio.to_thread(path.read_bytes)
            site = await asyncio.to_thread(load_config, path)
        except (OSError, ConfigError) as exc:
            log.warning("reload: the site file cannot be shown: %s", exc)
            return
        if hashlib.sha256(data).hexdigest() != sha256:
            # Changed again since the core applied it: what the core runs is not this file.
            log.warning("reload: %s changed again since the core applied it; the dashboard "
                        "keeps the site it showed", path)
            return
        servers.site_reloaded(site, sha256)

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        return await self.channel.incident(client, action, incident_id, args)

    async def propose(self, client: ClientInfo, values: dict[str, float]) -> ProposalOutcome:
        return await self.channel.propose(client, values)

    def agent_calls(self, window: dict[str, Any]) -> None:
        self.channel.agent_calls(window)

    def refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                code: int) -> None:
        self.channel.refused(client, values, reason, code)

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        self.channel.refused_connection(protocol, address, user, event, reason)


class Comms:
    """The servers of ``site`` in front of ``channel``, fed from ``mirror_name``."""

    def __init__(self, site: Site, mirror_name: str, channel_sock: socket.socket, *,
                 max_in_flight: int = 64) -> None:
        self.site = site
        self.max_in_flight = max_in_flight
        self.mirror_name = mirror_name
        self.channel_sock = channel_sock
        self.servers: NorthboundServers | None = None
        self.fleet: SiteLink | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set or the channel closes; returns the exit code."""
        from gateway.comms.pump import MirrorPump
        from gateway.comms.servers import NorthboundServers
        from gateway.link.channel import ChannelClient
        from gateway.link.mirror import MirrorLayout, MirrorMismatch, MirrorReader

        site = self.site
        try:
            reader = MirrorReader(self.mirror_name, MirrorLayout.for_site(site))
        except (FileNotFoundError, MirrorMismatch) as exc:
            log.error("cannot read the core's mirror %s: %s", self.mirror_name, exc)
            return EXIT_START_FAILED
        channel = ChannelClient(self.channel_sock, max_in_flight=self.max_in_flight)
        front = Front(channel)
        pumping: asyncio.Task[None] | None = None
        fleet: asyncio.Task[None] | None = None
        try:
            await channel.start()
            try:
                self.servers = front.servers = NorthboundServers(site, front)
                pump = MirrorPump(reader, site.site.cycle_ms / 1000.0, self.servers)
                # What the core already published, in the Modbus image before it listens;
                # then the pump runs while the servers start (OPC UA takes a while).
                await pump.step()
                pumping = asyncio.create_task(pump.run(), name="mirror pump")
                await self.servers.start()
            except (AdapterError, OSError, ValueError, RuntimeError) as exc:
                # a port taken, a certificate missing: the supervisor retries with backoff
                log.error("cannot start the northbound servers: %s", exc)
                return EXIT_START_FAILED
            if site.fleet is not None:
                fleet = asyncio.create_task(self._fleet_link(site, reader, front, channel),
                                            name="fleet link")
            stopping = asyncio.create_task(stop.wait(), name="stop")
            gone = asyncio.create_task(channel.wait_closed(), name="channel")
            await asyncio.wait({pumping, stopping, gone}, return_when=asyncio.FIRST_COMPLETED)
            code = EXIT_CORE_GONE if gone.done() and not stop.is_set() else EXIT_STOPPED
            if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
                log.error("the mirror pump failed", exc_info=pumping.exception())
                code = EXIT_START_FAILED
            for task in (pumping, stopping, gone):
                task.cancel()
            await asyncio.gather(pumping, stopping, gone, return_exceptions=True)
            pumping = None
            if code == EXIT_CORE_GONE:
                log.warning("the safety core's channel closed (%s); stopping so that nothing "
                            "stale is served", channel.reason)
            return code
        finally:
            for leftover in (pumping, fleet):
                if leftover is not None:
                    leftover.cancel()
                    await asyncio.gather(leftover, return_exceptions=True)
            if self.servers is not None:
                await self.servers.stop()
            channel.close()
            reader.close()


    async def _fleet_link(self, site: Site, reader: MirrorReader, front: Front,
                          channel: ChannelClient) -> None:
        """The site's fleet link (``fleet:``): publishes the audit chain, and on the same
        connection the status heartbeat (the core's view from the mirror, the publisher's
        link and backlog), the answers to the centre's incident requests (through
        ``front``, the servers' own path to the core) and the model rollout watcher (which
        asks the core, over ``channel``, to check again and load an assigned version in
        SHADOW). Its own task, never awaited by the servers; if it fails, the servers go on
        and the failure is logged."""
        from gateway.fleet.commands import run_command_responder
        from gateway.fleet.heartbeat import run_heartbeat
        from gateway.fleet.rollout import run_rollout_watcher
        from gateway.fleet.site_link import SiteLink

        assert site.fleet is not None
        never = asyncio.Event()  # the tasks end by cancellation, with the link

        async def heartbeat(client: Client) -> None:
            await run_heartbeat(client, site, reader.read, link, stop=never,
                                audit_path=site.audit.path)

        async def commands(client: Client) -> None:
            await run_command_responder(client, site, front, never)

        async def rollouts(client: Client) -> None:
            await run_rollout_watcher(client, site, channel, never)

        link = SiteLink(site.fleet, site.audit.path, tasks=(heartbeat, commands, rollouts))
        self.fleet = link
        try:
            await link.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # the fleet is optional: never the reason the servers stop
            log.exception("the fleet link failed; the servers go on without it")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.comms",
        description="The gateway's communications process (started by the safety core).")
    parser.add_argument("--site", required=True, help="the site's YAML file")
    parser.add_argument("--mirror", required=True, help="the core's mirror segment name")
    parser.add_argument("--channel-fd", type=int, required=True,
                        help="file descriptor of the request channel's socket")
    parser.add_argument("--max-in-flight", type=_positive, default=64,
                        help="requests waiting for the core at most; more are refused at once "
                             "(Modbus exception 6)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The process's entry point; returns its exit code (see the module docstring)."""
    args = parse_args(argv)
    from gateway.runtime import logs

    logs.configure(logging.getLevelName(args.log_level), process="comms")
    from gateway.config.loader import ConfigError, load_config

    try:
        site = load_config(args.site)
    except (ConfigError, OSError) as exc:
        log.error("cannot load the site %s: %s", args.site, exc)
        return EXIT_BAD_CONFIG
    try:
        sock = socket.socket(fileno=args.channel_fd)
    except OSError as exc:
        log.error("--channel-fd %d is not a socket: %s", args.channel_fd, exc)
        return EXIT_BAD_CONFIG
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        log.error("--channel-fd %d is not a Unix stream socket", args.channel_fd)
        sock.close()
        return EXIT_BAD_CONFIG
    return asyncio.run(_serve(Comms(site, args.mirror, sock,
                                    max_in_flight=args.max_in_flight)))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


async def _serve(comms: Comms) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await comms.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
