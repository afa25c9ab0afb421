"""The live dashboard's HTTP server (aiohttp), in the communications process.

It is fed like the other northbound servers: :meth:`Dashboard.publish` receives each
:class:`~gateway.runtime.view.PlantView` (from the mirror in the communications process, from
the cycle itself with ``Gateway(servers=True)``) and only stores it, so publishing costs the
publisher nothing. Readers get:

- ``GET /``: the page (``gateway/ops/dashboard/``: our own HTML, CSS and JavaScript, no CDN);
- ``GET /api/state``: JSON of the site's static facts and the latest view with its margins,
  the audit's and device links' health, the detectors' statistics against their thresholds
  (``gateway.ops.panels``), the incidents and the recent events (``gateway.ops.incidents``:
  read from the audit database at most once a second, in a worker thread, while someone looks);
- ``GET /api/incidents/{id}``: one listed incident in full (checklist, timeline); read-only,
  like the page;
- ``GET /api/incidents/{id}/evidence.zip``: its evidence bundle, built on request
  (``gateway.incident.export``); only for a logged-in user whose role may read the audit
  (``gateway.ops.roles.AUDIT_READERS``: operators and administrators): 401 without a session,
  403 for another role, 404 for an incident that does not exist. Each download is recorded
  first by the core (incident action ``evidence``: a note on the incident's timeline in the
  audit chain, with the user and address); if the core refuses or cannot be asked, nothing is
  served (its refusal, or 503);
- ``GET /api/events``: Server-Sent Events, one ``state`` event per new view (its
  ``incidents`` null when unchanged since the stream's last message), at most
  :data:`MAX_RATE_HZ` a second and at least every :data:`KEEPALIVE_S` (the same view again,
  with its age, so that the page sees a stalled core), with a ``retry:`` so that the browser
  reconnects by itself after the gateway restarts.

Read-only by default. With users in the site (``northbound.opcua.users``: the same accounts,
passwords and roles as OPC UA, checked by :class:`gateway.ops.users.UserTable` and throttled
like OPC UA logins), ``POST /api/login`` opens a session: an HttpOnly, SameSite=Strict cookie
(Secure over HTTPS) and a CSRF token that every action must carry in ``X-CSRF-Token``.
``POST /api/request`` (mode requests, reset, bypasses) and ``POST /api/incident`` (note,
acknowledge, check, severity, reported, review, action_done, resolve, force_resolve; see
``gateway.runtime.northbound``) go to the core through the same
:class:`~gateway.adapters.base.NorthboundHandler` as the OPC UA methods: the core checks the
role, applies or refuses, audits it with the user, and its answer is what the page shows.
Without a session: 401; without the right CSRF token: 403; bad input: 400; refused by the
core: 403 (role) or 409, with the core's reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.adapters.base import ClientInfo, Refusal
from gateway.adapters.opcua.throttle import LoginThrottle
from gateway.audit.store import NotAuditDatabase
from gateway.config.schema import LoginThrottleSpec
from gateway.incident.export import ExportError
from gateway.incident.model import UnknownIncident
from gateway.link.mirror import MirrorLayout
from gateway.ops.incidents import IncidentBoard, evidence_zip, valid_id
from gateway.ops.margins import margins
from gateway.ops.panels import candidate, detectors, health
from gateway.ops.roles import AUDIT_READERS
from gateway.ops.sessions import Session, Sessions
from gateway.ops.users import UserTable

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from gateway.adapters.base import NorthboundHandler, WriteOutcome
    from gateway.config.schema import HttpServerSpec, Site
    from gateway.link.counters import CounterLayout
    from gateway.runtime.view import PlantView

log = logging.getLogger("gateway.ops.http")

STATIC = Path(__file__).with_name("dashboard")
MAX_RATE_HZ = 5.0  # a browser needs no more; the core may cycle at 1 kHz
KEEPALIVE_S = 0.5  # >= 2 Hz even when the core publishes nothing new
RETRY_MS = 1000  # the browser's reconnect delay after the stream drops
COOKIE = "sg_session"
MAX_BODY_BYTES = 16 * 1024  # a login or an action is small; anything bigger is refused
MAX_TEXT = 2000  # characters of a note or acknowledgement
LOOKED_S = 5.0  # the incidents are read while someone looked at the page within this time
_PAGES = {"/": ("index.html", "text/html"), "/dashboard.css": ("dashboard.css", "text/css"),
          "/dashboard.js": ("dashboard.js", "text/javascript")}
# The page loads only our own files: no inline script, nothing from elsewhere.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity (a browser's JSON.parse refuses them): unknown is null."""
    return x if math.isfinite(x) else None


