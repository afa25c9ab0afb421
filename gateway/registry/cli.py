"""``safety-gateway model …``: the registry and ``model diff`` on the command line.

:func:`add_parser` adds the ``model`` command to the top-level subparsers; each subcommand sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning the exit code:

- 0: done (``diff``: the files are identical);
- 1: refused or a check failed (a model that fails verification, a registry whose signed state
  does not hold or is not signed yet, approving a revoked version, the same key approving
  twice, nothing to roll back to; ``diff``: the files differ; a write that failed on disk);
- 2: bad input (missing files, unknown name or version, unreadable registry, canary file or
  model, bad arguments; a key file that is missing, unencrypted, or that the passphrase does
  not open; no passphrase given).

Errors print one line on stderr, never a traceback. The codes match ``gateway.cli``.

Passphrases of private keys are never taken from the command line (where ``ps`` and the shell's
history would show them): ``--passphrase-env VAR`` names an environment variable holding it;
without it the passphrase is prompted for on the terminal (not echoed), and with no terminal
the command refuses (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.registry.registry import PolicySettings, Version
    from gateway.registry.signing import Signer

__all__ = ["add_parser"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INPUT: Final = 2

_MAX_CANARY_FILE_BYTES: Final = 64 * 1024 * 1024


class _InputError(Exception):
    """Bad command-line input found before the registry is involved (exit code 2)."""


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``model keygen|key-encrypt|register|list|approve|revoke|rollback|reseal|
    require-approvals|verify|diff`` to ``sub``."""
    model = sub.add_parser("model", help="model registry (recovery) and model diff (forensics)")
    commands = model.add_subparsers(
        dest="model_command", required=True, metavar="COMMAND", parser_class=type(model)
    )

    def registry_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--registry", required=True, type=Path, metavar="DIR", help="the registry folder"
        )

    def passphrase_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--passphrase-env",
            metavar="VAR",
            help="read the key's passphrase from environment variable VAR (default: prompt "
            "on the terminal; never give it on the command line)",
        )

    def signer_args(parser: argparse.ArgumentParser, who: str) -> None:
        parser.add_argument(
            "--key", required=True, type=Path, help="your private key (in the trust store)"
        )
        parser.add_argument("--by", required=True, metavar="WHO", help=who)
        passphrase_arg(parser)

    keygen = commands.add_parser(
        "keygen",
        help="create an ed25519 signing key (KEY, encrypted, mode 0600) and KEY.pub",
    )
    keygen.add_argument("key", type=Path, metavar="KEY", help="private key file to create")
    keygen.add_argument(
        "--trust",
        type=Path,
        metavar="REGISTRY",
        help="also add the public key to REGISTRY's trust store",
    )
    passphrase_arg(keygen)
    keygen.set_defaults(func=_command(_keygen, "keygen"))

    encrypt = commands.add_parser(
        "key-encrypt", help="encrypt an unencrypted (older) private key file in place"
    )
    encrypt.add_argument("key", type=Path, metavar="KEY", help="the private key file")
    passphrase_arg(encrypt)
    encrypt.set_defaults(func=_command(_key_encrypt, "key-encrypt"))

    register = commands.add_parser(
        "register", help="add a signed version of a model, recording its canary outputs"
    )
    registry_arg(register)
    register.add_argument("name", metavar="NAME", help="model name (letters, digits, . _ -)")
    register.add_argument("model", type=Path, metavar="MODEL", help="the .onnx file")
    register.add_argument("--key", required=True, type=Path, help="private signing key")
    passphrase_arg(register)
    register.add_argument(
        "--canary",
        required=True,
        type=Path,
        metavar="FILE",
        help="golden input rows, engineering units: CSV with a header naming the input tags, "
        "or JSON (a list of rows, or an object with an `inputs` list, e.g. a canary.json)",
    )
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--site", type=Path, help="take inputs, outputs and normalisation from this site file"
    )
    source.add_argument("--inputs", help="comma-separated input tags, in model column order")
    register.add_argument("--outputs", help="comma-separated output tags (with --inputs)")
    for option in ("input-offset", "input-scale", "output-offset", "output-scale"):
        register.add_argument(
            f"--{option}", metavar="V,V,…", help="comma-separated numbers (with --inputs)"
        )
    register.add_argument("--json", action="store_true", help="print the version as JSON")
    register.set_defaults(func=_command(_register, "register"))

    listing = commands.add_parser("list", help="list versions")
    registry_arg(listing)
    listing.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_command(_list, "list"))

    approve = commands.add_parser(
        "approve", help="approve a version (signed) and, once approved, make it current"
    )
    registry_arg(approve)
    approve.add_argument("name", metavar="NAME")
    approve.add_argument("version", type=_version_number, metavar="VERSION")
    signer_args(approve, "who approves")
    approve.set_defaults(func=_command(_approve, "approve"))

    revoke = commands.add_parser(
        "revoke", help="revoke a version (signed; refused at load from now on)"
    )
    registry_arg(revoke)
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("version", type=_version_number, metavar="VERSION")
    signer_args(revoke, "who revokes")
    revoke.add_argument("--reason", required=True, help="why")
    revoke.set_defaults(func=_command(_revoke, "revoke"))

    rollback = commands.add_parser(
        "rollback",
        help="make the last approved, unrevoked version before the current one current (signed)",
    )
    registry_arg(rollback)
    rollback.add_argument("name", metavar="NAME")
    signer_args(rollback, "who rolls back")
    rollback.set_defaults(func=_command(_rollback, "rollback"))

    reseal = commands.add_parser(
        "reseal",
        help="sign the approval state of a registry made before signed state, after review",
    )
    registry_arg(reseal)
    signer_args(reseal, "who reviewed the state and signs it")
    reseal.set_defaults(func=_command(_reseal, "reseal"))

    require = commands.add_parser(
        "require-approvals",
        help="require N approvals by distinct keys from now on (1 or 2; can only be raised)",
    )
    registry_arg(require)
    require.add_argument("count", type=int, choices=(1, 2), metavar="N")
    signer_args(require, "who sets the rule")
    require.set_defaults(func=_command(_require_approvals, "require-approvals"))

    verify = commands.add_parser(
        "verify", help="run every load-time check on a version (default: the current one)"
    )
    registry_arg(verify)
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("version", nargs="?", type=_version_number, metavar="VERSION")
    verify.add_argument(
        "--allow-unapproved", action="store_true", help="do not require approval"
    )
    verify.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="remember the registry's signed state in FILE and refuse an older one next time "
        "(keep FILE outside the registry)",
    )
    verify.set_defaults(func=_command(_verify, "verify"))

    diff = commands.add_parser(
        "diff", help="graph and weight changes between two ONNX files (exit 1 if they differ)"
    )
    diff.add_argument("a", type=Path, metavar="A.onnx")
    diff.add_argument("b", type=Path, metavar="B.onnx")
    diff.add_argument("--json", action="store_true", help="print JSON")
    diff.set_defaults(func=_command(_diff, "diff"))


