"""The fleet page: every site at a glance, served by the centre (aiohttp), read-only.

A background task reads the fleet's status (:func:`gateway.fleet.status.read_fleet`) every
``period_s`` seconds while someone looks at the page, and keeps the result as one ready JSON
document; the page polls it (``GET /api/fleet``) and shows one row per site: health, mode,
open incidents with the worst severity, the heartbeat's age, link state, backlog, model in use.
A stale site (silent for more than three heartbeats) is shown STALE / unreachable, never as
healthy. Clicking a row shows that site's incidents (from its last heartbeat).

The page is our own HTML and JavaScript (``gateway/fleet/page``), styled by the site
dashboard's stylesheet (served from ``gateway/ops/dashboard``, not copied) plus a few rules of
its own; the same strict Content-Security-Policy; every value is inserted as text. When the
status cannot be read (the NATS server is down), the document says so (``error``) and keeps
the last rows, marked by the age of the reading, never as fresh.

Incidents are worked from the page as with the ``fleet incident`` command (given the NATS
``client``): each action carries the user name and password of the person's account **at the
site**, typed into the page and forwarded with that one request (``POST /api/incident``; never
stored here); the site checks them and the role, and decides; the page shows the site's
answer. The centre has no accounts of its own and decides nothing. Serve the page on loopback
(the default) or behind TLS: passwords cross the browser's connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.fleet.status import ensure_status_stream, read_fleet
from gateway.fleet.subjects import SiteIdError, check_site_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

__all__ = ["FleetPage"]

log = logging.getLogger("gateway.fleet.page")

PAGE_DIR: Final = Path(__file__).with_name("page")
DASHBOARD_CSS: Final = Path(__file__).parents[1] / "ops" / "dashboard" / "dashboard.css"
LOOKED_S: Final = 10.0  # the status is read while someone looked within this time
MAX_BODY_BYTES: Final = 32 * 1024  # an incident action (a review's JSON is the largest)
_FILES: Final = {"/": (PAGE_DIR / "index.html", "text/html"),
                 "/fleet.js": (PAGE_DIR / "fleet.js", "text/javascript"),
                 "/fleet.css": (PAGE_DIR / "fleet.css", "text/css"),
                 "/dashboard.css": (DASHBOARD_CSS, "text/css")}
# The site dashboard's policy: only our own files, nothing inline, nothing from elsewhere.
_CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class FleetPage:
    """Serve the fleet page on ``host``:``port`` (0: any free port, see :attr:`port`), reading
    the status through ``js`` every ``period_s`` seconds. Raises ValueError for a period that
    is not positive."""

    def __init__(self, js: JetStreamContext, *, client: Client | None = None,
                 host: str = "127.0.0.1", port: int = 0, period_s: float = 2.0,
                 action_timeout_s: float = 10.0, wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be > 0, not {period_s}")
        self.js = js
        self.client = client
        self.action_timeout_s = action_timeout_s
        self.host = host
        self.port = port
        self.period_s = period_s
        self.wall_clock = wall_clock
        self.clock = clock
        self._looked_until = -math.inf
        self._document: dict[str, Any] = {"sites": [], "error": "not read yet",
                                          "read_at_wall_s": None}
        self._sites: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._stream_ready = False

    async def refresh(self) -> None:
        """Read the fleet's status once and replace the document (an unreachable server is
        recorded in ``error``, the last rows are kept)."""
        import nats.errors

        try:
            if not self._stream_ready:
                await ensure_status_stream(self.js)
                self._stream_ready = True
            now = self.wall_clock()
            sites = await read_fleet(self.js, now)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
            if self._document.get("error") != error:
                log.warning("fleet page: cannot read the fleet's status: %s", error)
            self._document = {**self._document, "error": error}
        else:
            rows = [s.row() for s in sites]
            self._sites = {r["site"]: r for r in rows}
            self._document = {"sites": [{k: v for k, v in r.items() if k != "incidents"}
                                        for r in rows],
                              "error": None, "read_at_wall_s": now}

    async def _run(self) -> None:
        while True:
            if self.clock() < self._looked_until:
                await self.refresh()
            await asyncio.sleep(self.period_s)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(_headers)
        for path in _FILES:
            app.router.add_get(path, self._file)
        app.router.add_get("/api/fleet", self._fleet)
        app.router.add_get("/api/sites/{id}", self._site)
        app.router.add_post("/api/incident", self._incident)
        return app

    async def start(self) -> None:
        """Listen; raises OSError when the port cannot be bound."""
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # aiohttp gives no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._task = asyncio.create_task(self._run(), name="fleet page status")
        log.info("fleet page on http://%s:%s/", self.host, self.port)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _looked(self) -> None:
        """Someone looks: keep reading; the first look waits for a first reading."""
        first = self._looked_until == -math.inf
        self._looked_until = self.clock() + LOOKED_S
        if first:
            await self.refresh()

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path, kind = _FILES[request.path]
        return web.FileResponse(path, headers={"Content-Type": kind})

    async def _fleet(self, request: web.Request) -> web.Response:
        await self._looked()
        return _json({**self._document, "now_wall_s": self.wall_clock()})

    async def _site(self, request: web.Request) -> web.Response:
        await self._looked()
        ident = request.match_info["id"]
        try:
            check_site_id(ident)
        except SiteIdError:
            return _json({"error": "not a site id"}, 400)
        row = self._sites.get(ident)
        if row is None:
            return _json({"error": "no such site has sent a heartbeat"}, 404)
        return _json({"site": row, "now_wall_s": self.wall_clock()})


    async def _incident(self, request: web.Request) -> web.Response:
        """Forward one incident action to its site and answer the site's decision: 200
        accepted; 403 the site refused the login or the role; 409 the site refused the action;
        504 the site did not answer; 502 its answer was not one. Nothing is decided here."""
        from gateway.fleet.commands import Unreachable, ask_incident

        if self.client is None:
            return _json({"accepted": False, "reason": "this page has no actions"}, 404)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            # A page elsewhere may not make a browser send actions here.
            return _json({"accepted": False, "reason": "cross-origin request refused"}, 403)
        if request.content_type != "application/json":
            return _json({"accepted": False, "reason": "send application/json"}, 415)
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return _json({"accepted": False, "reason": f"body over {MAX_BODY_BYTES} bytes"},
                         413)
        except (ValueError, UnicodeDecodeError):
            return _json({"accepted": False, "reason": "body is not JSON"}, 400)
        fields = _action_fields(body)
        if isinstance(fields, str):
            return _json({"accepted": False, "reason": fields}, 400)
        site, user, password, action, incident_id, args = fields
        try:
            answer = await ask_incident(self.client, site, user=user, password=password,
                                        action=action, incident_id=incident_id, args=args,
                                        timeout_s=self.action_timeout_s, requester="fleet-page")
        except Unreachable as exc:
            return _json({"accepted": False, "reason": str(exc)}, 504)
        except ValueError as exc:
            return _json({"accepted": False, "reason": str(exc)}, 502)
        log.info("fleet page: %s %s of %s at %s by %s: %s", action, incident_id,
                 "accepted" if answer.accepted else "refused", site, user, answer.reason)
        status = 200 if answer.accepted else (
            403 if answer.refusal == "not_authorised" else 409)
        return _json({"accepted": answer.accepted, "reason": answer.reason,
                      "refusal": answer.refusal, "site": site}, status)


def _action_fields(body: Any) -> tuple[str, str, str, str, str, tuple[str, ...]] | str:
    """The action's fields, or what is wrong with them."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    site, user, password = body.get("site"), body.get("user"), body.get("password")
    action, incident_id, args = body.get("action"), body.get("incident_id"), body.get("args",
                                                                                      [])
    if not isinstance(site, str):
        return "site: text"
    try:
        check_site_id(site)
    except SiteIdError as exc:
        return str(exc)
    if not isinstance(user, str) or not user or not isinstance(password, str) or not password:
        return "user and password: texts (your account at the site)"
    if not isinstance(action, str) or not action or not isinstance(incident_id, str) \
            or not incident_id:
        return "action and incident_id: texts"
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return "args: a list of texts"
    return site, user, password, action, incident_id, tuple(args)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, separators=(",", ":"), allow_nan=False),
                        status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
