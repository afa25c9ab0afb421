"""Logins and operator actions on the dashboard: refused without a session (401) and without
the CSRF token (403), forwarded to the core's handler with the user otherwise, and the core's
real answer relayed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.adapters.base import (
    ACCEPTED,
    ClientInfo,
    NorthboundHandler,
    Refusal,
    Role,
    WriteOutcome,
)
from gateway.config.schema import HttpServerSpec, OpcUaServerSpec, OpcUaUser
from gateway.ops.http import COOKIE, Dashboard
from simulators.ports import free_port
from tests.ops.test_margins import SITE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import pytest

USERS = (OpcUaUser("boss", "SG_TEST_DASH_BOSS", "admin"),
         OpcUaUser("eye", "SG_TEST_DASH_EYE", "viewer"),
         OpcUaUser("ghost", "SG_TEST_DASH_GHOST", "operator"))


class Core(NorthboundHandler):
    """Records what reaches it; refuses requests from viewers as the real core does."""

    def __init__(self) -> None:
        self.requests: list[tuple[ClientInfo, str, str | None, float | None]] = []
        self.incidents: list[tuple[ClientInfo, str, str, tuple[str, ...]]] = []
        self.refusals: list[tuple[str, str, str | None, str, str]] = []

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        raise AssertionError("the dashboard writes no setpoints")

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        self.requests.append((client, kind, detector, duration_s))
        if client.role is Role.VIEWER:
            return WriteOutcome(False, 2, f"role viewer may not {kind}", Refusal.NOT_AUTHORISED)
        if kind == "to_auto":
            return WriteOutcome(False, 4, "a clean shadow period is required", Refusal.MODE)
        return WriteOutcome(True, 0, "mode manual")

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        self.incidents.append((client, action, incident_id, args))
        return ACCEPTED

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        self.refusals.append((protocol, address, user, event, reason))


def serve(monkeypatch: pytest.MonkeyPatch,
          test: Callable[[str, aiohttp.ClientSession, Core], Awaitable[None]]) -> None:
    monkeypatch.setenv("SG_TEST_DASH_BOSS", "boss-pw")
    monkeypatch.setenv("SG_TEST_DASH_EYE", "eye-pw")
    monkeypatch.delenv("SG_TEST_DASH_GHOST", raising=False)
    site = dataclasses.replace(SITE, northbound=dataclasses.replace(
        SITE.northbound, opcua=OpcUaServerSpec(users=USERS, allow_insecure_passwords=True)))
    core = Core()

    async def main() -> None:
        dash = Dashboard(site, HttpServerSpec(port=free_port()), core)
        await dash.start()
        try:
            # unsafe: keep cookies of an IP address (the default jar drops them)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                await test(f"http://127.0.0.1:{dash.port}", http, core)
        finally:
            await dash.stop()

    asyncio.run(main())


async def login(http: aiohttp.ClientSession, base: str, user: str, password: str
                ) -> tuple[int, dict[str, Any]]:
    async with http.post(base + "/api/login", json={"user": user, "password": password}) as r:
        return r.status, await r.json()


async def post(http: aiohttp.ClientSession, url: str, body: Any, csrf: str | None = None
               ) -> tuple[int, dict[str, Any]]:
    headers = {} if csrf is None else {"X-CSRF-Token": csrf}
    async with http.post(url, json=body, headers=headers) as r:
        return r.status, await r.json()


def test_actions_need_a_session_and_its_csrf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(base: str, http: aiohttp.ClientSession, core: Core) -> None:
        # Without a session: 401, and nothing reaches the core.
        status, body = await post(http, base + "/api/request", {"kind": "to_manual"})
        assert (status, body["accepted"]) == (401, False)
        status, _ = await post(http, base + "/api/incident",
                               {"action": "note", "incident_id": "INC-1", "args": ["x"]})
        assert status == 401
        async with http.get(base + "/api/session") as r:
            assert r.status == 401
        # Logged in: an HttpOnly, SameSite=Strict session cookie and a CSRF token.
        async with http.post(base + "/api/login",
                             json={"user": "boss", "password": "boss-pw"}) as r:
            assert r.status == 200
            me = await r.json()
            cookie = r.cookies[COOKIE]
        assert (me["user"], me["role"]) == ("boss", "admin")
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plain HTTP here; HTTPS sets Secure
        # Without the CSRF token, or with a wrong one: 403, nothing reaches the core.
        status, _ = await post(http, base + "/api/request", {"kind": "to_manual"})
        assert status == 403
        status, _ = await post(http, base + "/api/request", {"kind": "to_manual"}, "forged")
        assert status == 403
        assert core.requests == [] and core.incidents == []
        # With both: the core gets it with the user, and its answer comes back.
        status, body = await post(http, base + "/api/request", {"kind": "to_manual"},
                                  me["csrf"])
        assert (status, body["accepted"], body["reason"]) == (200, True, "mode manual")
        client, kind, _detector, _duration = core.requests[-1]
        assert (client.protocol, client.user, client.role, kind) == (
            "http", "boss", Role.ADMIN, "to_manual")
        assert client.address.startswith("127.0.0.1:")
        # The core's refusal is a refusal, never "accepted".
        status, body = await post(http, base + "/api/request", {"kind": "to_auto"},
                                  me["csrf"])
        assert (status, body["accepted"], body["refusal"]) == (409, False, "mode")
        assert body["reason"] == "a clean shadow period is required"
        status, body = await post(http, base + "/api/request",
                                  {"kind": "bypass", "detector": "divergence",
                                   "duration_s": 60}, me["csrf"])
        assert status == 200 and core.requests[-1][2:] == ("divergence", 60.0)
        status, body = await post(http, base + "/api/incident",
                                  {"action": "acknowledge", "incident_id": "INC-1",
                                   "args": ["on it"]}, me["csrf"])
        assert status == 200
        assert core.incidents[-1][1:] == ("acknowledge", "INC-1", ("on it",))
        # After logout the session is gone.
        status, _ = await post(http, base + "/api/logout", {}, me["csrf"])
        assert status == 200
        status, _ = await post(http, base + "/api/request", {"kind": "to_manual"},
                               me["csrf"])
        assert status == 401

    serve(monkeypatch, test)


def test_a_viewer_is_refused_by_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(base: str, http: aiohttp.ClientSession, core: Core) -> None:
        status, me = await login(http, base, "eye", "eye-pw")
        assert status == 200 and me["role"] == "viewer"
        status, body = await post(http, base + "/api/request", {"kind": "reset_trip"},
                                  me["csrf"])
        assert (status, body["accepted"], body["refusal"]) == (403, False, "not_authorised")

    serve(monkeypatch, test)


def test_failed_logins_are_refused_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(base: str, http: aiohttp.ClientSession, core: Core) -> None:
        for user, password in (("boss", "wrong"), ("nobody", "x"), ("ghost", "")):
            status, body = await login(http, base, user, password)
            # One answer for every failure: it does not tell which names exist.
            assert (status, body["error"]) == (401, "wrong user name or password")
        assert [(p, u, e) for p, _, u, e, _ in core.refusals] == [
            ("http", "boss", "login_failed"), ("http", "nobody", "login_failed"),
            ("http", "ghost", "login_failed")]
        assert [r[4] for r in core.refusals] == [
            "wrong password", "unknown user",
            "no password is configured for the user (variable unset)"]
        assert core.requests == []

    serve(monkeypatch, test)


def test_bad_input_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(base: str, http: aiohttp.ClientSession, core: Core) -> None:
        async with http.post(base + "/api/login", data="user=boss") as r:
            assert r.status == 415
        async with http.post(base + "/api/login", data="{", headers={
                "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "not JSON" in (await r.json())["error"]
        status, _ = await login(http, base, "", "x")
        assert status == 400
        _, me = await login(http, base, "boss", "boss-pw")
        for body in ({"kind": 3}, {}, {"kind": "bypass", "duration_s": -1},
                     {"kind": "bypass", "duration_s": True}, [1, 2]):
            status, answer = await post(http, base + "/api/request", body, me["csrf"])
            assert status == 400 and answer["accepted"] is False, body
        status, _ = await post(http, base + "/api/incident",
                               {"action": "note", "incident_id": "INC-1", "args": ["x" * 3000]},
                               me["csrf"])
        assert status == 400
        async with http.post(base + "/api/request", data="x" * 100_000, headers={
                "Content-Type": "application/json", "X-CSRF-Token": me["csrf"]}) as r:
            assert r.status == 413
        assert core.requests == [] and core.incidents == []

    serve(monkeypatch, test)


def test_without_users_nobody_logs_in() -> None:
    async def main() -> None:
        core = Core()
        site = dataclasses.replace(SITE, northbound=dataclasses.replace(SITE.northbound,
                                                                        opcua=None))
        dash = Dashboard(site, HttpServerSpec(port=free_port()), core)  # no users
        await dash.start()
        try:
            async with aiohttp.ClientSession() as http:
                status, body = await login(http, f"http://127.0.0.1:{dash.port}", "boss", "x")
            assert status == 403 and "no users" in body["error"]
        finally:
            await dash.stop()

    asyncio.run(main())
