"""The audit database on disk: schema, opening for writing, reading, and ``verify``.

One SQLite file in WAL mode. ``meta`` holds the header (format, version, database identity,
creation time; for a database that replaced a lost one, what it continues from); ``records``
holds the chain. Triggers refuse UPDATE and DELETE on both, and INSERT into ``meta`` after
creation: defence in depth only, since anyone who can write the file can drop them;
:func:`verify` relies on the hashes alone.

Only :mod:`gateway.audit.log`'s writer thread writes; everything here that reads opens its own
read-only connection, so that it can run beside a live writer (WAL readers see a consistent
snapshot and never block the writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.chain import (
    ChainVerifier,
    ExportedHead,
    Record,
    VerifyResult,
    genesis_hash,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

FORMAT = "safety-gateway-audit"
VERSION = "1"
APPLICATION_ID = 0x53474155  # "SGAU" in the SQLite header, so `file` tools can tell it apart

SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE records (
    seq       INTEGER PRIMARY KEY,   -- contiguous from 1
    at_s      REAL NOT NULL,         -- wall-clock UTC seconds since the epoch, at append
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,         -- who: operator identity, or "gateway"
    source    TEXT NOT NULL,         -- from where: client address, or ""
    payload   TEXT NOT NULL,         -- canonical JSON
    prev_hash TEXT NOT NULL,         -- hex sha256 of the previous record (genesis for seq 1)
    hash      TEXT NOT NULL          -- hex sha256 of this record (gateway.audit.chain)
);
"""

# Created after the header rows are inserted, in the same transaction.
TRIGGERS = """
CREATE TRIGGER records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER meta_no_insert BEFORE INSERT ON meta
BEGIN SELECT RAISE(ABORT, 'the audit header is fixed at creation'); END;
CREATE TRIGGER meta_no_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'the audit header is fixed at creation'); END;
CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'the audit header is fixed at creation'); END;
"""

_COLUMNS = "seq, at_s, kind, actor, source, payload, prev_hash, hash"
INSERT = f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class AuditError(Exception):
    """An audit database that cannot be used: not an audit database, an unsupported
    version, a broken tail, or already open for writing by another process. Never raised
    for disk trouble while running (see :class:`gateway.audit.log.AuditLog`)."""


class AuditInUse(AuditError):
    """The database is open for writing by another audit log (its writer lock is held)."""


class NotAuditDatabase(AuditError):
    """The file is missing, unreadable, or not an audit database."""


@dataclass(frozen=True, slots=True)
class Header:
    """The ``meta`` table: the database's identity. ``genesis`` is record 1's prev_hash."""

    values: Mapping[str, str]
    genesis: str

    @property
    def db_id(self) -> str:
        return self.values.get("db_id", "")


def _header(values: Mapping[str, str]) -> Header:
    if values.get("format") != FORMAT:
        raise NotAuditDatabase("not an audit database (no audit header)")
    if values.get("version") != VERSION:
        raise AuditError(f"audit database version {values.get('version')!r} is not supported "
                         f"(this gateway reads version {VERSION})")
    return Header(dict(values), genesis_hash(values))


def _row_record(row: tuple[Any, ...]) -> Record:
    return Record(*row)


def read_header(conn: sqlite3.Connection) -> Header:
    """The header of an open database. Raises :class:`NotAuditDatabase` for a file that
    is not one, ``sqlite3.Error`` for I/O trouble."""
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
        conn.execute("SELECT seq FROM records LIMIT 0")
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "no such table" not in str(exc):
            raise
        raise NotAuditDatabase(f"not an audit database ({exc})") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in rows):
        raise NotAuditDatabase("not an audit database (malformed header)")
    return _header(dict(rows))


