"""A registry version delivered to a site (by the fleet), staged and checked there.

The central registry publishes one version as its four files plus the registry's signed index
(``gateway.fleet.models``). A site writes them into a folder laid out as a one-version registry
(:func:`stage`) and checks it with the registry's own code against the site's *own* trust store
(:func:`verify_staged`): the signature on the version, the signed approval state (approved, not
revoked, every record signed by a trusted key), the model's and canary's hashes, the settings
against the site's controller, and the canary run on the model as the gateway will run it.

Both the communications process (before it asks) and the safety core (before it loads) call
:func:`verify_staged`: the core never takes the communications process's word for anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from gateway.registry.registry import (
    CANARY_FILE,
    INDEX_FILE,
    MODEL_FILE,
    MODELS_DIR,
    SIGNATURE_FILE,
    PolicySettings,
    Registry,
    RegistryError,
    VerifiedModel,
)

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site
    from gateway.control.onnx_policy import OnnxPolicy

__all__ = ["FILES", "StagedModel", "StagedRefused", "stage", "staged_folder", "verify_staged"]

FILES: Final = (INDEX_FILE, MODEL_FILE, CANARY_FILE, SIGNATURE_FILE)
"""What a delivered version consists of (the index is the central registry's, whole)."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class StagedRefused(Exception):
    """The staged version must not run; the message is the precise reason (for the audit
    chain and the centre). ``kind`` is one short word: ``signature``, ``approval``, ``hash``,
    ``canary``, ``settings``, ``input``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, eq=False)
class StagedModel:
    """A staged version that passed every check, and the policy loaded from the checked
    bytes (the caller owns it and must close it)."""

    verified: VerifiedModel
    policy: OnnxPolicy

    @property
    def label(self) -> str:
        return self.verified.version.label


def check_name_version(name: object, version: object) -> tuple[str, int]:
    """``(name, version)`` if they can name a staged version, else :class:`StagedRefused`
    (they become path components: nothing but a registry name and a positive integer)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise StagedRefused("input", f"{name!r} is not a model name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise StagedRefused("input", f"{version!r} is not a version number")
    return name, version


def staged_folder(models_dir: Path, name: str, version: int) -> Path:
    """The folder holding the staged ``name`` ``version`` under ``models_dir``."""
    check_name_version(name, version)
    return models_dir / f"{name}-v{version}"


def stage(models_dir: Path, name: str, version: int, files: dict[str, bytes]) -> Path:
    """Write a delivered version (``files`` maps each of :data:`FILES` to its bytes) as a
    one-version registry and return its folder; anything staged there before is replaced.
    Raises :class:`StagedRefused` (``input``) for a missing file or a bad name, ``OSError``
    if the disk refuses."""
    folder = staged_folder(models_dir, name, version)
    missing = [f for f in FILES if f not in files]
    if missing:
        raise StagedRefused("input", f"{name} v{version}: delivered without {missing}")
    if folder.exists():
        shutil.rmtree(folder)
    version_dir = folder / MODELS_DIR / name / str(version)
    version_dir.mkdir(parents=True)
    for file in FILES:
        target = folder / INDEX_FILE if file == INDEX_FILE else version_dir / file
        with open(target, "xb") as out:
            out.write(files[file])
            out.flush()
            os.fsync(out.fileno())
    return folder


def verify_staged(folder: Path, trusted_dir: Path | None, name: str, version: int,
                  site: Site, *, witness: Path | None = None) -> StagedModel:
    """Check a staged version as the gateway's registry loading does, against the site's
    trust store ``trusted_dir``, and load it; :class:`StagedRefused` with the reason if any
    check fails.

    In order: a trust store is configured (``signature``); the registry's checks
    (:meth:`Registry.load_verified` with approval required: signed state, not revoked,
    approved, signature by a trusted key, model and canary hashes; ``approval`` for a version
    not approved or revoked, ``signature`` for a signature or signed record that does not
    verify against the site's keys, ``hash``); the version's settings equal the site
    controller's (``settings``); the model loads from the checked bytes' file with its hash
    pinned (``hash``); the model's outputs on the canary's golden inputs equal the recorded
    ones within the site's ``detection.canary_tolerance`` (``canary``). ``witness`` (a file
    out of the staging folder's reach) makes the registry refuse a signed state older than
    the last one seen.
    """
    from gateway.control.onnx_policy import ModelError, load_policy
    from gateway.registry.registry import (
        CanaryTampered,
        ModelNotApproved,
        ModelRevoked,
        ModelTampered,
        NoCurrentVersion,
        StateTampered,
        StateUnsigned,
        UnknownVersion,
    )

    check_name_version(name, version)
    if trusted_dir is None:
        raise StagedRefused("signature", "this site trusts no model signing key "
                                         "(set fleet.trusted_keys)")
    registry = Registry(folder, trusted_dir=trusted_dir, witness=witness)
    tolerance = site.detection.canary_tolerance
    try:
        verified = registry.load_verified(name, version, require_approval=True,
                                          canary_tolerance=tolerance)
    except (ModelNotApproved, ModelRevoked, UnknownVersion, NoCurrentVersion) as exc:
        raise StagedRefused("approval", str(exc)) from None
    except (StateTampered, StateUnsigned) as exc:  # the approval records' signatures
        raise StagedRefused("signature", str(exc)) from None
    except (ModelTampered, CanaryTampered) as exc:
        raise StagedRefused("hash", str(exc)) from None
    except RegistryError as exc:  # unsigned, bad signature, untrusted key, unreadable
        raise StagedRefused("signature", str(exc)) from None
    if verified.settings != PolicySettings.from_controller(site.controller):
        raise StagedRefused("settings", f"{verified.version.label}: registered with other "
                                        "inputs, outputs or normalisation than this site's "
                                        "controller section")
    try:
        policy = load_policy(verified.policy_config(site.controller.deadline_ms))
    except ModelError as exc:
        raise StagedRefused("hash", f"{verified.version.label}: {exc}") from None
    try:
        _run_canary(verified, policy)
    except StagedRefused:
        policy.close()
        raise
    return StagedModel(verified, policy)


def _run_canary(verified: VerifiedModel, policy: OnnxPolicy) -> None:
    """The loaded model's outputs on the golden inputs must be the recorded ones."""
    cases = verified.canary
    worst = 0.0
    for row, expected in zip(cases.inputs, cases.outputs, strict=True):
        inference = policy.infer_sync(np.ascontiguousarray(row, dtype=np.float64))
        if inference.outputs is None:
            raise StagedRefused("canary", f"{verified.version.label}: no output on a golden "
                                          f"input ({inference.anomaly}: {inference.detail})")
        deviation = float(np.max(np.abs(np.asarray(inference.outputs) - expected)))
        if not math.isfinite(deviation):
            worst = math.inf
            break
        worst = max(worst, deviation)
    if not worst <= cases.tolerance:
        raise StagedRefused("canary", f"{verified.version.label}: outputs on the golden "
                                      f"inputs deviate by {worst:.6g} (tolerance "
                                      f"{cases.tolerance})")


def discard(folder: Path) -> None:
    """Remove a staged folder (a refused version is not kept where it could be loaded)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
