"""The model registry: signed, hashed, approvable and revocable versions of ONNX policies.

On disk (``REGISTRY`` is any folder)::

    REGISTRY/index.json                              every version, and the current pointers
    REGISTRY/.lock                                   flock()ed by every writer
    REGISTRY/trusted/*.pub                           the trust store (ed25519 public keys)
    REGISTRY/models/<name>/<version>/model.onnx      the model bytes, as registered
    REGISTRY/models/<name>/<version>/canary.json     golden inputs and the outputs recorded
    REGISTRY/models/<name>/<version>/signature       ed25519 signature of the statement

``index.json``::

    {"format": 2,
     "current": {"<name>": <version>, ...},
     "versions": [{"name", "version", "sha256", "canary_sha256", "created_at", "key_id",
                   "signature", "approved", "approved_by", "approved_at",
                   "revoked", "revoked_by", "revoked_at", "revoked_reason"}, ...],
     "state": [<signed state record>, ...]}

``signature`` (JSON): ``{"format": 1, "algorithm": "ed25519", "key_id", "signature"}``, the
signature in base64 (the index keeps a copy). What is signed is the *statement*, the canonical
JSON (sorted keys, no spaces, ASCII) of ``{"context": STATEMENT_CONTEXT, "name", "version",
"sha256", "canary_sha256", "created_at"}``: it binds the model bytes, the canary file (which
holds the normalisation the outputs were recorded with) and the version's identity.

``canary.json``: ``{"format": 1, "name", "version", "model_sha256", "settings": {"inputs",
"outputs", "input_offset", "input_scale", "output_offset", "output_scale"}, "inputs": [[...]],
"outputs": [[...]]}``; rows in engineering units, outputs as the gateway computes them
(:meth:`OnnxPolicy.infer_sync`: the configured normalisation, onnxruntime on one thread,
deterministic compute), float64 written so that they read back bit-exact.

Approval, revocation and the ``current`` pointer are *signed state*: each change is a record
signed by an approver's key from the trust store, chained to the one before
(:mod:`gateway.registry.state`). The ``approved*``, ``revoked*`` and ``current`` fields of the
index are a cache that every read checks against what the records establish: a hand-edited
index, or a changed, deleted, reordered or replayed record, is refused with
:class:`StateTampered` naming what disagrees. An index of format 1 (no signed state, written by
earlier versions) is refused with :class:`StateUnsigned` until an operator reviews it and signs
its state with :meth:`Registry.reseal` (``safety-gateway model reseal``). Whoever may write the
folder can still delete it or put an older copy back; a verifier given a *witness* file (the
last head it accepted) refuses an older copy too. The trust store is what decides whose
signatures count: protect ``REGISTRY/trusted`` from writes by anyone but the registry's owner.

Writers take an exclusive ``flock`` on ``REGISTRY/.lock`` and replace ``index.json``
atomically (temporary file, fsync, ``os.replace``, fsync of the folder), so concurrent CLI
invocations serialise and readers always see a whole index.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from cryptography.hazmat.primitives import serialization

from gateway.control.onnx_policy import ModelError, OnnxPolicyConfig, load_policy
from gateway.registry import signing, state
from gateway.supervisor.detectors import CanaryCases

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy.typing as npt

    from gateway.config.schema import ControllerSpec

__all__ = [
    "INDEX_FORMAT",
    "STATEMENT_CONTEXT",
    "BadSignature",
    "CanaryTampered",
    "ModelNotApproved",
    "ModelRefused",
    "ModelRevoked",
    "ModelTampered",
    "ModelUnsigned",
    "NoCurrentVersion",
    "NoRollbackTarget",
    "PolicySettings",
    "Registry",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryInputError",
    "RegistryNotFound",
    "RegistryStateError",
    "StateTampered",
    "StateUnsigned",
    "UnknownVersion",
    "UntrustedKey",
    "VerifiedModel",
    "Version",
    "statement_bytes",
]

INDEX_FORMAT: Final = 2
LEGACY_INDEX_FORMAT: Final = 1
WITNESS_FORMAT: Final = 1
CANARY_FORMAT: Final = 1
SIGNATURE_FORMAT: Final = 1
STATEMENT_CONTEXT: Final = "safety-gateway model registry statement v1"

MODEL_FILE: Final = "model.onnx"
CANARY_FILE: Final = "canary.json"
SIGNATURE_FILE: Final = "signature"
INDEX_FILE: Final = "index.json"
LOCK_FILE: Final = ".lock"
TRUSTED_DIR: Final = "trusted"
MODELS_DIR: Final = "models"

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
# protobuf's limit for one message, as in onnx_policy: no larger file can be a loadable model.
_MAX_MODEL_BYTES: Final = 2**31 - 1
_MAX_SMALL_FILE_BYTES: Final = 64 * 1024 * 1024
# Only for the registration run: infer_sync ignores the deadline, but the config requires one.
_REGISTRATION_DEADLINE_MS: Final = 60_000.0
DEFAULT_CANARY_TOLERANCE: Final = 1e-4


# --------------------------------------------------------------------------------------------
# Errors


class RegistryError(Exception):
    """Base of every error the registry raises."""


class RegistryInputError(RegistryError):
    """The request cannot be carried out as given: a bad name, missing file, bad canary rows,
    an unusable model or key file. (CLI exit code 2.)"""


class RegistryNotFound(RegistryInputError):
    """No registry folder at the path."""


class RegistryCorrupt(RegistryInputError):
    """``index.json`` (or a file it vouches for) is unreadable or malformed."""


class UnknownVersion(RegistryInputError):
    """The name, or the version of that name, is not in the index."""


class RegistryStateError(RegistryError):
    """The request conflicts with a version's state (approving a revoked version, revoking
    twice). (CLI exit code 1.)"""


class NoRollbackTarget(RegistryStateError):
    """No approved, unrevoked version before the current one to roll back to."""


class ModelRefused(RegistryError):
    """:meth:`Registry.load_verified` refuses the version; the gateway must not run it.

    Every subclass names the version and the precise reason. (CLI exit code 1.)
    """


class ModelUnsigned(ModelRefused):
    """The version has no signature file."""


class BadSignature(ModelRefused):
    """The signature file is malformed, disagrees with the index, or does not verify."""


class UntrustedKey(ModelRefused):
    """The signing key is not in the trust store."""


class ModelTampered(ModelRefused):
    """The model file is missing or its bytes do not hash to the signed sha256."""


class CanaryTampered(ModelRefused):
    """The canary file is missing, does not hash to the signed sha256, or is malformed."""


class ModelRevoked(ModelRefused):
    """The version was revoked."""


class ModelNotApproved(ModelRefused):
    """The version was not approved and approval is required."""


class NoCurrentVersion(ModelRefused):
    """No version was asked for and the name has no current version."""


class StateTampered(ModelRefused):
    """The registry's signed state does not hold: a record is not signed by a trusted key, out
    of place or breaks a rule, or the index's state fields disagree with the records, or the
    state is older than the witness saw. Nothing in the registry is loaded until it is
    repaired (restored from a backup)."""


class StateUnsigned(ModelRefused):
    """The index has no signed state (format 1): its approvals are not trusted until an
    operator reviews them and signs them with ``safety-gateway model reseal``."""


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """What the model reads and writes and how values are normalised, as in
    :class:`~gateway.control.onnx_policy.OnnxPolicyConfig` (same meaning, same units).

    Empty offsets/scales mean identity (offset 0, scale 1 per tag), as in the site file. Raises
    ``ValueError`` naming the field for anything ``OnnxPolicyConfig`` would refuse.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_offset: tuple[float, ...] = ()
    input_scale: tuple[float, ...] = ()
    output_offset: tuple[float, ...] = ()
    output_scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n_in = len(self.inputs) if isinstance(self.inputs, tuple) else 0
        n_out = len(self.outputs) if isinstance(self.outputs, tuple) else 0
        for name, size, fill in (
            ("input_offset", n_in, 0.0),
            ("input_scale", n_in, 1.0),
            ("output_offset", n_out, 0.0),
            ("output_scale", n_out, 1.0),
        ):
            values = getattr(self, name)
            if isinstance(values, tuple) and len(values) == 0:
                object.__setattr__(self, name, (fill,) * size)
            elif isinstance(values, tuple):
                object.__setattr__(
                    self,
                    name,
                    tuple(
                        float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                        for v in values
                    ),
                )
        # OnnxPolicyConfig owns the rules; a placeholder path and hash let it check the rest.
        self.policy_config(Path("-"), "0" * 64, _REGISTRATION_DEADLINE_MS)

    @classmethod
    def from_controller(cls, spec: ControllerSpec) -> PolicySettings:
        """The settings of a site's ``controller`` section."""
        return cls(
            inputs=spec.inputs,
            outputs=spec.outputs,
            input_offset=spec.input_offset,
            input_scale=spec.input_scale,
            output_offset=spec.output_offset,
            output_scale=spec.output_scale,
        )

    def policy_config(self, model_path: Path, sha256: str, deadline_ms: float) -> OnnxPolicyConfig:
        """An :class:`OnnxPolicyConfig` for these settings; ``ValueError`` as it raises."""
        return OnnxPolicyConfig(
            model_path=model_path,
            sha256=sha256,
            inputs=self.inputs,
            outputs=self.outputs,
            input_offset=self.input_offset,
            input_scale=self.input_scale,
            output_offset=self.output_offset,
            output_scale=self.output_scale,
            deadline_ms=deadline_ms,
        )

    def to_json(self) -> dict[str, list[Any]]:
        return {key: list(value) for key, value in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Version:
    """One registered version, as the index records it.

    ``created_at``, ``approved_at`` and ``revoked_at`` are ISO 8601 UTC timestamps.
    ``signature`` is base64. ``current`` is whether the index's current pointer for ``name``
    designates this version (not stored in the entry itself).
    """

    name: str
    version: int
    sha256: str
    canary_sha256: str
    created_at: str
    key_id: str
    signature: str
    approved: bool = False
    approved_by: str | None = None
    approved_at: str | None = None
    revoked: bool = False
    revoked_by: str | None = None
    revoked_at: str | None = None
    revoked_reason: str | None = None
    current: bool = field(default=False, compare=False)

    @property
    def label(self) -> str:
        """``name v<version>``, for messages."""
        return f"{self.name} v{self.version}"

    def to_json(self) -> dict[str, Any]:
        """The index entry (``current`` included; the index itself does not store it)."""
        return asdict(self)


@dataclass(frozen=True, slots=True, eq=False)
class VerifiedModel:
    """A version that passed every check of :meth:`Registry.load_verified`.

    ``data`` holds exactly the bytes whose sha256 was checked against the signed statement;
    ``sha256`` is their hash. ``path`` is the model file in the registry: to load it, pin
    ``sha256`` (``policy_config``), so that :func:`load_policy` refuses the file if it changed
    since. ``canary`` holds the golden cases for the supervisor's canary detector, outputs in
    engineering units; ``settings`` the normalisation they were recorded with, which must match
    the site's controller settings for the canary comparison to mean anything.
    """

    version: Version
    path: Path
    sha256: str
    data: bytes = field(repr=False)
    canary: CanaryCases
    settings: PolicySettings

    def policy_config(self, deadline_ms: float) -> OnnxPolicyConfig:
        """An :class:`OnnxPolicyConfig` for this model with the hash pinned."""
        return self.settings.policy_config(self.path, self.sha256, deadline_ms)


def statement_bytes(
    name: str, version: int, sha256: str, canary_sha256: str, created_at: str
) -> bytes:
    """The canonical statement a version's signature covers (see the module docstring)."""
    statement = {
        "context": STATEMENT_CONTEXT,
        "name": name,
        "version": version,
        "sha256": sha256,
        "canary_sha256": canary_sha256,
        "created_at": created_at,
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# The registry


class Registry:
    """A registry folder (see the module docstring for the layout).

    ``trusted_dir`` overrides the trust store's folder (default ``REGISTRY/trusted``).
    ``now`` returns the current time as an aware datetime; it stamps ``created_at``,
    ``approved_at`` and ``revoked_at``. ``witness`` is a file, outside the registry and
    writable by this verifier only, where :meth:`load_verified` remembers the last signed state
    it accepted and refuses an older one (see :class:`StateTampered`); ``None`` checks no
    history.

    Constructing a ``Registry`` touches nothing on disk; :meth:`register` creates the folder
    layout on first use. Other methods raise :class:`RegistryNotFound` if the folder does not
    exist; a folder without ``index.json`` is an empty registry.
    """

    def __init__(
        self,
        path: Path,
        *,
        trusted_dir: Path | None = None,
        now: Callable[[], datetime] = _utc_now,
        witness: Path | None = None,
    ) -> None:
        self.path: Final = Path(path)
        self.trusted_dir: Final = (
            Path(trusted_dir) if trusted_dir is not None else self.path / TRUSTED_DIR
        )
        self.witness: Final = Path(witness) if witness is not None else None
        self._now = now

    # -- reading ------------------------------------------------------------------------------

    def list(self, name: str | None = None) -> tuple[Version, ...]:
        """Every version (of ``name`` only, if given), sorted by name then version.

        An unknown ``name`` gives an empty tuple. Raises :class:`RegistryNotFound`,
        :class:`RegistryCorrupt` or :class:`StateTampered`. A legacy index (no signed state,
        see :meth:`is_sealed`) is listed as it stands, so that an operator can review it
        before :meth:`reseal`.
        """
        index = self._read_index()
        return tuple(
            v for v in sorted(index.versions(), key=lambda v: (v.name, v.version))
            if name is None or v.name == name
        )

    def get(self, name: str, version: int | None = None) -> Version:
        """One version; ``None`` means the current one.

        Raises :class:`UnknownVersion` if there is no such name or version and
        :class:`NoCurrentVersion` if ``version`` is ``None`` and ``name`` has no current one;
        :class:`StateTampered` as :meth:`list`.
        """
        return self._read_index().find(name, version)

    def is_sealed(self) -> bool:
        """Whether the index's state is signed (format 2). A legacy (format 1) index is not:
        it must be reviewed and resealed before anything is approved, revoked or loaded.
        Raises as :meth:`list`."""
        return not self._read_index().legacy

    def approvals_required(self) -> int:
        """How many distinct approver keys an approval needs (1 unless raised)."""
        return self._read_index().approvals_required

    def trust_store(self) -> signing.TrustStore:
        """The trust store; :class:`RegistryCorrupt` if a key file in it is damaged."""
        try:
            return signing.TrustStore.load(self.trusted_dir)
        except signing.KeyFileError as exc:
            raise RegistryCorrupt(f"trust store: {exc}") from exc

    def trust_key(self, public_key_file: Path) -> str:
        """Copy a public key into the trust store (as ``<key id>.pub``); return its key id.

        Raises :class:`RegistryInputError` if the file is not an ed25519 public key.
        """
        try:
            key = signing.load_public_key(public_key_file)
        except signing.KeyFileError as exc:
            raise RegistryInputError(str(exc)) from exc
        kid = signing.key_id(key)
        # Written from the parsed key, not copied: the file could change after it was read.
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            self.trusted_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.trusted_dir / f"{kid}.pub", pem)
        except OSError as exc:
            raise RegistryError(f"{self.trusted_dir}: cannot add the key ({exc})") from exc
        return kid

    def load_verified(
        self,
        name: str,
        version: int | None = None,
        *,
        require_approval: bool = True,
        canary_tolerance: float = DEFAULT_CANARY_TOLERANCE,
    ) -> VerifiedModel:
        """Check a version thoroughly and return what the gateway needs to run it.

        ``version`` ``None`` means the current version. Checks, in order: the version exists
        (:class:`UnknownVersion`, :class:`NoCurrentVersion`); not revoked
        (:class:`ModelRevoked`); approved, if ``require_approval`` (:class:`ModelNotApproved`).
        Before these, the registry's state must be signed (:class:`StateUnsigned`), hold
        (:class:`StateTampered`: signatures, chain, the index's fields agree with the records)
        and, with a witness, be no older than the last state this verifier accepted
        (:class:`StateTampered`; the witness then moves to the new head). Then:
        a signature file exists (:class:`ModelUnsigned`), is well-formed and agrees with the
        index (:class:`BadSignature`); its key is trusted (:class:`UntrustedKey`); the signature
        verifies over the statement built from the index entry (:class:`BadSignature`); the
        model file's bytes hash to the signed sha256 (:class:`ModelTampered`); the canary file's
        bytes hash to the signed canary sha256 and parse (:class:`CanaryTampered`).

        Each file is read once and the checked bytes are what is returned (``data``) or parsed
        (the canary), so nothing can change between check and use. ``canary_tolerance`` (same
        units as the outputs) goes into the returned :class:`CanaryCases`.
        """
        if not (math.isfinite(canary_tolerance) and canary_tolerance >= 0):
            raise RegistryInputError(
                f"`canary_tolerance` must be finite and >= 0, got {canary_tolerance!r}"
            )
        index = self._read_index()
        _require_sealed(index, self.path)
        if self.witness is not None:
            self._check_witness(index)
        entry = index.find(name, version)
        if entry.revoked:
            raise ModelRevoked(
                f"{entry.label} is revoked (by {entry.revoked_by} at {entry.revoked_at}: "
                f"{entry.revoked_reason})"
            )
        if require_approval and not entry.approved:
            raise ModelNotApproved(f"{entry.label} is not approved; approval is required")
        return self._verify(entry, canary_tolerance)

    # -- writing ------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model_path: Path,
        canary_inputs: npt.ArrayLike,
        settings: PolicySettings,
        signer: signing.Signer,
    ) -> Version:
        """Add a new version of ``name``: copy the model in, record its canary, sign both.

        ``canary_inputs`` holds golden input rows, shape ``(n_cases, len(settings.inputs))``,
        engineering units, finite. The model is loaded from the registry's copy with
        :func:`load_policy` (so it must be a policy these settings can run) and each row is run
        through :meth:`OnnxPolicy.infer_sync`; the outputs become the canary's expected values.
        The new version is neither approved nor current. Its number is one more than the
        highest ever used for ``name``. ``signer`` is the decrypted signing key
        (:func:`signing.load_private_key`).

        Raises :class:`RegistryInputError` for a bad name, unreadable model file, malformed
        canary rows, a model these settings cannot load, or a canary row on which the model
        gives no finite output; :class:`StateUnsigned` on a legacy index (reseal it first).
        """
        _check_name(name)
        rows = _canary_rows(canary_inputs, len(settings.inputs))
        kid = signer.key_id
        data = _read_model(model_path)
        sha = hashlib.sha256(data).hexdigest()

        name_dir = self.path / MODELS_DIR / name
        with _io_errors(f"{self.path}: cannot write the new version of {name}"):
            name_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=name_dir))
        try:
            staged_model = staging / MODEL_FILE
            with _io_errors(f"{staged_model}: cannot write the model copy"):
                _write_file(staged_model, data)
            # Run outside the lock: it is the slow part, and depends on nothing in the index.
            outputs = _record_canary(staged_model, sha, settings, rows)
            failure = f"{self.path}: cannot write the new version"
            with self._locked(create=True), _io_errors(failure):
                index = self._read_index(missing_ok=True)
                _require_sealed(index, self.path)
                number = max(index.highest(name), _highest_dir(name_dir)) + 1
                created_at = _timestamp(self._now())
                canary = _canary_json(name, number, sha, settings, rows, outputs)
                _write_file(staging / CANARY_FILE, canary)
                canary_sha = hashlib.sha256(canary).hexdigest()
                statement = statement_bytes(name, number, sha, canary_sha, created_at)
                signature = base64.b64encode(signer.sign(statement)).decode()
                _write_file(staging / SIGNATURE_FILE, _signature_json(kid, signature))
                # mkdtemp made it 0700; the gateway may run as another user than the registrar.
                os.chmod(staging, 0o755)
                _fsync_dir(staging)
                final = name_dir / str(number)
                os.rename(staging, final)
                _fsync_dir(name_dir)
                entry = Version(
                    name=name,
                    version=number,
                    sha256=sha,
                    canary_sha256=canary_sha,
                    created_at=created_at,
                    key_id=kid,
                    signature=signature,
                )
                index.add(entry)
                self._write_index(index)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return entry

    def approve(self, name: str, version: int, who: str, signer: signing.Signer) -> Version:
        """Approve ``version`` of ``name`` with ``signer``'s key; once it has the approvals
        the registry requires (:meth:`approvals_required`, from distinct keys), it is approved
        and becomes the current version.

        The version is verified first (signature, trust, hashes: as :meth:`load_verified`, less
        the approval check), so a tampered model cannot be approved. Approving an approved
        version keeps its approval record and makes it current again (a signed
        ``set_current``). The returned version says whether it is now approved; if not, it
        still waits for another approver.

        Raises :class:`UnknownVersion`; :class:`RegistryStateError` if it is revoked or this
        key has already approved it; :class:`UntrustedKey` if ``signer`` is not in the trust
        store; a :class:`ModelRefused` subclass if it fails verification or the registry's
        state does not hold; :class:`RegistryInputError` for an empty ``who``.
        """
        _check_who(who)
        with self._locked():
            index = self._read_index()
            _require_sealed(index, self.path)
            entry = index.find(name, version)
            if entry.revoked:
                raise RegistryStateError(f"{entry.label} is revoked and cannot be approved")
            self._verify(entry, DEFAULT_CANARY_TOLERANCE)
            if entry.approved:
                action = state.Action.SET_CURRENT
            else:
                action = state.Action.APPROVE
                approvers = index.derived.of(name, version).approvers
                if any(kid == signer.key_id for kid, _, _ in approvers):
                    raise RegistryStateError(
                        f"{entry.label}: key {signer.key_id} has already approved it; the "
                        f"registry requires {index.approvals_required} approvals by distinct "
                        "keys, so a second approver must sign with their own key"
                    )
            self._append(index, action, signer, who, name=name, version=version,
                         sha256=entry.sha256)
            self._write_index(index)
        return index.find(name, version)

    def revoke(
        self, name: str, version: int, who: str, reason: str, signer: signing.Signer
    ) -> Version:
        """Revoke a version with ``signer``'s key: it will be refused at load, whatever its
        approval.

        The current pointer is left alone: if it designates the revoked version, loading the
        current version is refused (the gateway runs on fallback) until an operator approves
        another version or rolls back. One trusted key suffices, whatever the approval rule:
        taking a model out of service must never wait for a second person. Raises
        :class:`UnknownVersion`, :class:`RegistryStateError` if already revoked,
        :class:`UntrustedKey`, :class:`RegistryInputError` for an empty ``who`` or ``reason``.
        """
        _check_who(who)
        if not isinstance(reason, str) or not reason.strip():
            raise RegistryInputError("a revocation needs a reason")
        with self._locked():
            index = self._read_index()
            _require_sealed(index, self.path)
            entry = index.find(name, version)
            if entry.revoked:
                raise RegistryStateError(
                    f"{entry.label} is already revoked (by {entry.revoked_by} at "
                    f"{entry.revoked_at})"
                )
            self._append(index, state.Action.REVOKE, signer, who, name=name, version=version,
                         sha256=entry.sha256, reason=reason)
            self._write_index(index)
        return index.find(name, version)

    def rollback(self, name: str, who: str, signer: signing.Signer) -> Version:
        """Make the last known-good version current (a ``set_current`` record signed by
        ``signer``) and return it.

        The target is the highest-numbered version below the current one that is approved and
        not revoked. It is verified before the pointer moves; if it fails, the error says so
        (revoke it, and roll back again to go further back).

        Raises :class:`UnknownVersion` for an unknown name, :class:`NoRollbackTarget` if there
        is no current version or no such earlier version, a :class:`ModelRefused` subclass if
        the target fails verification, :class:`UntrustedKey`.
        """
        _check_who(who)
        with self._locked():
            index = self._read_index()
            _require_sealed(index, self.path)
            versions = [v for v in index.versions() if v.name == name]
            if not versions:
                raise UnknownVersion(f"no model named {name!r} in {self.path}")
            current = index.current.get(name)
            if current is None:
                raise NoRollbackTarget(
                    f"{name} has no current version to roll back from; approve one instead"
                )
            candidates = [
                v for v in versions if v.version < current and v.approved and not v.revoked
            ]
            if not candidates:
                raise NoRollbackTarget(
                    f"{name}: no approved, unrevoked version before the current v{current}"
                )
            target = max(candidates, key=lambda v: v.version)
            try:
                self._verify(target, DEFAULT_CANARY_TOLERANCE)
            except ModelRefused as exc:
                raise type(exc)(
                    f"rollback target {target.label} fails verification: {exc}; revoke it "
                    "and roll back again"
                ) from exc
            self._append(index, state.Action.SET_CURRENT, signer, who, name=name,
                         version=target.version, sha256=target.sha256, reason="rollback")
            self._write_index(index)
        return index.find(name, target.version)

    def require_approvals(self, count: int, who: str, signer: signing.Signer) -> None:
        """From now on, an approval needs ``count`` (1 or 2) distinct approver keys (IEC
        62443-3-3 SR 2.1 RE 4, dual approval). Signed; it can only be raised (a stolen key
        must not be able to lower it). Versions approved before keep their approval.

        Raises :class:`RegistryStateError` if ``count`` is lower than the current rule,
        :class:`RegistryInputError` if it is not 1 or 2, :class:`UntrustedKey`.
        """
        _check_who(who)
        if isinstance(count, bool) or count not in range(1, state.MAX_APPROVALS_REQUIRED + 1):
            raise RegistryInputError(
                f"approvals required must be 1 to {state.MAX_APPROVALS_REQUIRED}, got {count!r}"
            )
        with self._locked():
            index = self._read_index()
            _require_sealed(index, self.path)
            if count < index.approvals_required:
                raise RegistryStateError(
                    f"{index.approvals_required} approvals are required; the rule can only be "
                    "raised"
                )
            if count == index.approvals_required:
                return
            self._append(index, state.Action.REQUIRE_APPROVALS, signer, who,
                         approvals_required=count)
            self._write_index(index)

    def reseal(self, who: str, signer: signing.Signer) -> tuple[Version, ...]:
        """Sign the state of a legacy (format 1) index as it stands, after an operator has
        reviewed it (``model list``): one signed record per approval, revocation and current
        pointer, by ``signer``, keeping each approval's and revocation's recorded name and
        time (the reseal is noted in each record's ``reason``). Returns the versions as now
        signed.

        Every approved, revoked or current version must verify (signature, trust, hashes)
        first: a reseal never vouches for a tampered model. Approvals are replayed in the order
        of their times, so each makes its version current as ``approve`` does; then the legacy
        current pointers that designate an approved, unrevoked version are set; a pointer to an
        unapproved version is not carried over (it could not load anyway).

        Raises :class:`RegistryStateError` if the index is already sealed,
        :class:`UntrustedKey`, a :class:`ModelRefused` subclass for a version that fails
        verification.
        """
        _check_who(who)
        with self._locked():
            index = self._read_index()
            if not index.legacy:
                raise RegistryStateError(
                    f"{self.path}: the registry's state is already signed; nothing to reseal"
                )
            legacy = index.versions()
            for entry in legacy:
                if entry.approved or entry.revoked or entry.current:
                    self._verify(entry, DEFAULT_CANARY_TOLERANCE)
            sealed = _Index(dict(index.entries), {}, [], legacy=False)
            sealed.derived = state.replay([], self.trust_store(), {})
            note = f"resealed by {who} at {_timestamp(self._now())} from a legacy index"
            ordered = sorted(legacy, key=lambda v: (v.approved_at or "", v.name, v.version))
            for entry in ordered:
                if entry.approved:
                    self._append(sealed, state.Action.APPROVE, signer,
                                 entry.approved_by or who, name=entry.name,
                                 version=entry.version, sha256=entry.sha256, reason=note,
                                 at=entry.approved_at)
            for entry in legacy:
                if entry.current and entry.approved and not entry.revoked:
                    self._append(sealed, state.Action.SET_CURRENT, signer, who,
                                 name=entry.name, version=entry.version, sha256=entry.sha256,
                                 reason=note)
            for entry in legacy:
                if entry.revoked:
                    self._append(sealed, state.Action.REVOKE, signer, entry.revoked_by or who,
                                 name=entry.name, version=entry.version, sha256=entry.sha256,
                                 reason=f"{entry.revoked_reason} ({note})",
                                 at=entry.revoked_at)
            self._write_index(sealed)
        return tuple(sorted(sealed.versions(), key=lambda v: (v.name, v.version)))

    # -- internals ----------------------------------------------------------------------------

    def _append(
        self,
        index: _Index,
        action: state.Action,
        signer: signing.Signer,
        who: str,
        *,
        name: str | None = None,
        version: int | None = None,
        sha256: str | None = None,
        reason: str | None = None,
        approvals_required: int | None = None,
        at: str | None = None,
    ) -> None:
        """Sign a record, chain it after the index's, replay the whole chain and bring the
        index's state fields in line with it. The index is changed only in memory."""
        store = self.trust_store()
        if signer.key_id not in store:
            raise UntrustedKey(
                f"key {signer.key_id} ({signer.source}) is not in the trust store "
                f"{self.trusted_dir}; only a trusted approver's key can change the state"
            )
        record = state.make_record(
            index.records, action, signer, at=at or _timestamp(self._now()), by=who,
            name=name, version=version, sha256=sha256, reason=reason,
            approvals_required=approvals_required,
        )
        records = [*index.records, record]
        try:
            derived = state.replay(records, store, index.sha256s())
        except state.StateError as exc:
            raise RegistryStateError(f"{self.path}: {exc}") from exc
        index.records = records
        index.apply(derived)

    def _check_witness(self, index: _Index) -> None:
        """Refuse a state older than the witness saw; then move the witness to this head."""
        assert self.witness is not None
        seen_seq, seen_sha = _read_witness(self.witness)
        try:
            state.check_witness(index.derived, index.records, seen_seq, seen_sha)
        except state.StateError as exc:
            raise StateTampered(
                f"{self.path}: {exc} (witness {self.witness}; if you restored an older copy "
                "on purpose, after review, delete the witness file)"
            ) from exc
        if index.derived.head_seq > seen_seq:
            document = {
                "format": WITNESS_FORMAT,
                "registry": str(self.path),
                "seq": index.derived.head_seq,
                "sha256": index.derived.head_sha256,
            }
            with _io_errors(f"{self.witness}: cannot write the witness"):
                self.witness.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.witness, (json.dumps(document, indent=1) + "\n").encode())
    def _version_dir(self, entry: Version) -> Path:
        return self.path / MODELS_DIR / entry.name / str(entry.version)

    def _verify(self, entry: Version, canary_tolerance: float) -> VerifiedModel:
        """Signature, trust and hash checks of :meth:`load_verified` (not state checks)."""
        folder = self._version_dir(entry)
        self._check_signature(entry, folder / SIGNATURE_FILE)

        model_path = folder / MODEL_FILE
        data, actual = _read_signed(model_path, _MAX_MODEL_BYTES, entry.sha256, entry.label,
                                    "model", ModelTampered)
        canary_path = folder / CANARY_FILE
        canary_data, _ = _read_signed(canary_path, _MAX_SMALL_FILE_BYTES, entry.canary_sha256,
                                      entry.label, "canary", CanaryTampered)
        try:
            settings, cases = _parse_canary(canary_data, entry, canary_tolerance)
        except ValueError as exc:
            raise CanaryTampered(f"{entry.label}: canary file {canary_path}: {exc}") from exc
        return VerifiedModel(
            version=entry,
            path=model_path,
            sha256=actual,
            data=data,
            canary=cases,
            settings=settings,
        )

    def _check_signature(self, entry: Version, path: Path) -> None:
        """Check the signature file against the index entry and the trust store."""
        try:
            raw = _read_regular(path, _MAX_SMALL_FILE_BYTES)
        except FileNotFoundError:
            raise ModelUnsigned(f"{entry.label} is unsigned: no signature file {path}") from None
        except OSError as exc:
            raise BadSignature(f"{entry.label}: signature file unreadable ({exc})") from exc
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.get("format") != SIGNATURE_FORMAT:
                raise ValueError(f"not a format-{SIGNATURE_FORMAT} signature document")
            if document.get("algorithm") != "ed25519":
                raise ValueError(f"algorithm {document.get('algorithm')!r}, expected 'ed25519'")
            kid = document.get("key_id")
            encoded = document.get("signature")
            if not isinstance(kid, str) or not isinstance(encoded, str):
                raise ValueError("`key_id` and `signature` must be strings")
            signature = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise BadSignature(f"{entry.label}: malformed signature file {path} ({exc})") from exc
        if kid != entry.key_id or encoded != entry.signature:
            raise BadSignature(
                f"{entry.label}: signature file {path} disagrees with the index "
                f"(key {kid} vs {entry.key_id})"
            )
        statement = statement_bytes(
            entry.name, entry.version, entry.sha256, entry.canary_sha256, entry.created_at
        )
        store = self.trust_store()
        try:
            store.verify(kid, statement, signature)
        except signing.UnknownKey as exc:
            raise UntrustedKey(
                f"{entry.label} is signed by key {kid}, which is not trusted "
                f"(trust store {self.trusted_dir} holds {list(store.key_ids) or 'no keys'})"
            ) from exc
        except signing.SignatureMismatch as exc:
            raise BadSignature(
                f"{entry.label}: signature does not verify against trusted key {kid} "
                "(the signature or the index entry was altered)"
            ) from exc

    @contextlib.contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the registry's exclusive write lock (flock on ``REGISTRY/.lock``).

        Only :meth:`register` creates a missing registry folder (``create``); for the others a
        mistyped path is :class:`RegistryNotFound`, not a new empty registry.
        """
        if not create and not self.path.is_dir():
            raise RegistryNotFound(f"{self.path}: no registry folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(
                self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644
            )
        except OSError as exc:
            raise RegistryInputError(f"{self.path}: cannot open the lock file ({exc})") from exc
        try:
            # Blocks until the other writer is done; released by the kernel if a writer dies.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _read_index(self, *, missing_ok: bool = False) -> _Index:
        """The parsed index; a folder without one is empty, no folder an error unless
        ``missing_ok``."""
        path = self.path / INDEX_FILE
        try:
            raw = _read_regular(path, _MAX_SMALL_FILE_BYTES)
        except FileNotFoundError:
            # A folder without an index is an empty registry (e.g. only a trust store so far).
            if missing_ok or self.path.is_dir():
                index = _Index({}, {}, [], legacy=False)
                index.derived = state.replay([], signing.TrustStore({}, "-"), {})
                return index
            raise RegistryNotFound(f"{self.path}: no registry folder") from None
        except OSError as exc:
            raise RegistryCorrupt(f"{path}: unreadable ({exc})") from exc
        try:
            index = _Index.parse(raw)
        except ValueError as exc:
            raise RegistryCorrupt(f"{path}: {exc}") from exc
        if not index.legacy:
            try:
                index.derived = state.replay(index.records, self.trust_store(), index.sha256s())
                index.check(index.derived)
            except state.StateError as exc:
                raise StateTampered(
                    f"{path}: the signed registry state does not hold: {exc}; nothing from this "
                    "registry is loaded until it is restored from a backup"
                ) from exc
        return index

    def _write_index(self, index: _Index) -> None:
        with _io_errors(f"{self.path / INDEX_FILE}: cannot write the index"):
            _write_atomic(self.path / INDEX_FILE, index.dump())


# --------------------------------------------------------------------------------------------
# The index


class _Index:
    """The parsed ``index.json``: entries by (name, version), the current pointers, and the
    signed state records (``legacy``: a format-1 index, which has none).

    ``derived`` is what the records establish, set by whoever replayed them
    (:meth:`Registry._read_index`); :meth:`check` compares the cached fields with it and
    :meth:`apply` rewrites them from it.
    """

    def __init__(
        self,
        entries: dict[tuple[str, int], Version],
        current: dict[str, int],
        records: builtins.list[state.StateRecord],
        *,
        legacy: bool,
    ) -> None:
        self.entries = entries
        self.current = current
        self.records = records
        self.legacy = legacy
        self.derived = state.DerivedState({}, {}, 1, 0, state.GENESIS)

    @property
    def approvals_required(self) -> int:
        return self.derived.approvals_required

    def sha256s(self) -> dict[tuple[str, int], str]:
        return {key: entry.sha256 for key, entry in self.entries.items()}

    def check(self, derived: state.DerivedState) -> None:
        """:class:`state.StateError` naming the first field that disagrees with ``derived``."""
        for key in sorted(self.entries):
            entry = self.entries[key]
            signed = derived.of(*key)
            for name in _STATE_FIELDS:
                cached, truth = getattr(entry, name), getattr(signed, name)
                if cached != truth:
                    raise state.StateError(
                        f"index.json says {entry.label} {name} = {cached!r}, the signed "
                        f"records say {truth!r} (the index was edited)"
                    )
        if self.current != dict(derived.current):
            raise state.StateError(
                f"index.json says current = {dict(sorted(self.current.items()))}, the signed "
                f"records say {dict(sorted(derived.current.items()))} (the index was edited)"
            )

    def apply(self, derived: state.DerivedState) -> None:
        for key, entry in self.entries.items():
            signed = derived.of(*key)
            self.entries[key] = _replace(
                entry, **{name: getattr(signed, name) for name in _STATE_FIELDS}
            )
        self.current = dict(derived.current)
        self.derived = derived

    @classmethod
    def parse(cls, raw: bytes) -> _Index:
        """Parse and validate; ``ValueError`` naming what is wrong."""
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise ValueError("must be a JSON object")
        index_format = document.get("format")
        if index_format not in (INDEX_FORMAT, LEGACY_INDEX_FORMAT):
            raise ValueError(f"`format` is {index_format!r}, expected {INDEX_FORMAT}")
        legacy = index_format == LEGACY_INDEX_FORMAT
        expected_keys = {"format", "current", "versions"} | (set() if legacy else {"state"})
        if set(document) != expected_keys:
            raise ValueError(
                f"keys {sorted(document)}, expected {sorted(expected_keys)} for format "
                f"{index_format}"
            )
        records: builtins.list[state.StateRecord] = []
        if not legacy:
            raw_records = document["state"]
            if not isinstance(raw_records, builtins.list):
                raise ValueError("`state` must be a list")
            records = [
                state.parse_record(item, f"state[{position}]")
                for position, item in enumerate(raw_records)
            ]
        raw_versions = document.get("versions")
        raw_current = document.get("current")
        if not isinstance(raw_versions, builtins.list):
            raise ValueError("`versions` must be a list")
        if not isinstance(raw_current, dict):
            raise ValueError("`current` must be an object")
        entries: dict[tuple[str, int], Version] = {}
        for position, item in enumerate(raw_versions):
            entry = _parse_entry(item, f"versions[{position}]")
            key = (entry.name, entry.version)
            if key in entries:
                raise ValueError(f"versions[{position}]: {entry.label} is listed twice")
            entries[key] = entry
        current: dict[str, int] = {}
        for name, number in raw_current.items():
            if isinstance(number, bool) or not isinstance(number, int):
                raise ValueError(f"current[{name!r}] must be a version number")
            if (name, number) not in entries:
                raise ValueError(f"current[{name!r}] = {number} is not a listed version")
            current[name] = number
        return cls(entries, current, records, legacy=legacy)

    def dump(self) -> bytes:
        versions = []
        for key in sorted(self.entries):
            item = self.entries[key].to_json()
            del item["current"]
            versions.append(item)
        document = {
            "format": INDEX_FORMAT,
            "current": dict(sorted(self.current.items())),
            "versions": versions,
            "state": [record.to_json() for record in self.records],
        }
        return (json.dumps(document, indent=2, ensure_ascii=True) + "\n").encode()

    def versions(self) -> builtins.list[Version]:
        return [
            _replace(entry, current=self.current.get(entry.name) == entry.version)
            for entry in self.entries.values()
        ]

    def highest(self, name: str) -> int:
        return max((number for (n, number) in self.entries if n == name), default=0)

    def add(self, entry: Version) -> None:
        self.entries[(entry.name, entry.version)] = _replace(entry, current=False)

    def find(self, name: str, version: int | None) -> Version:
        if not any(n == name for (n, _) in self.entries):
            raise UnknownVersion(f"no model named {name!r} in the registry")
        if version is None:
            number = self.current.get(name)
            if number is None:
                raise NoCurrentVersion(f"{name} has no current version; approve one first")
            version = number
        entry = self.entries.get((name, version))
        if entry is None:
            known = sorted(number for (n, number) in self.entries if n == name)
            raise UnknownVersion(f"{name} has no version {version} (versions: {known})")
        return _replace(entry, current=self.current.get(name) == version)


_STATE_FIELDS: Final = (
    "approved",
    "approved_by",
    "approved_at",
    "revoked",
    "revoked_by",
    "revoked_at",
    "revoked_reason",
)
_ENTRY_STR: Final = ("name", "sha256", "canary_sha256", "created_at", "key_id", "signature")
_ENTRY_OPTIONAL_STR: Final = (
    "approved_by",
    "approved_at",
    "revoked_by",
    "revoked_at",
    "revoked_reason",
)


def _parse_entry(item: object, where: str) -> Version:
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")
    expected = set(_ENTRY_STR) | set(_ENTRY_OPTIONAL_STR) | {"version", "approved", "revoked"}
    unknown = sorted(set(item) - expected)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    for key in _ENTRY_STR:
        if not isinstance(item.get(key), str):
            raise ValueError(f"{where}.{key} must be a string")
    for key in _ENTRY_OPTIONAL_STR:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise ValueError(f"{where}.{key} must be a string or null")
    for key in ("approved", "revoked"):
        if not isinstance(item.get(key), bool):
            raise ValueError(f"{where}.{key} must be true or false")
    number = item.get("version")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"{where}.version must be an integer >= 1")
    if _NAME.fullmatch(item["name"]) is None:
        raise ValueError(f"{where}.name {item['name']!r} is not a valid model name")
    for key in ("sha256", "canary_sha256"):
        if _SHA256_HEX.fullmatch(item[key]) is None:
            raise ValueError(f"{where}.{key} must be 64 lowercase hex digits")
    return Version(**item)


# --------------------------------------------------------------------------------------------
# Canary and signature documents


def _canary_rows(values: npt.ArrayLike, width: int) -> npt.NDArray[np.float64]:
    try:
        rows = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RegistryInputError(f"canary inputs are not a table of numbers ({exc})") from exc
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != width:
        raise RegistryInputError(
            f"canary inputs must have shape (n >= 1, {width}) for {width} input tags, "
            f"got {rows.shape}"
        )
    if not np.isfinite(rows).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(rows))[:, 0]})
        raise RegistryInputError(f"canary input rows {bad} hold NaN or infinite values")
    return rows


def _record_canary(
    model_path: Path, sha256: str, settings: PolicySettings, rows: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Run each row through the policy as the gateway would; the outputs, one row each."""
    config = settings.policy_config(model_path, sha256, _REGISTRATION_DEADLINE_MS)
    try:
        policy = load_policy(config)
    except ModelError as exc:
        raise RegistryInputError(f"the model cannot run with these settings: {exc}") from exc
    outputs = np.empty((rows.shape[0], len(settings.outputs)), dtype=np.float64)
    with policy:
        for index, row in enumerate(rows):
            inference = policy.infer_sync(np.ascontiguousarray(row))
            if inference.outputs is None:
                raise RegistryInputError(
                    f"canary row {index}: the model gives no output "
                    f"({inference.anomaly}: {inference.detail})"
                )
            outputs[index] = inference.outputs
    return outputs


