"""Signed model rollout through the fleet, against a real nats-server and real gateways (the
safety core in this process, fed by a fake PLC, reached through the real request channel as
the communications process reaches it): a staged rollout lands in SHADOW on the staged sites
only; a tampered, unapproved or untrusted version is refused and audited and the running model
stays; a stopped rollout reaches no other site; the rollout never enters AUTO."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import socket
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pytest
from nats.js.errors import NoKeysError

import gateway
from gateway.audit import read_records
from gateway.config.schema import ControllerKind, FleetSpec
from gateway.fleet import models
from gateway.fleet.connection import connect
from gateway.fleet.rollout import run_rollout_watcher
from gateway.fleet.subjects import MODELS_BUCKET
from gateway.link.channel import ChannelClient, ChannelServer
from gateway.registry import PolicySettings, Registry, generate_key
from gateway.registry.signing import load_private_key
from gateway.runtime.gateway import Gateway
from gateway.runtime.model_loading import load_model
from gateway.runtime.startup import open_records
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind
from simulators.zoo import policies
from tests.runtime.test_northbound_handler import FakeDevice

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from gateway.config.schema import Site
    from gateway.registry.signing import Signer
    from tests.fleet.natsserver import NatsServer

PASSPHRASE = b"fleet rollout passphrase"
DEADLINE_S = 30.0


def _tank(tmp: Path, **controller: Any) -> Site:
    site = gateway.load_config("configs/water_tank.yaml")
    iface = policies.INTERFACES["water_tank"]
    spec = replace(site.controller, kind=ControllerKind.ONNX, inputs=iface.inputs,
                   outputs=iface.outputs, input_offset=iface.input_offset,
                   input_scale=iface.input_scale, output_offset=iface.output_offset,
                   output_scale=iface.output_scale, **controller)
    return replace(site, controller=spec)


@dataclass
class Central:
    tmp: Path
    registry: Registry

    def key(self) -> Signer:
        return load_private_key(self.tmp / "approver.pem", PASSPHRASE)

    def register(self, variant: str) -> int:
        model = self.tmp / f"{variant}.onnx"
        model.write_bytes(policies.build("water_tank", variant))
        settings = PolicySettings.from_controller(
            _tank(self.tmp, registry=self.registry.path, name="tank").controller)
        return self.registry.register("tank", model, policies.canary_inputs("water_tank"),
                                      settings, self.key()).version


def make_central(tmp: Path) -> Central:
    """A central registry with one approver's key in its trust store."""
    keys = generate_key(tmp / "approver.pem", PASSPHRASE)
    registry = Registry(tmp / "central-registry")
    registry.trust_key(keys.public_path)
    return Central(tmp, registry)


@pytest.fixture
def central(tmp_path: Path) -> Central:
    return make_central(tmp_path)


class SiteUnderTest:
    """One site: its gateway (safety core) and the core's end of the request channel; the
    communications end (``channel``) is what the watcher asks."""

    def __init__(self, tmp: Path, site_id: str, url: str, trusted: Path) -> None:
        folder = tmp / site_id
        folder.mkdir()
        running = folder / "running.onnx"
        running.write_bytes(policies.build("water_tank", "swapped"))
        sha = hashlib.sha256(running.read_bytes()).hexdigest()
        site = _tank(tmp, model=running, sha256=sha)
        site = replace(site, fleet=FleetSpec(url=url, site_id=site_id, trusted_keys=trusted,
                                             models_dir=folder / "models"))
        self.site = site
        self.audit = folder / "audit.db"
        self.running_sha = sha
        self.gw = Gateway(site, clients={"plc": FakeDevice()}, servers=False,
                          startup_wait_s=0.0, audit_path=self.audit)

    async def start(self) -> None:
        gw = self.gw
        gw.records = open_records(self.site, self.audit, False)
        gw.ai.policy, gw.ai.wiring, gw.ai.canary = load_model(self.site, gw.records,
                                                              self.audit, gw.ai.canary)
        assert gw.policy is not None and gw.policy.model_sha256 == self.running_sha
        for name, value in (("level", 2.5), ("inflow_rate", 0.01), ("demand", 0.004),
                            ("uptime_s", 1000.0)):
            gw.store.update(name, value, True, gw.clock())
        await gw.start_supervisor()
        core, comms = socket.socketpair()
        self.server = ChannelServer(core, gw)
        self.channel = ChannelClient(comms)
        await self.server.start()
        await self.channel.start()

    def close(self) -> list[dict[str, Any]]:
        """Close the audit log (the channel is closed in the loop); the site's rollout
        records."""
        if self.gw.policy is not None:
            self.gw.policy.close()
        self.gw.records.close()
        return [json.loads(r.payload) for r in read_records(self.audit)
                if r.kind == "rollout"]

    def requests(self) -> list[tuple[str, str, str]]:
        """The operator requests in the audit chain: who, what, the result."""
        return [(r.actor, json.loads(r.payload)["action"], json.loads(r.payload)["result"])
                for r in read_records(self.audit) if r.kind == "operator"]


