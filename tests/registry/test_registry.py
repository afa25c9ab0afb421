"""The model registry: register, approve, verify at load, refuse what is not trustworthy."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gateway.control.onnx_policy import load_policy
from gateway.registry import signing
from gateway.registry.registry import (
    BadSignature,
    CanaryTampered,
    ModelNotApproved,
    ModelRevoked,
    ModelTampered,
    ModelUnsigned,
    NoCurrentVersion,
    NoRollbackTarget,
    PolicySettings,
    Registry,
    RegistryCorrupt,
    RegistryInputError,
    RegistryNotFound,
    RegistryStateError,
    StateTampered,
    UnknownVersion,
    UntrustedKey,
    statement_bytes,
)
from simulators.zoo.graphs import linear, mlp, serialize, sha256_hex

REPO = Path(__file__).resolve().parents[2]

SETTINGS = PolicySettings(
    inputs=("level", "flow"),
    outputs=("valve",),
    input_offset=(2.0, 0.0),
    input_scale=(0.5, 0.1),
    output_offset=(50.0,),
    output_scale=(100.0,),
)
CANARY = np.array([[0.0, 0.0], [2.5, 10.0], [4.9, -3.0]])
PASSPHRASE = b"correct horse battery"


class FakeClock:
    """Deterministic aware timestamps, one second apart."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def write_model(path: Path, gain: float = 0.5, bias: float = 0.1) -> Path:
    path.write_bytes(serialize(linear(np.array([[gain], [0.25]]), np.array([bias]))))
    return path


def new_key(path: Path) -> signing.Signer:
    path.parent.mkdir(exist_ok=True)
    return signing.load_private_key(signing.generate_key(path, PASSPHRASE).private_path,
                                    PASSPHRASE)


@pytest.fixture
def key(tmp_path: Path) -> signing.Signer:
    return new_key(tmp_path / "keys" / "signer.pem")


@pytest.fixture
def registry(tmp_path: Path, key: signing.Signer) -> Registry:
    reg = Registry(tmp_path / "registry", now=FakeClock())
    reg.trust_key(signing.public_key_path(Path(key.source)))
    return reg


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model.onnx")


def register(registry: Registry, model: Path, key: signing.Signer, name: str = "tank") -> int:
    return registry.register(name, model, CANARY, SETTINGS, key).version


def version_dir(registry: Registry, name: str, version: int) -> Path:
    return registry.path / "models" / name / str(version)


# -- the happy path ------------------------------------------------------------------------------


def test_register_list_approve_load(registry: Registry, model: Path, key: signing.Signer) -> None:
    created = registry.register("tank", model, CANARY, SETTINGS, key)
    assert created.version == 1
    assert created.sha256 == sha256_hex(model.read_bytes())
    assert not created.approved
    assert not created.current
    assert created.key_id == key.key_id

    (listed,) = registry.list()
    assert listed == created
    assert registry.list("other") == ()

    approved = registry.approve("tank", 1, "alice", key)
    assert approved.approved
    assert approved.approved_by == "alice"
    assert approved.current
    assert approved.approved_at is not None

    verified = registry.load_verified("tank")
    assert verified.version.version == 1
    assert verified.sha256 == created.sha256
    assert verified.data == model.read_bytes()
    assert verified.path == version_dir(registry, "tank", 1) / "model.onnx"
    assert verified.settings == SETTINGS
    np.testing.assert_array_equal(verified.canary.inputs, CANARY)
    assert verified.canary.tolerance == pytest.approx(1e-4)

    # The recorded outputs are exactly what the gateway computes with the same settings.
    with load_policy(verified.policy_config(deadline_ms=50.0)) as policy:
        for row, expected in zip(CANARY, verified.canary.outputs, strict=True):
            inference = policy.infer_sync(row.copy())
            assert inference.outputs is not None
            np.testing.assert_array_equal(inference.outputs, expected)


