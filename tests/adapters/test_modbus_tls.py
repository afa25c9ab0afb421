"""Modbus/TCP Security on real TLS sockets: mutual authentication, the role from the client's
certificate (the Modbus role extension, or the subject's name), TLS 1.2 at least."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import struct
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pymodbus.client import AsyncModbusTlsClient

from gateway.adapters.base import Role
from gateway.adapters.modbus.map import NorthboundMap
from gateway.adapters.modbus.server import ModbusServer
from gateway.adapters.modbus.tls import ROLE_OID, identify
from gateway.config.schema import ModbusServerSpec, ModbusTlsSpec
from tests.adapters.test_modbus_server import ACTUATORS, SENSORS, Handler, recv, write_req

if TYPE_CHECKING:
    from pathlib import Path

NOW = datetime.datetime.now(datetime.UTC)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x0C, len(raw)]) + raw


class Pki:
    """A CA, the gateway's server certificate, and client certificates, in ``folder``."""

    def __init__(self, folder: Path, name: str = "site-ca") -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - datetime.timedelta(days=1))
                     .not_valid_after(NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_path = self._write(f"{name}.pem", self.cert, None)

    def _write(self, stem: str, cert: x509.Certificate, key: Any) -> Path:
        path = self.folder / stem
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (self.folder / (stem + ".key")).write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        return path

    def issue(self, cn: str, role: str | None = None, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - datetime.timedelta(days=1))
                   .not_valid_after(NOW + datetime.timedelta(days=30)))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        if role is not None:
            builder = builder.add_extension(x509.UnrecognizedExtension(ROLE_OID, _utf8(role)),
                                            False)
        cert = builder.sign(self.key, hashes.SHA256())
        path = self._write(f"{cn}.pem", cert, key)
        return path, self.folder / f"{cn}.pem.key"


def client_context(pki: Pki, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_path)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def serve(tmp_path: Path, handler: Handler) -> tuple[ModbusServer, Pki]:
    pki = Pki(tmp_path)
    cert, key = pki.issue("gateway", server=True)
    spec = ModbusServerSpec(host="127.0.0.1", tls=ModbusTlsSpec(
        certificate=cert, private_key=key, client_ca=pki.ca_path,
        roles=(("operator", "operator"), ("viewer", "viewer"), ("scada-1", "operator"))))
    server = ModbusServer(NorthboundMap(SENSORS, ACTUATORS, unit=1), spec, handler, port=0,
                          secure=True)
    return server, pki


async def write_one(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="127.0.0.1")
    try:
        writer.write(write_req(5, 0, [12.5]))
        return (await recv(reader))[2]
    finally:
        writer.transport.abort()


def test_roles_come_from_the_client_certificate(tmp_path: Path) -> None:
    async def main() -> None:
        handler = Handler()
        server, pki = serve(tmp_path, handler)
        async with server:
            assert not (await write_one(server.port, client_context(
                pki, pki.issue("hmi-7", role="operator"))))[0] & 0x80
            client, values, _ = handler.calls[-1]
            assert client.role is Role.OPERATOR and client.protocol == "modbus-tls"
            assert client.user == "hmi-7 (operator)" and values == {"inflow_valve": 12.5}
            # No role extension: the subject's name is looked up instead.
            assert not (await write_one(server.port, client_context(
                pki, pki.issue("scada-1"))))[0] & 0x80
            assert handler.calls[-1][0].user == "scada-1"
            # A viewer may read, never write.
            pdu = await write_one(server.port, client_context(pki, pki.issue("v", "viewer")))
            assert pdu[0] & 0x80
            assert len(handler.calls) == 2
    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("who", ["no certificate", "a stranger's CA", "an unmapped role"])
