"""``safety-gateway fleet model ...`` against a real nats-server: what each step does, and
its exit codes (1 refused, 2 bad input, 3 no server)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from gateway.cli import main
from gateway.config.schema import FleetSpec
from gateway.fleet.connection import connect
from gateway.fleet.models import Assignment
from gateway.fleet.subjects import ASSIGNMENTS_BUCKET
from simulators.ports import free_port
from tests.fleet.test_rollout import make_central

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from tests.fleet.natsserver import NatsServer


def test_publish_assign_stop_and_their_exit_codes(nats_server: NatsServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    central = make_central(tmp_path)
    version = central.register("nominal")
    server = ["--server", nats_server.url, "--by", "rm"]
    registry = ["--registry", str(central.registry.path)]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["fleet", "model", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = run("publish", *registry, "tank", str(version), *server)
    assert code == 1 and "not approved" in err and err.count("\n") == 1
    central.registry.approve("tank", version, "alice", central.key())
    code, out, _ = run("publish", *registry, "tank", str(version), *server, "--json")
    assert code == 0
    assert json.loads(out)["sha256"] == central.registry.get("tank", version).sha256
    code, _, err = run("assign", "tank", "--version", "9", "--sites", "a", *server)
    assert code == 1 and "not published" in err
    code, _, err = run("assign", "tank", "--version", str(version), "--sites", "a,b.c",
                       *server)
    assert code == 2 and "not a site id" in err
    code, out, _ = run("assign", "tank", "--version", str(version), "--sites", "a,b,c",
                       "--stage", "1", "--rollout", "t1", *server, "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["assigned"] == ["a"] and plan["pending"] == ["b", "c"]
    code, out, _ = run("advance", "t1", "--stage", "1", *server)
    assert code == 0 and "assigned a, b; pending c" in out
    code, out, _ = run("stop", "t1", "--reason", "drill", *server)
    assert code == 0 and "withdrawn from a, b" in out
    code, _, err = run("advance", "t1", *server)
    assert code == 1 and "stopped" in err
    code, out, _ = run("show", "t1", *server, "--json")
    assert code == 0 and json.loads(out)["state"] == "stopped"

    async def assignments() -> list[str]:
        client = await connect(FleetSpec(url=nats_server.url, site_id="probe"))
        try:
            kv = await (client.jetstream()).key_value(ASSIGNMENTS_BUCKET)
            history = [e for site in ("a", "b") for e in await kv.history(site)]
            return [f"{e.key}:{e.operation or Assignment.parse(e.value or b'').rollout}"
                    for e in history]
        finally:
            await client.close()

    assert asyncio.run(assignments()) == ["a:t1", "a:DEL", "b:t1", "b:DEL"]
    code, _, err = run("show", "t1", "--server", f"nats://127.0.0.1:{free_port()}")
    assert code == 3 and "cannot reach" in err
