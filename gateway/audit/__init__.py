"""The hash-chained, append-only audit log (forensics; IEC 62443-3-3 SR 2.8-2.10).

- :class:`AuditLog` appends records from the control loop without waiting on disk.
- :func:`verify` recomputes a database's chain and names the first broken record.
- :func:`export_head` and the sinks in :mod:`gateway.audit.export` publish the chain head, so
  that truncation is detectable up to the last head exported.
- :mod:`gateway.audit.chain` is the record format and the pure verification.
"""

from __future__ import annotations

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
