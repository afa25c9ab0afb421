"""The publisher against a real nats-server: every audit record of the site's database reaches
its stream once, in chain order, with the events it implies and the signed head; an outage
costs nothing; a gap is refused and reported."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

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
