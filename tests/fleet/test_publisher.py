"""The publisher against a real nats-server: every audit record of the site's database reaches
its stream once, in chain order, with the events it implies and the signed head; an outage
costs nothing; a gap is refused and reported."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.audit.store import verify
from gateway.fleet.publisher import LinkState, Publisher, Refused
from gateway.fleet.subjects import EXPECTED_LAST_MSG_ID, MSG_ID, SiteSubjects
from tests.fleet.helpers import held_audit, make_stream, until, write_records

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fleet.natsserver import NatsServer

SITE = "north-works"


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 180))  # type: ignore[arg-type]


def test_every_record_its_events_and_the_head_reach_the_stream(nats_server: NatsServer,
                                                              tmp_path: Path) -> None:
    import nats

    db = tmp_path / "audit.db"
    write_records(db, 40, trips_every=10)

    async def main() -> None:
        client = await nats.connect(nats_server.url)
        try:
            await make_stream(client, SITE)
            publisher = Publisher(client, SITE, db, batch_max=16, poll_s=0.02)
            task = asyncio.create_task(publisher.run())
            names = SiteSubjects(SITE)
            js = client.jetstream()

            async def head_held() -> bool:
                info = await js.stream_info(names.stream, subjects_filter=names.heads)
                return bool(info.state.subjects)

            await until(lambda: publisher.state.acked_seq == 40, 30, "40 records acked")
            await until(head_held, 30, "the signed head held")
            state = publisher.state
            assert state.link is LinkState.UP and state.backlog == 0
            assert state.refused_total == 0
            held = await held_audit(client, SITE)
            assert [m["seq"] for m in held] == list(range(1, 41))
            assert "header" in held[0] and all("header" not in m for m in held[1:])
            local = verify(db)
            assert held[-1]["hash"] == local.last_hash
            trips = await js.stream_info(names.stream, subjects_filter=names.event("trip"))
            assert trips.state.subjects == {names.event("trip"): 4}
            head = await js.get_last_msg(names.stream, names.heads)
            assert json.loads(head.data)["head"]["seq"] == 40
            # more records later: published from where the stream stands
            write_records(db, 5)
            await until(lambda: publisher.state.acked_seq == 45, 30, "5 more acked")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # a new publisher (a restarted communications process) resumes, no duplicates
            write_records(db, 5)
            again = Publisher(client, SITE, db, poll_s=0.02)
            task = asyncio.create_task(again.run())
            await until(lambda: again.state.acked_seq == 50, 30, "a restarted publisher")
            held = await held_audit(client, SITE)
            assert [m["seq"] for m in held] == list(range(1, 51))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await client.close()

    run(main())


def test_a_publish_that_does_not_follow_is_refused_and_resumed(nats_server: NatsServer,
                                                                tmp_path: Path) -> None:
    """Another publisher of the same site (a communications process that has not quite died)
    moves the stream on: the first publisher's next record no longer follows the one the
    stream holds, the stream refuses it, and the publisher counts and logs the refusal,
    re-reads the stream and resumes; nothing is lost or stored twice. A record that skips
    one is refused by the stream itself."""
    import nats

    db = tmp_path / "audit.db"
    write_records(db, 10)

    async def main() -> None:
        client = await nats.connect(nats_server.url)
        try:
            await make_stream(client, SITE)
            first = Publisher(client, SITE, db, poll_s=0.02)
            await first.sync()
            assert await first.step() == 10
            names = SiteSubjects(SITE)
            js = client.jetstream()
            tenth = await js.get_last_msg(names.stream, names.audit)
            refused = ""
            try:  # seq 12 right after 10: refused by the stream
                await js.publish(names.audit, b"{}", headers={
                    MSG_ID: names.msg_id(12), EXPECTED_LAST_MSG_ID: names.msg_id(11)})
            except nats.js.errors.APIError as exc:
                refused = str(exc.description)
            assert "wrong last msg id" in refused.lower()
            write_records(db, 5)
            other = Publisher(client, SITE, db)
            await other.sync()
            assert await other.step() == 5
            write_records(db, 5)
            with pytest.raises(Refused):  # it still believes record 10 is the last held
                await first.step()
            assert (await js.get_last_msg(names.stream, names.audit)).seq > tenth.seq
            task = asyncio.create_task(first.run())
            write_records(db, 1)
            await until(lambda: first.state.acked_seq == 21, 30, "resumed to 21")
            held = await held_audit(client, SITE)
            assert [m["seq"] for m in held] == list(range(1, 22))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await client.close()

    run(main())


def test_the_publisher_counts_and_logs_a_refusal(nats_server: NatsServer, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import nats

    db = tmp_path / "audit.db"
    write_records(db, 3)

    async def main() -> None:
        client = await nats.connect(nats_server.url)
        try:
            await make_stream(client, SITE)
            first = Publisher(client, SITE, db, poll_s=0.02)
            await first.sync()
            other = Publisher(client, SITE, db)
            await other.sync()
            assert await other.step() == 3
            write_records(db, 2)
            task = asyncio.create_task(first.run())  # stale: its first publish is refused
            await until(lambda: first.state.acked_seq == 5, 30, "resumed to 5")
            assert first.state.refused_total == 1
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await client.close()

    with caplog.at_level(logging.WARNING, logger="gateway.fleet"):
        run(main())
    assert any("refused a publish" in r.getMessage() for r in caplog.records)


def test_an_outage_costs_nothing_and_the_backlog_catches_up(nats_server: NatsServer,
                                                            tmp_path: Path) -> None:
    """The server is killed, ten minutes of a busy drill's records (6,000: ten a second) are
    written meanwhile, the server comes back (after the stream's duplicate window, which
    would make nats-server 2.9 refuse Nats-Expected-Last-Msg-Id forever): every record is
    held once, in order, within 60 s of the server's return."""
    from gateway.config.schema import FleetSpec
    from gateway.fleet.connection import connect

    db = tmp_path / "audit.db"
    write_records(db, 100)
    spec = FleetSpec(url=nats_server.url, site_id=SITE)

    async def main() -> float:
        client = await connect(spec)
        try:
            await make_stream(client, SITE, duplicate_window_s=0.5)
            publisher = Publisher(client, SITE, db, poll_s=0.05, ack_timeout_s=2.0,
                                  retry_s=0.2, batch_max=512)
            task = asyncio.create_task(publisher.run())
            await until(lambda: publisher.state.acked_seq == 100, 30, "100 records acked")
            nats_server.kill()
            await asyncio.to_thread(write_records, db, 6000, start=100, trips_every=500)
            await until(lambda: publisher.state.link is LinkState.DOWN, 30, "link down seen")
            await until(lambda: publisher.state.backlog == 6000, 30, "backlog of 6000 seen")
            await asyncio.sleep(0.6)  # past the duplicate window (virtual time cannot do it)
            await asyncio.to_thread(nats_server.start)
            back = time.monotonic()
            await until(lambda: publisher.state.acked_seq == 6100, 60, "caught up")
            caught_up_s = time.monotonic() - back
            assert publisher.state.backlog == 0 and publisher.state.link is LinkState.UP
            held = await held_audit(client, SITE)
            assert [m["seq"] for m in held] == list(range(1, 6101))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return caught_up_s
        finally:
            await client.close()

    caught_up_s = asyncio.run(asyncio.wait_for(main(), 240))
    print(f"caught up 6000 records in {caught_up_s:.2f} s")
    assert caught_up_s <= 60


