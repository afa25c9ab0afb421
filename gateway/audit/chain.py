"""Audit records, their hashes and the verification of a chain of them. Pure: no I/O.

The hash of a record commits to its sequence number, time, kind, actor, source, payload text and
the hash of the record before it, so that editing, deleting, reordering or inserting a record
breaks the chain at that point. Truncating the tail leaves a valid (shorter) chain: only a head
exported earlier (:class:`ExportedHead`) can show that records are missing at the end.

Encoding (version 1), so that an independent verifier can be written from this text alone::

    hash = sha256( b"safety-gateway/audit/record/v1\\x00"
                   || int64_be(seq) || float64_be(at_s)
                   || uint32_be(len(kind)) || uint32_be(len(actor))
                   || uint32_be(len(source)) || uint32_be(len(payload))
                   || kind || actor || source || payload        (UTF-8 bytes; lengths in bytes)
                   || prev_hash as 32 raw bytes )

``hash`` and ``prev_hash`` are stored as 64 lowercase hexadecimal characters. Fixed-width
numbers and length prefixes make the encoding unambiguous without any escaping. The first
record's ``prev_hash`` is the *genesis hash* of its database, :func:`genesis_hash` of the
database's header (its identity and creation time), so that a chain cannot be moved from one
database to another unnoticed.

The payload is canonical JSON text (:func:`canonical_payload`); the chain covers the stored text
as it is, so a verifier never re-serialises a payload.
"""

from __future__ import annotations

import enum
import hashlib
import json
import json.encoder as _json_encoder
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

RECORD_DOMAIN = b"safety-gateway/audit/record/v1\x00"
GENESIS_DOMAIN = b"safety-gateway/audit/genesis/v1\x00"
_FIXED = struct.Struct(">qdIIII")
HASH_HEX_LEN = 64


class Kind(enum.StrEnum):
    """The kinds of record the gateway writes. Other lowercase names (``[a-z][a-z0-9_.]*``,
    at most 64 characters) are accepted too, so that a new module needs no change here."""

    DECISION = "decision"
    OPERATOR = "operator"
    MODE = "mode"
    EVENT = "event"
    CONFIG_LOAD = "config_load"
    MODEL_LOAD = "model_load"
    INCIDENT = "incident"
    NOTE = "note"
    ALARM = "alarm"
    SHUTDOWN = "shutdown"


def _float_text(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _default(obj: Any) -> Any:
    # Called by the JSON encoder for types it does not know.
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if tolist is not None and callable(tolist):
        return tolist()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float):
        text = _float_text(key)
        return text if isinstance(text, str) else repr(text)
    if isinstance(key, enum.Enum):
        return _key_text(key.value)
    raise TypeError(f"payload key {key!r} is not a string")


def _clean(obj: Any) -> Any:
    """Replace what strict JSON cannot hold: non-finite floats become "nan"/"inf"/"-inf",
    keys become strings, and known container types become dicts and lists."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return _float_text(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            text = _key_text(key)
            if text in out:
                raise TypeError(f"payload keys collide as text: {text!r}")
            out[text] = _clean(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _clean(_default(obj))


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                            allow_nan=False, default=_default)
# The C encoder that JSONEncoder.encode builds on every call, built once (a quarter of the
# cost of encoding a decision record). Same options; no circular-reference check (a circular
# payload ends in RecursionError instead of ValueError).
_make_c_encoder = getattr(_json_encoder, "c_make_encoder", None)
_c_encode = (None if _make_c_encoder is None else _make_c_encoder(
    None, _default, _json_encoder.encode_basestring_ascii, None, ":", ",", True, False, False))


def _encode(obj: Any) -> str:
    if _c_encode is not None:
        return "".join(_c_encode(obj, 0))
    return _ENCODER.encode(obj)


def canonical_payload(payload: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``payload``: keys sorted, no whitespace, ASCII only (other
    characters escaped), non-finite floats written as the strings ``"nan"``, ``"inf"`` and
    ``"-inf"``. Numpy arrays and scalars, enums, sets (sorted), paths and nested mappings are
    converted. Raises ``TypeError`` for anything else, ``RecursionError`` for a circular
    structure."""
    try:
        return _encode(payload)
    except (TypeError, ValueError):
        # Slow path: NaN/inf, non-string keys or a mapping that is not a dict.
        return _encode(_clean(payload))


def record_hash(seq: int, at_s: float, kind: str, actor: str, source: str, payload: str,
                prev_hash: str) -> str:
    """The hex sha256 of one record (the encoding is in the module docstring). Raises
    ``ValueError`` if ``prev_hash`` is not 64 hex characters, ``TypeError`` or
    ``struct.error`` for fields of the wrong type, ``UnicodeEncodeError`` for a lone
    surrogate in a text field."""
    k = kind.encode()
    a = actor.encode()
    s = source.encode()
    p = payload.encode()
    if len(prev_hash) != HASH_HEX_LEN:
        raise ValueError(f"prev_hash must be {HASH_HEX_LEN} hex characters")
    return hashlib.sha256(b"".join((
        RECORD_DOMAIN, _FIXED.pack(seq, at_s, len(k), len(a), len(s), len(p)),
        k, a, s, p, bytes.fromhex(prev_hash)))).hexdigest()


