"""``safety-gateway certs create|list|trust|reject SITE``: the northbound OPC UA server's
certificate store (``northbound.opcua.pki``, see :mod:`gateway.adapters.opcua.pki`).

- ``create`` makes the gateway's own application instance certificate: self-signed RSA 2048 /
  SHA-256, its SubjectAltName holding the application URI
  (:func:`gateway.adapters.opcua.pki.application_uri`) and
  this host's names, written to ``security.certificate`` / ``security.private_key`` if the site
  names them, else to ``pki/own/``. An existing certificate is kept unless ``--force``.
- ``list`` shows every certificate of the store (own, trusted, issuers, rejected) with its
  subject and SHA-1 thumbprint.
- ``trust REF`` moves a refused certificate from ``rejected/`` into ``trusted/`` (or copies a
  file from elsewhere); ``reject REF`` moves one out of ``trusted/``. REF is a path, a file
  name, or a thumbprint prefix of at least 8 hex digits. The server reads the store at each
  new channel: no restart is needed.

Exit codes: 0 done, 1 nothing matched / invalid certificate, 2 bad arguments or site file.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from gateway.config.schema import OpcUaServerSpec, Site


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``certs`` under the ``safety-gateway`` parser's subcommands."""
    certs = sub.add_parser("certs", help="manage the OPC UA server's certificates and trust list")
    commands = certs.add_subparsers(dest="certs_command", required=True)
    create = commands.add_parser("create", help="make the gateway's own certificate")
    create.add_argument("site", help="site file (YAML) with a northbound.opcua section")
    create.add_argument("--days", type=int, default=3650, help="validity in days (3650)")
    create.add_argument("--host", action="append", default=[], metavar="NAME|IP",
                        help="host name or address for the SubjectAltName (repeatable; "
                             "default: this host's name and 127.0.0.1)")
    create.add_argument("--force", action="store_true", help="replace an existing certificate")
    create.set_defaults(func=cmd_certs)
    listing = commands.add_parser("list", help="list the store's certificates")
    listing.add_argument("site", help="site file (YAML)")
    listing.set_defaults(func=cmd_certs)
    for name, text in (("trust", "trust a client certificate (from rejected/ or a file)"),
                       ("reject", "stop trusting a client certificate")):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("site", help="site file (YAML)")
        cmd.add_argument("ref", help="path, file name or thumbprint prefix (>= 8 hex digits)")
        cmd.set_defaults(func=cmd_certs)


def _server_spec(site_path: str) -> tuple[Site, OpcUaServerSpec] | str:
    from gateway.config.loader import ConfigError, load_config

    try:
        site = load_config(site_path)
    except ConfigError as exc:
        return str(exc)
    except OSError as exc:
        return f"{site_path}: {exc.strerror or exc}"
    spec = site.northbound.opcua
    if spec is None:
        return f"{site_path}: the site has no northbound.opcua section"
    return site, spec


def cmd_certs(args: argparse.Namespace) -> int:
    from gateway.adapters.opcua.pki import (
        Pki,
        PkiError,
        application_uri,
        create_certificate,
        now_utc,
    )

    found = _server_spec(args.site)
    if isinstance(found, str):
        print(f"safety-gateway certs: {found}", file=sys.stderr)
        return 2
    site, spec = found
    pki = Pki(spec.pki)
    command = args.certs_command
    try:
        if command == "create":
            if args.days <= 0:
                print("safety-gateway certs: --days must be > 0", file=sys.stderr)
                return 2
            cert_path = spec.security.certificate or pki.own_cert
            key_path = spec.security.private_key or pki.own_key
            if (cert_path.exists() or key_path.exists()) and not args.force:
                print(f"safety-gateway certs: {cert_path} or {key_path} exists (--force "
                      "replaces it)", file=sys.stderr)
                return 1
            pki.ensure()
            uri = application_uri(site.site.name)
            create_certificate(cert_path, key_path, uri, f"safety-gateway {site.site.name}",
                               now_utc(), days=args.days, hosts=tuple(args.host))
            print(f"certificate {cert_path}\nprivate key {key_path}\napplication URI {uri}")
            if spec.security.certificate is None:
                print("set northbound.opcua.security.certificate and private_key to these "
                      "paths to use them")
            return 0
        if command == "list":
            rows = pki.listing()
            for folder, name, subject, thumb in rows:
                print(f"{folder:<9} {name}  {subject}  {thumb}")
            if not rows:
                print(f"(no certificates in {pki.root})")
            return 0
        target = pki.trust(args.ref) if command == "trust" else pki.reject_file(args.ref)
        print(f"{command}ed: {target}")
        return 0
    except PkiError as exc:
        print(f"safety-gateway certs: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"safety-gateway certs: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