def _command(
    body: Callable[[argparse.Namespace], int], name: str
) -> Callable[[argparse.Namespace], int]:
    """Wrap a subcommand: known errors become one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from gateway.registry.registry import RegistryError, RegistryInputError

        try:
            return body(args)
        except _InputError as exc:
            code, message = EXIT_INPUT, str(exc)
        except RegistryInputError as exc:
            code, message = EXIT_INPUT, str(exc)
        except RegistryError as exc:
            code, message = EXIT_FAILED, str(exc)
        print(f"safety-gateway model {name}: {message}", file=sys.stderr)
        return code

    return run


def _version_number(text: str) -> int:
    """argparse type for VERSION: an integer >= 1 (argparse exits 2 otherwise)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"versions start at 1, got {number}")
    return number


# --------------------------------------------------------------------------------------------
# Subcommands


def _passphrase(args: argparse.Namespace, key: Path, *, new: bool = False) -> bytes:
    """The passphrase for ``key``: from ``--passphrase-env``'s variable, else a terminal
    prompt (twice for a new key), else :class:`_InputError`."""
    if args.passphrase_env is not None:
        value = os.environ.get(args.passphrase_env)
        if value is None:
            raise _InputError(f"--passphrase-env: environment variable "
                              f"{args.passphrase_env} is not set")
        return value.encode()
    if not sys.stdin.isatty():
        raise _InputError(f"{key}: no passphrase: give --passphrase-env VAR, or run on a "
                          "terminal to be asked for it")
    value = getpass.getpass(f"passphrase for {key}: ")
    if new and getpass.getpass("again: ") != value:
        raise _InputError("the two passphrases differ")
    return value.encode()


def _signer(args: argparse.Namespace) -> Signer:
    """The decrypted key of ``--key``; :class:`_InputError` (exit 2) for a missing file, an
    unencrypted key or a wrong passphrase."""
    from gateway.registry.signing import KeyFileError, load_private_key

    passphrase = _passphrase(args, args.key)
    try:
        return load_private_key(args.key, passphrase)
    except KeyFileError as exc:
        raise _InputError(str(exc)) from exc


