"""The AI model at start-up: the site's ONNX file or the registry's approved version, verified,
or refused (then the site runs on fallback control, loudly)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from gateway.config.schema import ControllerKind

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site
    from gateway.control.ai import AiWiring
    from gateway.control.onnx_policy import OnnxPolicy
    from gateway.runtime.records import Records
    from gateway.supervisor.detectors import CanaryCases

log = logging.getLogger("gateway.runtime")


class _Refused(Exception):
    """The model was refused at load (the registry's verdict, or a settings mismatch)."""


class LoadedModel(NamedTuple):
    """The policy and its wiring (None: no model runs), and the golden cases to check it
    with (given explicitly, or the registry's)."""

    policy: OnnxPolicy | None
    wiring: AiWiring | None
    canary: CanaryCases | None


def load_model(site: Site, records: Records, audit_path: Path | None,
               canary: CanaryCases | None) -> LoadedModel:
    """Load the site's model (onnx controllers only), recording the load or the refusal."""
    spec = site.controller
    if spec.kind is not ControllerKind.ONNX:
        return LoadedModel(None, None, canary)
    from gateway.control.ai import AiWiring, onnx_policy_config
    from gateway.control.onnx_policy import ModelError, load_policy

    try:
        if spec.registry is not None:
            policy, canary = _load_registered(site, audit_path, canary)
        else:
            policy = load_policy(onnx_policy_config(site))
    except (ModelError, _Refused) as exc:
        # Refused at load: run on fallback control, loudly.
        log.error("model refused, running on fallback control: %s", exc)
        records.model_loaded(spec.model or spec.registry, spec.sha256, False, str(exc))
        return LoadedModel(None, None, canary)
    records.model_loaded(policy.model_path, policy.model_sha256, True)
    log.info("model loaded path=%s sha256=%s", policy.model_path, policy.model_sha256)
    return LoadedModel(policy, AiWiring(site), canary)


def _load_registered(site: Site, audit_path: Path | None, canary: CanaryCases | None
                     ) -> tuple[OnnxPolicy, CanaryCases | None]:
    """The registry's current approved version, verified (signature, hashes, approval,
    not revoked); its canary cases feed the canary detector unless given explicitly."""
    from gateway.control.onnx_policy import load_policy
    from gateway.registry import PolicySettings, Registry, RegistryError

    spec = site.controller
    assert spec.registry is not None
    assert spec.name is not None
    # The witness (beside the audit database, out of the registry's reach) remembers the
    # registry's signed state last accepted, so an older copy put back is refused.
    witness = (None if audit_path is None else
               audit_path.with_name(audit_path.name + ".registry-witness.json"))
    try:
        verified = Registry(spec.registry, witness=witness).load_verified(
            spec.name, canary_tolerance=site.detection.canary_tolerance)
    except RegistryError as exc:
        raise _Refused(f"registry {spec.registry}: {exc}") from None
    if verified.settings != PolicySettings.from_controller(spec):
        raise _Refused(f"{verified.version.label}: registered with other inputs, outputs "
                       "or normalisation than this site's controller section")
    policy = load_policy(verified.policy_config(spec.deadline_ms))
    log.info("model from registry %s: %s", spec.registry, verified.version.label)
    return policy, verified.canary if canary is None else canary
