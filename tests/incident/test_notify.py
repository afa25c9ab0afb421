"""Notifications run off the control path; failures are recorded in the incident, never raised."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import pytest

from gateway.incident.manager import IncidentManager, Notify
from gateway.incident.notify import Notifier, NotifyResult
from gateway.incident.playbook import HookKind, NotificationSpec, Playbook, Rule
from gateway.incident.store import load_incidents
from gateway.supervisor.events import Event, EventKind
from tests.incident.rig import Rig


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens


def notify(spec: NotificationSpec) -> Notify:
    return Notify(spec, "incident INC-1: envelope tripped", "INC-1", "tank", "envelope",
                  "trip constraint violated")


async def serve(status: int, seen: list[bytes]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        seen.append(head + await reader.readexactly(length))
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_a_webhook_posts_json():
    async def body() -> tuple[NotifyResult, list[bytes]]:
        seen: list[bytes] = []
        server, port = await serve(204, seen)
        async with server:
            spec = NotificationSpec("soc", HookKind.WEBHOOK,
                                    url=f"http://ops:s3cret@127.0.0.1:{port}/hook?x=1")
            result = await Notifier().send(notify(spec))
        return result, seen

    result, seen = asyncio.run(body())
    assert result.ok and result.detail == "HTTP 204"
    head, _, payload = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1")
    assert b"Authorization: Basic b3BzOnMzY3JldA==" in head
    assert json.loads(payload) == {"incident": "INC-1", "site": "tank", "detector": "envelope",
                                   "reason": "trip constraint violated",
                                   "message": "incident INC-1: envelope tripped"}


def test_a_webhook_error_status_is_a_failure():
    async def body() -> NotifyResult:
        server, port = await serve(500, [])
        async with server:
            spec = NotificationSpec("soc", HookKind.WEBHOOK, url=f"http://127.0.0.1:{port}/")
            return await Notifier().send(notify(spec))

    result = asyncio.run(body())
    assert not result.ok and "HTTP 500" in result.detail


def test_a_webhook_to_a_closed_port_fails_without_raising():
    spec = NotificationSpec("soc", HookKind.WEBHOOK, url=f"http://127.0.0.1:{closed_port()}/",
                            timeout_s=2.0)
    result = asyncio.run(Notifier().send(notify(spec)))
    assert not result.ok
    assert "refused" in result.detail.lower() or "connect" in result.detail.lower()


def test_a_silent_webhook_times_out():
    async def body() -> NotifyResult:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers; returns when the client gives up
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            spec = NotificationSpec("soc", HookKind.WEBHOOK, url=f"http://127.0.0.1:{port}/",
                                    timeout_s=0.2)
            return await Notifier().send(notify(spec))

    result = asyncio.run(body())
    assert not result.ok and "timed out after 0.2 s" in result.detail
    assert result.duration_s < 2.0


def test_a_command_gets_its_arguments_without_a_shell(tmp_path):
    out = tmp_path / "out.json"
    script = ("import json, os, sys; json.dump({'argv': sys.argv[1:], "
              "'env': os.environ['SG_INCIDENT']}, open(sys.argv[1], 'w'))")
    spec = NotificationSpec("page", HookKind.COMMAND,
                            argv=(sys.executable, "-c", script, str(out), "{message}; $(id)"))
    result = asyncio.run(Notifier().send(notify(spec)))
    assert result.ok and result.detail == "exit 0"
    got = json.loads(out.read_text())
    assert got["argv"] == [str(out), "incident INC-1: envelope tripped; $(id)"]
    assert got["env"] == "INC-1"


@pytest.mark.parametrize(("argv", "needle"), [
    ((sys.executable, "-c", "import sys; sys.stderr.write('no route'); sys.exit(3)"),
     "exit 3: no route"),
    (("/nonexistent/page-on-call",), "FileNotFoundError"),
    ((sys.executable, "-c", "import time; time.sleep(10)"), "timed out after 0.3 s; killed"),
])
def test_a_failing_command_is_reported_not_raised(argv, needle):
    spec = NotificationSpec("page", HookKind.COMMAND, argv=argv, timeout_s=0.3)
    result = asyncio.run(Notifier().send(notify(spec)))
    assert not result.ok
    assert needle in result.detail
    assert result.duration_s < 3.0


def test_log_hooks_are_written_at_once(caplog):
    seen: list[NotifyResult] = []
    notifier = Notifier(lambda action, result: seen.append(result))
    with caplog.at_level("WARNING", logger="gateway.incident.notify"):
        notifier.submit(notify(NotificationSpec("ops", HookKind.LOG)))  # no loop needed
    assert seen == [NotifyResult(True, "logged", 0.0)]
    assert "incident INC-1: envelope tripped" in caplog.text


def test_failures_are_recorded_in_the_incident_and_the_loop_goes_on(tmp_path):
    hooks = {
        "soc": NotificationSpec("soc", HookKind.WEBHOOK,
                                url=f"http://127.0.0.1:{closed_port()}/", timeout_s=2.0),
        "page": NotificationSpec("page", HookKind.COMMAND,
                                 argv=(sys.executable, "-c", "raise SystemExit(7)")),
        "ok": NotificationSpec("ok", HookKind.COMMAND, argv=(sys.executable, "-c", "pass")),
        "ops": NotificationSpec("ops", HookKind.LOG),
    }
    book = Playbook(name="t", hooks=hooks,
                    rules=(Rule("any", ("*",), notify=("soc", "page", "ok", "ops")),))
    rig = Rig(tmp_path, playbook=book)
    base = rig.good(1)
    manager: IncidentManager = rig.manager

    async def loop_body() -> int:
        notifier = Notifier(manager.notified)
        trip = Event(1.0, EventKind.TRIP, "envelope", "x", None, (("target", "manual"),))
        actions = manager.on_decision(base._replace(at_s=1.0, events=(trip,)))
        for action in actions:
            if isinstance(action, Notify):
                notifier.submit(action)  # returns at once
        assert notifier.pending == 3  # the log hook was already written
        cycles = 0
        while notifier.pending:  # the control loop keeps cycling meanwhile
            manager.on_decision(base._replace(at_s=1.0 + 0.1 * cycles, events=()))
            cycles += 1
            await asyncio.sleep(0.01)
        await notifier.aclose()
        return cycles

    cycles = asyncio.run(loop_body())
    assert cycles >= 1
    (inc,) = manager.incidents
    outcomes = {n.hook: (n.ok, n.detail) for n in inc.notifications}
    assert outcomes["ops"] == (True, "logged")
    assert outcomes["ok"] == (True, "exit 0")
    assert outcomes["page"][0] is False and "exit 7" in outcomes["page"][1]
    assert outcomes["soc"][0] is False
    rig.close()
    assert load_incidents(rig.db) == list(manager.incidents)


def test_aclose_cancels_what_is_too_slow_and_reports_it():
    seen: list[NotifyResult] = []

    async def body() -> int:
        notifier = Notifier(lambda a, r: seen.append(r))
        spec = NotificationSpec("page", HookKind.COMMAND,
                                argv=(sys.executable, "-c", "import time; time.sleep(10)"),
                                timeout_s=30)
        notifier.submit(notify(spec))
        await asyncio.sleep(0.05)
        await notifier.aclose(timeout_s=0.2)
        return notifier.pending

    assert asyncio.run(body()) == 0
    assert len(seen) == 1 and not seen[0].ok and "cancelled" in seen[0].detail
