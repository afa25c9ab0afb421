"""The dashboard over HTTPS (``northbound.http.certificate`` and ``private_key``): TLS 1.2 or
later, and the session cookie marked Secure."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from typing import TYPE_CHECKING

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config.schema import HttpServerSpec
from gateway.ops.http import COOKIE, Dashboard, ssl_context
from simulators.ports import free_port
from tests.ops.test_margins import SITE

if TYPE_CHECKING:
    from pathlib import Path


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "web.pem", folder / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_serves_the_page_and_marks_the_cookie_secure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SAFETY_GATEWAY_ADMIN_PASSWORD", "admin-pw")  # a water-tank user

    async def main() -> None:
        dash = Dashboard(SITE, HttpServerSpec(port=free_port(), certificate=cert,
                                              private_key=key))
        await dash.start()
        base = f"https://127.0.0.1:{dash.port}"
        trusted = ssl.create_default_context(cafile=str(cert))
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=trusted),
                    cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                async with http.get(base + "/api/state") as r:
                    assert r.status == 200
                    assert (await r.json())["site"]["site"] == "water-tank"
                async with http.post(base + "/api/login", json={
                        "user": "admin", "password": "admin-pw"}) as r:
                    assert r.status == 200
                    cookie = r.cookies[COOKIE]
                assert cookie["secure"] and cookie["httponly"]
                # Plain HTTP on the HTTPS port gets nothing useful.
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{dash.port}/api/state") as r:
                        await r.read()
        finally:
            await dash.stop()

    asyncio.run(main())
    # TLS older than 1.2 is not offered (a client cannot even ask for it without a warning
    # from Python itself, so the server's context is read here).
    context = ssl_context(HttpServerSpec(certificate=cert, private_key=key))
    assert context is not None and context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_a_missing_certificate_fails_start_with_an_os_error(tmp_path: Path) -> None:
    async def main() -> None:
        dash = Dashboard(SITE, HttpServerSpec(port=free_port(), certificate=tmp_path / "no.pem",
                                              private_key=tmp_path / "no.key"))
        with pytest.raises(OSError, match=r"No such file|no\.pem"):
            await dash.start()

    asyncio.run(main())
