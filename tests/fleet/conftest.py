"""Fixtures of the fleet tests: a real nats-server with JetStream per test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.fleet.natsserver import NatsServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Make and start servers (``factory(config=..., name=...)``); all stop at the end."""
    servers: list[NatsServer] = []

    def make(*, config: str = "", jetstream: bool = True, name: str = "central") -> NatsServer:
        server = NatsServer(tmp_path / f"nats-{name}-{len(servers)}", config=config,
                            jetstream=jetstream, name=name)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def nats_server(nats_server_factory: Callable[..., NatsServer]) -> NatsServer:
    """One plain JetStream server on loopback, no authentication."""
    return nats_server_factory()
