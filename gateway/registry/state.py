"""The registry's signed state: who approved, revoked and made current which version.

Every change of state is a :class:`StateRecord`, signed by an approver's ed25519 key from the
registry's trust store and appended to a hash chain: record ``n`` carries ``seq = n`` and the
sha256 of record ``n - 1`` (``prev``; :data:`GENESIS` for the first). :func:`replay` checks the
chain and every signature, then replays the records in order and returns the
:class:`DerivedState` they establish; the index's state fields are a cache of that state, and
the registry refuses an index whose cache disagrees with it. So:

- a hand edit of a state field (un-revoke, approve, move ``current``) disagrees with the records;
- an added, changed, deleted, reordered or replayed record breaks a signature, ``seq`` or
  ``prev``;
- what the chain cannot show by itself is its own end: the whole file put back to an earlier
  copy (or the last records cut off together with their cached effect) is an older, genuine
  state. A verifier that remembers the last head it accepted (:func:`check_witness`) catches
  that too.

A record binds the model version by its sha256, so an approval cannot be moved to another
version. What is signed is the canonical JSON (sorted keys, no spaces, ASCII) of the record
without its ``signature``, plus ``"context": STATE_CONTEXT``.

Actions (:class:`Action`) and the rules :func:`replay` enforces:

- ``approve``: the version is not revoked and not yet approved, and this key has not approved
  it before. Once ``approvals_required`` distinct keys have approved it, it is approved and
  becomes current.
- ``revoke``: the version is not revoked yet. The current pointer does not move.
- ``set_current`` (rollback, re-approval): the version is approved and not revoked.
- ``require_approvals``: the number of distinct keys an approval needs from now on (1 or 2);
  it can only be raised, so one stolen key cannot lower it again.

Everything here is pure: no I/O, time passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from gateway.registry import signing

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "GENESIS",
    "MAX_APPROVALS_REQUIRED",
    "STATE_CONTEXT",
    "Action",
    "DerivedState",
    "StateError",
    "StateRecord",
    "VersionState",
    "check_witness",
    "make_record",
    "parse_record",
    "record_hash",
    "replay",
]

STATE_CONTEXT: Final = "safety-gateway model registry state v1"
GENESIS: Final = "0" * 64
MAX_APPROVALS_REQUIRED: Final = 2


class StateError(ValueError):
    """The records do not establish a state: the message names the record and the reason."""


class Action(StrEnum):
    APPROVE = "approve"
    REVOKE = "revoke"
    SET_CURRENT = "set_current"
    REQUIRE_APPROVALS = "require_approvals"


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One signed change of state (see the module docstring).

    ``name``, ``version`` and ``sha256`` (the model's) are ``None`` only for
    ``require_approvals``; ``approvals_required`` is set only for it. ``at`` is an ISO 8601 UTC
    timestamp, ``by`` the person acting (the key is the cryptographic identity, ``by`` the name
    shown), ``reason`` the revocation's reason or a note. ``signature`` is base64.
    """

    seq: int
    prev: str
    action: Action
    name: str | None
    version: int | None
    sha256: str | None
    at: str
    by: str
    reason: str | None
    approvals_required: int | None
    key_id: str
    signature: str

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["action"] = str(self.action)
        return document

    @property
    def label(self) -> str:
        target = f" {self.name} v{self.version}" if self.name is not None else ""
        return f"state record #{self.seq} ({self.action}{target}, key {self.key_id})"


@dataclass(slots=True)
class VersionState:
    """What the records say about one version (mutable only while :func:`replay` runs)."""

    approvers: list[tuple[str, str, str]] = field(default_factory=list)  # key id, by, at
    approved: bool = False
    approved_by: str | None = None
    approved_at: str | None = None
    revoked: bool = False
    revoked_by: str | None = None
    revoked_at: str | None = None
    revoked_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DerivedState:
    """The state the records establish, and the chain's head (``seq`` 0 and :data:`GENESIS`
    for no records)."""

    versions: Mapping[tuple[str, int], VersionState]
    current: Mapping[str, int]
    approvals_required: int
    head_seq: int
    head_sha256: str

    def of(self, name: str, version: int) -> VersionState:
        """The version's state (nothing recorded: neither approved nor revoked)."""
        return self.versions.get((name, version)) or VersionState()