def test_canary_outputs_use_the_normalisation(
    registry: Registry, model: Path, key: signing.Signer
) -> None:
    register(registry, model, key)
    verified = registry.load_verified("tank", 1, require_approval=False)
    # action = ((level - 2) * 0.5 * 0.5 + flow * 0.1 * 0.25 + 0.1) * 100 + 50, in float32.
    level, flow = CANARY[1]
    expected = ((level - 2.0) * 0.5 * 0.5 + flow * 0.1 * 0.25 + 0.1) * 100.0 + 50.0
    assert verified.canary.outputs[1, 0] == pytest.approx(expected, rel=1e-6)


def test_versions_are_monotonic_per_name(
    registry: Registry, model: Path, key: signing.Signer
) -> None:
    assert [register(registry, model, key) for _ in range(3)] == [1, 2, 3]
    assert register(registry, model, key, name="boiler") == 1
    assert [(v.name, v.version) for v in registry.list()] == [
        ("boiler", 1),
        ("tank", 1),
        ("tank", 2),
        ("tank", 3),
    ]


def test_on_disk_layout(registry: Registry, model: Path, key: signing.Signer) -> None:
    register(registry, model, key)
    folder = version_dir(registry, "tank", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["canary.json", "model.onnx", "signature"]
    index = json.loads((registry.path / "index.json").read_text())
    assert index["format"] == 2
    assert index["state"] == []
    assert index["current"] == {}
    (entry,) = index["versions"]
    assert set(entry) == {
        "name", "version", "sha256", "canary_sha256", "created_at", "key_id", "signature",
        "approved", "approved_by", "approved_at", "revoked", "revoked_by", "revoked_at",
        "revoked_reason",
    }
    assert entry["created_at"] == "2030-01-02T03:04:06.000000+00:00"
    assert len(entry["key_id"]) == 16
    # The signature covers the canonical statement and verifies with the public key alone.
    public = signing.load_public_key(signing.public_key_path(Path(key.source)))
    statement = statement_bytes(
        "tank", 1, entry["sha256"], entry["canary_sha256"], entry["created_at"]
    )
    public.verify(base64.b64decode(entry["signature"]), statement)
    assert entry["canary_sha256"] == sha256_hex((folder / "canary.json").read_bytes())
    assert not list(registry.path.glob("models/tank/.staging-*"))


# -- refusals ------------------------------------------------------------------------------------


@pytest.fixture
def approved(registry: Registry, model: Path, key: signing.Signer) -> Path:
    register(registry, model, key)
    registry.approve("tank", 1, "alice", key)
    return version_dir(registry, "tank", 1)


def test_tampered_model_bytes_are_refused(registry: Registry, approved: Path) -> None:
    model_file = approved / "model.onnx"
    model_file.write_bytes(serialize(linear(np.array([[0.5], [0.26]]), np.array([0.1]))))
    with pytest.raises(ModelTampered, match=r"tank v1: model file .* was modified: sha256"):
        registry.load_verified("tank")


def test_missing_model_file_is_refused(registry: Registry, approved: Path) -> None:
    (approved / "model.onnx").unlink()
    with pytest.raises(ModelTampered, match="model file unreadable"):
        registry.load_verified("tank")


def test_tampered_canary_is_refused(registry: Registry, approved: Path) -> None:
    canary_file = approved / "canary.json"
    document = json.loads(canary_file.read_text())
    document["outputs"][0][0] += 1.0
    canary_file.write_text(json.dumps(document))
    with pytest.raises(CanaryTampered, match=r"tank v1: canary file .* was modified"):
        registry.load_verified("tank")


def test_altered_signature_file_is_refused(registry: Registry, approved: Path) -> None:
    signature_file = approved / "signature"
    document = json.loads(signature_file.read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[0] ^= 0x01
    document["signature"] = base64.b64encode(bytes(raw)).decode()
    signature_file.write_text(json.dumps(document))
    with pytest.raises(BadSignature, match="disagrees with the index"):
        registry.load_verified("tank")


def test_forged_signature_is_refused(registry: Registry, approved: Path) -> None:
    # Both copies changed consistently: only the cryptographic check can catch it.
    signature_file = approved / "signature"
    document = json.loads(signature_file.read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[10] ^= 0x80
    forged = base64.b64encode(bytes(raw)).decode()
    document["signature"] = forged
    signature_file.write_text(json.dumps(document))
    index_file = registry.path / "index.json"
    index = json.loads(index_file.read_text())
    index["versions"][0]["signature"] = forged
    index_file.write_text(json.dumps(index))
    with pytest.raises(BadSignature, match="does not verify against trusted key"):
        registry.load_verified("tank")


def test_swapped_model_with_rewritten_index_is_refused(
    registry: Registry, approved: Path
) -> None:
    # An attacker replaces the model and updates its hash in the index: the signature binds it.
    other = serialize(linear(np.array([[9.0], [9.0]]), np.array([9.0])))
    (approved / "model.onnx").write_bytes(other)
    index_file = registry.path / "index.json"
    index = json.loads(index_file.read_text())
    index["versions"][0]["sha256"] = sha256_hex(other)
    index_file.write_text(json.dumps(index))
    # The signed approval names the model's sha256, so the state check sees it first.
    with pytest.raises(StateTampered, match=r"approve tank v1.*signed for model sha256"):
        registry.load_verified("tank")
    # Without an approval record, the version's own signature refuses it.
    index["state"] = []
    index["current"] = {}
    index["versions"][0].update(approved=False, approved_by=None, approved_at=None)
    index_file.write_text(json.dumps(index))
    with pytest.raises(BadSignature, match="does not verify"):
        registry.load_verified("tank", 1, require_approval=False)


def test_untrusted_key_is_refused(
    registry: Registry, model: Path, tmp_path: Path, key: signing.Signer) -> None:
    stranger = new_key(tmp_path / "keys" / "stranger.pem")
    registry.register("tank", model, CANARY, SETTINGS, stranger)
    message = f"signed by key {stranger.key_id}, which is not trusted"
    with pytest.raises(UntrustedKey, match=message):
        registry.load_verified("tank", 1, require_approval=False)
    # Nor can it be approved.
    with pytest.raises(UntrustedKey):
        registry.approve("tank", 1, "alice", key)


def test_revoked_is_refused(registry: Registry, approved: Path, key: signing.Signer) -> None:
    revoked = registry.revoke("tank", 1, "bob", "backdoor found", key)
    assert revoked.revoked
    assert revoked.current  # the pointer stays; loading it is refused
    with pytest.raises(ModelRevoked, match=r"tank v1 is revoked \(by bob .*: backdoor found\)"):
        registry.load_verified("tank")
    with pytest.raises(ModelRevoked):
        registry.load_verified("tank", 1, require_approval=False)
    with pytest.raises(RegistryStateError, match="already revoked"):
        registry.revoke("tank", 1, "bob", "again", key)
    with pytest.raises(RegistryStateError, match="revoked and cannot be approved"):
        registry.approve("tank", 1, "alice", key)


def test_unsigned_is_refused(registry: Registry, approved: Path) -> None:
    (approved / "signature").unlink()
    with pytest.raises(ModelUnsigned, match=r"tank v1 is unsigned: no signature file"):
        registry.load_verified("tank")


def test_unapproved_is_refused_when_approval_is_required(
    registry: Registry, model: Path, key: signing.Signer
) -> None:
    register(registry, model, key)
    with pytest.raises(ModelNotApproved, match="tank v1 is not approved"):
        registry.load_verified("tank", 1)
    assert registry.load_verified("tank", 1, require_approval=False).version.version == 1
    with pytest.raises(NoCurrentVersion, match="tank has no current version"):
        registry.load_verified("tank")


def test_tampered_model_cannot_be_approved(
    registry: Registry, model: Path, key: signing.Signer
) -> None:
    register(registry, model, key)
    (version_dir(registry, "tank", 1) / "model.onnx").write_bytes(b"\x08\x08")
    with pytest.raises(ModelTampered):
        registry.approve("tank", 1, "alice", key)
    assert not registry.get("tank", 1).approved


def test_unknown_names_and_versions(registry: Registry, model: Path, key: signing.Signer) -> None:
    register(registry, model, key)
    with pytest.raises(UnknownVersion, match="no model named 'pump'"):
        registry.load_verified("pump")
    with pytest.raises(UnknownVersion, match=r"tank has no version 7 \(versions: \[1\]\)"):
        registry.approve("tank", 7, "alice", key)


def test_missing_and_corrupt_registry(tmp_path: Path, key: signing.Signer) -> None:
    with pytest.raises(RegistryNotFound, match="no registry folder"):
        Registry(tmp_path / "nowhere").list()
    with pytest.raises(RegistryNotFound, match="no registry folder"):
        Registry(tmp_path / "nowhere").approve("tank", 1, "alice", key)
    assert not (tmp_path / "nowhere").exists()  # a mistyped path creates nothing
    (tmp_path / "empty").mkdir()
    assert Registry(tmp_path / "empty").list() == ()
    with pytest.raises(UnknownVersion):
        Registry(tmp_path / "empty").load_verified("tank")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text('{"format": 1, "current": {}, "versions": [{}]}')
    with pytest.raises(RegistryCorrupt, match=r"versions\[0\].name must be a string"):
        Registry(tmp_path / "bad").list()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    with pytest.raises(RegistryCorrupt, match="not JSON"):
        Registry(tmp_path / "bad").list()


# -- registration input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((0, 2)), r"shape \(n >= 1, 2\)"),
        (np.zeros((3, 3)), r"shape \(n >= 1, 2\)"),
        (np.array([[1.0, np.nan]]), r"rows \[0\] hold NaN"),
        ([["a", "b"]], "not a table of numbers"),
    ],
)
def test_bad_canary_inputs(
    registry: Registry, model: Path, key: signing.Signer, rows, message
) -> None:
    with pytest.raises(RegistryInputError, match=message):
        registry.register("tank", model, rows, SETTINGS, key)


def test_model_that_cannot_run_with_the_settings(
    registry: Registry, tmp_path: Path, key: signing.Signer
) -> None:
    three_inputs = tmp_path / "three.onnx"
    three_inputs.write_bytes(serialize(linear(np.ones((3, 1)), np.zeros(1))))
    with pytest.raises(RegistryInputError, match="cannot run with these settings"):
        registry.register("tank", three_inputs, CANARY, SETTINGS, key)
    nan_bias = tmp_path / "nan.onnx"
    nan_bias.write_bytes(serialize(linear(np.ones((2, 1)), np.array([np.nan]))))
    with pytest.raises(RegistryInputError, match="canary row 0: the model gives no output"):
        registry.register("tank", nan_bias, CANARY, SETTINGS, key)
    # Nothing was recorded, and nothing was left behind.
    assert not (registry.path / "index.json").exists()
    assert not list((registry.path / "models" / "tank").iterdir())


def test_bad_name_and_missing_files(registry: Registry, model: Path, key: signing.Signer) -> None:
    with pytest.raises(RegistryInputError, match=r"model name '\.\./x' is invalid"):
        registry.register("../x", model, CANARY, SETTINGS, key)
    with pytest.raises(RegistryInputError, match="model file not found"):
        registry.register("tank", model.with_name("nope.onnx"), CANARY, SETTINGS, key)


# -- rollback ------------------------------------------------------------------------------------


def test_rollback_goes_to_the_last_approved_version(
    registry: Registry, tmp_path: Path, key: signing.Signer
) -> None:
    for gain in (0.1, 0.2, 0.3, 0.4):
        register(registry, write_model(tmp_path / f"m{gain}.onnx", gain=gain), key)
    registry.approve("tank", 1, "alice", key)
    registry.approve("tank", 2, "alice", key)
    registry.approve("tank", 4, "alice", key)  # 3 never approved
    registry.revoke("tank", 2, "bob", "drifted", key)
    assert registry.get("tank").version == 4

    target = registry.rollback("tank", "alice", key)
    assert (target.version, target.current) == (1, True)
    assert registry.get("tank").version == 1
    assert registry.load_verified("tank").version.version == 1
    assert [v.version for v in registry.list("tank") if v.current] == [1]

    message = "no approved, unrevoked version before the current v1"
    with pytest.raises(NoRollbackTarget, match=message):
        registry.rollback("tank", "alice", key)


def test_rollback_needs_a_current_version(
    registry: Registry, model: Path, key: signing.Signer
) -> None:
    register(registry, model, key)
    with pytest.raises(NoRollbackTarget, match="no current version to roll back from"):
        registry.rollback("tank", "alice", key)
    with pytest.raises(UnknownVersion):
        registry.rollback("pump", "alice", key)


def test_rollback_refuses_a_tampered_target(
    registry: Registry, tmp_path: Path, key: signing.Signer
) -> None:
    for gain in (0.1, 0.2):
        register(registry, write_model(tmp_path / f"m{gain}.onnx", gain=gain), key)
        registry.approve("tank", registry.list("tank")[-1].version, "alice", key)
    (version_dir(registry, "tank", 1) / "canary.json").write_text("{}")
    with pytest.raises(CanaryTampered, match="rollback target tank v1 fails verification"):
        registry.rollback("tank", "alice", key)
    assert registry.get("tank").version == 2


# -- concurrency ---------------------------------------------------------------------------------


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from gateway.registry.registry import PolicySettings, Registry

    from gateway.registry.signing import load_private_key

    registry, model, key_path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    key = load_private_key(Path(key_path), sys.argv[5].encode())
    settings = PolicySettings(inputs=("level", "flow"), outputs=("valve",))
    reg = Registry(Path(registry))
    for _ in range(count):
        reg.register("tank", Path(model), np.array([[1.0, 2.0]]), settings, key)
    """
)


def test_concurrent_registers_do_not_corrupt_the_index(
    registry: Registry, model: Path, key: signing.Signer
) -> None:
    count = 4
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _WRITER, str(registry.path), str(model), key.source,
               str(count),
               PASSPHRASE.decode()]
    writers = [subprocess.Popen(command, env=env, cwd=REPO) for _ in range(2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    versions = registry.list("tank")
    assert [v.version for v in versions] == list(range(1, 2 * count + 1))
    for v in versions:
        assert registry.load_verified("tank", v.version, require_approval=False).sha256 == v.sha256
    assert not list(registry.path.glob("models/tank/.staging-*"))
    assert not list(registry.path.glob(".index.json.*"))


# -- keys ----------------------------------------------------------------------------------------


def test_generate_key_files(tmp_path: Path) -> None:
    pair = signing.generate_key(tmp_path / "k.pem", PASSPHRASE)
    assert pair.public_path == tmp_path / "k.pem.pub"
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert len(pair.key_id) == 16
    assert signing.key_id(signing.load_public_key(pair.public_path)) == pair.key_id
    with pytest.raises(signing.KeyFileError, match="already exists"):
        signing.generate_key(tmp_path / "k.pem", PASSPHRASE)


def test_group_readable_private_key_is_refused(tmp_path: Path) -> None:
    pair = signing.generate_key(tmp_path / "k.pem", PASSPHRASE)
    pair.private_path.chmod(0o640)
    with pytest.raises(signing.KeyFileError, match="accessible by group or others"):
        signing.load_private_key(pair.private_path, PASSPHRASE)


def test_public_key_is_not_a_private_key(tmp_path: Path) -> None:
    pair = signing.generate_key(tmp_path / "k.pem", PASSPHRASE)
    with pytest.raises(signing.KeyFileError, match="not a PEM public key"):
        signing.load_public_key(pair.private_path)
    pair.public_path.chmod(0o600)
    with pytest.raises(signing.KeyFileError, match="not a PEM private key"):
        signing.load_private_key(pair.public_path, PASSPHRASE)


def test_damaged_trust_store_is_an_error(registry: Registry, approved: Path) -> None:
    (registry.trusted_dir / "junk.pub").write_text("not a key")
    with pytest.raises(RegistryCorrupt, match="trust store"):
        registry.load_verified("tank")


def test_mlp_models_register_too(registry: Registry, tmp_path: Path, key: signing.Signer) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "mlp.onnx"
    weights = [
        (rng.normal(size=(2, 8)), rng.normal(size=8)),
        (rng.normal(size=(8, 1)), np.zeros(1)),
    ]
    path.write_bytes(serialize(mlp(weights)))
    v = registry.register("tank", path, rng.normal(size=(16, 2)), SETTINGS, key)
    registry.approve("tank", v.version, "alice", key)
    assert registry.load_verified("tank").canary.outputs.shape == (16, 1)
