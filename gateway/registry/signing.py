"""Ed25519 keys for the model registry: key files, key ids, signing, and the trust store.

Key files are PEM. A private key is PKCS#8 *encrypted* with a passphrase (``cryptography``'s
``BestAvailableEncryption``: PBES2, AES-256-CBC, PBKDF2-HMAC-SHA256 with 2,048 iterations, a
count the library does not let PKCS#8 raise, so the passphrase's length is what resists
guessing), readable by its owner only (mode 0600); its
public key sits beside it as SubjectPublicKeyInfo PEM, named by appending ``.pub`` to the
private key's file name (``signer.pem`` -> ``signer.pem.pub``). A key is named by its *key id*:
the first 16 hex digits of the sha256 of the 32 raw public-key bytes.

An unencrypted private key (written by earlier versions) is refused by
:func:`load_private_key`, with the command that encrypts it in place
(:func:`encrypt_key_file`): a signing key that approves models for a plant must not be one copy
of a file away from an attacker, and a warning on a terminal nobody reads would not change that.

Passphrases are ``bytes`` here; where they come from (an environment variable, a prompt, never
the command line) is the command line's business (:mod:`gateway.registry.cli`).

A trust store is a folder of public-key files (``*.pub``). Only signatures made by one of those
keys are accepted; :meth:`TrustStore.verify` says precisely why one is not.

Everything here raises :class:`SigningError` subclasses; no ``cryptography`` exception leaks.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "KEY_ID_HEX_DIGITS",
    "MIN_PASSPHRASE_BYTES",
    "KeyFileError",
    "KeyPair",
    "SignatureMismatch",
    "Signer",
    "SigningError",
    "TrustStore",
    "UnencryptedKey",
    "UnknownKey",
    "WrongPassphrase",
    "encrypt_key_file",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_path",
    "sign",
]

KEY_ID_HEX_DIGITS: Final = 16
SIGNATURE_BYTES: Final = 64
# A PEM ed25519 key is ~120 bytes; anything far larger is not a key file.
_MAX_KEY_FILE_BYTES: Final = 16 * 1024
# Short passphrases fall to a dictionary in minutes once the file is copied; 12 bytes is the
# floor, not a recommendation.
MIN_PASSPHRASE_BYTES: Final = 12


class SigningError(Exception):
    """Base of the errors raised by this module."""


class KeyFileError(SigningError):
    """A key file is missing, unreadable, too permissive, or does not hold an ed25519 key."""


class UnencryptedKey(KeyFileError):
    """A private key file is not encrypted (see the module docstring for why it is refused)."""


class WrongPassphrase(KeyFileError):
    """The passphrase does not decrypt the private key file."""


class UnknownKey(SigningError):
    """A signature names a key id that the trust store does not hold."""


class SignatureMismatch(SigningError):
    """A signature does not verify against the key it names."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Where :func:`generate_key` wrote a key pair, and the key's id."""

    private_path: Path
    public_path: Path
    key_id: str


@dataclass(frozen=True, slots=True)
class Signer:
    """A decrypted private key, its key id, and the file it came from (for messages)."""

    private_key: ed25519.Ed25519PrivateKey
    key_id: str
    source: str

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ed25519 signature of ``message``."""
        return self.private_key.sign(message)


def public_key_path(private_path: Path) -> Path:
    """The public-key file that belongs beside ``private_path`` (its name plus ``.pub``)."""
    return private_path.with_name(private_path.name + ".pub")


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """The key's id: sha256 of its 32 raw bytes, first 16 lowercase hex digits."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:KEY_ID_HEX_DIGITS]


def generate_key(path: Path, passphrase: bytes) -> KeyPair:
    """Create a new ed25519 key pair: the private key at ``path``, encrypted with
    ``passphrase``, the public key beside it.

    The private key file is created with mode 0600 (never overwritten: an existing file is an
    error, since replacing a signing key silently would orphan every signature made with it);
    the public key goes to :func:`public_key_path` with mode 0644. Both are fsynced.

    Raises :class:`KeyFileError` if either file exists or cannot be written, or if the
    passphrase is shorter than :data:`MIN_PASSPHRASE_BYTES`.
    """
    _check_passphrase(passphrase, path)
    public_path = public_key_path(path)
    if public_path.exists():
        raise KeyFileError(f"{public_path}: already exists; not overwriting a key")
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = _encrypted_pem(private, passphrase)
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except KeyFileError:
        # Do not leave half a pair behind: a private key whose public half is missing.
        path.unlink(missing_ok=True)
        raise
    return KeyPair(private_path=path, public_path=public_path, key_id=key_id(public))


def load_private_key(path: Path, passphrase: bytes) -> Signer:
    """Read and decrypt an encrypted PEM ed25519 private key.

    Refuses (like OpenSSH) a key file that its group or others may read or write, since such a
    key can no longer be assumed to be in the signer's hands alone. Raises
    :class:`UnencryptedKey` for a key stored in clear (naming the command that encrypts it),
    :class:`WrongPassphrase` if the passphrase does not decrypt it, :class:`KeyFileError` for
    anything else, each naming the path.
    """
    data = _read_key_file(path, private=True)
    if b"-----BEGIN PRIVATE KEY-----" in data:
        raise UnencryptedKey(
            f"{path}: the private key is stored unencrypted; encrypt it with "
            f"`safety-gateway model key-encrypt {path} --passphrase-env VAR` (or make a new one "
            "with `model keygen`)"
        )
    key = _decrypt(data, passphrase, path)
    return Signer(private_key=key, key_id=key_id(key.public_key()), source=str(path))


