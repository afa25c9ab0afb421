"""Re-verify a site's audit chain from the centre's copy, and compare it with the site's disk.

``safety-gateway fleet verify SITE --server URL [--db SITE_AUDIT.db] [--public-key PUB]``:

1. reads every audit record of ``SG_<site>`` in stream order and checks the chain as
   ``audit verify`` does (each record's hash, seq continuity, each link; record 1 against the
   genesis hash of the database header it carries);
2. checks every signed head the site exported (``sg.site.<site>.heads``): its ed25519
   signature (against ``--public-key``, the site's ``<db>.head-key.pub``, when given: pinned;
   else against the key written in the head, and all heads must share one key), its database
   id, and that the centre holds the record it names with the same hash (a head the centre
   does not hold yet is reported, not failed: the link may be behind);
3. with ``--db``, compares the site's database record by record with the central copy: a
   record edited, deleted or rewritten on the site's disk after it was published is named by
   its seq, even if the attacker re-hashed the chain so that ``audit verify`` on the site
   passes.

Exit codes: 0 verified, 1 verification failed, 2 bad input, 3 the server is unreachable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.chain import ChainVerifier, ExportedHead, Record, genesis_hash
from gateway.audit.signed_head import FORMAT as HEAD_FORMAT
from gateway.audit.signed_head import key_id, signed_bytes
from gateway.fleet.subjects import SiteSubjects

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from nats.aio.client import Client


@dataclass
class FleetVerifyResult:
    """The verdict: ``ok``; ``records`` checked; the central chain's last seq; the first
    broken seq (None when intact) and one line per finding in ``problems`` (failures) and
    ``notes`` (facts that do not fail verification)."""

    site: str
    ok: bool = True
    records: int = 0
    last_seq: int = 0
    broken_seq: int | None = None
    heads: int = 0
    key_id: str | None = None
    compared: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, message: str) -> None:
        self.ok = False
        if seq is not None and self.broken_seq is None:
            self.broken_seq = seq
        self.problems.append(message)

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "ok": self.ok, "records": self.records,
                "last_seq": self.last_seq, "broken_seq": self.broken_seq,
                "heads": self.heads, "key_id": self.key_id, "compared": self.compared,
                "problems": self.problems, "notes": self.notes}


class StreamMissing(Exception):
    """The centre has no stream for the site."""


async def read_stream(client: Client, site: str, subject: str, *, batch: int = 1000,
                      timeout_s: float = 10.0) -> list[tuple[int, bytes]]:
    """Every message of ``subject`` in ``site``'s stream, in stream order: (stream seq, data).
    Uses an ephemeral pull consumer (nothing is left on the server). Raises
    :class:`StreamMissing`, nats-py errors for a server that does not answer."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    names = SiteSubjects(site)
    js = client.jetstream(timeout=timeout_s)
    try:
        info = await js.stream_info(names.stream, subjects_filter=subject)
    except NotFoundError:
        raise StreamMissing(f"the server has no stream {names.stream} for site {site!r}") \
            from None
    wanted = (info.state.subjects or {}).get(subject, 0)
    if wanted == 0:
        return []
    sub = await js.pull_subscribe(subject, stream=names.stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=60.0))
    out: list[tuple[int, bytes]] = []
    try:
        while len(out) < wanted:
            msgs = await sub.fetch(min(batch, wanted - len(out)), timeout=timeout_s)
            for msg in msgs:
                out.append((msg.metadata.sequence.stream, msg.data))
    finally:
        await sub.unsubscribe()
    return out


def _record(data: dict[str, Any]) -> Record:
    return Record(seq=data.get("seq"), at_s=data.get("at_s"),  # type: ignore[arg-type]
                  kind=data.get("kind"), actor=data.get("actor"),  # type: ignore[arg-type]
                  source=data.get("source"), payload=data.get("payload"),  # type: ignore[arg-type]
                  prev_hash=data.get("prev_hash"), hash=data.get("hash"))  # type: ignore[arg-type]


def _parse(blob: bytes) -> dict[str, Any]:
    try:
        value = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def check_chain(site: str, messages: list[tuple[int, bytes]], result: FleetVerifyResult,
                ) -> tuple[dict[int, str], str]:
    """Check the central chain; returns seq -> hash of the records held, and the db id."""
    hashes: dict[int, str] = {}
    if not messages:
        result.notes.append("the centre holds no audit record of this site")
        return hashes, ""
    first = _parse(messages[0][1])
    db_id = str(first.get("db_id", ""))
    genesis: str | None = None
    if first.get("seq") == 1:
        header = first.get("header")
        if not isinstance(header, dict):
            result.fail(1, "record seq 1 carries no database header: the chain cannot be "
                           "anchored")
            return hashes, db_id
        if header.get("db_id") != db_id:
            result.fail(1, "record seq 1's header names another database than the record")
        genesis = genesis_hash({str(k): str(v) for k, v in header.items()})
    else:
        result.notes.append(f"the centre's copy starts at seq {first.get('seq')} (older "
                            "records left by retention): checked from there")
    verifier = ChainVerifier(genesis, db_id)
    for _, blob in messages:
        data = _parse(blob)
        if data.get("site") != site or data.get("db_id") != db_id:
            result.fail(data.get("seq") if isinstance(data.get("seq"), int) else None,
                        f"audit message seq {data.get('seq')} names site {data.get('site')!r} "
                        f"database {data.get('db_id')!r}, not {site!r} {db_id!r}")
            break
        rec = _record(data)
        if not verifier.feed(rec):
            break
        hashes[rec.seq] = rec.hash
    if verifier.problem is not None:
        result.fail(verifier.broken_seq, f"central chain: {verifier.message}")
    result.records = verifier.records
    result.last_seq = verifier.last_seq
    return hashes, db_id


