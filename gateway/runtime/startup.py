"""Start-up steps of the safety core that are not the cycle's: the audit log, and the
actuators' read-back that seeds the supervisor."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.runtime.records import Records

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from gateway.adapters.base import TagStore
    from gateway.audit.log import AuditSink
    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64

log = logging.getLogger("gateway.runtime")


def open_records(site: Site, audit_path: Path | None, audit_process: bool) -> Records:
    """The audit log (in a child process with ``audit_process``: its serialising, hashing
    and SQLite steps then never hold this process's interpreter lock) and the flight
    recorder. Raises ``AuditError`` when the log cannot open and ``audit.required`` (the
    default): no control without an audit trail."""
    if audit_path is None:
        return Records(site, None)
    from gateway.audit import AuditError, AuditLog
    from gateway.audit.process import AuditProcess

    def alarm(message: str) -> None:  # the writer thread: logging is thread-safe
        log.error("audit log alarm: %s (control goes on; records are kept in memory)",
                  message)

    def clear(message: str) -> None:
        log.warning("audit log: %s", message)

    spec = site.audit
    # The signed head (gateway.audit.signed_head): its period, its sinks, its key (None:
    # beside the database the gateway was given).
    options: dict[str, Any] = {
        "export_every_s": spec.head_export_s,
        "head_dirs": [str(p) for p in spec.head_sinks],
        "head_key": None if spec.key is None else str(spec.key)}
    try:
        audit: AuditSink = (
            AuditProcess(audit_path, on_alarm=alarm, on_clear=clear, options=options)
            if audit_process else
            AuditLog(audit_path, on_alarm=alarm, on_clear=clear, **options))
    except AuditError as exc:
        if spec.required:
            raise
        log.error("audit log unavailable, running WITHOUT it (audit.required: false): %s",
                  exc)
        return Records(site, None)
    log.info("audit log path=%s writer=%s", audit_path,
             "process" if audit_process else "thread")
    return Records(site, audit)


async def read_back(store: TagStore, names: tuple[str, ...], fallback: F64, wait_s: float,
                    refresh: Callable[[], Awaitable[None]] | None = None) -> F64:
    """What the actuators hold now: their read-back, waited for up to ``wait_s`` (real time:
    a drill's clock stands still until it steps), and ``fallback`` where none came."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if refresh is not None:
            await refresh()
        if all(store.get(n).good for n in names):
            break
        await asyncio.sleep(0.02)
    return np.array([r.value if (r := store.get(n)).good else s
                     for n, s in zip(names, fallback.tolist(), strict=True)])
