"""Incidents worked from the centre: the request, and the site's responder that decides.

The centre sends a request to ``sg.site.<id>.cmd.incident`` (:func:`ask_incident`); the site's
responder (:func:`run_command_responder`, in the communications process) answers it. The site
decides everything: it checks the user name and password against its **own** users
(``northbound.opcua.users``, the accounts of OPC UA and the dashboard, with the same failed-login
throttle), then hands the action to the same ``NorthboundHandler.incident`` path as the
dashboard and OPC UA, where the safety core checks the role (``gateway.ops.roles``), applies or
refuses, and records it in the site's audit chain with the user and the source
``fleet:<requester>``. The reply is the core's real answer. A failed login is recorded at the
site as the dashboard's are (a refused connection, event ``login_failed``). The centre never
decides and keeps no passwords: it forwards what the person typed.

The request carries a password, so the link must be encrypted (``tls://``, as ``fleet:``
recommends); the responder does not look at the transport.

Request (JSON): ``{"format": 1, "user", "password", "action", "incident_id", "args": [texts],
"requester": text}``. Reply (JSON): ``{"format": 1, "site", "accepted", "code", "reason",
"refusal"}``, where ``code`` is the core's (0 accepted; 2 not authorised, 3 bad request, 4
refused by the incident) or 1 for a refused login.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gateway.adapters.base import ClientInfo, Refusal, WriteOutcome
from gateway.fleet.subjects import SiteSubjects

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from gateway.adapters.base import NorthboundHandler
    from gateway.config.schema import Site

__all__ = ["FORMAT", "MAX_REQUEST_BYTES", "IncidentAnswer", "Responder", "Unreachable",
           "ask_incident", "run_command_responder"]

log = logging.getLogger("gateway.fleet.commands")

FORMAT: Final = 1
VERB: Final = "incident"
MAX_REQUEST_BYTES: Final = 32 * 1024  # a review's JSON is the largest argument (16,000 chars)
MAX_TEXT: Final = 16_000
LOGIN_FAILED: Final = 1
_REQUESTER: Final = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")


@dataclass(frozen=True)
class IncidentAnswer:
    """The site's answer to one incident request."""

    site: str
    accepted: bool
    code: int
    reason: str
    refusal: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "site": self.site, "accepted": self.accepted,
                "code": self.code, "reason": self.reason, "refusal": self.refusal}


def _refused(site: str, code: int, reason: str, refusal: Refusal | None = None
             ) -> IncidentAnswer:
    return IncidentAnswer(site, False, code, reason, None if refusal is None else str(refusal))