async def _until(condition: Callable[[], bool], what: str,
                 seen: list[dict[str, Any]] | None = None) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}; events {seen}")
        await asyncio.sleep(0.02)


async def _fleet(server: NatsServer, sites: list[SiteUnderTest],
                 body: Callable[[Any, list[dict[str, Any]]], Awaitable[None]],
                 *, buckets: bool = True) -> None:
    """Start the sites and their watchers, collect the sites' rollout events on the centre's
    side, run ``body(js, events)``, stop everything. ``buckets=False``: the sites start
    before the centre has created its buckets."""
    central = await connect(FleetSpec(url=server.url, site_id="centre"))
    js = central.jetstream()
    if buckets:
        await models.ensure_buckets(js)
    events: list[dict[str, Any]] = []

    async def take(msg: Any) -> None:
        events.append(json.loads(msg.data))

    await central.subscribe("sg.site.*.event.rollout", cb=take)
    stop = asyncio.Event()
    clients = []
    tasks = []
    try:
        for site in sites:
            await site.start()
            assert site.site.fleet is not None
            client = await connect(site.site.fleet)
            clients.append(client)
            tasks.append(asyncio.create_task(
                run_rollout_watcher(client, site.site, site.channel, stop)))
        await body(js, events)
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, DEADLINE_S)
        for client in clients:
            await client.close()
        await central.close()
        for site in sites:
            site.channel.close()
            site.server.close()


def _steps(events: list[dict[str, Any]], site: str) -> list[str]:
    return [e["step"] for e in events if e["site"] == site]


def test_staged_rollout_lands_in_shadow_on_the_staged_sites_only_and_stops(
        nats_server: NatsServer, central: Central, tmp_path: Path) -> None:
    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    rolled = central.registry.get("tank", version).sha256
    sites = [SiteUnderTest(tmp_path, s, nats_server.url, central.registry.trusted_dir)
             for s in ("north", "south", "east")]
    north, south, east = sites

    async def body(js: Any, events: list[dict[str, Any]]) -> None:
        # North's AI is in control when the rollout arrives: it must leave AUTO, not stay.
        sup = north.gw.supervisor
        assert sup is not None
        sup.apply_request(OperatorRequest(RequestKind.TO_SHADOW, "op", True))
        clean = north.site.operation.clean_shadow_s
        sup.last_s += clean + 1.0  # a clean shadow period passed (the supervisor's clock)
        sup.apply_request(OperatorRequest(RequestKind.TO_AUTO, "op", True))
        assert north.gw.supervisor is not None and north.gw.supervisor.mode is Mode.AUTO

        await models.publish(js, central.registry, "tank", version, "release-manager")
        plan = await models.assign(js, ["north", "south", "east"], "tank", version, "rm",
                                   stage=2, rollout="r1")
        assert plan.assigned == ["north", "south"] and plan.pending == ["east"]
        await _until(lambda: all("loaded" in _steps(events, s) for s in ("north", "south")),
                     "loaded on north and south", events)
        for site in (north, south):
            gw = site.gw
            assert gw.supervisor is not None and gw.supervisor.mode is Mode.SHADOW
            assert gw.policy is not None and gw.policy.model_sha256 == rolled
            # New incidents, and a playbook's quarantine, name the model on trial.
            assert gw.incidents is not None and gw.incidents.model_sha256 == rolled
            assert gw.control is not None and gw.control.playbook is not None
            assert gw.control.playbook.model_sha256 == rolled
        # East was never assigned: nothing happened there.
        assert _steps(events, "east") == []
        assert east.gw.policy is not None and east.gw.policy.model_sha256 == east.running_sha
        assert east.gw.supervisor is not None and east.gw.supervisor.mode is Mode.MANUAL

        stopped, withdrawn = await models.stop(js, "r1", "rm", "a site reported oscillation")
        assert stopped.state == "stopped" and sorted(withdrawn) == ["north", "south"]
        with pytest.raises(models.RolloutError, match="stopped"):
            await models.advance(js, "r1", "rm")
        await _until(lambda: all("withdrawn" in _steps(events, s) for s in ("north", "south")),
                     "the withdrawals reported", events)
        assert _steps(events, "east") == []
        kv = await js.key_value("sg_assignments")
        for name in ("north", "south"):  # withdrawn: deleted, the history kept
            assert [e.operation for e in await kv.history(name)] == [None, "DEL"]
        with pytest.raises(NoKeysError):
            await kv.history("east")
        record = await js.subscribe(models.ROLLOUT_SUBJECTS, ordered_consumer=True)
        steps = []
        with contextlib.suppress(TimeoutError):
            while True:
                msg = await record.next_msg(timeout=1.0)
                steps.append(json.loads(msg.data)["step"])
        assert steps == ["published", "planned", "assigned", "stopped"]

    asyncio.run(_fleet(nats_server, sites, body))
    for site in (north, south):
        gw = site.gw
        assert gw.supervisor is not None and gw.supervisor.mode is Mode.SHADOW
        records = site.close()
        assert [r["step"] for r in records] == ["assigned", "fetched", "verified",
                                                 "load_shadow", "withdrawn"]
        assert records[3]["result"] == "loaded in shadow" and records[3]["sha256"] == rolled
    assert east.close() == []
    # The rollout took north's AI out of control, then put both on trial; never AUTO.
    rollout = "fleet rollout"
    assert [(w, a) for w, a, _ in north.requests()] == [(rollout, "to_manual"),
                                                        (rollout, "to_shadow")]
    assert north.requests()[0][2].startswith("applied: auto -> manual")
    assert [(w, a) for w, a, _ in south.requests()] == [(rollout, "to_shadow")]
    assert all(r[2].startswith("applied: manual -> shadow") for r in
               (north.requests()[1], south.requests()[0]))