def _keygen(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry
    from gateway.registry.signing import KeyFileError, generate_key

    passphrase = _passphrase(args, args.key, new=True)
    try:
        pair = generate_key(args.key, passphrase)
    except KeyFileError as exc:
        raise _InputError(str(exc)) from exc
    print(f"private key {pair.private_path} (encrypted; keep it and its passphrase secret), "
          f"public key {pair.public_path}")
    print(f"key id {pair.key_id}")
    if args.trust is not None:
        Registry(args.trust).trust_key(pair.public_path)
        print(f"trusted in {args.trust}")
    return EXIT_OK


def _key_encrypt(args: argparse.Namespace) -> int:
    from gateway.registry.signing import KeyFileError, encrypt_key_file

    passphrase = _passphrase(args, args.key, new=True)
    try:
        kid = encrypt_key_file(args.key, passphrase)
    except KeyFileError as exc:
        raise _InputError(str(exc)) from exc
    print(f"{args.key}: key {kid} is now encrypted with the passphrase")
    return EXIT_OK


def _register(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    settings = _settings(args)
    rows = _read_canary(args.canary, settings.inputs)
    signer = _signer(args)
    version = Registry(args.registry).register(args.name, args.model, rows, settings, signer)
    if args.json:
        print(json.dumps(version.to_json(), indent=2))
    else:
        print(
            f"registered {version.label}: sha256 {version.sha256}, key {version.key_id}, "
            f"{len(rows)} canary cases; not approved yet "
            f"(safety-gateway model approve --registry {args.registry} {version.name} "
            f"{version.version} --key KEY --by WHO)"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    registry = Registry(args.registry)
    versions = registry.list(args.name)
    if not registry.is_sealed():
        print(
            f"safety-gateway model list: warning: {args.registry}: the approval state below is "
            "NOT signed (a registry made before signed state); review it, then run "
            f"`safety-gateway model reseal --registry {args.registry} --key KEY --by WHO`",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([v.to_json() for v in versions], indent=2))
        return EXIT_OK
    if not versions:
        print("no versions" + (f" of {args.name}" if args.name else ""))
        return EXIT_OK
    header = ("NAME", "VERSION", "SHA256", "KEY", "APPROVED", "REVOKED", "CURRENT", "CREATED")
    rows = [header] + [_list_row(v) for v in versions]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return EXIT_OK


def _list_row(v: Version) -> tuple[str, ...]:
    approved = f"yes ({v.approved_by})" if v.approved else "no"
    revoked = f"yes ({v.revoked_by}: {v.revoked_reason})" if v.revoked else "no"
    return (
        v.name,
        str(v.version),
        v.sha256[:16],
        v.key_id,
        approved,
        revoked,
        "*" if v.current else "",
        v.created_at,
    )


def _approve(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    signer = _signer(args)
    registry = Registry(args.registry)
    version = registry.approve(args.name, args.version, args.by, signer)
    if version.approved:
        state = "current" if version.current else "approved"
        print(f"{version.label} approved by {version.approved_by} (key {signer.key_id}); it is "
              f"now {state}")
    else:
        print(f"{version.label}: approval by {args.by} (key {signer.key_id}) recorded; "
              f"{registry.approvals_required()} approvals by distinct keys are required, so it "
              "waits for another approver")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    signer = _signer(args)
    version = Registry(args.registry).revoke(args.name, args.version, args.by, args.reason,
                                             signer)
    note = " (it is the current version: loading it is refused until you roll back)"
    print(f"{version.label} revoked by {version.revoked_by}{note if version.current else ''}")
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    signer = _signer(args)
    version = Registry(args.registry).rollback(args.name, args.by, signer)
    print(f"{version.name}: current version is now v{version.version} (sha256 {version.sha256})")
    return EXIT_OK


def _reseal(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    signer = _signer(args)
    versions = Registry(args.registry).reseal(args.by, signer)
    for v in versions:
        print("  ".join(_list_row(v)).rstrip())
    print(f"{args.registry}: state of {len(versions)} versions signed by key {signer.key_id}")
    return EXIT_OK


def _require_approvals(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    signer = _signer(args)
    Registry(args.registry).require_approvals(args.count, args.by, signer)
    print(f"{args.registry}: approvals now need {args.count} distinct approver keys")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from gateway.registry.registry import Registry

    verified = Registry(args.registry, witness=args.witness).load_verified(
        args.name, args.version, require_approval=not args.allow_unapproved
    )
    print(
        f"{verified.version.label} verified: signed by trusted key {verified.version.key_id}, "
        f"sha256 {verified.sha256}, {len(verified.canary.inputs)} canary cases"
    )
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from gateway.forensics.modeldiff import ModelDiffError, diff_models, render_text, to_json

    a = _read_input(args.a, "A")
    b = _read_input(args.b, "B")
    try:
        diff = diff_models(a, b)
    except ModelDiffError as exc:
        where = {"A": f"{args.a}: ", "B": f"{args.b}: "}.get(exc.side or "", "")
        raise _InputError(f"{where}{exc}") from exc
    if args.json:
        print(json.dumps(to_json(diff, str(args.a), str(args.b)), indent=2, allow_nan=False))
    else:
        sys.stdout.write(render_text(diff, str(args.a), str(args.b)))
    return EXIT_OK if diff.identical else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# Inputs


def _read_input(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _InputError(f"{path}: file {label} not found") from None
    except OSError as exc:
        raise _InputError(f"{path}: cannot read file {label} ({exc.strerror})") from exc


def _settings(args: argparse.Namespace) -> PolicySettings:
    from gateway.registry.registry import PolicySettings

    if args.site is not None:
        extra = [
            f"--{name.replace('_', '-')}"
            for name in ("outputs", "input_offset", "input_scale", "output_offset", "output_scale")
            if getattr(args, name) is not None
        ]
        if extra:
            raise _InputError(f"{', '.join(extra)} cannot be combined with --site")
        from gateway.config.loader import ConfigError, load_config
        from gateway.config.schema import ControllerKind

        try:
            site = load_config(args.site)
        except ConfigError as exc:
            first = exc.issues[0] if exc.issues else exc
            raise _InputError(f"invalid site file: {first}") from exc
        if site.controller.kind is not ControllerKind.ONNX:
            raise _InputError(f"{args.site}: the site has no onnx controller")
        return PolicySettings.from_controller(site.controller)
    if args.outputs is None:
        raise _InputError("--outputs is required with --inputs")
    try:
        return PolicySettings(
            inputs=_tags(args.inputs),
            outputs=_tags(args.outputs),
            input_offset=_numbers(args.input_offset, "--input-offset"),
            input_scale=_numbers(args.input_scale, "--input-scale"),
            output_offset=_numbers(args.output_offset, "--output-offset"),
            output_scale=_numbers(args.output_scale, "--output-scale"),
        )
    except ValueError as exc:
        raise _InputError(str(exc)) from exc


def _tags(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def _numbers(text: str | None, option: str) -> tuple[float, ...]:
    if text is None:
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise _InputError(f"{option}: not a comma-separated list of numbers: {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise _InputError(f"{option}: values must be finite")
    return values


def _read_canary(path: Path, inputs: tuple[str, ...]) -> list[list[float]]:
    """Golden input rows from a CSV (header naming the input tags, any order) or JSON file."""
    try:
        if path.stat().st_size > _MAX_CANARY_FILE_BYTES:
            raise _InputError(f"{path}: larger than {_MAX_CANARY_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _InputError(f"{path}: canary file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _InputError(f"{path}: cannot read the canary file ({exc})") from exc
    if path.suffix.lower() == ".json":
        return _canary_from_json(path, text)
    return _canary_from_csv(path, text, inputs)


def _canary_from_json(path: Path, text: str) -> list[list[float]]:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise _InputError(f"{path}: not JSON ({exc})") from exc
    rows = document.get("inputs") if isinstance(document, dict) else document
    if not isinstance(rows, list) or not all(
        isinstance(row, list)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
        for row in rows
    ):
        raise _InputError(
            f"{path}: expected a list of rows of numbers, or an object with `inputs` as one"
        )
    return [[float(v) for v in row] for row in rows]


def _canary_from_csv(path: Path, text: str, inputs: tuple[str, ...]) -> list[list[float]]:
    records = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if not records:
        raise _InputError(f"{path}: empty canary file")
    header = [cell.strip() for cell in records[0]]
    missing = [tag for tag in inputs if tag not in header]
    unknown = [cell for cell in header if cell not in inputs]
    if missing or unknown or len(set(header)) != len(header):
        raise _InputError(
            f"{path}: the header must name each input tag once {list(inputs)}; "
            f"missing {missing}, unknown {unknown}"
        )
    columns = [header.index(tag) for tag in inputs]
    rows: list[list[float]] = []
    for number, record in enumerate(records[1:], start=1):
        if len(record) != len(header):
            raise _InputError(
                f"{path}: data row {number} has {len(record)} cells, expected {len(header)}"
            )
        try:
            rows.append([float(record[column]) for column in columns])
        except ValueError:
            raise _InputError(f"{path}: data row {number}: not a number in {record}") from None
    return rows