def genesis_hash(header: Mapping[str, str]) -> str:
    """The ``prev_hash`` of a database's first record: the hash of its header (every
    key/value pair of its ``meta`` table)."""
    return hashlib.sha256(GENESIS_DOMAIN + canonical_payload(header).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """One stored audit record. ``at_s`` is wall-clock UTC seconds since the epoch, taken
    when the record was appended (not when it was written)."""

    seq: int
    at_s: float
    kind: str
    actor: str
    source: str
    payload: str
    prev_hash: str
    hash: str

    def data(self) -> Any:
        """The payload, parsed from its JSON text."""
        return json.loads(self.payload)

    def computed_hash(self) -> str:
        return record_hash(self.seq, self.at_s, self.kind, self.actor, self.source,
                           self.payload, self.prev_hash)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at_s": self.at_s, "kind": self.kind, "actor": self.actor,
                "source": self.source, "payload": self.payload, "prev_hash": self.prev_hash,
                "hash": self.hash}


def _is_hex64(text: str) -> bool:
    if len(text) != HASH_HEX_LEN:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return text == text.lower()


@dataclass(frozen=True, slots=True)
class ExportedHead:
    """A chain head published outside the database: the last committed record's sequence
    number, hash and time, and the identity of its database (``db_id``, may be empty)."""

    seq: int
    hash: str
    at_s: float
    db_id: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError(f"head seq must be an integer >= 0, not {self.seq!r}")
        if not isinstance(self.hash, str) or not _is_hex64(self.hash):
            raise ValueError("head hash must be 64 lowercase hex characters")
        if not isinstance(self.at_s, (int, float)) or isinstance(self.at_s, bool):
            raise ValueError(f"head at_s must be a number, not {self.at_s!r}")
        if not isinstance(self.db_id, str):
            raise ValueError("head db_id must be a string")

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "at_s": self.at_s, "db_id": self.db_id}

    def dumps(self) -> str:
        """One line of JSON (what every sink sends)."""
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: Any) -> ExportedHead:
        """Parse a head from its JSON object (a dict). Raises ``ValueError`` naming the
        problem."""
        if not isinstance(data, dict):
            raise ValueError("an exported head is a JSON object")
        missing = [key for key in ("seq", "hash") if key not in data]
        if missing:
            raise ValueError(f"exported head lacks {', '.join(missing)}")
        return cls(seq=data["seq"], hash=data["hash"], at_s=data.get("at_s", 0.0),
                   db_id=data.get("db_id", ""))

    @classmethod
    def loads(cls, text: str) -> ExportedHead:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"exported head is not JSON: {exc}") from None
        return cls.from_json(data)


