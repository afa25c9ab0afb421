"""The chain head, signed with the gateway's own key and kept outside the database.

Without a head kept elsewhere, whoever can write the database can delete its last records, or
rewrite one and re-hash everything after it, and the chain still verifies. So the audit writer
exports its head (sequence number, hash, time, database id) periodically and at every clean
stop, signed with ed25519, to a file beside the database (``<db>.head.json``) and to each
configured sink directory (another disk, or a mount of another host). ``audit verify`` finds
the file beside the database by default and refuses a chain that no longer holds that head.

The key: ``<db>.head-key`` (PKCS#8 PEM, unencrypted: the unattended gateway must sign without
a person; created with mode 0600 and refused when group or others can read it) and its public
half ``<db>.head-key.pub`` (one line, ``ed25519 <hex>``). Both are separate files from the
database, so a copy of the database alone carries no key. The public key is also written into
each head file; ``verify`` checks the signature against the pinned ``.pub`` file when there is
one (copy it, or its ``key_id``, somewhere safe: an attacker who can write the folder can
replace all three files together, which only a head or a key kept elsewhere detects).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.audit.chain import ExportedHead
from gateway.audit.export import ExportError

FORMAT = "safety-gateway-audit-head"
VERSION = 1
_DOMAIN = b"safety-gateway audit head v1\x00"

__all__ = ["HeadDirSink", "HeadKey", "SignedHead", "SignedHeadError", "head_path",
           "key_path", "public_key_path", "signed_bytes"]


class SignedHeadError(ValueError):
    """A head file that cannot be read, or whose signature does not hold."""


def head_path(db: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None,
              ) -> Path:
    """The head file of database ``db``: beside it, or in ``folder`` (a sink) by its name."""
    db = Path(db)
    name = db.name + ".head.json"
    return (Path(folder) / name) if folder is not None else db.with_name(name)


def key_path(db: str | os.PathLike[str]) -> Path:
    """The default signing key of database ``db``: beside it, ``<db>.head-key``."""
    db = Path(db)
    return db.with_name(db.name + ".head-key")


def public_key_path(key: str | os.PathLike[str]) -> Path:
    key = Path(key)
    return key.with_name(key.name + ".pub")


def key_id(public_raw: bytes) -> str:
    """A short name for a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signed_bytes(data: dict[str, Any]) -> bytes:
    """What the signature covers: the head and the export time, canonical JSON."""
    body = {"format": data.get("format"), "version": data.get("version"),
            "head": data.get("head"), "exported_at_s": data.get("exported_at_s")}
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsynced and
    renamed over it: a reader sees the old file or the new one, never half of one. Raises
    ``OSError``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class HeadKey:
    """The gateway's audit signing key at ``path`` (created on first use, mode 0600, with
    its public half beside it). Raises :class:`ExportError` naming the problem: a key file
    that group or others may read, a file that is not an ed25519 key, I/O trouble."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._key: Ed25519PrivateKey | None = None

    def private(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = self._load_or_create()
        return self._key

    def _load_or_create(self) -> Ed25519PrivateKey:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return self._load()
        except OSError as exc:
            raise ExportError(f"audit signing key {self.path}: cannot create: {exc}") from exc
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            raw = _public_raw(key.public_key())
            write_atomically(public_key_path(self.path), f"ed25519 {raw.hex()}\n")
        except OSError as exc:
            raise ExportError(f"audit signing key {self.path}: cannot write: {exc}") from exc
        return key

    def _load(self) -> Ed25519PrivateKey:
        try:
            st = os.stat(self.path)
            if st.st_mode & 0o077:
                raise ExportError(f"audit signing key {self.path}: group or others may access "
                                  f"it (mode {st.st_mode & 0o777:o}); chmod 600 it")
            data = self.path.read_bytes()
        except OSError as exc:
            raise ExportError(f"audit signing key {self.path}: cannot read: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ExportError(f"audit signing key {self.path}: not a usable key: "
                              f"{exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ExportError(f"audit signing key {self.path}: not an ed25519 key")
        return key

    def sign(self, head: ExportedHead, exported_at_s: float) -> dict[str, Any]:
        """The head file's content: the head, when it was exported, the public key, its id
        and the signature."""
        key = self.private()
        raw = _public_raw(key.public_key())
        data: dict[str, Any] = {"format": FORMAT, "version": VERSION, "head": head.to_json(),
                                "exported_at_s": exported_at_s}
        data["key_id"] = key_id(raw)
        data["public_key"] = raw.hex()
        data["signature"] = key.sign(signed_bytes(data)).hex()
        return data


class HeadDirSink:
    """Writes the signed head atomically as ``<folder>/<db name>.head.json`` (``folder``
    None: beside the database). Raises :class:`ExportError` on failure (the exporter logs it
    and tries again at the next export)."""

    def __init__(self, db: str | os.PathLike[str], key: HeadKey,
                 folder: str | os.PathLike[str] | None = None,
                 clock: Any = time.time) -> None:
        self.path = head_path(db, folder)
        self.key = key
        self.clock = clock
        self.name = f"head file {self.path}"

    def send(self, head: ExportedHead) -> None:
        try:
            data = self.key.sign(head, float(self.clock()))
            write_atomically(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            raise ExportError(f"{self.name}: {exc}") from exc

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class SignedHead:
    """A head file, read and its signature checked: ``head``, the export time, the id of
    the key that signed it, and whether that key is the pinned one (``pinned``: True when it
    matched a ``.pub`` file, None when no public key was pinned)."""

    head: ExportedHead
    exported_at_s: float
    key_id: str
    pinned: bool | None

    @classmethod
    def read(cls, path: str | os.PathLike[str], pinned_public: bytes | None = None,
             ) -> SignedHead:
        """Read and check the head file at ``path``; ``pinned_public`` is the raw public key
        that must have signed it (None: the key written in the file is taken, and
        ``pinned`` is None). Raises ``FileNotFoundError`` when there is no file,
        :class:`SignedHeadError` naming what is wrong otherwise."""
        path = Path(path)
        text = _read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SignedHeadError(f"{path}: not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SignedHeadError(f"{path}: not a signed audit head")
        if data.get("version") != VERSION:
            raise SignedHeadError(f"{path}: head format version {data.get('version')!r} "
                                  f"is not supported")
        try:
            public = bytes.fromhex(str(data.get("public_key", "")))
            signature = bytes.fromhex(str(data.get("signature", "")))
            embedded = Ed25519PublicKey.from_public_bytes(public)
        except ValueError as exc:
            raise SignedHeadError(f"{path}: malformed key or signature: {exc}") from None
        if pinned_public is not None and public != pinned_public:
            raise SignedHeadError(
                f"{path}: signed by key {key_id(public)}, not by this gateway's audit key "
                f"{key_id(pinned_public)} (head replaced, or the key was changed)")
        try:
            embedded.verify(signature, signed_bytes(data))
        except InvalidSignature:
            raise SignedHeadError(f"{path}: the signature does not match its content "
                                  "(head file edited)") from None
        try:
            head = ExportedHead.from_json(data.get("head"))
        except ValueError as exc:
            raise SignedHeadError(f"{path}: {exc}") from None
        at = data.get("exported_at_s")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise SignedHeadError(f"{path}: exported_at_s is not a number")
        return cls(head, float(at), key_id(public),
                   None if pinned_public is None else True)


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    """The raw ed25519 public key of a ``.pub`` file (``ed25519 <hex>``). Raises
    ``FileNotFoundError`` when absent, :class:`SignedHeadError` when malformed."""
    path = Path(path)
    text = _read_text(path)
    parts = text.split()
    try:
        if len(parts) != 2 or parts[0] != "ed25519":
            raise ValueError("expected 'ed25519 <hex>'")
        raw = bytes.fromhex(parts[1])
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SignedHeadError(f"{path}: not an audit public key: {exc}") from None
    return raw


def _read_text(path: Path) -> str:
    """The file's text; ``FileNotFoundError`` when absent (the callers' "no file" case),
    :class:`SignedHeadError` when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SignedHeadError(f"{path}: cannot read: {exc}") from None