def test_a_site_that_cannot_continue_the_central_chain_stalls_and_says_why(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """The centre holds records of another database (the site's was replaced), or a record
    the site now holds differently (rewritten): the publisher publishes nothing and its
    state says why."""
    import nats

    first = tmp_path / "first.db"
    write_records(first, 5)
    second = tmp_path / "second.db"
    write_records(second, 8)

    async def main() -> list[str | None]:
        client = await nats.connect(nats_server.url)
        try:
            await make_stream(client, SITE)
            publisher = Publisher(client, SITE, first)
            await publisher.sync()
            assert await publisher.step() == 5
            problems = []
            for db in (second, first):
                if db == first:  # rewrite record 5 of the first database after publishing
                    conn = sqlite3.connect(db)
                    conn.execute("DROP TRIGGER records_no_update")
                    conn.execute("UPDATE records SET hash = ? WHERE seq = 5", ("0" * 64,))
                    conn.commit()
                    conn.close()
                stale = Publisher(client, SITE, db, retry_s=0.05)
                task = asyncio.create_task(stale.run())
                await until(lambda p=stale: p.state.link is LinkState.STALLED, 30, "stalled")
                problems.append(stale.state.problem)
                assert stale.state.published_total == 0
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            held = await held_audit(client, SITE)
            assert [m["seq"] for m in held] == [1, 2, 3, 4, 5]
            return problems
        finally:
            await client.close()

    replaced, rewritten = asyncio.run(asyncio.wait_for(main(), 120))
    assert replaced is not None and "replaced database" in replaced
    assert rewritten is not None and "seq 5 differs" in rewritten


def test_site_link_runs_the_site_tasks_beside_the_publisher(nats_server: NatsServer,
                                                            tmp_path: Path) -> None:
    """Extra site tasks get the connected client; one that fails is logged and the
    publisher goes on."""
    import nats

    from gateway.config.schema import FleetSpec
    from gateway.fleet.site_link import SiteLink

    db = tmp_path / "audit.db"
    write_records(db, 3)
    seen: list[str] = []

    async def heartbeat(client: Any) -> None:
        await client.publish(SiteSubjects(SITE).status, b"{}")
        seen.append("heartbeat")
        await asyncio.Event().wait()

    async def broken(client: Any) -> None:
        raise RuntimeError("a bug in a site task")

    async def main() -> None:
        admin = await nats.connect(nats_server.url)
        try:
            await make_stream(admin, SITE)
            link = SiteLink(FleetSpec(url=nats_server.url, site_id=SITE), db,
                            tasks=[heartbeat, broken], publisher_options={"poll_s": 0.02})
            assert link.backlog_records is None and link.link_state == "connecting"
            task = asyncio.create_task(link.run())
            await until(lambda: link.state.acked_seq == 3, 30, "published through the link")
            assert link.backlog_records == 0 and link.link_state == "up"  # for the heartbeat
            write_records(db, 2)
            await until(lambda: link.state.acked_seq == 5, 30, "still publishing")
            assert seen == ["heartbeat"]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert link.client is not None and link.client.is_closed
        finally:
            await admin.close()

    asyncio.run(asyncio.wait_for(main(), 120))
