"""Helpers of the fleet tests: an audit database written by the real audit log, a site stream
created as ``fleet init`` does, the publisher run in the background, and waiting with a
deadline."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from gateway.audit.log import AuditLog
from gateway.fleet.central import RetentionPolicy, ensure_streams
from gateway.fleet.subjects import SiteSubjects

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from nats.aio.client import Client

FAST: dict[str, Any] = {"flush_interval_s": 0.01, "synchronous": "NORMAL",
                        "export_every_s": 0.2, "min_free_bytes": 0}


def write_records(db: Path, count: int, *, start: int = 0, trips_every: int = 0) -> None:
    """Append ``count`` records (every ``trips_every``-th a trip event) and close the log
    (which exports the signed head)."""
    with AuditLog(db, **FAST) as audit:
        for i in range(start, start + count):
            if trips_every and i % trips_every == 0:
                audit.append("event", {"kind": "trip", "name": "level_high", "i": i})
            else:
                audit.append("decision", {"i": i, "mode": "AUTO", "command": {"valve": i}})


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout_s: float,
                what: str) -> None:
    """Wait until ``check()`` is true, polling; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")
        await asyncio.sleep(0.05)


async def make_stream(client: Client, site: str, **policy: Any) -> None:
    await ensure_streams(client, [site], RetentionPolicy(**policy))


async def held_audit(client: Client, site: str) -> list[dict[str, Any]]:
    """Every audit message the site's stream holds, in stream order, parsed."""
    names = SiteSubjects(site)
    js = client.jetstream()
    info = await js.stream_info(names.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(names.stream, seq)
        if msg.subject == names.audit:
            out.append(json.loads(msg.data or b"{}"))
    return out