def test_unauthenticated_or_unauthorised_clients_are_refused(tmp_path: Path, who: str) -> None:
    async def main() -> None:
        handler = Handler()
        server, pki = serve(tmp_path, handler)
        if who == "no certificate":
            ctx = client_context(pki, None)
        elif who == "a stranger's CA":
            stranger = Pki(tmp_path, "stranger-ca")
            ctx = client_context(pki, stranger.issue("mallory", role="operator"))
        else:
            ctx = client_context(pki, pki.issue("eve", role="admin"))
        async with server:
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await write_one(server.port, ctx)
            assert handler.calls == []
    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_real_modbus_tls_client_reads_through_it(tmp_path: Path) -> None:
    async def main() -> None:
        server, pki = serve(tmp_path, Handler())
        server.set_sensor("level", 2.5)
        async with server:
            # The profile keeps the MBAP header inside TLS, as pymodbus's TLS framer does.
            client = AsyncModbusTlsClient("127.0.0.1", port=server.port, timeout=2, retries=0,
                                          sslctx=client_context(pki, pki.issue("r", "viewer")))
            try:
                assert await client.connect()
                rr = await client.read_input_registers(0, count=2, device_id=1)
                assert not rr.isError()
                assert struct.unpack(">f", struct.pack(">HH", *rr.registers))[0] == 2.5
            finally:
                client.close()
    asyncio.run(asyncio.wait_for(main(), 20))


def test_the_server_requires_tls_1_2_and_client_certificates(tmp_path: Path) -> None:
    server, _ = serve(tmp_path, Handler())
    ctx = server._tls
    assert ctx is not None
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_identify_rejects_malformed_role_extensions(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    path, _ = pki.issue("odd", role="operator")
    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    assert identify(der, {"operator": Role.OPERATOR}).role is Role.OPERATOR
    assert identify(der, {}).role is None
    assert identify(None, {"operator": Role.OPERATOR}).refusal == "no client certificate"
    assert identify(b"\x30\x03junk", {}).role is None


def test_the_running_gateway_serves_plain_and_tls_modbus_from_one_mirror(tmp_path: Path) -> None:
    from dataclasses import replace

    from pymodbus.client import AsyncModbusTcpClient

    from gateway.config.schema import Table
    from gateway.runtime.gateway import Gateway
    from simulators.plc_modbus import TestPLC
    from simulators.ports import free_port
    from tests.runtime.test_gateway_modbus import site_for

    async def main() -> None:
        pki = Pki(tmp_path)
        cert, key = pki.issue("gateway", server=True)
        async with TestPLC(holding=128) as plc:
            await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
            site = site_for(plc.port, free_port())
            assert site.northbound.modbus is not None
            tls_port = free_port()
            spec = replace(site.northbound.modbus, tls=ModbusTlsSpec(
                certificate=cert, private_key=key, client_ca=pki.ca_path,
                roles=(("viewer", "viewer"),), port=tls_port))
            site = replace(site, northbound=replace(site.northbound, modbus=spec))
            gw = Gateway(site)
            stop = asyncio.Event()
            runner = asyncio.create_task(gw.run(stop))
            secure = AsyncModbusTlsClient("127.0.0.1", port=tls_port, timeout=2, retries=0,
                                          sslctx=client_context(pki, pki.issue("r", "viewer")))
            plain = AsyncModbusTcpClient("127.0.0.1", port=spec.port, timeout=2, retries=0)
            try:
                await asyncio.wait_for(gw.ready.wait(), 30)
                assert await secure.connect() and await plain.connect()
                want = list(struct.unpack(">HH", struct.pack(">f", 2.5)))
                for _ in range(1000):  # until the level is mirrored (10 s at most)
                    rr = await secure.read_input_registers(0, count=2, device_id=1)
                    assert not rr.isError(), rr
                    if rr.registers == want:
                        break
                    await asyncio.sleep(0.01)
                got = await plain.read_input_registers(0, count=2, device_id=1)
                assert rr.registers == got.registers
                assert struct.unpack(">f", struct.pack(">HH", *rr.registers))[0] == 2.5
            finally:
                secure.close()
                plain.close()
                stop.set()
                await asyncio.wait_for(runner, 30)
    asyncio.run(asyncio.wait_for(main(), 60))
