"""The gateway loads its model from a registry: the current approved, signed version, or none
(fallback control) when the registry refuses it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

import gateway
from gateway.audit import read_records
from gateway.config.schema import ControllerKind
from gateway.registry import PolicySettings, Registry, generate_key
from gateway.registry.signing import Signer, load_private_key
from gateway.runtime.gateway import Gateway
from gateway.runtime.model_loading import load_model
from gateway.runtime.startup import open_records
from simulators.zoo import policies
from tests.runtime.test_northbound_handler import FakeDevice

if TYPE_CHECKING:
    from pathlib import Path


def _site(registry: Path):
    site = gateway.load_config("configs/water_tank.yaml")
    iface = policies.INTERFACES["water_tank"]
    controller = replace(
        site.controller, kind=ControllerKind.ONNX, registry=registry, name="tank",
        inputs=iface.inputs, outputs=iface.outputs, input_offset=iface.input_offset,
        input_scale=iface.input_scale, output_offset=iface.output_offset,
        output_scale=iface.output_scale)
    return replace(site, controller=controller)


PASSPHRASE = b"registry load passphrase"


def _key(tmp: Path) -> Signer:
    return load_private_key(tmp / "signer.pem", PASSPHRASE)


@pytest.fixture
def registry(tmp_path: Path) -> tuple[Registry, Path]:
    reg = Registry(tmp_path / "registry")
    keys = generate_key(tmp_path / "signer.pem", PASSPHRASE)
    model = tmp_path / "nominal.onnx"
    model.write_bytes(policies.build("water_tank", "nominal"))
    site = _site(tmp_path / "registry")
    reg.register("tank", model, policies.canary_inputs("water_tank"),
                 PolicySettings.from_controller(site.controller), _key(tmp_path))
    reg.trust_key(keys.public_path)
    return reg, tmp_path


def _load(site, audit: Path | None = None) -> Gateway:
    gw = Gateway(site, clients={"plc": FakeDevice()}, servers=False, startup_wait_s=0.0,
                 audit_path=audit)
    gw.records = open_records(site, audit, False)
    gw.ai.policy, gw.ai.wiring, gw.ai.canary = load_model(site, gw.records, audit, gw.ai.canary)
    return gw


def test_approved_version_loads_with_its_canary(registry):
    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    gw = _load(_site(tmp / "registry"))
    assert gw.policy is not None
    assert gw.policy.model_sha256 == reg.get("tank", 1).sha256
    assert gw.canary is not None and gw.canary.inputs.shape[0] > 0
    gw.policy.close()


@pytest.mark.parametrize(
    "spoil", ["unapproved", "revoked", "tampered", "untrusted", "unrevoked_by_hand", "legacy"]
)
def test_refused_model_means_fallback_control_and_an_audit_record(registry, spoil):
    reg, tmp = registry
    if spoil != "unapproved":
        reg.approve("tank", 1, "alice", _key(tmp))
    if spoil == "revoked":
        reg.revoke("tank", 1, "bob", "compromised supplier", _key(tmp))
    elif spoil == "tampered":
        (path,) = (tmp / "registry" / "models" / "tank" / "1").glob("model.onnx")
        path.write_bytes(policies.build("water_tank", "backdoor"))
    elif spoil == "untrusted":
        for pub in (tmp / "registry" / "trusted").glob("*.pub"):
            pub.unlink()
    elif spoil == "unrevoked_by_hand":
        # Issue 16: editing index.json un-revoked a revoked version and the gateway ran it.
        reg.revoke("tank", 1, "bob", "backdoor", _key(tmp))
        index_file = tmp / "registry" / "index.json"
        index = json.loads(index_file.read_text())
        index["versions"][0].update(revoked=False, revoked_by=None, revoked_at=None,
                                    revoked_reason=None)
        index_file.write_text(json.dumps(index))
    elif spoil == "legacy":
        # An index written before signed state: its approval is not trusted until resealed.
        index_file = tmp / "registry" / "index.json"
        index = json.loads(index_file.read_text())
        del index["state"]
        index["format"] = 1
        index_file.write_text(json.dumps(index))
    audit = tmp / "audit.db"
    gw = _load(_site(tmp / "registry"), audit)
    assert gw.policy is None  # the gateway runs on its fallback controllers
    gw.records.close()
    (load,) = [r for r in read_records(audit) if r.kind == "model_load"]
    assert '"accepted":false' in load.payload
    reason = {"unrevoked_by_hand": "tank v1 revoked = False, the signed records say True",
              "legacy": "model reseal"}.get(spoil)
    if reason is not None:
        assert reason in json.loads(load.payload)["reason"]


def test_an_older_registry_copy_put_back_is_refused(registry):
    # The revocation is genuine and signed, and the gateway has seen it (it refused the model
    # at its last start); an attacker then restores the index from before it (a consistent,
    # older signed state). The gateway remembers the state it saw last.
    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    index_file = tmp / "registry" / "index.json"
    before = index_file.read_bytes()
    audit = tmp / "audit.db"
    reg.revoke("tank", 1, "bob", "backdoor", _key(tmp))
    for expected in ("revoked", "state went back"):
        gw = _load(_site(tmp / "registry"), audit)
        assert gw.policy is None
        gw.records.close()
        loads = [r for r in read_records(audit) if r.kind == "model_load"]
        assert expected in json.loads(loads[-1].payload)["reason"]
        assert (tmp / "audit.db.registry-witness.json").is_file()
        index_file.write_bytes(before)
    # Without the witness, the older copy would load: it is genuinely signed.
    assert reg.load_verified("tank").version.version == 1


def test_settings_must_match_the_registered_ones(registry):
    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    site = _site(tmp / "registry")
    site = replace(site, controller=replace(site.controller, output_scale=(40.0, 40.0)))
    gw = _load(site)
    assert gw.policy is None


def test_config_says_registry_or_model_not_both(tmp_path):
    site = _site(tmp_path)
    with pytest.raises(ValueError, match="not both"):
        replace(site.controller, model=tmp_path / "m.onnx", sha256="0" * 64)


def test_rollback_is_what_loads_next(registry):
    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    model2 = tmp / "swapped.onnx"
    model2.write_bytes(policies.build("water_tank", "swapped"))
    site = _site(tmp / "registry")
    reg.register("tank", model2, policies.canary_inputs("water_tank"),
                 PolicySettings.from_controller(site.controller), _key(tmp))
    reg.approve("tank", 2, "alice", _key(tmp))
    assert _sha(site) == reg.get("tank", 2).sha256
    reg.rollback("tank", "carol", _key(tmp))
    assert _sha(site) == reg.get("tank", 1).sha256


def _sha(site) -> str:
    gw = _load(site)
    assert gw.policy is not None
    sha = gw.policy.model_sha256
    gw.policy.close()
    return sha


def test_gateway_open_close_leaves_a_verifiable_audit_log(registry):
    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    audit = tmp / "audit.db"

    async def body() -> None:
        gw = Gateway(_site(tmp / "registry"), clients={"plc": FakeDevice()}, servers=False,
                     startup_wait_s=0.0, audit_path=audit)
        await gw.open()
        await gw.close()

    asyncio.run(body())
    from gateway.audit import verify

    assert verify(audit).ok
    kinds = [r.kind for r in read_records(audit)]
    assert kinds[:2] == ["config_load", "model_load"]


def test_playbook_quarantine_refuses_shadow_and_auto_for_that_model(registry):
    from gateway.adapters.base import ClientInfo, Role
    from gateway.supervisor.events import Event, EventKind
    from gateway.supervisor.modes import Mode

    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    admin = ClientInfo("opcua", "127.0.0.1:4000", "alice", Role.ADMIN)

    async def body() -> None:
        gw = Gateway(_site(tmp / "registry"), clients={"plc": FakeDevice()}, servers=False,
                     startup_wait_s=0.0, audit_path=tmp / "audit.db")
        await gw.open()
        try:
            assert gw.policy is not None and gw.incidents is not None
            for name in gw.sensor_names:  # readings, so that a step can run
                gw.store.update(name, {"level": 2.5, "uptime_s": 10.0}.get(name, 0.004), True,
                                gw.clock())
            decision = await gw.cycle(gw.clock())
            # The canary detector trips (a swapped model): the default playbook contains it
            # and quarantines the model.
            trip = Event(decision.at_s, EventKind.TRIP, "canary", "golden outputs deviate",
                         None)
            gw.control.playbook.after(decision._replace(events=(trip,), mode=Mode.MANUAL))
            assert gw.quarantined is not None
            assert gw.quarantined[0] == gw.policy.model_sha256
            refused = await gw.request(admin, "to_shadow", None, None)
            assert not refused.accepted and "quarantined" in refused.reason
            allowed = await gw.request(admin, "to_manual", None, None)
            assert allowed.accepted  # only the way back to the AI is closed
            (incident,) = gw.incidents.incidents
            steps = {c.step: c.status for c in incident.containment}
            assert str(steps["quarantine_model"]) == "applied"
        finally:
            await gw.close()

    asyncio.run(body())


def test_playbook_rate_limit_is_applied_until_the_incident_is_resolved(registry, tmp_path):
    from gateway.supervisor.events import Event, EventKind
    from gateway.supervisor.modes import Mode

    reg, tmp = registry
    reg.approve("tank", 1, "alice", _key(tmp))
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(
        "name: slow\nrules:\n  - name: everything\n    match: ['*']\n"
        "    containment: [manual, {kind: rate_limit, factor: 0.5}]\n")

    async def body() -> None:
        gw = Gateway(_site(tmp / "registry"), clients={"plc": FakeDevice()}, servers=False,
                     startup_wait_s=0.0, audit_path=tmp / "audit.db", playbook=playbook)
        await gw.open()
        try:
            assert gw.supervisor is not None and gw.incidents is not None
            for name in gw.sensor_names:
                gw.store.update(name, {"level": 2.5, "uptime_s": 10.0}.get(name, 0.004), True,
                                gw.clock())
            decision = await gw.cycle(gw.clock())
            trip = Event(decision.at_s, EventKind.TRIP, "divergence.inflow_valve", "drift",
                         None)
            gw.control.playbook.after(decision._replace(events=(trip,), mode=Mode.MANUAL))
            assert gw.supervisor.rate_factor == 0.5
            (incident,) = gw.incidents.open_incidents
            gw.incidents.resolve(incident.id, "alice", "test", "understood")
            gw.control.playbook.after(decision)
            assert gw.supervisor.rate_factor == 1.0
        finally:
            await gw.close()

    asyncio.run(body())