class Responder:
    """The site's side: checks the login against the site's users and hands the action to
    ``handler`` (see the module docstring). ``clock`` is monotonic seconds (the throttle's)."""

    def __init__(self, site: Site, handler: NorthboundHandler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from gateway.adapters.opcua.throttle import LoginThrottle
        from gateway.config.schema import LoginThrottleSpec
        from gateway.ops.users import UserTable

        if site.fleet is None:
            raise ValueError("the site has no fleet: section")
        self.site_id = site.fleet.site_id
        opcua = site.northbound.opcua
        self.users = UserTable(() if opcua is None else opcua.users, "fleet", log)
        self.throttle = LoginThrottle(LoginThrottleSpec() if opcua is None else opcua.login)
        self.handler = handler
        self.clock = clock

    async def answer(self, data: bytes) -> IncidentAnswer:
        """The answer to one request's bytes (never raises for bad input: it is refused)."""
        request = _parse(data)
        if isinstance(request, str):
            return _refused(self.site_id, 3, request)
        user, password, action, incident_id, args, requester = request
        address = requester
        if not self.users:
            return _refused(self.site_id, LOGIN_FAILED,
                            "no users are configured at this site (northbound.opcua.users)")
        admission = self.throttle.admit(user, address, self.clock())
        if admission.refused:
            log.warning("fleet login of %r from %s refused unchecked (throttled)", user, address)
            return _refused(self.site_id, LOGIN_FAILED, "too many failed logins: try again later")
        if admission.wait_s > 0:  # the same rule as OPC UA's and the dashboard's logins
            await asyncio.sleep(admission.wait_s)
        role, why = self.users.check(user, password)
        if role is None:
            self.handler.refused_connection("fleet", address, user, "login_failed", why)
            log.info("fleet login of %r from %s refused: %s", user, address, why)
            return _refused(self.site_id, LOGIN_FAILED, "wrong user name or password",
                            Refusal.NOT_AUTHORISED)
        self.throttle.succeeded(user, address)
        outcome: WriteOutcome = await self.handler.incident(
            ClientInfo("fleet", address, user, role), action, incident_id, args)
        why_refused = outcome.why
        return IncidentAnswer(self.site_id, outcome.accepted, outcome.code, outcome.reason,
                              None if why_refused is None else str(why_refused))


Request = tuple[str, str, str, str, tuple[str, ...], str]


def _parse(data: bytes) -> Request | str:
    """The request's fields, or why it is malformed."""
    if len(data) > MAX_REQUEST_BYTES:
        return f"request over {MAX_REQUEST_BYTES} bytes"
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "the request is not JSON"
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return f"the request must be a JSON object of format {FORMAT}"
    user, password = body.get("user"), body.get("password")
    action, incident_id, args = body.get("action"), body.get("incident_id"), body.get("args", [])
    requester = body.get("requester", "central")
    if not isinstance(user, str) or not user or not isinstance(password, str):
        return "user and password: texts"
    if not isinstance(action, str) or not isinstance(incident_id, str) or not incident_id:
        return "action and incident_id: texts"
    if action == "evidence":  # recorded only when a bundle is served, at the site
        return "evidence downloads are recorded by the site's dashboard"
    if (not isinstance(args, list) or not all(isinstance(a, str) for a in args)
            or any(len(a) > MAX_TEXT for a in args)):
        return f"args: a list of texts of at most {MAX_TEXT} characters"
    if not isinstance(requester, str) or _REQUESTER.match(requester) is None:
        return "requester: 1 to 64 letters, digits or ._:@-"
    return user, password, action, incident_id, tuple(args), requester


async def run_command_responder(client: Client, site: Site, handler: NorthboundHandler,
                                stop: asyncio.Event, *,
                                clock: Callable[[], float] = time.monotonic) -> None:
    """Answer the centre's incident requests for ``site`` until ``stop`` is set. Requests are
    answered one at a time, in order (nats-py runs a subscription's callback sequentially);
    at most 64 wait, more are dropped by the client and the centre's request times out.
    Raises ValueError for a site without ``fleet:``; a subscription that cannot be made raises
    nats-py's error (the caller retries on reconnect)."""
    import nats.errors

    responder = Responder(site, handler, clock)
    subject = SiteSubjects(responder.site_id).command(VERB)

    async def handle(msg: Msg) -> None:
        answer = await responder.answer(msg.data)
        if not msg.reply:
            log.info("fleet incident request without a reply subject answered nobody")
            return
        try:
            await msg.respond(json.dumps(answer.as_dict()).encode())
        except (nats.errors.Error, OSError) as exc:
            log.warning("fleet incident answer not sent: %s", exc)

    sub = await client.subscribe(subject, cb=handle, pending_msgs_limit=64)
    log.info("answering fleet incident requests on %s", subject)
    try:
        await stop.wait()
    finally:
        await sub.unsubscribe()


class Unreachable(Exception):
    """The site did not answer (no responder, no link, or the timeout passed)."""


async def ask_incident(client: Client, site_id: str, *, user: str, password: str, action: str,
                       incident_id: str, args: tuple[str, ...], timeout_s: float,
                       requester: str = "central") -> IncidentAnswer:
    """Send one incident request to ``site_id`` and return its answer. Raises
    :class:`Unreachable` when no answer comes within ``timeout_s`` or nobody listens, and
    ValueError for an answer that is not one (the site's answer is never guessed)."""
    import nats.errors

    subject = SiteSubjects(site_id).command(VERB)
    body = {"format": FORMAT, "user": user, "password": password, "action": action,
            "incident_id": incident_id, "args": list(args), "requester": requester}
    try:
        msg = await client.request(subject, json.dumps(body).encode(), timeout=timeout_s)
    except nats.errors.NoRespondersError:
        raise Unreachable(f"site {site_id}: nobody answers on {subject} (the site's link "
                          "or its responder is down)") from None
    except nats.errors.TimeoutError:
        raise Unreachable(f"site {site_id}: no answer within {timeout_s:g} s") from None
    try:
        reply = json.loads(msg.data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"site {site_id}: the answer is not JSON") from None
    if (not isinstance(reply, dict) or reply.get("format") != FORMAT
            or not isinstance(reply.get("accepted"), bool)
            or not isinstance(reply.get("code"), int)
            or not isinstance(reply.get("reason"), str)):
        raise ValueError(f"site {site_id}: the answer is not an incident answer")
    if reply.get("site") != site_id:
        raise ValueError(f"site {site_id}: the answer names site {reply.get('site')!r}")
    refusal = reply.get("refusal")
    return IncidentAnswer(site_id, reply["accepted"], reply["code"],
                          reply["reason"], refusal if isinstance(refusal, str) else None)