def encrypt_key_file(path: Path, passphrase: bytes) -> str:
    """Encrypt an unencrypted private key file in place; return its key id.

    The key itself is unchanged (same key id, every signature made with it still verifies).
    The new file replaces the old one atomically with mode 0600; the clear-text bytes of the old
    file may survive on the disk's free blocks, which only the disk's own erasure removes.
    Raises :class:`KeyFileError` if the file is already encrypted or not an ed25519 key.
    """
    _check_passphrase(passphrase, path)
    data = _read_key_file(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: already encrypted") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an ed25519 private key")
    temp = path.with_name(f".{path.name}.encrypting")
    temp.unlink(missing_ok=True)
    _write_new(temp, _encrypted_pem(key, passphrase), 0o600)
    try:
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot replace the key file ({exc.strerror})") from exc
    return key_id(key.public_key())


def _encrypted_pem(key: ed25519.Ed25519PrivateKey, passphrase: bytes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def _decrypt(data: bytes, passphrase: bytes, path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # Not encrypted after all (a PEM header other than the one checked above).
        raise UnencryptedKey(f"{path}: the private key is not encrypted ({exc})") from exc
    except ValueError as exc:
        # cryptography says "Incorrect password" for a well-formed encrypted PKCS#8 file that
        # the passphrase does not open; any other file is not a key at all.
        if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
            raise WrongPassphrase(
                f"{path}: wrong passphrase (the key cannot be decrypted with it)"
            ) from None
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from exc
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an ed25519 private key")
    return key


def _check_passphrase(passphrase: bytes, path: Path) -> None:
    if not isinstance(passphrase, bytes) or len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise KeyFileError(
            f"{path}: the passphrase must be at least {MIN_PASSPHRASE_BYTES} bytes long"
        )


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """Read a PEM (SubjectPublicKeyInfo) ed25519 public key; :class:`KeyFileError` if not."""
    data = _read_key_file(path, private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an ed25519 public key")
    return key


def sign(private_key: ed25519.Ed25519PrivateKey, message: bytes) -> bytes:
    """The 64-byte ed25519 signature of ``message``."""
    return private_key.sign(message)


class TrustStore:
    """The public keys whose signatures are accepted, by key id.

    Build it with :meth:`load` (a folder of ``*.pub`` files) or from a mapping for tests.
    """

    def __init__(self, keys: Mapping[str, ed25519.Ed25519PublicKey], source: str) -> None:
        self._keys = dict(keys)
        self.source: Final = source

    @classmethod
    def load(cls, folder: Path) -> TrustStore:
        """Load every ``*.pub`` file in ``folder`` (not recursive).

        A missing folder is an empty store (nothing is trusted, so every signature is refused).
        Raises :class:`KeyFileError` if a ``.pub`` file there is not an ed25519 public key: a
        trust store that silently skipped a damaged key file would hide the damage.
        """
        keys: dict[str, ed25519.Ed25519PublicKey] = {}
        if folder.is_dir():
            for path in sorted(folder.glob("*.pub")):
                key = load_public_key(path)
                keys[key_id(key)] = key
        return cls(keys, str(folder))

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The trusted key ids, sorted."""
        return tuple(sorted(self._keys))

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def verify(self, kid: str, message: bytes, signature: bytes) -> None:
        """Check that ``signature`` is key ``kid``'s signature of ``message``.

        Raises :class:`UnknownKey` if ``kid`` is not trusted and :class:`SignatureMismatch` if
        the signature does not verify (including one of the wrong length).
        """
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKey(f"key {kid} is not in the trust store {self.source}")
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureMismatch(
                f"signature is {len(signature)} bytes, an ed25519 signature is {SIGNATURE_BYTES}"
            )
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise SignatureMismatch(f"signature does not verify against key {kid}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode``, write ``data`` and fsync it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; not overwriting a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create key file ({exc.strerror})") from exc
    try:
        # The umask may have removed bits from `mode`, never added any; set it exactly anyway.
        os.fchmod(descriptor, mode)
        with open(descriptor, "wb", closefd=False) as file:
            file.write(data)
            file.flush()
            os.fsync(descriptor)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write key file ({exc.strerror})") from exc
    finally:
        os.close(descriptor)


def _read_key_file(path: Path, *, private: bool) -> bytes:
    """Read a small regular key file; for a private key, refuse group/other permissions."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open key file ({exc.strerror})") from exc
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if private and info.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: private key is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        with open(descriptor, "rb", closefd=False) as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from exc
    finally:
        os.close(descriptor)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {_MAX_KEY_FILE_BYTES} bytes; not a key file")
    return data
