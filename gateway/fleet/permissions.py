"""Who may do what on the fleet's NATS server: a TLS configuration with one client certificate
per site, each site confined to its own subjects, and a central user who reads everything but
writes no site's records.

``safety-gateway fleet nats-config --sites a,b --out DIR [--host NAME] [--port 4222]`` writes
into ``DIR``:

- ``ca.pem``/``ca.key``: a certificate authority for the fleet (keep the key offline);
- ``server.pem``/``server.key``: the server's certificate for ``--host`` (and 127.0.0.1);
- ``<site>.pem``/``<site>.key`` per site, ``central.pem``/``central.key`` (the central
  consumer: status, verify, commands, model registry) and ``fleet-admin.pem``/``.key``
  (``fleet init``: creates and updates streams): client
  certificates whose subject is ``CN=<name>,OU=safety-gateway-fleet``; the server maps each to
  its user (``verify_and_map``), so a connection's rights follow from the certificate alone;
- ``nats-server.conf``: TLS required with client certificates, JetStream, and the users below.

A site user may publish only:

- ``sg.site.<site>.>`` (its audit records, events, heads, status, metrics);
- the JetStream API subjects to read its own stream's state and last messages:
  ``$JS.API.STREAM.INFO.SG_<site>``, ``$JS.API.STREAM.MSG.GET.SG_<site>``;
- its own key of the model assignments bucket, by direct get:
  ``$JS.API.DIRECT.GET.KV_sg_assignments.$KV.sg_assignments.<site>`` (and the bucket's
  ``$JS.API.STREAM.INFO.KV_sg_assignments`` to bind to it);
- the model object store, read only: ``$JS.API.STREAM.INFO.OBJ_sg_models``,
  ``$JS.API.STREAM.MSG.GET.OBJ_sg_models``, ``$JS.API.DIRECT.GET.OBJ_sg_models.>``,
  ``$JS.API.CONSUMER.CREATE.OBJ_sg_models[.>]``, ``$JS.API.CONSUMER.DELETE.OBJ_sg_models.>``
  and flow control ``$JS.FC.OBJ_sg_models.>`` (an ordered consumer reads the chunks);
- replies to requests it received (``allow_responses``: the centre's commands).

and subscribe only to ``_INBOX.>`` (answers, consumer deliveries) and its own commands
``sg.site.<site>.cmd.>``. The central user may subscribe to anything and use the JetStream
API, but may not publish any site's ``audit``, ``event`` or ``heads`` subjects (the records
the centre holds come from the sites only), nor create, update, purge or delete a site's
stream or delete a message in one. The administrator may create and update the sites'
streams, never purge or delete them, nor write a site's records. (The streams also deny
delete and purge themselves.)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.fleet.subjects import ASSIGNMENTS_BUCKET, MODELS_BUCKET, SiteSubjects

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

CENTRAL: Final = "central"
ADMIN: Final = "fleet-admin"
_SITE_RECORDS: Final = ("sg.site.*.audit", "sg.site.*.event.>", "sg.site.*.heads")


def _stream_changes(sites: list[str], verbs: tuple[str, ...]) -> list[str]:
    # Stream names are one subject token: no wildcard matches "SG_" names only, so each
    # site's stream is listed (other streams, e.g. the model buckets, stay manageable).
    return [f"$JS.API.STREAM.{verb}.{SiteSubjects(site).stream}"
            for site in sites for verb in verbs]
OU: Final = "safety-gateway-fleet"


def user_name(name: str) -> str:
    """The user a client certificate for ``name`` maps to (its subject, RFC 4514)."""
    return f"CN={name},OU={OU}"


def site_permissions(site: str) -> dict[str, Any]:
    """The nats-server permissions of site ``site`` (see the module docstring)."""
    names = SiteSubjects(site)
    kv, obj = f"KV_{ASSIGNMENTS_BUCKET}", f"OBJ_{MODELS_BUCKET}"
    return {
        "publish": {"allow": [
            names.all,
            f"$JS.API.STREAM.INFO.{names.stream}",
            f"$JS.API.STREAM.MSG.GET.{names.stream}",
            f"$JS.API.STREAM.INFO.{kv}",
            f"$JS.API.DIRECT.GET.{kv}.$KV.{ASSIGNMENTS_BUCKET}.{site}",
            f"$JS.API.STREAM.INFO.{obj}",
            f"$JS.API.STREAM.MSG.GET.{obj}",
            f"$JS.API.DIRECT.GET.{obj}.>",
            # nats-py's object store looks the stream up by subject before it reads a
            # model's chunks: the answer names streams (site ids), never their contents.
            "$JS.API.STREAM.NAMES",
            f"$JS.API.CONSUMER.CREATE.{obj}",
            f"$JS.API.CONSUMER.CREATE.{obj}.>",
            f"$JS.API.CONSUMER.DELETE.{obj}.>",
            f"$JS.FC.{obj}.>",
        ]},
        "subscribe": {"allow": ["_INBOX.>", names.commands]},
        "allow_responses": True,
    }


def central_permissions(sites: list[str]) -> dict[str, Any]:
    """The central consumer's: read everything, send commands, use the JetStream API (the
    status stream, the model buckets), but never write a site's records nor create, change,
    purge or delete a site's stream or a message in one (a changed retention drops
    records)."""
    changes = _stream_changes(sites, ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE"))
    return {
        "publish": {"allow": [">"], "deny": [*_SITE_RECORDS, *changes]},
        "subscribe": {"allow": [">"]},
    }


def admin_permissions(sites: list[str]) -> dict[str, Any]:
    """The fleet administrator's (``fleet init``): create and update the sites' streams, but
    neither write a site's records nor purge or delete a site's stream or messages."""
    changes = _stream_changes(sites, ("DELETE", "PURGE", "MSG.DELETE"))
    return {
        "publish": {"allow": [">"], "deny": [*_SITE_RECORDS, *changes]},
        "subscribe": {"allow": [">"]},
    }


def auth_config(dir_: Path, sites: list[str]) -> str:
    """The ``tls`` and ``authorization`` blocks of the configuration (nats-server reads JSON
    values): client certificates required and mapped to the users of ``sites`` and the
    centre."""
    users = [{"user": user_name(site), "permissions": site_permissions(site)}
             for site in sites]
    users.append({"user": user_name(CENTRAL), "permissions": central_permissions(sites)})
    users.append({"user": user_name(ADMIN), "permissions": admin_permissions(sites)})
    tls = {"cert_file": str(dir_ / "server.pem"), "key_file": str(dir_ / "server.key"),
           "ca_file": str(dir_ / "ca.pem"), "verify_and_map": True, "timeout": 5}
    return (f"tls: {json.dumps(tls, indent=2)}\n"
            f"authorization: {json.dumps({'users': users}, indent=2)}\n")


def server_config(dir_: Path, sites: list[str], *, port: int = 4222,
                  listen_host: str = "0.0.0.0", store_dir: Path | None = None) -> str:
    """The whole nats-server configuration: listen, JetStream (file store), TLS, users."""
    store = store_dir or dir_ / "jetstream"
    return (f"listen: {json.dumps(f'{listen_host}:{port}')}\n"
            f"jetstream: {json.dumps({'store_dir': str(store)})}\n"
            + auth_config(dir_, sites))


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Issued:
    certificate: Path
    private_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _name(common: str) -> x509.Name:
    # Order matters for the mapping: RFC 4514 prints the last RDN first (CN=..,OU=..).
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OU),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


class FleetCa:
    """A certificate authority in ``dir_`` (``ca.pem``, ``ca.key``), created if missing."""

    def __init__(self, dir_: Path, *, days: int = 3650) -> None:
        self.dir = dir_
        dir_.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = dir_ / "ca.pem", dir_ / "ca.key"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an EC private key")
            self.key = key
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = _name("safety-gateway fleet CA")
        now = _now()
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5))
                     .not_valid_after(now + dt.timedelta(days=days))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        _write_key(key_path, self.key)
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server_hosts: tuple[str, ...] = (), days: int = 825,
              ) -> Issued:
        """A certificate for ``name`` (a client, or the server with ``server_hosts``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(_name(name))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True))
        if server_hosts:
            alt: list[x509.GeneralName] = []
            for host in server_hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = (builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                      critical=False))
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        _write_key(issued.private_key, key)
        issued.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return issued


