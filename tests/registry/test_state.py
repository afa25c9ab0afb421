"""The registry's approval state is signed: hand edits of ``index.json`` are refused (issue 16,
item 6), a legacy index must be resealed, two approvers can be required, keys are encrypted."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.cli import main
from gateway.registry import signing
from gateway.registry.registry import (
    ModelNotApproved,
    Registry,
    RegistryInputError,
    RegistryStateError,
    StateTampered,
    StateUnsigned,
    UntrustedKey,
)
from tests.registry.test_registry import CANARY, PASSPHRASE, SETTINGS, FakeClock, write_model

if TYPE_CHECKING:
    from collections.abc import Callable

PASSPHRASE_VAR = "SG_TEST_STATE_PASSPHRASE"


def new_key(path: Path) -> signing.Signer:
    path.parent.mkdir(exist_ok=True)
    pair = signing.generate_key(path, PASSPHRASE)
    return signing.load_private_key(pair.private_path, PASSPHRASE)


@pytest.fixture
def alice(tmp_path: Path) -> signing.Signer:
    return new_key(tmp_path / "keys" / "alice.pem")


@pytest.fixture
def bob(tmp_path: Path) -> signing.Signer:
    return new_key(tmp_path / "keys" / "bob.pem")


@pytest.fixture
def registry(tmp_path: Path, alice: signing.Signer, bob: signing.Signer) -> Registry:
    reg = Registry(tmp_path / "registry", now=FakeClock())
    for signer in (alice, bob):
        reg.trust_key(signing.public_key_path(Path(signer.source)))
    return reg


@pytest.fixture
def backdoored(registry: Registry, tmp_path: Path, alice: signing.Signer) -> Registry:
    """The issue's scenario: v1 good, v2 approved, found backdoored, revoked, rolled back."""
    registry.register("tank", write_model(tmp_path / "v1.onnx", gain=0.1), CANARY, SETTINGS,
                      alice)
    registry.register("tank", write_model(tmp_path / "v2.onnx", gain=0.2), CANARY, SETTINGS,
                      alice)
    registry.register("tank", write_model(tmp_path / "v3.onnx", gain=0.3), CANARY, SETTINGS,
                      alice)
    registry.approve("tank", 1, "alice", alice)
    registry.approve("tank", 2, "alice", alice)
    registry.revoke("tank", 2, "bob", "backdoor", alice)
    registry.rollback("tank", "carol", alice)
    assert registry.load_verified("tank").version.version == 1
    return registry


def read_index(registry: Registry) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((registry.path / "index.json").read_text())
    return document


def write_index(registry: Registry, document: dict[str, Any]) -> None:
    (registry.path / "index.json").write_text(json.dumps(document, indent=2))


def entry(document: dict[str, Any], version: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in document["versions"] if v["version"] == version]
    assert len(found) == 1
    return found[0]


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """``safety-gateway ARGV`` in this process, stdin not a terminal, ``env`` added."""

    def run(*argv: str | Path, env: dict[str, str] | None = None) -> Result:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            patch.setattr(sys, "stdin", io.StringIO(""))
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


# -- hand edits of index.json --------------------------------------------------------------------


def unrevoke_and_make_current(document: dict[str, Any]) -> None:
    entry(document, 2).update(revoked=False, revoked_by=None, revoked_at=None,
                              revoked_reason=None)
    document["current"]["tank"] = 2


def approve_unapproved(document: dict[str, Any]) -> None:
    entry(document, 3).update(approved=True, approved_by="alice",
                              approved_at="2030-01-01T00:00:00.000000+00:00")
    document["current"]["tank"] = 3


def move_current(document: dict[str, Any]) -> None:
    document["current"]["tank"] = 2


def delete_revocation_record(document: dict[str, Any]) -> None:
    unrevoke_and_make_current(document)
    del document["state"][2]  # approve 1, approve 2, [revoke 2], set_current 1


def replay_old_approval(document: dict[str, Any]) -> None:
    # The signed "approve v2" record, appended again after the revocation.
    document["state"].append(document["state"][1])
    unrevoke_and_make_current(document)


def renumber_replayed_approval(document: dict[str, Any]) -> None:
    replayed = dict(document["state"][1])
    replayed["seq"] = len(document["state"]) + 1
    document["state"].append(replayed)


def reorder_records(document: dict[str, Any]) -> None:
    state = document["state"]
    state[2], state[3] = state[3], state[2]


