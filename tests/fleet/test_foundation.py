"""The fleet's ground rules, against a real nats-server: a site's audit records are kept once
each and in chain order, and the config's ``fleet:`` section reads as documented."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from nats.js.errors import APIError

from gateway.config.loader import ConfigError, load_config
from gateway.config.schema import FleetSpec
from gateway.fleet.connection import connect, connect_options
from gateway.fleet.subjects import (
    EXPECTED_LAST_MSG_ID,
    MSG_ID,
    SiteIdError,
    SiteSubjects,
    seq_of_msg_id,
)

if TYPE_CHECKING:
    from tests.fleet.natsserver import NatsServer

REPO = Path(__file__).resolve().parents[2]


def test_a_stream_keeps_records_once_and_refuses_a_gap(nats_server: NatsServer) -> None:
    spec = FleetSpec(url=nats_server.url, site_id="north-works")
    names = SiteSubjects(spec.site_id)

    async def scenario() -> tuple[list[int], bool, str]:
        client = await connect(spec)
        try:
            js = client.jetstream()
            await js.add_stream(name=names.stream, subjects=[names.audit])

            async def publish(seq: int) -> bool:
                headers = {MSG_ID: names.msg_id(seq)}
                if seq > 1:
                    headers[EXPECTED_LAST_MSG_ID] = names.msg_id(seq - 1)
                ack = await js.publish(names.audit, f"record {seq}".encode(), headers=headers)
                return bool(ack.duplicate)

            for seq in (1, 2, 3):
                await publish(seq)
            duplicate = await publish(3)  # a resend after a lost ack: dropped, not stored
            refusal = ""
            try:
                await publish(5)  # 4 never arrived: the stream must not accept 5
            except APIError as exc:
                refusal = str(exc.description)
            last = await js.get_last_msg(names.stream, names.audit)
            assert last.headers is not None
            held = await js.stream_info(names.stream)
            seqs = [seq_of_msg_id(spec.site_id, last.headers[MSG_ID]) or 0,
                    held.state.messages]
            return seqs, duplicate, refusal
        finally:
            await client.close()

    seqs, duplicate, refusal = asyncio.run(scenario())
    assert seqs == [3, 3]
    assert duplicate
    assert "last msg id" in refusal.lower()


def test_subject_names_confine_a_site() -> None:
    names = SiteSubjects("pump-7")
    assert names.audit == "sg.site.pump-7.audit"
    assert names.all == "sg.site.pump-7.>"
    assert names.event("trip") == "sg.site.pump-7.event.trip"
    assert names.command("ack") == "sg.site.pump-7.cmd.ack"
    assert seq_of_msg_id("pump-7", names.msg_id(42)) == 42
    assert seq_of_msg_id("pump-70", names.msg_id(42)) is None
    for bad in ("a.b", "a*", ">", "", "x y"):
        with pytest.raises(SiteIdError):
            SiteSubjects(bad)
    with pytest.raises(SiteIdError):
        names.event("trip.*")


def _site_with(tmp_path: Path, fleet: str) -> Path:
    text = (REPO / "configs" / "water_tank.yaml").read_text()
    path = tmp_path / "site.yaml"
    path.write_text(text + "\n" + fleet)
    return path


def test_fleet_section_defaults_to_the_site_name(tmp_path: Path) -> None:
    site = load_config(_site_with(tmp_path, "fleet:\n  url: nats://127.0.0.1:4222\n"))
    assert site.fleet is not None
    assert site.fleet.site_id == site.site.name
    assert site.fleet.heartbeat_s == 5.0
    assert "tls" not in connect_options(site.fleet)


def test_fleet_section_errors_name_line_and_key(tmp_path: Path) -> None:
    path = _site_with(tmp_path, "fleet:\n  url: http://x\n  site_id: a.b\n  certificate: c.pem\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "fleet.url" in text and "nats:// or tls://" in text
    assert f"{path}:" in text
