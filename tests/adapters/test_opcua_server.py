"""The northbound OPC UA server over real sockets on 127.0.0.1.

An asyncua server takes ~2 s to start, so two rich tests share the work: one server that
requires users (None security), one that allows anonymous access over Basic256Sha256
SignAndEncrypt with certificates generated here (and read by our own device client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import logging
from typing import TYPE_CHECKING

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.adapters.base import (
    ACCEPTED,
    ClientInfo,
    NorthboundHandler,
    Role,
    TagStore,
    WriteOutcome,
)
from gateway.adapters.opcua.client import OpcUaDeviceClient
from gateway.adapters.opcua.pki import Pki
from gateway.adapters.opcua.server import OpcUaServer, _Users, opcua_nodes
from gateway.config.loader import load_config
from gateway.config.schema import (
    Northbound,
    OpcUaDevice,
    OpcUaRef,
    OpcUaSecurity,
    OpcUaServerSpec,
    OpcUaUser,
    SecurityMode,
    SecurityPolicy,
    Site,
    Tag,
    TagKind,
    WireType,
)
from simulators.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

SITE = load_config("configs/water_tank.yaml")
G = "ns=2;s=Gateway."


class RecordingHandler(NorthboundHandler):
    """Refuses setpoints above 50 (code 3) and the drain valve (code 2); refuses to_auto."""

    def __init__(self) -> None:
        self.writes: list[tuple[ClientInfo, dict[str, float], bool]] = []
        self.requests: list[tuple[ClientInfo, str, str | None, float | None]] = []

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        self.writes.append((client, dict(values), atomic))
        out = {}
        for tag, value in values.items():
            if tag == "drain_valve":
                out[tag] = WriteOutcome(False, 2, "drain valve is operator-only")
            elif value > 50:
                out[tag] = WriteOutcome(False, 3, "above max")
            else:
                out[tag] = ACCEPTED
        return out

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        self.requests.append((client, kind, detector, duration_s))
        if kind == "to_auto":
            return WriteOutcome(False, 2, "no clean shadow period yet")
        return ACCEPTED


def with_server(site: Site, spec: OpcUaServerSpec) -> Site:
    return dataclasses.replace(site, northbound=Northbound(opcua=spec))


def endpoint() -> str:
    return f"opc.tcp://127.0.0.1:{free_port()}/gateway/"


async def write_many(client: Client, items: list[tuple[str, ua.Variant]]) -> list[str]:
    ids = [ua.NodeId.from_string(n) for n, _ in items]
    results = await client.uaclient.write_attributes(
        ids, [ua.DataValue(v) for _, v in items], ua.AttributeIds.Value)
    return [r.name for r in results]


def M(name: str) -> ua.NodeId:  # noqa: N802 - reads like the node it names
    return ua.NodeId.from_string(G + name)


def dbl(value: float) -> ua.Variant:
    return ua.Variant(value, ua.VariantType.Double)


async def connect(url: str, user: str | None = None, password: str | None = None) -> Client:
    client = Client(url, timeout=2)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    await asyncio.wait_for(client.connect(), 5)
    return client


def test_opcua_nodes_is_pure_and_complete() -> None:
    nodes = opcua_nodes(SITE)
    by_tag = {n["tag"]: n for n in nodes}
    assert by_tag["level"] == {"tag": "level", "nodeid": G + "Sensors.level",
                               "writable": False, "kind": "sensor"}
    assert by_tag["inflow_valve"]["nodeid"] == G + "Actuators.inflow_valve"
    assert by_tag["inflow_valve"]["writable"] is True
    assert by_tag["Heartbeat"]["nodeid"] == G + "Status.Heartbeat"
    assert by_tag["ResetTrip"]["kind"] == "method"
    assert [n["writable"] for n in nodes].count(True) == len(SITE.actuators)


def test_user_manager_refuses_anonymous_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_PW", "s3cret")
    users = (OpcUaUser("op", "SG_TEST_PW", "operator"),)
    strict = _Users(OpcUaServerSpec(allow_anonymous=False, users=users,
                                    allow_insecure_passwords=True))
    assert strict.get_user(None) is None
    assert strict.get_user(None, "op", "wrong") is None
    assert strict.get_user(None, "nobody", "s3cret") is None
    user = strict.get_user(None, "op", "s3cret")
    assert user is not None and user.name == "op"
    lenient = _Users(OpcUaServerSpec(allow_anonymous=True))
    assert lenient.get_user(None) is not None


def test_server_with_users(monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    for env, value in (("SG_PW_BRAIN", "brain-pw"), ("SG_PW_OP", "op-pw"),
                       ("SG_PW_BOSS", "boss-pw"), ("SG_PW_EYE", "eye-pw")):
        monkeypatch.setenv(env, value)
    monkeypatch.delenv("SG_PW_GHOST", raising=False)
    spec = OpcUaServerSpec(endpoint=endpoint(), allow_anonymous=False, users=(
        OpcUaUser("brain", "SG_PW_BRAIN", "ai"), OpcUaUser("op", "SG_PW_OP", "operator"),
        OpcUaUser("boss", "SG_PW_BOSS", "admin"), OpcUaUser("eye", "SG_PW_EYE", "viewer"),
        OpcUaUser("ghost", "SG_PW_GHOST", "operator")), allow_insecure_passwords=True)
    handler = RecordingHandler()
    server = OpcUaServer(with_server(SITE, spec), handler)
    caplog.set_level(logging.INFO, logger="gateway.adapters.opcua")

    async def main() -> None:
        await server.start()
        url = server.endpoint
        try:
            # -- who may log in
            with pytest.raises(ua.UaError):  # the known bug class: anonymous still allowed
                await connect(url)
            with pytest.raises(ua.UaError):
                await connect(url, "op", "wrong")
            for _ in range(2):
                with pytest.raises(ua.UaError):
                    await connect(url, "ghost", "")
            ghost = [r.getMessage() for r in caplog.records if "SG_PW_GHOST" in r.getMessage()]
            # Once when the server started (the user is disabled), once at the first login.
            assert len(ghost) == 2, ghost
            assert "is disabled" in ghost[0] and "cannot log in" in ghost[1]

            # -- mirror API, read back by a client (initially: waiting for data)
            brain = await connect(url, "brain", "brain-pw")
            level = brain.get_node(G + "Sensors.level")
            valve = brain.get_node(G + "Actuators.inflow_valve")
            dv = await level.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.name == "BadWaitingForInitialData"
            # Not the configured start mode: no cycle has run, writes are refused.
            assert await brain.get_node(G + "Status.Mode").read_value() == "starting"
            await server.set_sensor("level", 2.5, True)
            await server.set_actuator("inflow_valve", 12.0)
            await server.set_status("shadow", True, 2**32 + 3, True)
            await server.set_rejection("inflow_valve: above max")
            assert await level.read_value() == 2.5
            assert await valve.read_value() == 12.0
            status = [await brain.get_node(G + f"Status.{n}").read_value() for n in
                      ("Mode", "Latched", "Heartbeat", "ActiveIncident", "LastRejection")]
            assert status == ["shadow", True, 3, True, "inflow_valve: above max"]
            detail = [await brain.get_node(G + f"Status.{n}").read_value() for n in
                      ("TripReason", "IncidentId", "Bypasses", "BypassExpiries")]
            assert detail == ["", "", [], []]
            until = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
            await server.set_status("manual", True, 4, True, trip_reason="ai_silent: silent",
                                    incident_id="INC-1", bypasses=[("deadline", until)])
            detail = [await brain.get_node(G + f"Status.{n}").read_value() for n in
                      ("TripReason", "IncidentId", "Bypasses", "BypassExpiries")]
            assert detail[:3] == ["ai_silent: silent", "INC-1", ["deadline"]]
            assert [d.replace(tzinfo=dt.UTC) for d in detail[3]] == [until]
            await server.set_sensor("level", 9.0, False)
            dv = await level.read_data_value(raise_on_bad_status=False)
            assert not dv.StatusCode.is_good()

            # -- one request, one answer per node; the handler sees each with the client
            results = await write_many(brain, [
                (G + "Actuators.inflow_valve", dbl(30.0)),
                (G + "Actuators.outflow_pump", dbl(80.0)),
                (G + "Actuators.drain_valve", dbl(1.0)),
                (G + "Sensors.level", dbl(1.0)),
                (G + "Status.Mode", ua.Variant("auto", ua.VariantType.String)),
                (G + "Actuators.inflow_valve", ua.Variant("x", ua.VariantType.String)),
                (G + "Actuators.outflow_pump", ua.Variant(7, ua.VariantType.Int32)),
            ])
            assert results == ["Good", "BadOutOfRange", "BadNotWritable", "BadNotWritable",
                               "BadNotWritable", "BadTypeMismatch", "Good"]
            seen = [(c.user, c.role, values, atomic) for c, values, atomic in handler.writes]
            assert seen == [("brain", Role.AI, {"inflow_valve": 30.0}, False),
                            ("brain", Role.AI, {"outflow_pump": 80.0}, False),
                            ("brain", Role.AI, {"drain_valve": 1.0}, False),
                            ("brain", Role.AI, {"outflow_pump": 7.0}, False)]
            client_info = handler.writes[0][0]
            assert client_info.protocol == "opcua"
            host, port = client_info.address.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
            # accepted is answered Good but the node still shows the applied (mirrored) value
            assert await valve.read_value() == 12.0

            # -- methods: AI may not change modes; operators may; admin-only resets
            request_mode = brain.get_node(G + "RequestMode")
            gateway = brain.get_node("ns=2;s=Gateway")
            with pytest.raises(ua.UaError, match="BadUserAccessDenied"):
                await gateway.call_method(request_mode, "auto")
            op = await connect(url, "op", "op-pw")
            og = op.get_node("ns=2;s=Gateway")
            assert await og.call_method(M("RequestMode"), "shadow") == [True, "applied"]
            assert await og.call_method(M("RequestMode"), "auto") == [
                False, "no clean shadow period yet"]
            with pytest.raises(ua.UaError, match="BadInvalidArgument"):
                await og.call_method(M("RequestMode"), "warp")
            with pytest.raises(ua.UaError, match="BadUserAccessDenied"):
                await og.call_method(M("ResetTrip"))
            boss = await connect(url, "boss", "boss-pw")
            bg = boss.get_node("ns=2;s=Gateway")
            assert await bg.call_method(M("ResetTrip")) == [True, "applied"]
            assert await bg.call_method(M("Bypass"), "divergence",
                                        ua.Variant(60.0, ua.VariantType.Double)) == [
                True, "applied"]
            assert await bg.call_method(M("EndBypass"), "divergence") == [True, "applied"]
            with pytest.raises(ua.UaError, match="BadInvalidArgument"):
                await bg.call_method(M("Bypass"), "divergence",
                                     ua.Variant(-1.0, ua.VariantType.Double))
            assert [(c.user, c.role, k, d, s) for c, k, d, s in handler.requests] == [
                ("op", Role.OPERATOR, "to_shadow", None, None),
                ("op", Role.OPERATOR, "to_auto", None, None),
                ("boss", Role.ADMIN, "reset_trip", None, None),
                ("boss", Role.ADMIN, "bypass", "divergence", 60.0),
                ("boss", Role.ADMIN, "end_bypass", "divergence", None)]

            # -- viewers read but do not write
            eye = await connect(url, "eye", "eye-pw")
            assert await write_many(eye, [(G + "Actuators.inflow_valve", dbl(1.0))]) == [
                "BadUserAccessDenied"]
            assert await eye.get_node(G + "Sensors.inflow_rate").read_data_value(
                raise_on_bad_status=False) is not None
            assert len(handler.writes) == 4
            for client in (brain, op, boss, eye):
                await client.disconnect()
        finally:
            await server.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- security


def make_cert(tmp: Path, name: str, uri: str) -> tuple[Path, Path]:
    """A self-signed RSA 2048 certificate with the application URI in its SubjectAltName
    (OPC UA Part 6, 6.2.2), as DER, and its key as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                     key_encipherment=True, data_encipherment=True,
                                     key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.der", tmp / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_sign_and_encrypt_anonymous_operator(tmp_path: Path) -> None:
    server_cert, server_key = make_cert(tmp_path, "server", "urn:safety-gateway:test:server")
    client_cert, client_key = make_cert(tmp_path, "client", "urn:safety-gateway:test:client")
    spec = OpcUaServerSpec(endpoint=endpoint(), allow_anonymous=True, security=OpcUaSecurity(
        policy=SecurityPolicy.BASIC256SHA256, mode=SecurityMode.SIGN_AND_ENCRYPT,
        certificate=server_cert, private_key=server_key), pki=tmp_path / "pki")
    Pki(spec.pki).trust(str(client_cert))  # the server trusts only listed client certificates
    handler = RecordingHandler()
    server = OpcUaServer(with_server(SITE, spec), handler)
    device = OpcUaDevice("gw", spec.endpoint, timeout_ms=2000, poll_ms=50, security=OpcUaSecurity(
        policy=SecurityPolicy.BASIC256SHA256, mode=SecurityMode.SIGN_AND_ENCRYPT,
        certificate=client_cert, private_key=client_key, server_certificate=server_cert))
    tags = (Tag("level", "gw", TagKind.SENSOR, OpcUaRef(G + "Sensors.level"), WireType.FLOAT64,
                range_min=0, range_max=10),
            Tag("valve", "gw", TagKind.ACTUATOR, OpcUaRef(G + "Actuators.inflow_valve"),
                WireType.FLOAT64, safe_value=0.0))

    async def main() -> None:
        await server.start()
        try:
            # an unsecured client finds no endpoint to talk to
            plain = Client(spec.endpoint, timeout=2)
            with pytest.raises((ua.UaError, OSError, TimeoutError)):
                await asyncio.wait_for(plain.connect(), 5)
            # a raw asyncua client over SignAndEncrypt, anonymous -> operator
            raw = Client(spec.endpoint, timeout=2)
            raw.application_uri = "urn:safety-gateway:test:client"
            await raw.set_security(SecurityPolicyBasic256Sha256, str(client_cert),
                                   str(client_key), server_certificate=str(server_cert))
            await asyncio.wait_for(raw.connect(), 5)
            assert await write_many(raw, [(G + "Actuators.inflow_valve", dbl(5.0))]) == ["Good"]
            await raw.disconnect()
            assert (handler.writes[0][0].user, handler.writes[0][0].role) == (
                None, Role.OPERATOR)
            # our own device client over the same secured endpoint
            await server.set_sensor("level", 4.25, True)
            store = TagStore(("level", "valve"))
            dev = OpcUaDeviceClient(device, tags, store, backoff_initial_s=0.05,
                                    backoff_max_s=0.2)
            task = asyncio.create_task(dev.run())
            for _ in range(200):
                if store.get("level").good:
                    break
                await asyncio.sleep(0.025)
            assert store.get("level").value == 4.25
            await dev.write({"valve": 7.5})
            assert handler.writes[-1][1] == {"inflow_valve": 7.5}
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await server.stop()

    asyncio.run(main())