def read_tail(conn: sqlite3.Connection, count: int = 2) -> list[Record]:
    """The last ``count`` records, oldest first."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq DESC LIMIT ?",
                        (count,)).fetchall()
    return [_row_record(row) for row in reversed(rows)]


def check_tail(header: Header, tail: list[Record]) -> tuple[int, str]:
    """Verify the last records (their hashes, seqs and link) and return the head
    ``(seq, hash)``: ``(0, genesis)`` for an empty chain. Raises :class:`AuditError` if the
    tail is broken: writing after it would extend a chain that does not verify."""
    if not tail:
        return 0, header.genesis
    genesis = header.genesis if tail[0].seq == 1 else None
    verifier = ChainVerifier(genesis, header.db_id)
    for rec in tail:
        if not verifier.feed(rec):
            raise AuditError(f"the audit chain's tail is broken: {verifier.message}; "
                             "run `safety-gateway audit verify`")
    return verifier.last_seq, verifier.last_hash


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection. Raises :class:`NotAuditDatabase` if the file is missing."""
    if not path.is_file():
        raise NotAuditDatabase(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise NotAuditDatabase(f"{path}: cannot open: {exc}") from None
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def open_read(path: str | os.PathLike[str]) -> tuple[sqlite3.Connection, Header]:
    """A read-only connection and the header. Raises :class:`NotAuditDatabase`."""
    conn = connect_ro(Path(path))
    try:
        return conn, read_header(conn)
    except NotAuditDatabase as exc:
        conn.close()
        raise NotAuditDatabase(f"{path}: {exc}") from None
    except sqlite3.Error as exc:
        conn.close()
        raise NotAuditDatabase(f"{path}: cannot read: {exc}") from None


def read_records(path: str | os.PathLike[str], *, first_seq: int = 1,
                 last_seq: int | None = None, kinds: tuple[str, ...] | None = None,
                 ) -> Iterator[Record]:
    """Records ``first_seq..last_seq`` (inclusive), in seq order, optionally only those of
    the given kinds. Not verified: use :func:`verify`, or
    :func:`gateway.audit.chain.verify_records` on an excerpt with its neighbours."""
    conn, _ = open_read(path)
    try:
        sql = f"SELECT {_COLUMNS} FROM records WHERE seq >= ?"
        args: list[Any] = [first_seq]
        if last_seq is not None:
            sql += " AND seq <= ?"
            args.append(last_seq)
        if kinds is not None:
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            args.extend(str(k) for k in kinds)
        for row in conn.execute(sql + " ORDER BY seq", args):
            yield _row_record(row)
    finally:
        conn.close()


def last_head(path: str | os.PathLike[str]) -> ExportedHead:
    """The head of the chain stored at ``path`` (its last record), unverified."""
    conn, header = open_read(path)
    try:
        tail = read_tail(conn, 1)
    finally:
        conn.close()
    if not tail:
        return ExportedHead(0, header.genesis, 0.0, header.db_id)
    return ExportedHead(tail[0].seq, tail[0].hash, tail[0].at_s, header.db_id)


def verify(path: str | os.PathLike[str], head: ExportedHead | None = None) -> VerifyResult:
    """Recompute every hash and link of the chain at ``path`` and name the first broken
    record; with ``head``, also require the exported head's record (so that truncation up to
    that head is detected). Reads a consistent snapshot through its own read-only
    connection, so a live writer may keep appending. Raises :class:`NotAuditDatabase` for a
    missing file or one that is not an audit database."""
    conn, header = open_read(path)
    try:
        verifier = ChainVerifier(header.genesis, header.db_id)
        if head is not None:
            verifier.watch(head.seq)
        try:
            # One read transaction: a snapshot, even while the writer commits.
            conn.execute("BEGIN")
            for row in conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq"):
                if not verifier.feed(_row_record(row)):
                    break
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise NotAuditDatabase(f"{path}: cannot read: {exc}") from None
        return verifier.result(head)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- writing


def lock_path(path: Path) -> Path:
    """The writer's lock file beside the database (like SQLite's ``-wal`` and ``-shm``)."""
    return path.with_name(path.name + "-lock")


_SIDE_FILES = ("-wal", "-shm")


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def set_aside_orphans(path: Path, only: Mapping[str, tuple[int, int] | None] | None = None,
                      ) -> list[Path]:
    """Move aside (never delete: they are evidence) the ``-wal`` and ``-shm`` files of a
    database that is no longer at ``path``; with ``only``, just those still the same files
    as given (suffix -> (st_dev, st_ino)). A WAL left behind would otherwise be read as part
    of whatever file is put at ``path``: SQLite leaves it there when its database is
    deleted or moved. Returns the new names."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        ident = _ident(side)
        if ident is None or (only is not None and only.get(suffix) != ident):
            continue
        target = side.with_name(f"{side.name}.orphan-{stamp}-{ident[1]}")
        side.rename(target)
        moved.append(target)
    return moved


def _new_header(continues: Mapping[str, str] | None) -> dict[str, str]:
    values = {"format": FORMAT, "version": VERSION, "db_id": uuid.uuid4().hex,
              "created_at_s": repr(time.time())}
    if continues:
        values.update(continues)
    return values


class WriteStore:
    """The writer's handle on the database: an exclusive advisory lock (so that two
    gateways never fork one chain), one read-write connection, the header and the head.
    Used from one thread at a time."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int,
                 header: Header, head: tuple[int, str], ident: tuple[int, int],
                 created: bool) -> None:
        self.path = path
        self.conn = conn
        self.lock_fd = lock_fd
        self.header = header
        self.head = head
        self.ident = ident
        self.created = created
        # The side files this connection uses, to recognise them once the database is gone.
        self.side_idents = {suffix: _ident(path.with_name(path.name + suffix))
                            for suffix in _SIDE_FILES}

    @classmethod
    def open(cls, path: Path, *, synchronous: str, create: bool = True,
             continues: Mapping[str, str] | None = None) -> WriteStore:
        """Open (creating if missing and ``create``) for writing. Raises
        :class:`AuditError` for a database that must not be written (not an audit database,
        broken tail, locked by another writer); ``OSError`` or ``sqlite3.Error`` for I/O
        trouble; ``FileNotFoundError`` when missing and not ``create``."""
        if not create and not path.exists():
            raise FileNotFoundError(f"{path}: the audit database file is gone "
                                    "(deleted or moved)")
        if create and not path.exists():
            set_aside_orphans(path)
        # The writer's lock is a separate file: a descriptor of our own on the database file
        # would, when closed, drop every POSIX lock SQLite holds on it in this process.
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        conn: sqlite3.Connection | None = None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditInUse(f"{path}: already open for writing by another "
                                 "audit log") from None
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            st = os.stat(path)
            ident = (st.st_dev, st.st_ino)
            conn.execute("PRAGMA busy_timeout = 2000")
            try:
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise
                raise NotAuditDatabase(f"{path}: not an audit database ({exc})") from None
            if tables:
                read_header(conn)  # before changing anything in a file that is not ours
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OSError(f"{path}: cannot switch to WAL mode (got {mode})")
            # synchronous=FULL (the default here): the WAL is fsynced at every commit, so an
            # acknowledged record survives power loss too, not only kill -9 (which NORMAL
            # already survives: committed WAL frames are in the OS page cache). One fsync
            # per batch of up to batch_max records costs little; see benchmarks/audit.py.
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            # Keep the WAL file from staying huge after a burst.
            conn.execute("PRAGMA journal_size_limit = 16777216")
            created = cls._create(conn, continues) if tables == 0 else False
            header = read_header(conn)
            head = check_tail(header, read_tail(conn, 2))
            st2 = os.stat(path)
            if (st2.st_dev, st2.st_ino) != ident:
                raise OSError(f"{path}: replaced while opening")
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(fd)
            raise
        return cls(path, conn, fd, header, head, ident, created)

    @staticmethod
    def _create(conn: sqlite3.Connection, continues: Mapping[str, str] | None) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        try:
            exists = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if exists:
                conn.execute("ROLLBACK")
                return False
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                             sorted(_new_header(continues).items()))
            for statement in TRIGGERS.split("END;"):
                if statement.strip():
                    conn.execute(statement + "END;")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return True

    def check_identity(self) -> None:
        """Raise ``OSError`` if the path no longer names the file we hold: deleted, moved or
        replaced. SQLite would keep writing to the unlinked file, and every record would be
        lost when it closes."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: the audit database file is gone "
                                    "(deleted or moved)") from None
        if (st.st_dev, st.st_ino) != self.ident:
            raise OSError(f"{self.path}: the audit database file was replaced")

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Commit ``rows`` in one transaction (rolled back on error)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(INSERT, rows)
            self.check_identity()
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.head = (rows[-1][0], rows[-1][7])

    def records_after(self, seq: int) -> list[Record]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq",
                                 (seq,)).fetchall()
        return [_row_record(row) for row in rows]

    def still_at_path(self) -> bool:
        """Whether the path still names the file this store has open."""
        return _ident(self.path) == self.ident

    def close(self, *, checkpoint: bool = False) -> None:
        """Close the connection (first copying the WAL into the database file, if
        ``checkpoint``), then release the lock. Never raises."""
        if checkpoint:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # Closing after an I/O error can fail again; the descriptors go either way.
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)
