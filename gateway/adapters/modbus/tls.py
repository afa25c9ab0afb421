"""Modbus/TCP Security (Modbus.org, "MB-TCP-Security"): the northbound Modbus server over TLS.

The profile: TLS 1.2 or later, mutual authentication with X.509 certificates (the client must
present one that chains to the site's client CA), port 802 by default, and the client's role
carried in its certificate in the Modbus role extension (OID 1.3.6.1.4.1.50316.802.1, an
ASN.1 UTF8String). The site maps role names to the gateway's roles; a certificate without the
extension is mapped by its subject's common name instead (``roles`` holds both kinds of key).
A certificate whose role (or name) the site does not map is refused: authentication alone
grants nothing (IEC 62443-3-3 SR 1.2, SR 2.1).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, NamedTuple

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.adapters.base import AdapterError, Role

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config.schema import ModbusTlsSpec

ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")
_UTF8STRING = 0x0C


class Identity(NamedTuple):
    """Who a TLS client is: the gateway role (None: refused), the name it is known by in
    logs and the audit trail, and why it was refused (empty when it was not)."""

    role: Role | None
    name: str
    refusal: str


def server_context(spec: ModbusTlsSpec) -> ssl.SSLContext:
    """The server's TLS context: TLS >= 1.2, client certificates required and verified
    against ``spec.client_ca``. Raises :class:`AdapterError` if a file cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(spec.certificate, spec.private_key)
        ctx.load_verify_locations(cafile=spec.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise AdapterError(f"modbus TLS: cannot load the server certificate, key or client "
                           f"CA: {exc}") from exc
    return ctx


def _utf8string(der: bytes) -> str:
    """Decode a DER UTF8String; ValueError if it is not one."""
    if len(der) < 2 or der[0] != _UTF8STRING:
        raise ValueError("not a UTF8String")
    length = der[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 2 or len(der) < 2 + n:
            raise ValueError("bad length")
        length = int.from_bytes(der[2 : 2 + n], "big")
        offset = 2 + n
    if len(der) != offset + length:
        raise ValueError("bad length")
    return der[offset:].decode("utf-8")


def identify(der: bytes | None, roles: Mapping[str, Role]) -> Identity:
    """The client's identity from its certificate (DER) and the site's role mapping."""
    if der is None:
        return Identity(None, "?", "no client certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return Identity(None, "?", f"unreadable client certificate: {exc}")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else cert.subject.rfc4514_string()
    try:
        ext = cert.extensions.get_extension_for_oid(ROLE_OID)
    except x509.ExtensionNotFound:
        role = roles.get(cn)
        if role is None:
            return Identity(None, cn, f"certificate {cn!r} has no Modbus role and its name is "
                                      f"not mapped to a role")
        return Identity(role, cn, "")
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    try:
        cert_role = _utf8string(raw)
    except (ValueError, UnicodeDecodeError):
        return Identity(None, cn, "certificate's Modbus role extension is malformed")
    role = roles.get(cert_role)
    if role is None:
        return Identity(None, cn, f"certificate role {cert_role!r} is not mapped to a role")
    return Identity(role, f"{cn} ({cert_role})", "")