def signed_bytes(record: StateRecord) -> bytes:
    """The canonical bytes a record's signature covers."""
    document = record.to_json()
    del document["signature"]
    document["context"] = STATE_CONTEXT
    return _canonical(document)


def record_hash(record: StateRecord) -> str:
    """sha256 (hex) of the whole record, signature included: the next record's ``prev``."""
    return hashlib.sha256(_canonical(record.to_json())).hexdigest()


def make_record(
    previous: Sequence[StateRecord],
    action: Action,
    signer: signing.Signer,
    *,
    at: str,
    by: str,
    name: str | None = None,
    version: int | None = None,
    sha256: str | None = None,
    reason: str | None = None,
    approvals_required: int | None = None,
) -> StateRecord:
    """A new record signed by ``signer``, chained after ``previous`` (checked by the caller
    with :func:`replay` before and after)."""
    unsigned = StateRecord(
        seq=len(previous) + 1,
        prev=record_hash(previous[-1]) if previous else GENESIS,
        action=action,
        name=name,
        version=version,
        sha256=sha256,
        at=at,
        by=by,
        reason=reason,
        approvals_required=approvals_required,
        key_id=signer.key_id,
        signature="",
    )
    signature = base64.b64encode(signer.sign(signed_bytes(unsigned))).decode()
    return StateRecord(**{**asdict(unsigned), "signature": signature})


