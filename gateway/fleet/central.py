"""The centre's side of the fleet: per-site streams with retention from a policy, and the
central tools' connection.

A site cannot create its stream (its permissions let it publish only under its own subjects):
``safety-gateway fleet init`` creates ``SG_<site>`` for each site, file storage, with
``deny_delete`` and ``deny_purge`` so that nobody with API access removes audit records through
the API (IEC 62443-3-3 SR 3.9, protection of audit information); records leave only by the
retention limits (``max_age_s``, ``max_bytes`` per site; the oldest go first). Running it again
updates the limits of existing streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.fleet.subjects import SiteSubjects

if TYPE_CHECKING:
    from pathlib import Path

    from nats.aio.client import Client
    from nats.js.api import StreamConfig


@dataclass(frozen=True)
class RetentionPolicy:
    """How long and how much of a site's stream the centre keeps. ``max_age_s`` 0 and
    ``max_bytes`` -1 mean no limit; ``duplicate_window_s`` is how long a message id is
    remembered for dropping a resend; ``replicas`` is the stream's copies in a JetStream
    cluster (1 on a single server, 3 or 5 in a cluster)."""

    max_age_s: float = 0.0
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    replicas: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_age_s) and self.max_age_s >= 0):
            raise ValueError(f"max_age_s must be finite and >= 0, not {self.max_age_s!r}")
        if self.max_bytes != -1 and self.max_bytes < 1:
            raise ValueError(f"max_bytes must be -1 (no limit) or >= 1, not {self.max_bytes}")
        if not (math.isfinite(self.duplicate_window_s) and self.duplicate_window_s > 0):
            raise ValueError("duplicate_window_s must be finite and > 0, not "
                             f"{self.duplicate_window_s!r}")
        if self.replicas not in (1, 3, 5):
            raise ValueError(f"replicas must be 1, 3 or 5, not {self.replicas}")


def stream_config(site_id: str, policy: RetentionPolicy) -> StreamConfig:
    """The JetStream configuration of ``site_id``'s stream under ``policy``."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig
    from nats.js.api import RetentionPolicy as JsRetention

    names = SiteSubjects(site_id)
    return StreamConfig(
        name=names.stream, subjects=list(names.stream_subjects),
        description=f"safety-gateway site {site_id}: audit chain, events, signed heads",
        retention=JsRetention.LIMITS, storage=StorageType.FILE, discard=DiscardPolicy.OLD,
        max_age=policy.max_age_s or None, max_bytes=policy.max_bytes,
        duplicate_window=policy.duplicate_window_s, num_replicas=policy.replicas,
        deny_delete=True, deny_purge=True, allow_rollup_hdrs=False)


async def ensure_streams(client: Client, sites: list[str], policy: RetentionPolicy,
                         ) -> dict[str, str]:
    """Create each site's stream, or update an existing one's limits; returns site ->
    ``created`` or ``updated``. Raises nats-py's errors (``nats.js.errors.APIError`` naming
    what the server refused)."""
    from nats.js.errors import NotFoundError

    js = client.jetstream()
    done: dict[str, str] = {}
    for site in sites:
        config = stream_config(site, policy)
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
            done[site] = "created"
        else:
            await js.update_stream(config)
            done[site] = "updated"
    return done


def central_options(url: str, *, ca: Path | None = None, certificate: Path | None = None,
                    private_key: Path | None = None, credentials: Path | None = None,
                    name: str = "central") -> dict[str, Any]:
    """``nats.connect`` keyword arguments for a central tool: one attempt, no reconnection
    (a tool that cannot reach the server says so and exits). Raises ``ValueError`` for an
    incomplete certificate pair, ``OSError``/``ssl.SSLError`` for unreadable files."""
    from gateway.config.schema import FleetSpec
    from gateway.fleet.connection import connect_options

    spec = FleetSpec(url=url, site_id=name, ca=ca, certificate=certificate,
                     private_key=private_key, credentials=credentials)
    options = connect_options(spec)
    # nats-py tries a server max_reconnect_attempts + 1 times even for the first connection
    # (0 means forever): one retry, a fraction of a second apart.
    options.update(name=f"safety-gateway/{name}", allow_reconnect=False,
                   max_reconnect_attempts=1, reconnect_time_wait=0.2)
    return options