def _dumps(body: Any) -> str:
    """JSON as browsers parse it: a NaN or infinity left anywhere is a bug, raised here
    (ValueError) rather than sent as a document the page cannot read."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def site_facts(site: Site) -> dict[str, Any]:
    """What does not change while the gateway runs: the site, its tags with units and ranges,
    the actuators' limits, the linear constraints and interlocks as written."""
    env = site.envelope
    limits = {lim.actuator: lim for lim in env.limits}
    actuators = []
    for tag in site.actuators:
        lim = limits.get(tag.name)
        actuators.append({
            "name": tag.name, "unit": tag.unit, "safe_value": tag.safe_value,
            "limits": None if lim is None else {
                "min": lim.min, "max": lim.max, "max_rate_per_s": lim.max_rate_per_s,
                "max_step": lim.max_step,
                "allowed": None if lim.allowed is None else list(lim.allowed),
                "policy": lim.policy.value}})
    return {
        "site": site.site.name, "description": site.site.description,
        "cycle_ms": site.site.cycle_ms,
        "sensors": [{"name": t.name, "unit": t.unit, "range": [t.range_min, t.range_max]}
                    for t in site.sensors],
        "actuators": actuators,
        "constraints": [{"name": c.name, "expr": c.expr, "policy": c.policy.value}
                        for c in env.constraints],
        "interlocks": [{"name": i.name, "when": i.when, "policy": i.policy.value,
                        "then": [f"{t.actuator} {'<=' if t.upper else '>='} {t.value:g}"
                                 for t in i.then]}
                       for i in env.interlocks],
    }


def view_json(site: Site, view: PlantView, counters: CounterLayout | None = None
              ) -> dict[str, Any]:
    """The view, by tag name, with the margin of each limit, constraint and interlock, the
    detectors' statistics against their thresholds, and (given the site's counter layout) the
    audit's and device links' health."""
    return {
        "detectors": detectors(view),
        "candidate": candidate(view),
        "health": None if counters is None else health(view, counters),
        "cycle": view.cycle, "at_wall_s": view.at_wall_s, "mode": view.mode,
        "latched": view.latched, "trip_reason": view.trip_reason,
        "incident_id": view.incident_id, "heartbeat": view.heartbeat,
        "bypasses": [{"detector": d, "expires": t.isoformat()} for d, t in view.bypasses],
        "bypass_left_s": None if view.bypass_left_s is None else _num(view.bypass_left_s),
        "sensors": [{"name": t.name, "value": _num(v), "good": g, "read_at_s": _num(at)}
                    for t, v, g, at in zip(site.sensors, view.sensor_values, view.sensor_good,
                                           view.sensor_at_s, strict=True)],
        "sensor_age_s": [_num(view.at_s - at) for at in view.sensor_at_s],
        "actuators": [{"name": t.name, "applied": _num(a), "source": s, "proposal": _num(p)}
                      for t, a, s, p in zip(site.actuators, view.applied, view.sources,
                                            view.proposal, strict=True)],
        "margins": [{"kind": m.kind, "name": m.name, "text": m.text, "margin": m.margin,
                     "fraction": m.fraction} for m in margins(site, view)],
    }


def ssl_context(spec: HttpServerSpec) -> ssl.SSLContext | None:
    """HTTPS when the site gives a certificate and key (TLS 1.2 or later); else None.
    Raises OSError/ssl.SSLError for a file that is missing or unusable."""
    if spec.certificate is None or spec.private_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(spec.certificate, spec.private_key)
    return ctx


