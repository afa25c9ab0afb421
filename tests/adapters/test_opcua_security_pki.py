"""The OPC UA certificate store (trust list, issuers, CRLs, rejected) and ``certs`` CLI."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway import adapters
from gateway.adapters.opcua import pki as opcua_pki
from gateway.adapters.opcua.pki import Pki, application_uri
from gateway.cli import main

if TYPE_CHECKING:
    import pytest

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
ROOT = Path(adapters.__file__).parents[2]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make(name: str, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
         ca: bool = False, days: int = 30) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))
    return cert, key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def put(folder: Path, cert: x509.Certificate, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.der"
    path.write_bytes(der(cert))
    return path


def crl(issuer: tuple[x509.Certificate, rsa.RSAPrivateKey], *revoked: x509.Certificate
        ) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer[0].subject)
               .last_update(NOW - dt.timedelta(days=1)).next_update(NOW + dt.timedelta(days=7)))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(NOW - dt.timedelta(hours=1)).build())
    return builder.sign(issuer[1], hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_self_signed_trusted_only_when_listed(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.ensure()
    client, _ = make("client")
    stranger, _ = make("client")  # same name, another key: a stranger's look-alike
    put(pki.trusted, client, "client")
    assert pki.validate(der(client), NOW).trusted
    verdict = pki.validate(der(stranger), NOW)
    assert not verdict.trusted and "not trusted" in verdict.reason
    assert not pki.validate(der(client), NOW + dt.timedelta(days=31)).trusted  # expired
    assert not pki.validate(b"junk", NOW).trusted


def test_chain_through_issuers_to_a_trusted_ca_and_crls(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.ensure()
    root = make("plant root CA", ca=True)
    sub = make("plant issuing CA", issuer=root, ca=True)
    leaf, _ = make("hmi-1", issuer=sub)
    other, _ = make("hmi-2", issuer=sub)
    put(pki.trusted, root[0], "root")
    assert not pki.validate(der(leaf), NOW).trusted  # the issuing CA is unknown
    put(pki.issuers, sub[0], "sub")
    assert pki.validate(der(leaf), NOW).trusted
    # a CRL signed by someone else is ignored; the issuing CA's own CRL is honoured
    forger = make("plant issuing CA", ca=True)
    (pki.issuers_crl / "forged.crl").write_bytes(crl(forger, leaf))
    assert pki.validate(der(leaf), NOW).trusted
    (pki.issuers_crl / "sub.crl").write_bytes(crl(sub, leaf))
    verdict = pki.validate(der(leaf), NOW)
    assert not verdict.trusted and "revoked" in verdict.reason
    assert pki.validate(der(other), NOW).trusted
    # revoking the issuing CA at the root cuts every certificate under it
    (pki.trusted_crl / "root.crl").write_bytes(crl(root, sub[0]))
    assert not pki.validate(der(other), NOW).trusted


def test_refused_certificates_are_kept_once_and_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opcua_pki, "MAX_REJECTED", 3)
    pki = Pki(tmp_path)
    cert, _ = make("stranger")
    path = pki.reject(der(cert))
    assert path is not None and path.read_bytes() == der(cert)
    assert pki.reject(der(cert)) == path
    for i in range(3):
        pki.reject(der(make(f"s{i}")[0]))
    assert len(list(pki.rejected.iterdir())) == 3


def site_file(tmp_path: Path, secured: bool) -> Path:
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    security = ("    security: {policy: Basic256Sha256, mode: sign_and_encrypt, "
                "certificate: own/gw.der, private_key: own/gw.pem}\n" if secured else "")
    text = text.replace("    allow_anonymous: true\n",
                        "    allow_anonymous: true\n    pki: pki\n" + security)
    text = text.replace("../reports/", str(tmp_path) + "/")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_certs_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = site_file(tmp_path, secured=True)
    assert main(["certs", "create", str(site), "--host", "gw.plant.local"]) == 0
    out = capsys.readouterr().out
    assert f"application URI {application_uri(_site_name(site))}\n" in out
    cert = x509.load_der_x509_certificate((tmp_path / "own" / "gw.der").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        application_uri(_site_name(site))]
    assert san.get_values_for_type(x509.DNSName) == ["gw.plant.local"]
    assert stat.S_IMODE((tmp_path / "own" / "gw.pem").stat().st_mode) == 0o600
    assert main(["certs", "create", str(site)]) == 1  # kept unless --force
    capsys.readouterr()

    pki = Pki(tmp_path / "pki")
    client, _ = make("hmi")
    kept = pki.reject(der(client))
    assert kept is not None
    assert main(["certs", "list", str(site)]) == 0
    assert f"rejected  {kept.name}  CN=hmi" in capsys.readouterr().out
    assert main(["certs", "trust", str(site), kept.stem[:10]]) == 0
    assert [p.name for p in pki.trusted.iterdir()] == [kept.name]
    assert list(pki.rejected.iterdir()) == []
    assert pki.validate(der(client), dt.datetime.now(dt.UTC)).trusted
    assert main(["certs", "reject", str(site), kept.name]) == 0
    assert list(pki.trusted.iterdir()) == []
    assert not pki.validate(der(client), dt.datetime.now(dt.UTC)).trusted
    capsys.readouterr()
    assert main(["certs", "trust", str(site), "deadbeef00"]) == 1
    assert "names 0 certificates" in capsys.readouterr().err
    assert main(["certs", "list", str(tmp_path / "missing.yaml")]) == 2


def _site_name(path: Path) -> str:
    from gateway.config.loader import load_config

    return load_config(path).site.name