def parse_record(item: object, where: str) -> StateRecord:
    """A record from its JSON form; :class:`StateError` naming ``where`` if malformed."""
    if not isinstance(item, dict):
        raise StateError(f"{where} must be an object")
    expected = set(StateRecord.__dataclass_fields__)
    if set(item) != expected:
        missing = sorted(expected - set(item))
        unknown = sorted(set(item) - expected)
        raise StateError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    try:
        action = Action(item["action"])
    except ValueError:
        raise StateError(f"{where}.action {item['action']!r} is not an action") from None
    for key in ("prev", "at", "by", "key_id", "signature"):
        if not isinstance(item[key], str):
            raise StateError(f"{where}.{key} must be a string")
    for key in ("name", "sha256", "reason"):
        if item[key] is not None and not isinstance(item[key], str):
            raise StateError(f"{where}.{key} must be a string or null")
    for key in ("seq", "version", "approvals_required"):
        value = item[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise StateError(f"{where}.{key} must be an integer or null")
    if item["seq"] is None:
        raise StateError(f"{where}.seq must be an integer")
    return StateRecord(**{**item, "action": action})


def replay(
    records: Sequence[StateRecord],
    store: signing.TrustStore,
    versions: Mapping[tuple[str, int], str],
) -> DerivedState:
    """Check the chain and replay it; ``versions`` maps each listed version to its sha256.

    Raises :class:`StateError` naming the first record that is out of place, not signed by a
    trusted key, names a version the index does not list (or with another sha256), or breaks a
    rule of its action.
    """
    states: dict[tuple[str, int], VersionState] = {}
    current: dict[str, int] = {}
    required = 1
    previous_hash = GENESIS
    for position, record in enumerate(records):
        where = record.label
        if record.seq != position + 1:
            raise StateError(
                f"{where} is at position {position + 1}: records were deleted, reordered or "
                "replayed"
            )
        if record.prev != previous_hash:
            raise StateError(
                f"{where} does not follow the record before it (its `prev` is not that "
                "record's hash): a record was deleted, changed, reordered or replayed"
            )
        _check_signature(record, store)
        if record.action is Action.REQUIRE_APPROVALS:
            number = record.approvals_required
            if record.name is not None or record.version is not None or number is None:
                raise StateError(f"{where}: malformed (names a version, or no number)")
            if not required <= number <= MAX_APPROVALS_REQUIRED:
                raise StateError(
                    f"{where}: approvals_required {number} must be between the current "
                    f"{required} and {MAX_APPROVALS_REQUIRED} (it can only be raised)"
                )
            required = number
        else:
            _apply(record, _target(record, versions, states), current, required)
        previous_hash = record_hash(record)
    return DerivedState(
        versions=states,
        current=current,
        approvals_required=required,
        head_seq=len(records),
        head_sha256=previous_hash,
    )


def check_witness(state: DerivedState, records: Sequence[StateRecord],
                  seen_seq: int, seen_sha256: str) -> None:
    """Check that the chain extends the head a verifier saw before (record ``seen_seq`` with
    hash ``seen_sha256``); :class:`StateError` if the registry went back to an older state or
    forked from it."""
    if seen_seq == 0:
        return
    if state.head_seq < seen_seq:
        raise StateError(
            f"the registry's signed state went back: record #{seen_seq} was seen before, the "
            f"registry now ends at #{state.head_seq} (records were removed, or an older copy "
            "was put back)"
        )
    if record_hash(records[seen_seq - 1]) != seen_sha256:
        raise StateError(
            f"the registry's signed state forked: record #{seen_seq} is not the one seen "
            "before (an older copy was put back and changed again)"
        )


def _check_signature(record: StateRecord, store: signing.TrustStore) -> None:
    try:
        signature = base64.b64decode(record.signature, validate=True)
    except (ValueError, binascii.Error):
        raise StateError(f"{record.label}: signature is not base64") from None
    try:
        store.verify(record.key_id, signed_bytes(record), signature)
    except signing.UnknownKey:
        raise StateError(
            f"{record.label}: signed by key {record.key_id}, which is not in the trust store "
            f"{store.source}"
        ) from None
    except signing.SignatureMismatch:
        raise StateError(
            f"{record.label}: signature does not verify (the record was altered)"
        ) from None


def _target(record: StateRecord, versions: Mapping[tuple[str, int], str],
            states: dict[tuple[str, int], VersionState]) -> VersionState:
    if record.name is None or record.version is None or record.approvals_required is not None:
        raise StateError(f"{record.label}: malformed (no version, or an approvals number)")
    key = (record.name, record.version)
    listed = versions.get(key)
    if listed is None:
        raise StateError(
            f"{record.label}: {record.name} v{record.version} is not in the index (its entry "
            "was deleted)"
        )
    if record.sha256 != listed:
        raise StateError(
            f"{record.label}: signed for model sha256 {record.sha256}, the index lists "
            f"{listed}"
        )
    return states.setdefault(key, VersionState())


def _apply(record: StateRecord, state: VersionState, current: dict[str, int],
           required: int) -> None:
    where = record.label
    # _target checked both.
    assert record.name is not None
    assert record.version is not None
    if record.action is Action.APPROVE:
        if state.revoked:
            raise StateError(f"{where}: approves a revoked version")
        if state.approved:
            raise StateError(f"{where}: approves a version that is already approved")
        if any(kid == record.key_id for kid, _, _ in state.approvers):
            raise StateError(f"{where}: the same key approves twice")
        state.approvers.append((record.key_id, record.by, record.at))
        if len(state.approvers) >= required:
            state.approved = True
            state.approved_by = ", ".join(by for _, by, _ in state.approvers)
            state.approved_at = record.at
            current[record.name] = record.version
    elif record.action is Action.REVOKE:
        if state.revoked:
            raise StateError(f"{where}: revokes a version that is already revoked")
        state.revoked = True
        state.revoked_by = record.by
        state.revoked_at = record.at
        state.revoked_reason = record.reason
    elif record.action is Action.SET_CURRENT:
        if not state.approved or state.revoked:
            raise StateError(f"{where}: makes a version current that is not approved or is "
                             "revoked")
        current[record.name] = record.version
    else:  # pragma: no cover - REQUIRE_APPROVALS is handled by replay
        raise StateError(f"{where}: unexpected action")


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
