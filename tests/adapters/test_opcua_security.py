"""The northbound OPC UA server's channels, certificates and logins, attacked over real sockets
on 127.0.0.1 the way issue 16 found them open: a SecurityPolicy#None channel forced on a
SignAndEncrypt-only server, a stranger's self-signed certificate, 60 fast wrong passwords.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)

from gateway.adapters.opcua.pki import Pki
from gateway.adapters.opcua.server import OpcUaServer
from gateway.config.schema import (
    LoginThrottleSpec,
    OpcUaSecurity,
    OpcUaServerSpec,
    OpcUaUser,
    SecurityMode,
    SecurityPolicy,
)
from tests.adapters.test_opcua_server import (
    SITE,
    RecordingHandler,
    dbl,
    endpoint,
    make_cert,
    with_server,
    write_many,
)

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.adapters.opcua.security import SecurityEvent

G = "ns=2;s=Gateway."
CLIENT_URI = "urn:safety-gateway:test:client"


def secured_spec(tmp: Path, policy: SecurityPolicy = SecurityPolicy.BASIC256SHA256,
                 **kw: Any) -> OpcUaServerSpec:
    server_cert, server_key = make_cert(tmp, "server", "urn:safety-gateway:test:server")
    return OpcUaServerSpec(
        endpoint=endpoint(), allow_anonymous=False, pki=tmp / "pki",
        users=(OpcUaUser("boss", "SG_SEC_BOSS", "admin"),),
        security=OpcUaSecurity(policy=policy, mode=SecurityMode.SIGN_AND_ENCRYPT,
                               certificate=server_cert, private_key=server_key), **kw)


async def secure_client(spec: OpcUaServerSpec, cert: Path, key: Path, password: str,
                        policy: Any = SecurityPolicyBasic256Sha256) -> Client:
    client = Client(spec.endpoint, timeout=2)
    client.application_uri = CLIENT_URI
    assert spec.security.certificate is not None
    await client.set_security(policy, str(cert), str(key),
                              server_certificate=str(spec.security.certificate))
    client.set_user("boss")
    client.set_password(password)
    await asyncio.wait_for(client.connect(), 5)
    return client


def test_forced_none_channel_is_refused_before_any_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack: an asyncua client whose endpoint selection is patched to accept any
    endpoint opens a SecurityPolicy#None channel on a Basic256Sha256 SignAndEncrypt-only
    server and logs in as admin. No session may activate, no Write or Call may pass, nothing
    reaches the handler; discovery still answers; a trusted secured client still works."""
    monkeypatch.setenv("SG_SEC_BOSS", "boss-pw")
    spec = secured_spec(tmp_path)
    handler = RecordingHandler()
    server = OpcUaServer(with_server(SITE, spec), handler)
    events: list[SecurityEvent] = []
    server.add_security_listener(events.append)
    client_cert, client_key = make_cert(tmp_path, "client", CLIENT_URI)
    Pki(spec.pki).trust(str(client_cert))

    async def main() -> None:
        await server.start()
        try:
            # discovery on a None channel is allowed (Part 4, 5.4)
            probe = Client(spec.endpoint, timeout=2)
            endpoints = await asyncio.wait_for(probe.connect_and_get_server_endpoints(), 5)
            assert [e.SecurityPolicyUri.rpartition("#")[2] for e in endpoints] == [
                "Basic256Sha256"]

            # the attack: skip the client's endpoint check
            original = Client.find_endpoint
            monkeypatch.setattr(Client, "find_endpoint", staticmethod(
                lambda eps, mode, uri: next(iter(eps))))
            attacker = Client(spec.endpoint, timeout=2)
            attacker.set_user("boss")
            attacker.set_password("boss-pw")

            async def attack() -> None:
                await asyncio.wait_for(attacker.connect(), 5)
                # old code: the session is active; try what the attacker did
                await write_many(attacker, [(G + "Actuators.inflow_valve", dbl(5.0))])

            with pytest.raises((ua.UaError, OSError, TimeoutError, ConnectionError)):
                await attack()
            attacker.disconnect_socket()

            # a None channel without a session: Write and Call straight on the channel
            for request in ("write", "call"):
                raw = Client(spec.endpoint, timeout=2)
                await raw.connect_socket()
                await raw.send_hello()
                await raw.open_secure_channel()
                sent = (raw.uaclient.write_attributes(
                            [ua.NodeId.from_string(G + "Actuators.inflow_valve")],
                            [ua.DataValue(dbl(5.0))], ua.AttributeIds.Value)
                        if request == "write" else
                        raw.uaclient.call([ua.CallMethodRequest(
                            ObjectId=ua.NodeId.from_string(G[:-1]),
                            MethodId=ua.NodeId.from_string(G + "ResetTrip"))]))
                with pytest.raises((ua.UaError, OSError, TimeoutError, ConnectionError)):
                    await sent
                raw.disconnect_socket()
            monkeypatch.setattr(Client, "find_endpoint", original)

            assert handler.writes == [] and handler.requests == []
            refused = [e for e in events if e.kind == "channel_refused"]
            assert len(refused) >= 3, events
            assert all("None" in e.reason and e.source.startswith("127.0.0.1:")
                       for e in refused)

            # the legitimate secured client, trusted certificate, is served
            good = await secure_client(spec, client_cert, client_key, "boss-pw")
            assert await write_many(good, [(G + "Actuators.inflow_valve", dbl(5.0))]) == [
                "Good"]
            await good.disconnect()
            assert [w[0].user for w in handler.writes] == ["boss"]
        finally:
            await server.stop()

    asyncio.run(main())