@pytest.mark.parametrize("spoil", ["tampered", "unapproved", "untrusted"])
def test_a_bad_version_is_refused_audited_and_the_running_model_stays(
        nats_server: NatsServer, central: Central, tmp_path: Path, spoil: str) -> None:
    version = central.register("nominal")
    if spoil != "unapproved":
        central.registry.approve("tank", version, "alice", central.key())
    trusted = central.registry.trusted_dir
    if spoil == "untrusted":  # the site trusts another key only
        other = generate_key(tmp_path / "other.pem", PASSPHRASE)
        trusted = tmp_path / "site-trust"
        trusted.mkdir()
        shutil.copy(other.public_path, trusted / "other.pub")
    site = SiteUnderTest(tmp_path, "west", nats_server.url, trusted)

    async def body(js: Any, events: list[dict[str, Any]]) -> None:
        entry = central.registry.get("tank", version)
        if spoil == "unapproved":
            # Someone with write access to the store puts an unapproved version there (the
            # publish command refuses it).
            with pytest.raises(Exception, match="not approved"):
                await models.publish(js, central.registry, "tank", version, "mallory")
            await _put_by_hand(js, central, version, entry.sha256)
        else:
            await models.publish(js, central.registry, "tank", version, "rm")
        if spoil == "tampered":  # the model object replaced in the store after publishing
            store = await js.object_store(MODELS_BUCKET)
            await store.put(models.object_name("tank", version, "model.onnx"),
                            policies.build("water_tank", "backdoor"))
        await models.assign(js, ["west"], "tank", version, "rm", rollout="bad")
        await _until(lambda: "refused" in _steps(events, "west"), "refused", events)
        refusal = next(e for e in events if e["step"] == "refused")
        expected = {"tampered": "hash", "unapproved": "approval", "untrusted": "signature"}
        assert refusal["check"] == expected[spoil], refusal
        assert "loaded" not in _steps(events, "west")

    asyncio.run(_fleet(nats_server, [site], body))
    gw = site.gw
    assert gw.policy is not None and gw.policy.model_sha256 == site.running_sha
    assert gw.supervisor is not None and gw.supervisor.mode is Mode.MANUAL
    records = site.close()
    assert [r["step"] for r in records][-1] == "refused"
    assert not (tmp_path / "west" / "models" / f"tank-v{version}").exists()


