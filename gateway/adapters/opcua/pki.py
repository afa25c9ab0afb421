"""The OPC UA certificate store of the northbound server (a directory store after OPC UA
Part 12, F.1), and the gateway's own application instance certificate.

Layout under the store's root (``northbound.opcua.pki``, default ``pki``)::

    own/certs/gateway.der  own/private/gateway.pem   the gateway's certificate and key
    trusted/certs/   certificates trusted: a client's own (self-signed) certificate, or a CA
                     whose certificates are then trusted
    trusted/crl/     CRLs of the trusted CAs
    issuers/certs/   CAs used only to build a chain up to a trusted certificate
    issuers/crl/     their CRLs
    rejected/certs/  client certificates that were refused, kept for review
                     (``safety-gateway certs trust`` moves one to trusted)

A client certificate is trusted when it is itself in ``trusted/certs`` (same bytes), or when
its chain, built from ``issuers/certs`` and ``trusted/certs`` by issuer name and checked by
signature, reaches a certificate in ``trusted/certs``; every certificate of the chain must be
within its validity period, and none may be listed in a CRL of its issuer whose signature
verifies (a CA with no CRL in the store is not checked for revocation). Files are read at each
validation (the store is small and a refusal must reflect what the operator just trusted).

No asyncua here: cryptography and files only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_REJECTED: Final = 256
"""At most this many refused certificates are kept (a stranger must not fill the disk)."""
_MAX_CHAIN: Final = 6
_CERT_SUFFIXES: Final = (".der", ".pem", ".crt", ".cer")
_CRL_SUFFIXES: Final = (".crl", ".der", ".pem")


class PkiError(ValueError):
    """A file of the store, or one given to it, is not a usable certificate or key."""


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    reason: str


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER bytes, hex (OPC UA's certificate thumbprint, Part 4, 7.38)."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER),
                        usedforsecurity=False).hexdigest()


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from DER or PEM bytes; ``PkiError`` otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"not a certificate: {exc}") from None


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def subject_name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


class Pki:
    """The store rooted at ``root``; :meth:`ensure` creates its folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.own_cert = root / "own" / "certs" / "gateway.der"
        self.own_key = root / "own" / "private" / "gateway.pem"
        self.trusted = root / "trusted" / "certs"
        self.trusted_crl = root / "trusted" / "crl"
        self.issuers = root / "issuers" / "certs"
        self.issuers_crl = root / "issuers" / "crl"
        self.rejected = root / "rejected" / "certs"

    def ensure(self) -> None:
        for folder in (self.own_cert.parent, self.own_key.parent, self.trusted,
                       self.trusted_crl, self.issuers, self.issuers_crl, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        self.own_key.parent.chmod(0o700)

    # ----------------------------------------------------------------- reading

    @staticmethod
    def _certs(folder: Path) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in _CERT_SUFFIXES and path.is_file():
                    try:
                        certs.append(load_certificate(path.read_bytes()))
                    except PkiError:
                        continue  # listed as unreadable by `certs list`; never trusted
        return certs

    def _crls(self) -> list[x509.CertificateRevocationList]:
        crls: list[x509.CertificateRevocationList] = []
        for folder in (self.trusted_crl, self.issuers_crl):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() in _CRL_SUFFIXES and path.is_file():
                        try:
                            crls.append(_load_crl(path.read_bytes()))
                        except ValueError:
                            continue
        return crls

    def validate(self, der: bytes, now: datetime) -> Verdict:
        """Is the client certificate ``der`` trusted at ``now``? See the module docstring."""
        try:
            cert = load_certificate(der)
        except PkiError as exc:
            return Verdict(False, str(exc))
        trusted = self._certs(self.trusted)
        trusted_der = {c.public_bytes(serialization.Encoding.DER) for c in trusted}
        issuers = trusted + self._certs(self.issuers)
        crls = self._crls()
        chain = cert
        for _ in range(_MAX_CHAIN):
            if not chain.not_valid_before_utc <= now <= chain.not_valid_after_utc:
                return Verdict(False, f"{subject_name(chain)} is outside its validity period")
            if chain.public_bytes(serialization.Encoding.DER) in trusted_der:
                return Verdict(True, f"trusted via {subject_name(chain)}")
            issuer = next((c for c in issuers if c.subject == chain.issuer
                           and c.subject != chain.subject and _issued(chain, c)), None)
            if issuer is None:
                return Verdict(False, f"{subject_name(chain)} is not trusted (no trusted "
                                      "certificate or issuer in the store)")
            for crl in crls:
                if (crl.issuer == issuer.subject and _crl_signed_by(crl, issuer)
                        and crl.get_revoked_certificate_by_serial_number(chain.serial_number)
                        is not None):
                    return Verdict(False, f"{subject_name(chain)} is revoked by "
                                          f"{subject_name(issuer)}'s CRL")
            chain = issuer
        return Verdict(False, "certificate chain too long")

    def reject(self, der: bytes) -> Path | None:
        """Keep a refused certificate in ``rejected/certs`` for review (at most
        :data:`MAX_REJECTED` files); returns its path, or None if not kept."""
        try:
            cert = load_certificate(der)
        except PkiError:
            return None
        self.rejected.mkdir(parents=True, exist_ok=True)
        path = self.rejected / f"{thumbprint(cert)}.der"
        if not path.exists():
            if sum(1 for _ in self.rejected.iterdir()) >= MAX_REJECTED:
                return None
            path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return path

    def listing(self) -> list[tuple[str, str, str, str]]:
        """(folder, file name, subject, thumbprint or error) for every file of the store."""
        rows: list[tuple[str, str, str, str]] = []
        for label, folder in (("own", self.own_cert.parent), ("trusted", self.trusted),
                              ("issuers", self.issuers), ("rejected", self.rejected)):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not path.is_file():
                    continue
                try:
                    cert = load_certificate(path.read_bytes())
                except PkiError as exc:
                    rows.append((label, path.name, "(unreadable)", str(exc)))
                    continue
                rows.append((label, path.name, subject_name(cert), thumbprint(cert)))
        return rows

    def find(self, ref: str) -> Path:
        """A certificate file named by path, file name or thumbprint prefix (at least 8 hex
        digits) in rejected/ or trusted/; ``PkiError`` if none or several match."""
        given = Path(ref)
        if given.is_file():
            return given
        matches = []
        for folder in (self.rejected, self.trusted):
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.name == ref or (len(ref) >= 8 and path.stem.startswith(ref.lower())):
                        matches.append(path)
        if len(matches) != 1:
            raise PkiError(f"{ref!r} names {len(matches)} certificates in {self.root} "
                           "(give a path, a file name or a thumbprint prefix)")
        return matches[0]

    def trust(self, ref: str) -> Path:
        """Copy (from elsewhere) or move (from rejected/) a certificate into trusted/."""
        source = self.find(ref)
        cert = load_certificate(source.read_bytes())
        self.ensure()
        target = self.trusted / f"{thumbprint(cert)}.der"
        target.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        if source.parent == self.rejected and source != target:
            source.unlink()
        return target

    def reject_file(self, ref: str) -> Path:
        """Move a certificate out of trusted/ (or copy one from elsewhere) into rejected/."""
        source = self.find(ref)
        cert = load_certificate(source.read_bytes())
        self.ensure()
        target = self.rejected / f"{thumbprint(cert)}.der"
        target.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        if source.parent == self.trusted and source != target:
            source.unlink()
        return target


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    return crl.is_signature_valid(key)


def create_certificate(cert_path: Path, key_path: Path, application_uri: str, name: str,
                       now: datetime, days: int = 3650, hosts: tuple[str, ...] = ()
                       ) -> x509.Certificate:
    """A self-signed RSA 2048 / SHA-256 application instance certificate (OPC UA Part 6,
    6.2.2): the application URI and ``hosts`` (default: this host's name and 127.0.0.1) in
    its SubjectAltName, key usages for signing and key encipherment, server and client
    authentication. Writes DER to ``cert_path`` and the key as PEM (mode 0600) to
    ``key_path``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "safety-gateway")])
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hosts or (socket.gethostname(), "127.0.0.1"):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                         key_encipherment=True, data_encipherment=True,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert


def application_uri(site_name: str) -> str:
    """The gateway's OPC UA application URI for a site. Distinct from the address space's
    namespace URI (``urn:safety-gateway:<site>``): asyncua puts the application URI at
    namespace index 1, and the gateway's nodes must stay at index 2."""
    return f"urn:safety-gateway:{site_name}:server"


def now_utc() -> datetime:
    return datetime.now(UTC)