def test_stranger_certificate_is_refused_and_kept_for_review(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate self-signed by a stranger opens no channel (was: served); it is kept in
    pki/rejected/certs and reported; once an operator trusts it, the same client is served."""
    monkeypatch.setenv("SG_SEC_BOSS", "boss-pw")
    spec = secured_spec(tmp_path)
    handler = RecordingHandler()
    server = OpcUaServer(with_server(SITE, spec), handler)
    events: list[SecurityEvent] = []
    server.add_security_listener(events.append)
    stranger_cert, stranger_key = make_cert(tmp_path, "stranger", CLIENT_URI)
    pki = Pki(spec.pki)

    async def main() -> None:
        await server.start()
        try:

            async def stranger() -> None:
                client = await secure_client(spec, stranger_cert, stranger_key, "boss-pw")
                # old code: connected; show what it could do
                await write_many(client, [(G + "Actuators.inflow_valve", dbl(5.0))])

            with pytest.raises((ua.UaError, OSError, TimeoutError, ConnectionError)):
                await stranger()
            assert handler.writes == []
            kept = list(pki.rejected.iterdir())
            assert len(kept) == 1 and kept[0].read_bytes() == stranger_cert.read_bytes()
            assert [e.kind for e in events] == ["certificate_refused"]
            assert "not trusted" in events[0].reason

            pki.trust(kept[0].stem[:12])
            assert list(pki.rejected.iterdir()) == []
            client = await secure_client(spec, stranger_cert, stranger_key, "boss-pw")
            assert await write_many(client, [(G + "Actuators.inflow_valve", dbl(5.0))]) == [
                "Good"]
            await client.disconnect()
        finally:
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize(("policy", "client_policy"), [
    (SecurityPolicy.AES128_SHA256_RSAOAEP, SecurityPolicyAes128Sha256RsaOaep),
    (SecurityPolicy.AES256_SHA256_RSAPSS, SecurityPolicyAes256Sha256RsaPss)])
def test_newer_policies_are_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    policy: SecurityPolicy, client_policy: Any) -> None:
    """Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss serve a trusted client; a client that
    asks for Basic256Sha256 on such an endpoint finds no endpoint."""
    monkeypatch.setenv("SG_SEC_BOSS", "boss-pw")
    spec = secured_spec(tmp_path, policy)
    handler = RecordingHandler()
    server = OpcUaServer(with_server(SITE, spec), handler)
    client_cert, client_key = make_cert(tmp_path, "client", CLIENT_URI)
    Pki(spec.pki).trust(str(client_cert))

    async def main() -> None:
        await server.start()
        try:
            client = await secure_client(spec, client_cert, client_key, "boss-pw", client_policy)
            assert await write_many(client, [(G + "Actuators.inflow_valve", dbl(5.0))]) == [
                "Good"]
            await client.disconnect()
            with pytest.raises((ua.UaError, OSError, TimeoutError)):
                await secure_client(spec, client_cert, client_key, "boss-pw")
        finally:
            await server.stop()

    asyncio.run(main())


def test_sixty_fast_wrong_passwords_are_throttled(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """60 wrong admin passwords sent at once (issue 16: all 60 were checked, in 6.8 s): only
    the first 5 are checked at once, the next wait 0.1, 0.2, 0.4 s, every later one is refused
    unchecked; each failure is reported with user, source and reason. Once the guessing
    stops, the right password works after a wait of at most max_delay_s."""
    monkeypatch.setenv("SG_SEC_BOSS", "boss-pw")
    spec = OpcUaServerSpec(endpoint=endpoint(), allow_anonymous=False,
                           users=(OpcUaUser("boss", "SG_SEC_BOSS", "admin"),),
                           allow_insecure_passwords=True,
                           login=LoginThrottleSpec(delay_s=0.1, max_delay_s=1.0))
    handler = RecordingHandler()
    server = OpcUaServer(with_server(SITE, spec), handler)
    events: list[SecurityEvent] = []
    server.add_security_listener(events.append)
    caplog.set_level(logging.INFO, logger="gateway.adapters.opcua")

    async def attempt(password: str) -> Client | None:
        client = Client(spec.endpoint, timeout=4)
        client.set_user("boss")
        client.set_password(password)
        try:
            await asyncio.wait_for(client.connect(), 8)
        except (ua.UaError, OSError, TimeoutError, ConnectionError):
            client.disconnect_socket()
            return None
        return client

    async def main() -> None:
        await server.start()
        try:
            results = await asyncio.gather(*(attempt(f"guess-{i}") for i in range(60)))
            assert results == [None] * 60
            checked = [r for r in caplog.records if "wrong password" in r.getMessage()]
            assert 5 <= len(checked) <= 9, len(checked)
            failed = [e for e in events if e.kind == "login_failed"]
            assert len(failed) == 60
            assert {(e.user, e.source.rpartition(":")[0]) for e in failed} == {
                ("boss", "127.0.0.1")}
            assert sum("too many failed logins" in e.reason for e in failed) == 60 - len(checked)

            # the real admin, once the guessing stopped: waits at most max_delay_s
            deadline = time.monotonic() + 10
            while server.guard.throttle.wait_s("boss", "127.0.0.1", time.monotonic()) > 1.0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            start = time.monotonic()
            client = await attempt("boss-pw")
            assert client is not None
            assert time.monotonic() - start < 1.0 + 2.0
            assert await write_many(client, [(G + "Actuators.inflow_valve", dbl(5.0))]) == [
                "Good"]
            await client.disconnect()
            assert server.guard.throttle.failures("boss", "127.0.0.1") == 0
        finally:
            await server.stop()

    asyncio.run(main())


def test_insecure_passwords_warned_at_start(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SG_SEC_BOSS", "boss-pw")
    spec = OpcUaServerSpec(endpoint=endpoint(), users=(OpcUaUser("boss", "SG_SEC_BOSS"),),
                           allow_insecure_passwords=True)
    server = OpcUaServer(with_server(SITE, spec), RecordingHandler())
    caplog.set_level(logging.WARNING, logger="gateway.adapters.opcua")

    async def main() -> None:
        await server.start()
        await server.stop()

    asyncio.run(main())
    assert any("cross the wire in clear" in r.getMessage() for r in caplog.records)


def test_deprecated_policy_offered_only_when_allowed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="deprecated"):
        secured_spec(tmp_path, SecurityPolicy.BASIC128RSA15)
    spec = secured_spec(tmp_path, SecurityPolicy.BASIC256, allow_deprecated_policies=True)
    assert dataclasses.replace(spec).security.policy is SecurityPolicy.BASIC256


def test_refusals_are_audited_by_the_running_gateway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong password and a forced None channel against the running gateway: both are
    records of kind ``security`` in its audit chain, with user, source and reason."""
    from gateway.audit.store import read_records
    from gateway.runtime.gateway import Gateway
    from tests.incident.test_via_gateway import Clock, Device

    monkeypatch.setenv("SG_SEC_BOSS", "boss-pw")
    spec = secured_spec(tmp_path)
    client_cert, client_key = make_cert(tmp_path, "client", CLIENT_URI)
    Pki(spec.pki).trust(str(client_cert))
    site = dataclasses.replace(with_server(SITE, spec))
    db = tmp_path / "audit.db"
    gw = Gateway(site, clock=Clock(), clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=db)

    async def main() -> None:
        await gw.open()
        try:
            with pytest.raises(ua.UaError):
                await secure_client(spec, client_cert, client_key, "guess")
            monkeypatch.setattr(Client, "find_endpoint", staticmethod(
                lambda eps, mode, uri: next(iter(eps))))
            attacker = Client(spec.endpoint, timeout=2)
            with pytest.raises((ua.UaError, OSError, TimeoutError, ConnectionError)):
                await asyncio.wait_for(attacker.connect(), 5)
            attacker.disconnect_socket()
        finally:
            await gw.close()

    asyncio.run(main())
    records = [(r.actor, r.source, r.data()) for r in read_records(db, kinds=("security",))]
    # Aggregated per client, event and reason (a flood must not fill the disk).
    shown = sorted((actor, source, {k: data[k] for k in ("event", "user", "count")})
                   for actor, source, data in records)
    assert shown == [
        ("", "opcua:127.0.0.1", {"event": "channel_refused", "user": None, "count": 1}),
        ("boss", "opcua:127.0.0.1", {"event": "login_failed", "user": "boss", "count": 1})]
    reasons = {data["event"]: data["reason"] for _, _, data in records}
    assert reasons["login_failed"] == "wrong password"
    assert "None" in reasons["channel_refused"]


def test_first_run_creates_the_application_certificate(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A site that names its certificate and key, neither yet existing: the server makes them
    at start (application URI in the SubjectAltName, paths relative to the site file) and
    serves a client that trusts it."""
    from gateway.adapters.opcua.client import certificate_uri
    from gateway.adapters.opcua.pki import application_uri
    from gateway.config.loader import load_config
    from tests.adapters.test_opcua_security_pki import site_file

    monkeypatch.chdir(tmp_path.parent)  # relative paths must not follow the working dir
    site = load_config(site_file(tmp_path, secured=True))
    spec = site.northbound.opcua
    assert spec is not None
    assert spec.pki == tmp_path / "pki"
    assert spec.security.certificate == tmp_path / "own" / "gw.der"
    spec = dataclasses.replace(spec, endpoint=endpoint())
    server = OpcUaServer(with_server(site, spec), RecordingHandler())

    async def main() -> None:
        await server.start()
        await server.stop()

    asyncio.run(main())
    assert spec.security.certificate is not None
    assert certificate_uri(spec.security.certificate.read_bytes()) == application_uri(
        site.site.name)