def _canary_json(
    name: str,
    version: int,
    sha256: str,
    settings: PolicySettings,
    rows: npt.NDArray[np.float64],
    outputs: npt.NDArray[np.float64],
) -> bytes:
    # json writes floats with repr(), the shortest text that reads back to the same float64.
    document = {
        "format": CANARY_FORMAT,
        "name": name,
        "version": version,
        "model_sha256": sha256,
        "settings": settings.to_json(),
        "inputs": rows.tolist(),
        "outputs": outputs.tolist(),
    }
    return (json.dumps(document, indent=1, allow_nan=False) + "\n").encode()


def _parse_canary(
    raw: bytes, entry: Version, tolerance: float
) -> tuple[PolicySettings, CanaryCases]:
    """Parse a canary file whose hash was verified; ``ValueError`` if it makes no sense."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != CANARY_FORMAT:
        raise ValueError(f"not a format-{CANARY_FORMAT} canary document")
    if (
        document.get("name") != entry.name
        or document.get("version") != entry.version
        or document.get("model_sha256") != entry.sha256
    ):
        raise ValueError("names a different model version")
    raw_settings = document.get("settings")
    if not isinstance(raw_settings, dict):
        raise ValueError("`settings` must be an object")
    try:
        settings = PolicySettings(**{
            key: tuple(value) if isinstance(value, builtins.list) else value
            for key, value in raw_settings.items()
        })
    except TypeError as exc:
        raise ValueError(f"bad `settings` ({exc})") from exc
    inputs = np.array(document.get("inputs"), dtype=np.float64)
    outputs = np.array(document.get("outputs"), dtype=np.float64)
    if inputs.ndim != 2 or inputs.shape[1] != len(settings.inputs):
        raise ValueError(f"`inputs` has shape {inputs.shape}")
    if outputs.shape != (inputs.shape[0], len(settings.outputs)):
        raise ValueError(f"`outputs` has shape {outputs.shape}, inputs {inputs.shape}")
    inputs.flags.writeable = False
    outputs.flags.writeable = False
    return settings, CanaryCases(inputs=inputs, outputs=outputs, tolerance=tolerance)


def _signature_json(kid: str, signature: str) -> bytes:
    document = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": kid,
        "signature": signature,
    }
    return (json.dumps(document, indent=1) + "\n").encode()


# --------------------------------------------------------------------------------------------
# Files


def _check_name(name: object) -> None:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise RegistryInputError(
            f"model name {name!r} is invalid: 1 to 64 characters from letters, digits, '.', "
            "'_' and '-', starting with a letter or digit"
        )


def _require_sealed(index: _Index, path: Path) -> None:
    if index.legacy:
        raise StateUnsigned(
            f"{path}: the registry's approval state is not signed (an index written before "
            "signed state); its approvals, revocations and current versions are not trusted. "
            f"Review them with `safety-gateway model list --registry {path}`, then sign them "
            f"with `safety-gateway model reseal --registry {path} --key KEY --by WHO`"
        )


def _read_witness(path: Path) -> tuple[int, str]:
    """The head a witness file remembers; (0, GENESIS) if there is no file yet."""
    try:
        raw = _read_regular(path, _MAX_SMALL_FILE_BYTES)
    except FileNotFoundError:
        return 0, state.GENESIS
    except OSError as exc:
        raise RegistryInputError(f"{path}: cannot read the witness ({exc})") from exc
    try:
        document = json.loads(raw)
        seq, sha = document["seq"], document["sha256"]
        if (document.get("format") != WITNESS_FORMAT or isinstance(seq, bool)
                or not isinstance(seq, int) or seq < 0 or not isinstance(sha, str)
                or _SHA256_HEX.fullmatch(sha) is None):
            raise ValueError("bad fields")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise RegistryCorrupt(f"{path}: not a registry witness file ({exc})") from exc
    return seq, sha


def _check_who(who: object) -> None:
    if not isinstance(who, str) or not who.strip():
        raise RegistryInputError("who approves/revokes must be named (a non-empty string)")


@contextlib.contextmanager
def _io_errors(what: str) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, permissions) into a :class:`RegistryError`."""
    try:
        yield
    except OSError as exc:
        raise RegistryError(f"{what} ({exc})") from exc


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("`now` must return an aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _replace(entry: Version, **changes: Any) -> Version:
    values = asdict(entry)
    values.update(changes)
    return Version(**values)


def _highest_dir(name_dir: Path) -> int:
    """The highest numbered version folder (a crash may leave one the index never got)."""
    numbers = [int(p.name) for p in name_dir.iterdir() if p.name.isdigit()]
    return max(numbers, default=0)


def _read_model(path: Path) -> bytes:
    try:
        return _read_regular(path, _MAX_MODEL_BYTES)
    except FileNotFoundError:
        raise RegistryInputError(f"{path}: model file not found") from None
    except OSError as exc:
        raise RegistryInputError(f"{path}: cannot read model file ({exc})") from exc


def _read_signed(path: Path, limit: int, signed_sha256: str, label: str, what: str,
                 error: type[RegistryError]) -> tuple[bytes, str]:
    """The bytes of a version's file and their sha256, which must be the signed one; raises
    ``error`` if the file is unreadable or was modified. The bytes hashed are the bytes
    returned (nothing is read twice)."""
    try:
        data = _read_regular(path, limit)
    except OSError as exc:
        raise error(f"{label}: {what} file unreadable ({exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, signed_sha256):
        raise error(f"{label}: {what} file {path} was modified: sha256 {actual}, "
                    f"signed {signed_sha256}")
    return data, actual


def _read_regular(path: Path, limit: int) -> bytes:
    """Read a whole regular file, at most ``limit`` bytes; ``OSError`` otherwise.

    Non-blocking open and fstat on the same descriptor, as in onnx_policy: a FIFO or device
    planted in place of a file cannot hang or flood the reader.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{path}: not a regular file (mode {stat.filemode(mode)})")
        with open(descriptor, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise OSError(f"{path}: larger than {limit} bytes")
    return data


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file and fsync it."""
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync folder."""
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """fsync a folder so that renames and new entries in it survive a crash."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