async def _put_by_hand(js: Any, central: Central, version: int, sha: str) -> None:
    store = await js.object_store(MODELS_BUCKET)
    folder = central.registry.path / "models" / "tank" / str(version)
    for file in ("model.onnx", "canary.json", "signature"):
        await store.put(models.object_name("tank", version, file), (folder / file).read_bytes())
    await store.put(models.object_name("tank", version, "index.json"),
                    (central.registry.path / "index.json").read_bytes())
    manifest = models.Manifest("tank", version, sha, "0" * 64, "", "", None, None, "", "x")
    await store.put(models.object_name("tank", version, "manifest.json"), manifest.to_bytes())


def test_the_core_checks_again_and_refuses_what_the_communications_process_staged(
        central: Central, tmp_path: Path) -> None:
    # A compromised communications process stages a tampered model and asks the core to load
    # it: the core re-verifies with its own trust store and refuses; nothing changes.
    from gateway.registry.staged import stage

    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    site = SiteUnderTest(tmp_path, "lone", "nats://127.0.0.1:1", central.registry.trusted_dir)
    folder = central.registry.path / "models" / "tank" / str(version)
    files = {f: (folder / f).read_bytes() for f in ("canary.json", "signature")}
    files["model.onnx"] = policies.build("water_tank", "backdoor")
    files["index.json"] = (central.registry.path / "index.json").read_bytes()
    assert site.site.fleet is not None and site.site.fleet.models_dir is not None
    stage(site.site.fleet.models_dir, "tank", version, files)

    async def body() -> None:
        await site.start()
        outcome = await site.channel.rollout("load_shadow", {"name": "tank",
                                                             "version": str(version)})
        assert not outcome.accepted
        assert "hash" in outcome.reason and "was modified" in outcome.reason
        bad = await site.channel.rollout("load_shadow", {"name": "../etc", "version": "1"})
        assert not bad.accepted and "not a model name" in bad.reason
        site.channel.close()
        site.server.close()

    asyncio.run(body())
    gw = site.gw
    assert gw.policy is not None and gw.policy.model_sha256 == site.running_sha
    assert gw.supervisor is not None and gw.supervisor.mode is Mode.MANUAL
    records = site.close()
    assert [r["result"].split(":")[0] for r in records] == ["refused", "refused"]


def _stage_approved(central: Central, site: SiteUnderTest) -> int:
    """Stage an approved version in the site's folder as its watcher would."""
    from gateway.registry.staged import stage

    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    folder = central.registry.path / "models" / "tank" / str(version)
    files = {f: (folder / f).read_bytes() for f in ("model.onnx", "canary.json", "signature")}
    files["index.json"] = (central.registry.path / "index.json").read_bytes()
    assert site.site.fleet is not None and site.site.fleet.models_dir is not None
    stage(site.site.fleet.models_dir, "tank", version, files)
    return version


@pytest.mark.parametrize("state", ["safe_stop", "latched", "setpoint_held"])
def test_the_core_starts_no_trial_while_the_site_is_not_ready_for_one(
        central: Central, tmp_path: Path, state: str) -> None:
    site = SiteUnderTest(tmp_path, "busy", "nats://127.0.0.1:1", central.registry.trusted_dir)
    version = _stage_approved(central, site)

    async def body() -> tuple[str, str]:
        await site.start()
        gw = site.gw
        sup = gw.supervisor
        assert sup is not None
        if state == "safe_stop":
            sup.apply_request(OperatorRequest(RequestKind.TO_SAFE_STOP, "op", True))
        elif state == "latched":
            sup.modes.trip(sup.last_s, "canary", "test trip", Mode.MANUAL)
        else:
            sup.set_operator_setpoint(0, 20.0)
        before = sup.mode
        outcome = await site.channel.rollout("load_shadow", {"name": "tank",
                                                             "version": str(version)})
        assert not outcome.accepted
        assert sup.mode is before
        site.channel.close()
        site.server.close()
        return outcome.reason, str(before)

    reason, _ = asyncio.run(body())
    assert {"safe_stop": "safe_stop", "latched": "trip is latched",
            "setpoint_held": "holds setpoints"}[state] in reason
    assert site.gw.policy is not None and site.gw.policy.model_sha256 == site.running_sha
    (record,) = site.close()
    assert record["result"].startswith("refused: ")