def test_every_refusal_kind_has_its_own_status_code() -> None:
    from gateway.adapters.base import Refusal
    from gateway.adapters.opcua.server import _REFUSAL_STATUS

    assert set(_REFUSAL_STATUS) == set(Refusal)
    # Starting and stopping share "resource unavailable"; every other kind is distinct.
    codes = {v for k, v in _REFUSAL_STATUS.items() if k is not Refusal.STOPPING}
    assert len(codes) == len(Refusal) - 1


def test_shipped_site_users_with_an_unset_password_variable_are_disabled(caplog, monkeypatch):
    # The shipped sites define an admin and an operator; a variable left unset disables that
    # user with a warning at start (no crash, the other user works).
    monkeypatch.delenv("SAFETY_GATEWAY_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("SAFETY_GATEWAY_OPERATOR_PASSWORD", "shift-pw")
    for config in ("configs/water_tank.yaml", "configs/boiler.yaml"):
        site = load_config(config)
        spec = site.northbound.opcua
        assert spec is not None
        url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
        server = OpcUaServer(with_server(site, dataclasses.replace(spec, endpoint=url)),
                             RecordingHandler())
        caplog.clear()
        caplog.set_level(logging.WARNING, logger="gateway.adapters.opcua")

        async def main(server: OpcUaServer, url: str) -> None:
            await server.start()
            try:
                warnings = [r.getMessage() for r in caplog.records]
                assert any("'admin'" in m and "is disabled" in m
                           and "SAFETY_GATEWAY_ADMIN_PASSWORD is not set" in m
                           for m in warnings), warnings
                assert not any("'operator'" in m for m in warnings)
                with pytest.raises(ua.UaError):
                    await connect(url, "admin", "")
                shift = await connect(url, "operator", "shift-pw")
                assert await shift.get_node(G + "Status.Mode").read_value() == "starting"
                await shift.disconnect()
            finally:
                await server.stop()

        asyncio.run(main(server, url))