def check_heads(heads: list[tuple[int, bytes]], hashes: dict[int, str], db_id: str,
                pinned: bytes | None, result: FleetVerifyResult) -> None:
    """Check each signed head's signature, database and hash against the central chain."""
    keys: set[bytes] = set()
    for _, blob in heads:
        data = _parse(blob)
        if data.get("format") != HEAD_FORMAT:
            result.fail(None, "a heads message is not a signed audit head")
            continue
        try:
            public = bytes.fromhex(str(data.get("public_key", "")))
            signature = bytes.fromhex(str(data.get("signature", "")))
            Ed25519PublicKey.from_public_bytes(public).verify(signature, signed_bytes(data))
            head = ExportedHead.from_json(data.get("head"))
        except (ValueError, InvalidSignature) as exc:
            result.fail(None, f"a signed head does not verify: {exc or 'bad signature'}")
            continue
        if pinned is not None and public != pinned:
            result.fail(head.seq, f"the head of seq {head.seq} is signed by key "
                                  f"{key_id(public)}, not the site's {key_id(pinned)}")
            continue
        keys.add(public)
        result.heads += 1
        if head.db_id and db_id and head.db_id != db_id:
            result.fail(head.seq, f"the head of seq {head.seq} is of database {head.db_id}, "
                                  f"the centre's chain of {db_id}")
        elif head.seq in hashes:
            if hashes[head.seq] != head.hash:
                result.fail(head.seq, f"record seq {head.seq} differs from the site's signed "
                                      "head (rewritten before it was published)")
        elif head.seq > result.last_seq:
            result.notes.append(f"signed head seq {head.seq} is beyond the centre's last "
                                f"record {result.last_seq} (the link is behind)")
    if len(keys) > 1:
        result.fail(None, f"the heads are signed by {len(keys)} different keys")
    if keys:
        result.key_id = key_id(next(iter(keys)))
        if pinned is None:
            result.notes.append(f"heads checked against their own key {result.key_id} "
                                "(pass --public-key to pin the site's key)")


def compare_db(db: Path, messages: list[tuple[int, bytes]], result: FleetVerifyResult) -> None:
    """Compare the site's database with the centre's copy, record by record."""
    from gateway.audit.store import open_read, read_records

    conn, header = open_read(db)
    conn.close()
    central = {d["seq"]: d for d in (_parse(b) for _, b in messages)
               if isinstance(d.get("seq"), int)}
    if not central:
        result.compared = 0
        return
    first = min(central)
    local_iter: Iterator[Record] = read_records(db, first_seq=first)
    compared = 0
    if central[first].get("db_id") != header.db_id:
        result.fail(first, f"the site's database is {header.db_id}, the centre holds "
                           f"{central[first].get('db_id')} (replaced database)")
        result.compared = 0
        return
    for seq in range(first, max(central) + 1):
        want = central.get(seq)
        if want is None:
            break  # the central chain check reports the gap
        got = next(local_iter, None)
        if got is None or got.seq != seq:
            result.fail(seq, f"record seq {seq} is held centrally but missing from the site's "
                             "database (deleted or truncated on the site)")
            break
        if got.to_json() != _record(want).to_json():
            result.fail(seq, f"record seq {seq} on the site's disk differs from the copy the "
                             "centre holds (edited on the site after it was published)")
            break
        compared += 1
    result.compared = compared


async def verify_site(client: Client, site: str, *, db: Path | None = None,
                      pinned: bytes | None = None) -> FleetVerifyResult:
    """Run the checks in the module docstring. Raises :class:`StreamMissing`, nats-py errors
    (server trouble), :class:`~gateway.audit.store.NotAuditDatabase` for a bad ``db``."""
    names = SiteSubjects(site)
    result = FleetVerifyResult(site)
    messages = await read_stream(client, site, names.audit)
    heads = await read_stream(client, site, names.heads)
    hashes, db_id = check_chain(site, messages, result)
    check_heads(heads, hashes, db_id, pinned, result)
    if db is not None:
        compare_db(db, messages, result)
    return result