class Problem(enum.StrEnum):
    """What is wrong with a chain, named after the tampering that causes it."""

    EDITED = "edited"                      # a record's hash does not match its content
    DELETED = "deleted"                    # a sequence number is missing
    REORDERED = "reordered_or_inserted"    # a record does not link to the one before it
    HEADER = "header"                      # the first record does not link to the header
    MALFORMED = "malformed"                # a field has the wrong type or form
    TRUNCATED = "truncated"                # records up to an exported head are missing
    HEAD_MISMATCH = "head_mismatch"        # the record at the exported head's seq differs
    OTHER_DATABASE = "other_database"      # the exported head is of another database


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of checking a chain. ``broken_seq`` is the first broken record (for
    TRUNCATED, the exported head's seq that is missing); ``message`` says what is wrong in
    one line."""

    ok: bool
    records: int
    last_seq: int
    last_hash: str
    db_id: str = ""
    last_at_s: float = 0.0
    problem: Problem | None = None
    broken_seq: int | None = None
    message: str = "chain intact"
    head_checked: ExportedHead | None = None

    def head(self) -> ExportedHead:
        """The head of the verified part of the chain (for export after a verify)."""
        return ExportedHead(self.last_seq, self.last_hash, self.last_at_s, self.db_id)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "last_seq": self.last_seq,
                "last_hash": self.last_hash, "last_at_s": self.last_at_s, "db_id": self.db_id,
                "problem": self.problem.value if self.problem is not None else None,
                "broken_seq": self.broken_seq, "message": self.message,
                "head_checked": (self.head_checked.to_json()
                                 if self.head_checked is not None else None)}


class ChainVerifier:
    """Checks records fed in ascending ``seq`` order, stopping at the first broken one.

    ``genesis`` is the expected ``prev_hash`` of record 1; ``None`` checks an excerpt: the
    first record fed is taken as the anchor (its own hash is still checked), and only
    contiguity and links are checked from there.
    """

    def __init__(self, genesis: str | None, db_id: str = "") -> None:
        self.genesis = genesis
        self.db_id = db_id
        self.records = 0
        self.last_seq = 0
        self.last_hash = genesis or ""
        self.last_at_s = 0.0
        self.problem: Problem | None = None
        self.broken_seq: int | None = None
        self.message = ""
        self._head_hashes: dict[int, str] = {}
        self._watch: set[int] = set()

    @property
    def broken(self) -> bool:
        return self.problem is not None

    def watch(self, seq: int) -> None:
        """Remember the hash of record ``seq`` when it goes by (for exported heads)."""
        self._watch.add(seq)

    def seen_hash(self, seq: int) -> str | None:
        return self._head_hashes.get(seq)

    def _fail(self, problem: Problem, seq: int, message: str) -> bool:
        self.problem = problem
        self.broken_seq = seq
        self.message = message
        return False

    def feed(self, rec: Record) -> bool:
        """Check one record; False once the chain is broken (further records are ignored)."""
        if self.problem is not None:
            return False
        seq = rec.seq
        if isinstance(seq, bool) or not isinstance(seq, int):
            return self._fail(Problem.MALFORMED, self.last_seq + 1,
                              f"record after seq {self.last_seq} has a non-integer seq")
        first = self.records == 0
        expected = self.last_seq + 1
        if first and self.genesis is None:
            expected = seq
        if seq != expected:
            if seq < expected:  # cannot happen with seq as the primary key; be exact anyway
                return self._fail(Problem.REORDERED, seq,
                                  f"record seq {seq} appears after seq {self.last_seq}")
            missing = (f"seq {expected}" if seq == expected + 1
                       else f"seqs {expected}..{seq - 1}")
            return self._fail(Problem.DELETED, expected,
                              f"record {missing} missing (deleted) before seq {seq}")
        for name in ("kind", "actor", "source", "payload", "prev_hash", "hash"):
            if not isinstance(getattr(rec, name), str):
                return self._fail(Problem.MALFORMED, seq,
                                  f"record seq {seq}: {name} is not text")
        if isinstance(rec.at_s, bool) or not isinstance(rec.at_s, (int, float)):
            return self._fail(Problem.MALFORMED, seq, f"record seq {seq}: at_s is not a number")
        if not _is_hex64(rec.prev_hash) or not _is_hex64(rec.hash):
            return self._fail(Problem.MALFORMED, seq,
                              f"record seq {seq}: hash or prev_hash is not 64 lowercase hex")
        if not (first and self.genesis is None) and rec.prev_hash != self.last_hash:
            if first:
                return self._fail(Problem.HEADER, seq,
                                  f"record seq {seq} does not link to the database header "
                                  "(header edited, or the records come from elsewhere)")
            return self._fail(Problem.REORDERED, seq,
                              f"record seq {seq} does not link to seq {self.last_seq} "
                              "(records reordered or inserted, or the one before rewritten)")
        try:
            computed = rec.computed_hash()
        except (ValueError, TypeError, struct.error, UnicodeEncodeError) as exc:
            return self._fail(Problem.MALFORMED, seq, f"record seq {seq}: {exc}")
        if computed != rec.hash:
            return self._fail(Problem.EDITED, seq,
                              f"record seq {seq} hash mismatch: its content was edited")
        if seq in self._watch:
            self._head_hashes[seq] = rec.hash
        self.records += 1
        self.last_seq = seq
        self.last_hash = rec.hash
        self.last_at_s = float(rec.at_s)
        return True

    def result(self, head: ExportedHead | None = None) -> VerifyResult:
        """The verdict; with ``head``, also require that the chain holds the exported head
        (call :meth:`watch` with ``head.seq`` before feeding)."""
        base = VerifyResult(ok=True, records=self.records, last_seq=self.last_seq,
                            last_hash=self.last_hash, db_id=self.db_id,
                            last_at_s=self.last_at_s, head_checked=head)
        if self.problem is not None:
            return replace(base, ok=False, problem=self.problem, broken_seq=self.broken_seq,
                           message=self.message)
        if head is not None:
            if head.db_id and self.db_id and head.db_id != self.db_id:
                return replace(base, ok=False, problem=Problem.OTHER_DATABASE,
                               broken_seq=head.seq,
                               message=f"exported head is of audit database {head.db_id}, "
                                       f"this one is {self.db_id}")
            if head.seq > self.last_seq:
                return replace(base, ok=False, problem=Problem.TRUNCATED, broken_seq=head.seq,
                               message=f"truncated: exported head is seq {head.seq} but the "
                                       f"chain ends at seq {self.last_seq}")
            seen = self.genesis if head.seq == 0 else self._head_hashes.get(head.seq)
            if seen != head.hash:
                return replace(base, ok=False, problem=Problem.HEAD_MISMATCH,
                               broken_seq=head.seq,
                               message=f"record seq {head.seq} differs from the exported head "
                                       "(the chain was rewritten from there or before)")
        message = f"chain intact: {self.records} records"
        if head is not None:
            message += f", exported head seq {head.seq} present"
        return replace(base, message=message)


def verify_records(records: Iterable[Record], genesis: str | None, *, db_id: str = "",
                   head: ExportedHead | None = None) -> VerifyResult:
    """Check records in ``seq`` order (see :class:`ChainVerifier`)."""
    verifier = ChainVerifier(genesis, db_id)
    if head is not None:
        verifier.watch(head.seq)
    for rec in records:
        if not verifier.feed(rec):
            break
    return verifier.result(head)
