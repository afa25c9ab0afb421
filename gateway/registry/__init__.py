"""Recovery: the model registry of signed, hashed, approvable versions (see registry.py).

The names below are imported on first use (PEP 562): the registry loads ONNX models, and a
command that only parses its arguments (``safety-gateway --help``) must not pay for onnx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.lazy import lazy_exports

if TYPE_CHECKING:
    from gateway.registry.registry import (
        BadSignature,
        CanaryTampered,
        ModelNotApproved,
        ModelRefused,
        ModelRevoked,
        ModelTampered,
        ModelUnsigned,
        NoCurrentVersion,
        NoRollbackTarget,
        PolicySettings,
        Registry,
        RegistryCorrupt,
        RegistryError,
        RegistryInputError,
        RegistryNotFound,
        RegistryStateError,
        StateTampered,
        StateUnsigned,
        UnknownVersion,
        UntrustedKey,
        VerifiedModel,
        Version,
    )
    from gateway.registry.signing import KeyPair, Signer, generate_key, load_private_key

# Where each name lives.
_HOME: dict[str, str] = {
    "BadSignature": "gateway.registry.registry",
    "CanaryTampered": "gateway.registry.registry",
    "ModelNotApproved": "gateway.registry.registry",
    "ModelRefused": "gateway.registry.registry",
    "ModelRevoked": "gateway.registry.registry",
    "ModelTampered": "gateway.registry.registry",
    "ModelUnsigned": "gateway.registry.registry",
    "NoCurrentVersion": "gateway.registry.registry",
    "NoRollbackTarget": "gateway.registry.registry",
    "PolicySettings": "gateway.registry.registry",
    "Registry": "gateway.registry.registry",
    "RegistryCorrupt": "gateway.registry.registry",
    "RegistryError": "gateway.registry.registry",
    "RegistryInputError": "gateway.registry.registry",
    "RegistryNotFound": "gateway.registry.registry",
    "RegistryStateError": "gateway.registry.registry",
    "StateTampered": "gateway.registry.registry",
    "StateUnsigned": "gateway.registry.registry",
    "UnknownVersion": "gateway.registry.registry",
    "UntrustedKey": "gateway.registry.registry",
    "VerifiedModel": "gateway.registry.registry",
    "Version": "gateway.registry.registry",
    "KeyPair": "gateway.registry.signing",
    "Signer": "gateway.registry.signing",
    "generate_key": "gateway.registry.signing",
    "load_private_key": "gateway.registry.signing",
}


__getattr__ = lazy_exports(__name__, _HOME)


__all__ = [
    "BadSignature",
    "CanaryTampered",
    "KeyPair",
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
    "Signer",
    "StateTampered",
    "StateUnsigned",
    "UnknownVersion",
    "UntrustedKey",
    "VerifiedModel",
    "Version",
    "generate_key",
    "load_private_key",
]