class Dashboard:
    """The dashboard's server. ``wall_clock`` (UTC seconds) dates each message, so that the
    page can say how old the view it shows is; ``clock`` (seconds) times sessions and the
    login throttle. Without a ``handler`` no action is possible (every one answers 401).
    Incidents and events are read from ``audit_path`` (default: the site's ``audit.path``, the
    database the core writes)."""

    def __init__(self, site: Site, spec: HttpServerSpec,
                 handler: NorthboundHandler | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic,
                 audit_path: str | os.PathLike[str] | None = None) -> None:
        self.site = site
        self.spec = spec
        self.handler = handler
        self.wall_clock = wall_clock
        self.clock = clock
        opcua = site.northbound.opcua
        self.users = UserTable(() if opcua is None else opcua.users, "dashboard", log)
        self.throttle = LoginThrottle(LoginThrottleSpec() if opcua is None else opcua.login)
        self.sessions = Sessions()
        self.secure = spec.certificate is not None
        self.facts = site_facts(site)
        self._view: PlantView | None = None
        self._counters: CounterLayout | None = None  # the mirror's, built at first use
        self.audit_path = Path(site.audit.path if audit_path is None else audit_path)
        self._looked_until = -math.inf  # self.clock() until which someone looks at the page
        self.board = IncidentBoard(self.audit_path,
                                   wanted=lambda: self.clock() < self._looked_until)
        self._board_task: asyncio.Task[None] | None = None
        self._exporting = asyncio.Lock()  # one evidence bundle at a time (CPU, memory)
        self._encoded: tuple[PlantView, dict[str, Any]] | None = None
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # bound port once started (spec.port may be 0 in tests)

    def publish(self, view: PlantView) -> None:
        """Keep ``view`` as the latest and wake the event streams; nothing else (cheap)."""
        self._view = view
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def counter_layout(self) -> CounterLayout:
        """The mirror's counter slots for this site (built once, when first needed)."""
        if self._counters is None:
            self._counters = MirrorLayout.for_site(self.site).counters
        return self._counters

    def state(self) -> dict[str, Any]:
        """The document of ``/api/state`` and of each event: the site's facts, the latest view
        (null before the first) and its age in seconds by the wall clock, the incidents and
        recent events as last read (``incidents``) and the open incident of the view with its
        phase and when it opened (``incident``; null when none, or not read yet)."""
        self._looked_until = self.clock() + LOOKED_S
        view = self._view
        board = self.board.document
        body: dict[str, Any] = {"site": self.facts, "view": None, "age_s": None,
                                "now_wall_s": self.wall_clock(), "incidents": board,
                                "incident": None}
        if view is not None:
            cached = self._encoded
            if cached is None or cached[0] is not view:  # encode each view once
                cached = self._encoded = (view, view_json(self.site, view,
                                                          self.counter_layout))
            body["view"] = cached[1]
            body["age_s"] = max(0.0, body["now_wall_s"] - view.at_wall_s)
            if view.incident_id:
                found = self.board.detail(view.incident_id)
                body["incident"] = {"id": view.incident_id,
                                    "phase": None if found is None else found["phase"],
                                    "opened_wall_s": None if found is None
                                    else found["opened_wall_s"]}
        return body

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(_headers)
        app.router.add_get("/", self._page)
        app.router.add_get("/dashboard.css", self._page)
        app.router.add_get("/dashboard.js", self._page)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/incidents/{id}", self._incident_detail)
        app.router.add_get("/api/incidents/{id}/evidence.zip", self._evidence)
        app.router.add_get("/api/session", self._session)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_post("/api/request", self._request)
        app.router.add_post("/api/incident", self._incident)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Listen on the site's host and port. Raises OSError when the port cannot be bound."""
        context = ssl_context(self.spec)
        self._closing.clear()  # a server stopped and started again serves streams again
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.spec.host, self.spec.port, ssl_context=context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._board_task = asyncio.create_task(self.board.run(), name="dashboard incidents")
        server = site._server  # aiohttp gives no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self.spec.port
        log.info("dashboard on %s://%s:%s/", "https" if context else "http", self.spec.host,
                 self.port)

    async def stop(self) -> None:
        """End the event streams, then close the server."""
        self._closing.set()
        task, self._board_task = self._board_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _page(self, request: web.Request) -> web.StreamResponse:
        name, kind = _PAGES[request.path]
        return web.FileResponse(STATIC / name, headers={"Content-Type": kind})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus metrics of the latest view (``gateway.ops.metrics``); read-only, like
        the page."""
        from prometheus_client import CONTENT_TYPE_LATEST

        from gateway.ops.metrics import render

        body = render(self._view, self.site.site.name, self.counter_layout)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                "Cache-Control": "no-store"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state(), headers={"Cache-Control": "no-store"},
                                 dumps=_dumps)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        loop = asyncio.get_running_loop()
        closing = asyncio.ensure_future(self._closing.wait())
        sent_board: dict[str, Any] | None = None  # the incidents document this stream has
        try:
            while not self._closing.is_set():
                changed = self._changed  # taken before sending: a view published meanwhile
                sent_at = loop.time()    # wakes the next wait
                body = self.state()
                # The incidents change at most once a second: sent when they did, else null
                # (the page keeps what it has).
                if body["incidents"] is sent_board:
                    body["incidents"] = None
                else:
                    sent_board = body["incidents"]
                data = _dumps(body)
                await response.write(f"event: state\ndata: {data}\n\n".encode())
                # Throttle, then wait for a new view or the keepalive, whichever comes first.
                await asyncio.sleep(max(0.0, sent_at + 1.0 / MAX_RATE_HZ - loop.time()))
                left = sent_at + KEEPALIVE_S - loop.time()
                if left > 0 and not changed.is_set():
                    waiter = asyncio.ensure_future(changed.wait())
                    try:
                        await asyncio.wait({waiter, closing}, timeout=left,
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
        except ConnectionError:
            pass  # the browser went away: nothing to tell anyone
        finally:
            closing.cancel()
        return response


    # ------------------------------------------------------------------ incidents

    async def _incident_detail(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        self._looked_until = self.clock() + LOOKED_S
        found = self.board.detail(ident) if valid_id(ident) else None
        if found is None:
            return _error(404, "no such incident among those listed")
        return _json(found)

    async def _evidence(self, request: web.Request) -> web.Response:
        """The evidence bundle as a zip download (see the module docstring for who may)."""
        session = self.sessions.get(request.cookies.get(COOKIE), self.clock())
        if session is None:
            return _error(401, "log in to download evidence")
        if session.role not in AUDIT_READERS:
            return _error(403, f"role {session.role} may not read the audit")
        ident = request.match_info["id"]
        if not valid_id(ident):
            return _error(404, "no such incident")
        async with self._exporting:
            try:
                data = await asyncio.to_thread(evidence_zip, self.audit_path, ident)
            except UnknownIncident:
                return _error(404, "no such incident")
            except (NotAuditDatabase, ExportError, OSError, sqlite3.Error) as exc:
                log.warning("evidence of %s for %s failed: %s", ident, session.user, exc)
                return _error(503, f"the evidence bundle cannot be built: {exc}")
        # The download is recorded by the core in the audit chain, on the incident's
        # timeline, before anything is served: if it cannot be recorded, nothing is served.
        if self.handler is None:
            return _error(503, "no safety core to record the download; nothing is served")
        outcome = await self.handler.incident(self._client(request, session), "evidence",
                                              ident, ())
        if not outcome.accepted:
            log.warning("evidence of %s for %s refused by the core: %s", ident, session.user,
                        outcome.reason)
            return _outcome(outcome)
        log.info("evidence of incident %s downloaded by %s (%s) from %s, %d bytes", ident,
                 session.user, session.role, _address(request), len(data))
        return web.Response(body=data, headers={
            "Content-Type": "application/zip", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="evidence-{ident}.zip"'})

    # ------------------------------------------------------------------ login and actions

    async def _session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.cookies.get(COOKIE), self.clock())
        if session is None:
            return _error(401, "not logged in")
        return _json({"user": session.user, "role": str(session.role), "csrf": session.csrf})

    async def _login(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            return _error(400, "send {\"user\": text, \"password\": text}")
        if not self.users:
            return _error(403, "no users are configured (northbound.opcua.users)")
        source = request.remote or "unknown"
        admission = self.throttle.admit(user, source, self.clock())
        if admission.refused:
            log.warning("dashboard login of %r from %s refused unchecked (throttled)", user,
                        source)
            return _error(429, "too many failed logins: try again later")
        if admission.wait_s > 0:  # our own turn in the throttle (the OPC UA server's rule)
            await asyncio.sleep(admission.wait_s)
        role, reason = self.users.check(user, password)
        if role is None and self.handler is not None:  # evidence, as OPC UA's failures
            self.handler.refused_connection("http", _address(request), user, "login_failed",
                                            reason)
        if role is None:
            log.info("dashboard login of %r from %s refused: %s", user, source, reason)
            return _error(401, "wrong user name or password")
        self.throttle.succeeded(user, source)
        session = self.sessions.create(user, role, self.clock())
        log.info("dashboard login: %s (%s) from %s", user, role, source)
        response = _json({"user": user, "role": str(role), "csrf": session.csrf})
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict",
                            secure=self.secure, path="/")
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        session = self._authorised(request)
        if isinstance(session, web.Response):
            return session
        self.sessions.end(session.token)
        response = _json({"logged_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    def _authorised(self, request: web.Request) -> Session | web.Response:
        """The request's session, or the answer: 401 without one, 403 without its CSRF
        token."""
        session = self.sessions.get(request.cookies.get(COOKIE), self.clock())
        if session is None or self.handler is None:
            return _error(401, "log in first")
        if not Sessions.csrf_ok(session, request.headers.get("X-CSRF-Token")):
            return _error(403, "missing or wrong CSRF token")
        return session

    async def _request(self, request: web.Request) -> web.Response:
        session = self._authorised(request)
        if isinstance(session, web.Response):
            return session
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        kind, detector, duration = body.get("kind"), body.get("detector"), body.get(
            "duration_s")
        if not isinstance(kind, str) or not kind:
            return _error(400, "kind: a request such as to_manual or reset_trip")
        if detector is not None and not isinstance(detector, str):
            return _error(400, "detector: text")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, int | float)
                                     or not math.isfinite(duration) or duration <= 0):
            return _error(400, "duration_s: a number of seconds > 0")
        assert self.handler is not None  # _authorised said so
        outcome = await self.handler.request(
            self._client(request, session), kind, detector,
            None if duration is None else float(duration))
        return _outcome(outcome)

    async def _incident(self, request: web.Request) -> web.Response:
        session = self._authorised(request)
        if isinstance(session, web.Response):
            return session
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        action, incident_id, args = body.get("action"), body.get("incident_id"), body.get(
            "args", [])
        if not isinstance(action, str) or not isinstance(incident_id, str) or not incident_id:
            return _error(400, "action and incident_id: text")
        if action == "evidence":  # only the download itself records one
            return _error(400, "evidence downloads are recorded by GET "
                               "/api/incidents/ID/evidence.zip")
        if (not isinstance(args, list) or not all(isinstance(a, str) for a in args)
                or any(len(a) > MAX_TEXT for a in args)):
            return _error(400, f"args: a list of texts of at most {MAX_TEXT} characters")
        assert self.handler is not None
        outcome = await self.handler.incident(self._client(request, session), action,
                                              incident_id, tuple(args))
        return _outcome(outcome)

    @staticmethod
    def _client(request: web.Request, session: Session) -> ClientInfo:
        return ClientInfo("http", _address(request), session.user, session.role)


def _address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return request.remote or "unknown"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str) -> web.Response:
    return _json({"accepted": False, "error": message}, status)


def _outcome(outcome: WriteOutcome) -> web.Response:
    """The core's answer: 200 when applied; 403 when the role may not; else 409."""
    status = 200 if outcome.accepted else (
        403 if outcome.why is Refusal.NOT_AUTHORISED else 409)
    return _json({"accepted": outcome.accepted, "reason": outcome.reason,
                  "refusal": None if outcome.why is None else str(outcome.why)}, status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or a 400/413/415 answer saying what is wrong."""
    if request.content_type != "application/json":
        return _error(415, "send application/json")
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body over {MAX_BODY_BYTES} bytes")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    return body


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set on every response before it is sent (an event stream's headers go out at once)."""
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
