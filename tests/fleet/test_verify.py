"""``fleet verify`` against a real nats-server: the centre re-verifies a site's chain from its
own copy and catches a site database tampered with before or after publishing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import TYPE_CHECKING

from gateway.audit.chain import record_hash
from gateway.audit.store import verify
from gateway.cli import main
from gateway.fleet.publisher import Publisher
from tests.fleet.helpers import make_stream, write_records

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from tests.fleet.natsserver import NatsServer

SITE = "pump-7"


def publish_all(url: str, db: Path, count: int) -> None:
    """Create the site's stream and publish ``db`` until ``count`` records and the head for
    them are held."""
    import nats

    async def scenario() -> None:
        client = await nats.connect(url)
        try:
            await make_stream(client, SITE)
            publisher = Publisher(client, SITE, db, poll_s=0.02)
            await publisher.sync()
            more = True
            while more:  # until the database holds nothing left to publish
                more = await publisher.step()
            assert publisher.state.acked_seq == count
            assert await publisher.publish_head()
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def edit(db: Path, seq: int, *, rehash: bool) -> None:
    """Change record ``seq``'s payload on disk; with ``rehash``, recompute every hash from
    there so that the site's own chain still links (a careful attacker)."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("UPDATE records SET payload = ? WHERE seq = ?", ('{"i":-1}', seq))
    if rehash:
        prev = conn.execute("SELECT hash FROM records WHERE seq = ?", (seq - 1,)).fetchone()[0]
        rows = conn.execute("SELECT seq, at_s, kind, actor, source, payload FROM records "
                            "WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
        for s, at_s, kind, actor, source, payload in rows:
            digest = record_hash(s, at_s, kind, actor, source, payload, prev)
            conn.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?",
                         (prev, digest, s))
            prev = digest
    conn.commit()
    conn.close()


def test_an_intact_site_verifies_centrally(nats_server: NatsServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    write_records(db, 30, trips_every=7)
    publish_all(nats_server.url, db, 30)
    code = main(["fleet", "verify", SITE, "--server", nats_server.url, "--db", str(db),
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["ok"] and out["records"] == 30 and out["compared"] == 30
    assert out["heads"] == 1 and out["key_id"]  # pinned: the .pub beside the database
    assert not any("pin" in note for note in out["notes"])


def test_a_record_edited_on_the_site_after_publishing_is_caught(
        nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    write_records(db, 20)
    publish_all(nats_server.url, db, 20)
    edit(db, 7, rehash=True)
    assert verify(db).ok  # the site's chain alone no longer shows it (without its head)
    code = main(["fleet", "verify", SITE, "--server", nats_server.url, "--db", str(db)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out and "record seq 7 on the site's disk differs" in out


def test_records_deleted_on_the_site_after_publishing_are_caught(
        nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    write_records(db, 20)
    publish_all(nats_server.url, db, 20)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DELETE FROM records WHERE seq >= 18")  # the tail: the chain still links
    conn.commit()
    conn.close()
    assert verify(db).ok
    code = main(["fleet", "verify", SITE, "--server", nats_server.url, "--db", str(db),
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["broken_seq"] == 18
    assert any("missing from the site's database" in p for p in out["problems"])


def test_a_record_edited_before_publishing_breaks_the_central_chain(
        nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    write_records(db, 20)
    edit(db, 5, rehash=False)
    publish_all(nats_server.url, db, 20)
    code = main(["fleet", "verify", SITE, "--server", nats_server.url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["broken_seq"] == 5
    assert any("record seq 5 hash mismatch" in p for p in out["problems"])


def test_verify_exit_codes_for_bad_input_and_no_server(nats_server: NatsServer,
                                                       tmp_path: Path) -> None:
    assert main(["fleet", "verify", "a.b", "--server", nats_server.url]) == 2
    assert main(["fleet", "verify", SITE, "--server", nats_server.url]) == 2  # no stream
    assert main(["fleet", "verify", SITE, "--server", nats_server.url,
                 "--db", str(tmp_path / "missing.db")]) == 2
    nats_server.kill()
    assert main(["fleet", "verify", SITE, "--server", nats_server.url]) == 3


def test_init_creates_streams_with_the_policy(nats_server: NatsServer) -> None:
    import nats

    assert main(["fleet", "init", "--server", nats_server.url, "--sites", "a,b",
                 "--max-age-days", "30", "--max-bytes-per-site", "1000000"]) == 0
    assert main(["fleet", "init", "--server", nats_server.url, "--sites", "a",
                 "--max-age-days", "-1"]) == 2

    async def info() -> tuple[float | None, int | None, bool | None]:
        client = await nats.connect(nats_server.url)
        try:
            got = await client.jetstream().stream_info("SG_b")
            return got.config.max_age, got.config.max_bytes, got.config.deny_delete
        finally:
            await client.close()

    assert asyncio.run(info()) == (30 * 86400.0, 1000000, True)