def alter_record(document: dict[str, Any]) -> None:
    document["state"][2]["reason"] = "false alarm"
    entry(document, 2)["revoked_reason"] = "false alarm"


EDITS = {
    "unrevoke": (
        unrevoke_and_make_current, r"tank v2 revoked = False, the signed records say True"
    ),
    "approve": (approve_unapproved, r"tank v3 approved = True, the signed records say False"),
    "move_current": (move_current, r"current = \{'tank': 2\}, the signed records say"),
    "delete_revocation": (delete_revocation_record, r"state record #4 .* is at position 3"),
    "replay_approval": (replay_old_approval, r"state record #2 .* is at position 5"),
    "renumbered_replay": (renumber_replayed_approval, r"#5 .* does not follow the record"),
    "reorder": (reorder_records, r"state record #4 .* is at position 3"),
    "alter_record": (alter_record, r"state record #3 .*signature does not verify"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_hand_edited_index_is_refused_at_load_and_by_verify(
    backdoored: Registry, edit: str, cli: Callable[..., Result]) -> None:
    change, reason = EDITS[edit]
    document = read_index(backdoored)
    change(document)
    write_index(backdoored, document)
    with pytest.raises(StateTampered, match=reason):
        backdoored.load_verified("tank")
    with pytest.raises(StateTampered):
        backdoored.load_verified("tank", 1)  # nothing from the registry loads
    result = cli("model", "verify", "--registry", backdoored.path, "tank")
    assert result.returncode == 1, result.stdout
    assert "verified" not in result.stdout
    assert result.stderr.startswith("safety-gateway model verify: ")
    assert "signed registry state does not hold" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_record_signed_by_an_untrusted_key_is_refused(
    backdoored: Registry, tmp_path: Path
) -> None:
    # The attacker has their own key, and chains a correctly formed un-revoking record... there
    # is no un-revoke action; the best they can do is a set_current, signed by their key.
    from gateway.registry import state

    mallory = new_key(tmp_path / "keys" / "mallory.pem")
    document = read_index(backdoored)
    records = [state.parse_record(r, "r") for r in document["state"]]
    forged = state.make_record(records, state.Action.SET_CURRENT, mallory, at="2031", by="m",
                               name="tank", version=1, sha256=entry(document, 1)["sha256"])
    document["state"].append(forged.to_json())
    write_index(backdoored, document)
    with pytest.raises(StateTampered, match=f"signed by key {mallory.key_id}, which is not in"):
        backdoored.load_verified("tank")
    # Nor can an untrusted key change the state through the registry.
    document["state"].pop()
    write_index(backdoored, document)
    with pytest.raises(UntrustedKey, match="only a trusted approver's key"):
        backdoored.revoke("tank", 1, "mallory", "denial of service", mallory)


def test_state_written_by_the_registry_replays_to_the_index(backdoored: Registry) -> None:
    document = read_index(backdoored)
    assert [r["action"] for r in document["state"]] == [
        "approve", "approve", "revoke", "set_current"
    ]
    assert [r["seq"] for r in document["state"]] == [1, 2, 3, 4]
    assert entry(document, 2)["revoked"] is True
    assert document["current"] == {"tank": 1}


def test_a_restored_older_copy_is_caught_by_the_witness(
    registry: Registry, tmp_path: Path, alice: signing.Signer, cli: Callable[..., Result]) -> None:
    registry.register("tank", write_model(tmp_path / "v1.onnx"), CANARY, SETTINGS, alice)
    registry.approve("tank", 1, "alice", alice)
    before_revocation = (registry.path / "index.json").read_bytes()
    witness = tmp_path / "gateway-state" / "registry.witness"
    watched = Registry(registry.path, witness=witness)
    assert watched.load_verified("tank").version.version == 1
    registry.revoke("tank", 1, "bob", "backdoor", alice)
    with pytest.raises(Exception, match="revoked"):
        watched.load_verified("tank")  # the witness moves to the revocation

    # The attacker puts the older, genuinely signed index back: the revocation disappears.
    (registry.path / "index.json").write_bytes(before_revocation)
    # A chain has no end of its own: without memory, this older state is indistinguishable...
    assert registry.load_verified("tank").version.version == 1
    # ...but a verifier that remembers the head it last accepted refuses it.
    with pytest.raises(StateTampered, match="state went back: record #2 was seen before"):
        watched.load_verified("tank")
    result = cli("model", "verify", "--registry", registry.path, "tank", "--witness", witness)
    assert result.returncode == 1
    assert "state went back" in result.stderr


# -- legacy indexes -------------------------------------------------------------------------------


def make_legacy(registry: Registry) -> None:
    document = read_index(registry)
    del document["state"]
    document["format"] = 1
    write_index(registry, document)


def test_a_legacy_index_is_refused_until_resealed(
    backdoored: Registry, tmp_path: Path, alice: signing.Signer, cli: Callable[..., Result]
) -> None:
    make_legacy(backdoored)
    with pytest.raises(StateUnsigned, match=r"model reseal --registry .* --key KEY --by WHO"):
        backdoored.load_verified("tank")
    with pytest.raises(StateUnsigned):
        backdoored.approve("tank", 3, "alice", alice)
    result = cli("model", "verify", "--registry", backdoored.path, "tank")
    assert result.returncode == 1
    assert "approval state is not signed" in result.stderr
    assert "safety-gateway model reseal" in result.stderr
    # The operator can review it...
    listed = cli("model", "list", "--registry", backdoored.path)
    assert listed.returncode == 0
    assert "NOT signed" in listed.stderr
    assert "yes (bob: backdoor)" in listed.stdout

    # ...and reseal it: the same state, now signed.
    versions = backdoored.reseal("dave", alice)
    assert [(v.version, v.approved, v.revoked, v.current) for v in versions] == [
        (1, True, False, True), (2, True, True, False), (3, False, False, False)
    ]
    assert versions[1].revoked_reason is not None
    assert versions[1].revoked_reason.startswith("backdoor (resealed by dave")
    assert backdoored.load_verified("tank").version.version == 1
    with pytest.raises(RegistryStateError, match="already signed"):
        backdoored.reseal("dave", alice)


def test_reseal_needs_a_trusted_key_and_intact_models(
    backdoored: Registry, tmp_path: Path
) -> None:
    make_legacy(backdoored)
    mallory = new_key(tmp_path / "keys" / "mallory.pem")
    with pytest.raises(UntrustedKey):
        backdoored.reseal("mallory", mallory)
    assert not backdoored.is_sealed()


def test_reseal_on_the_command_line(
    backdoored: Registry, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    make_legacy(backdoored)
    env = {PASSPHRASE_VAR: PASSPHRASE.decode()}
    result = cli("model", "reseal", "--registry", backdoored.path, "--key",
                 tmp_path / "keys" / "alice.pem", "--by", "dave", "--passphrase-env",
                 PASSPHRASE_VAR, env=env)
    assert result.returncode == 0, result.stderr
    assert "state of 3 versions signed by key" in result.stdout
    assert cli("model", "verify", "--registry", backdoored.path, "tank").returncode == 0


# -- two approvers --------------------------------------------------------------------------------


def test_two_distinct_approvers(
    registry: Registry, tmp_path: Path, alice: signing.Signer, bob: signing.Signer
) -> None:
    registry.register("tank", write_model(tmp_path / "v1.onnx"), CANARY, SETTINGS, alice)
    registry.require_approvals(2, "alice", alice)
    assert registry.approvals_required() == 2

    first = registry.approve("tank", 1, "alice", alice)
    assert (first.approved, first.current) == (False, False)
    with pytest.raises(ModelNotApproved):
        registry.load_verified("tank", 1)
    with pytest.raises(RegistryStateError, match="has already approved it"):
        registry.approve("tank", 1, "alice again", alice)

    second = registry.approve("tank", 1, "bob", bob)
    assert (second.approved, second.current) == (True, True)
    assert second.approved_by == "alice, bob"
    assert registry.load_verified("tank").version.version == 1

    with pytest.raises(RegistryStateError, match="can only be raised"):
        registry.require_approvals(1, "bob", bob)


def test_the_dual_approval_rule_cannot_be_edited_away(
    registry: Registry, tmp_path: Path, alice: signing.Signer
) -> None:
    registry.register("tank", write_model(tmp_path / "v1.onnx"), CANARY, SETTINGS, alice)
    registry.require_approvals(2, "alice", alice)
    registry.approve("tank", 1, "alice", alice)
    # The same key's approval forged twice, or the rule deleted: both refused.
    document = read_index(registry)
    del document["state"][0]
    document["state"][0]["seq"] = 1
    write_index(registry, document)
    with pytest.raises(StateTampered):
        registry.load_verified("tank", 1)


def test_two_approvers_on_the_command_line(registry: Registry, tmp_path: Path,
                                           alice: signing.Signer,
                                           cli: Callable[..., Result]) -> None:
    registry.register("tank", write_model(tmp_path / "v1.onnx"), CANARY, SETTINGS, alice)
    env = {PASSPHRASE_VAR: PASSPHRASE.decode()}
    keys = tmp_path / "keys"

    def signed(*argv: str | Path, key: str) -> Result:
        return cli("model", *argv, "--key", keys / f"{key}.pem", "--passphrase-env",
                   PASSPHRASE_VAR, env=env)

    assert signed("require-approvals", "--registry", registry.path, "2", "--by", "alice",
                  key="alice").returncode == 0
    waiting = signed("approve", "--registry", registry.path, "tank", "1", "--by", "alice",
                     key="alice")
    assert waiting.returncode == 0
    assert "waits for another approver" in waiting.stdout
    again = signed("approve", "--registry", registry.path, "tank", "1", "--by", "alice",
                   key="alice")
    assert again.returncode == 1
    assert "a second approver must sign with their own key" in again.stderr
    done = signed("approve", "--registry", registry.path, "tank", "1", "--by", "bob", key="bob")
    assert done.returncode == 0
    assert "approved by alice, bob" in done.stdout


# -- keys -----------------------------------------------------------------------------------------


def test_keys_are_encrypted_at_rest(tmp_path: Path) -> None:
    pair = signing.generate_key(tmp_path / "k.pem", PASSPHRASE)
    text = pair.private_path.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert signing.load_private_key(pair.private_path, PASSPHRASE).key_id == pair.key_id
    with pytest.raises(signing.WrongPassphrase, match="wrong passphrase"):
        signing.load_private_key(pair.private_path, b"not the passphrase")
    with pytest.raises(signing.KeyFileError, match="at least 12 bytes"):
        signing.generate_key(tmp_path / "short.pem", b"short")


def write_legacy_key(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return signing.key_id(key.public_key())


def test_an_unencrypted_key_is_refused_and_can_be_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "old.pem"
    kid = write_legacy_key(path)
    with pytest.raises(signing.UnencryptedKey, match="model key-encrypt"):
        signing.load_private_key(path, PASSPHRASE)
    assert signing.encrypt_key_file(path, PASSPHRASE) == kid
    assert path.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert signing.load_private_key(path, PASSPHRASE).key_id == kid
    with pytest.raises(signing.KeyFileError, match="already encrypted"):
        signing.encrypt_key_file(path, PASSPHRASE)


def test_passphrase_errors_on_the_command_line(registry: Registry, tmp_path: Path,
                                               alice: signing.Signer,
                                               cli: Callable[..., Result]) -> None:
    registry.register("tank", write_model(tmp_path / "v1.onnx"), CANARY, SETTINGS, alice)
    key = tmp_path / "keys" / "alice.pem"
    base = ("model", "approve", "--registry", registry.path, "tank", "1", "--by", "alice",
            "--key", key)
    wrong = cli(*base, "--passphrase-env", PASSPHRASE_VAR, env={PASSPHRASE_VAR: "x" * 20})
    assert wrong.returncode == 2
    assert wrong.stderr == f"safety-gateway model approve: {key}: wrong passphrase (the key " \
        "cannot be decrypted with it)\n"
    unset = cli(*base, "--passphrase-env", "SG_TEST_NOT_SET")
    assert unset.returncode == 2
    assert "environment variable SG_TEST_NOT_SET is not set" in unset.stderr
    no_terminal = cli(*base)
    assert no_terminal.returncode == 2
    assert "no passphrase: give --passphrase-env VAR" in no_terminal.stderr

    legacy = tmp_path / "legacy.pem"
    write_legacy_key(legacy)
    refused = cli("model", "approve", "--registry", registry.path, "tank", "1", "--by", "a",
                  "--key", legacy, "--passphrase-env", PASSPHRASE_VAR,
                  env={PASSPHRASE_VAR: PASSPHRASE.decode()})
    assert refused.returncode == 2
    assert "stored unencrypted" in refused.stderr
    encrypted = cli("model", "key-encrypt", legacy, "--passphrase-env", PASSPHRASE_VAR,
                    env={PASSPHRASE_VAR: PASSPHRASE.decode()})
    assert encrypted.returncode == 0, encrypted.stderr
    for result in (wrong, unset, no_terminal, refused):
        assert "Traceback" not in result.stderr
    assert not registry.get("tank", 1).approved


def test_input_errors_of_the_state_commands(registry: Registry, alice: signing.Signer) -> None:
    with pytest.raises(RegistryInputError, match="approvals required must be 1 to 2"):
        registry.require_approvals(3, "alice", alice)