def test_a_model_that_does_not_answer_its_golden_cases_is_refused(
        central: Central, tmp_path: Path) -> None:
    # The canary check compares the model that will run with the outputs the registry
    # recorded: another model in its place deviates.
    from gateway.control.onnx_policy import load_policy
    from gateway.registry.staged import StagedRefused, _run_canary

    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    verified = central.registry.load_verified("tank", version)
    other = tmp_path / "swapped.onnx"
    other.write_bytes(policies.build("water_tank", "swapped"))
    config = replace(verified.policy_config(20.0), model_path=other,
                     sha256=hashlib.sha256(other.read_bytes()).hexdigest())
    with load_policy(config) as policy, pytest.raises(StagedRefused) as caught:
        _run_canary(verified, policy)
    assert caught.value.kind == "canary" and "deviate" in str(caught.value)
    with load_policy(verified.policy_config(20.0)) as policy:
        _run_canary(verified, policy)  # the registered model answers them


def test_the_channel_carries_rollout_requests_and_closes_on_a_malformed_one() -> None:
    from gateway.adapters.base import NorthboundHandler, WriteOutcome
    from gateway.link.channel import encode

    class NoRollouts(NorthboundHandler):
        async def write(self, client: Any, values: dict[str, float], atomic: bool
                        ) -> dict[str, WriteOutcome]:
            raise AssertionError("not called")

        async def request(self, client: Any, kind: str, detector: str | None,
                          duration_s: float | None) -> WriteOutcome:
            raise AssertionError("not called")

    async def body() -> None:
        core, comms = socket.socketpair()
        server = ChannelServer(core, NoRollouts())
        client = ChannelClient(comms)
        await server.start()
        await client.start()
        outcome = await client.rollout("load_shadow", {"name": "tank", "version": "1"})
        assert not outcome.accepted and "takes no model rollouts" in outcome.reason
        # A hostile communications process sends args that are not texts: the core closes.
        assert client._proto.transport is not None
        client._proto.transport.write(encode({"id": 99, "op": "rollout", "action": "record",
                                              "args": {"step": 1}}))
        await asyncio.wait_for(server.wait_closed(), DEADLINE_S)
        assert "malformed" in server.reason
        client.close()

    asyncio.run(body())


def test_a_site_that_starts_before_the_centre_takes_the_rollout_once_it_comes(
        nats_server: NatsServer, central: Central, tmp_path: Path) -> None:
    version = central.register("nominal")
    central.registry.approve("tank", version, "alice", central.key())
    site = SiteUnderTest(tmp_path, "early", nats_server.url, central.registry.trusted_dir)

    async def body(js: Any, events: list[dict[str, Any]]) -> None:
        # The watcher is already running (and failing to find the bucket).
        await models.publish(js, central.registry, "tank", version, "rm")
        await models.assign(js, ["early"], "tank", version, "rm", rollout="late")
        await _until(lambda: "loaded" in _steps(events, "early"), "loaded", events)

    asyncio.run(_fleet(nats_server, [site], body, buckets=False))
    assert site.gw.supervisor is not None and site.gw.supervisor.mode is Mode.SHADOW
    site.close()


def test_the_core_verifies_off_its_loop_and_checks_again_after(
        central: Central, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading an ONNX session and running the canary take time: the core's loop (which runs
    # the cycles) must go on meanwhile, and a trip latched during the check stops the load.
    import threading

    import gateway.registry.staged as staged_module

    site = SiteUnderTest(tmp_path, "slow", "nats://127.0.0.1:1", central.registry.trusted_dir)
    version = _stage_approved(central, site)
    real = staged_module.verify_staged
    entered = threading.Event()
    release = threading.Event()

    def slow_verify(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(timeout=10)  # bounded: on a blocked loop nothing would ever release it
        return real(*args, **kwargs)

    monkeypatch.setattr(staged_module, "verify_staged", slow_verify)

    async def body() -> tuple[bool, str, int]:
        await site.start()
        sup = site.gw.supervisor
        assert sup is not None
        load = asyncio.create_task(site.channel.rollout(
            "load_shadow", {"name": "tank", "version": str(version)}))
        ticks = 0
        await _until(entered.is_set, "the core starts its check")
        deadline = asyncio.get_running_loop().time() + 10
        while ticks < 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            ticks += 1  # the loop runs while the check waits in its thread
        sup.modes.trip(sup.last_s, "canary", "tripped during the check", Mode.MANUAL)
        release.set()
        outcome = await load
        site.channel.close()
        site.server.close()
        return outcome.accepted, outcome.reason, ticks

    accepted, reason, ticks = asyncio.run(body())
    assert ticks == 5
    assert not accepted and "trip is latched" in reason
    assert site.gw.policy is not None and site.gw.policy.model_sha256 == site.running_sha
    (record,) = site.close()
    assert record["result"].startswith("refused: ")
