"""The hash-chained, append-only audit log (forensics; IEC 62443-3-3 SR 2.8-2.10).

- :class:`AuditLog` appends records from the control loop without waiting on disk.
- :func:`verify` recomputes a database's chain and names the first broken record.
- :func:`export_head` and the sinks in :mod:`gateway.audit.export` publish the chain head, so
  that truncation is detectable up to the last head exported.
- :mod:`gateway.audit.chain` is the record format and the pure verification.

The names below are imported on first use (PEP 562): the audit writer process, which imports
this package first, must not pay for what it does not use (the HTTP head sinks, the command
line's tools), and neither must ``safety-gateway --help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.lazy import lazy_exports

if TYPE_CHECKING:
    from gateway.audit.chain import (
        ExportedHead,
        Kind,
        Problem,
        Record,
        VerifyResult,
        canonical_payload,
        record_hash,
        verify_records,
    )
    from gateway.audit.export import ExportError, export_head, parse_sink, send_head
    from gateway.audit.log import AuditLog
    from gateway.audit.store import AuditError, NotAuditDatabase, read_records, verify

# Where each name lives.
_HOME: dict[str, str] = {
    "AuditError": "gateway.audit.store",
    "AuditLog": "gateway.audit.log",
    "ExportError": "gateway.audit.export",
    "ExportedHead": "gateway.audit.chain",
    "Kind": "gateway.audit.chain",
    "NotAuditDatabase": "gateway.audit.store",
    "Problem": "gateway.audit.chain",
    "Record": "gateway.audit.chain",
    "VerifyResult": "gateway.audit.chain",
    "canonical_payload": "gateway.audit.chain",
    "export_head": "gateway.audit.export",
    "parse_sink": "gateway.audit.export",
    "read_records": "gateway.audit.store",
    "record_hash": "gateway.audit.chain",
    "send_head": "gateway.audit.export",
    "verify": "gateway.audit.store",
    "verify_records": "gateway.audit.chain",
}


__getattr__ = lazy_exports(__name__, _HOME)


__all__ = [
    "AuditError",
    "AuditLog",
    "ExportError",
    "ExportedHead",
    "Kind",
    "NotAuditDatabase",
    "Problem",
    "Record",
    "VerifyResult",
    "canonical_payload",
    "export_head",
    "parse_sink",
    "read_records",
    "record_hash",
    "send_head",
    "verify",
    "verify_records",
]