def write_fleet_config(dir_: Path, sites: list[str], *, host: str = "localhost",
                       port: int = 4222, listen_host: str = "0.0.0.0") -> Path:
    """Write the CA, the certificates and ``nats-server.conf`` into ``dir_``; returns the
    configuration's path. Raises ``OSError``; ``SiteIdError`` for a bad site id."""
    for site in sites:
        SiteSubjects(site)
    ca = FleetCa(dir_)
    ca.issue("server", server_hosts=tuple(dict.fromkeys((host, "127.0.0.1"))))
    for name in (*sites, CENTRAL, ADMIN):
        ca.issue(name)
    conf = dir_ / "nats-server.conf"
    conf.write_text(server_config(dir_, sites, port=port, listen_host=listen_host))
    return conf


def cmd_nats_config(args: argparse.Namespace) -> int:
    """``fleet nats-config`` (its parser is in :mod:`gateway.fleet.cli`)."""
    from gateway.fleet.subjects import SiteIdError

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if not sites or CENTRAL in sites or ADMIN in sites:
        print("safety-gateway fleet nats-config: --sites must name sites (and not "
              f"{CENTRAL!r} or {ADMIN!r})", file=sys.stderr)
        return 2
    try:
        conf = write_fleet_config(args.out, sites, host=args.host, port=args.port)
    except (SiteIdError, ValueError) as exc:
        print(f"safety-gateway fleet nats-config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"safety-gateway fleet nats-config: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {conf} and certificates for {', '.join(sites)} and {CENTRAL} in {args.out}")
    print(f"start: nats-server -c {conf}")
    return 0
