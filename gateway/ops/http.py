"""The live dashboard's HTTP server (aiohttp), in the communications process.

It is fed like the other northbound servers: :meth:`Dashboard.publish` receives each
:class:`~gateway.runtime.view.PlantView` (from the mirror in the communications process, from
the cycle itself with ``Gateway(servers=True)``) and only stores it, so publishing costs the
publisher nothing. Readers get:

- ``GET /``: the page (``gateway/ops/dashboard/``: our own HTML, CSS and JavaScript, no CDN);
- ``GET /api/state``: JSON of the site's static facts and the latest view with its margins;
- ``GET /api/events``: Server-Sent Events, one ``state`` event per new view, at most
  :data:`MAX_RATE_HZ` a second and at least every :data:`KEEPALIVE_S` (the same view again,
  with its age, so that the page sees a stalled core), with a ``retry:`` so that the browser
  reconnects by itself after the gateway restarts.

It is read-only: nothing here reaches the core.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.ops.margins import margins

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config.schema import HttpServerSpec, Site
    from gateway.runtime.view import PlantView

log = logging.getLogger("gateway.ops.http")

STATIC = Path(__file__).with_name("dashboard")
MAX_RATE_HZ = 5.0  # a browser needs no more; the core may cycle at 1 kHz
KEEPALIVE_S = 0.5  # >= 2 Hz even when the core publishes nothing new
RETRY_MS = 1000  # the browser's reconnect delay after the stream drops
_PAGES = {"/": ("index.html", "text/html"), "/dashboard.css": ("dashboard.css", "text/css"),
          "/dashboard.js": ("dashboard.js", "text/javascript")}
# The page loads only our own files: no inline script, nothing from elsewhere.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity (a browser's JSON.parse refuses them): unknown is null."""
    return x if math.isfinite(x) else None


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


def view_json(site: Site, view: PlantView) -> dict[str, Any]:
    """The view, by tag name, with the margin of each limit, constraint and interlock."""
    return {
        "cycle": view.cycle, "at_wall_s": view.at_wall_s, "mode": view.mode,
        "latched": view.latched, "trip_reason": view.trip_reason,
        "incident_id": view.incident_id, "heartbeat": view.heartbeat,
        "bypasses": [{"detector": d, "expires": t.isoformat()} for d, t in view.bypasses],
        "bypass_left_s": view.bypass_left_s,
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
    page can say how old the view it shows is."""

    def __init__(self, site: Site, spec: HttpServerSpec,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.site = site
        self.spec = spec
        self.wall_clock = wall_clock
        self.facts = site_facts(site)
        self._view: PlantView | None = None
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

    def state(self) -> dict[str, Any]:
        """The document of ``/api/state`` and of each event: the site's facts, the latest view
        (null before the first) and its age in seconds by the wall clock."""
        view = self._view
        body: dict[str, Any] = {"site": self.facts, "view": None, "age_s": None,
                                "now_wall_s": self.wall_clock()}
        if view is not None:
            cached = self._encoded
            if cached is None or cached[0] is not view:  # encode each view once
                cached = self._encoded = (view, view_json(self.site, view))
            body["view"] = cached[1]
            body["age_s"] = max(0.0, body["now_wall_s"] - view.at_wall_s)
        return body

    def app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(_headers)
        app.router.add_get("/", self._page)
        app.router.add_get("/dashboard.css", self._page)
        app.router.add_get("/dashboard.js", self._page)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        return app

    async def start(self) -> None:
        """Listen on the site's host and port. Raises OSError when the port cannot be bound."""
        context = ssl_context(self.spec)
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
        server = site._server  # aiohttp gives no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self.spec.port
        log.info("dashboard on %s://%s:%s/", "https" if context else "http", self.spec.host,
                 self.port)

    async def stop(self) -> None:
        """End the event streams, then close the server."""
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _page(self, request: web.Request) -> web.StreamResponse:
        name, kind = _PAGES[request.path]
        return web.FileResponse(STATIC / name, headers={"Content-Type": kind})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state(), headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        loop = asyncio.get_running_loop()
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while not self._closing.is_set():
                changed = self._changed  # taken before sending: a view published meanwhile
                sent_at = loop.time()    # wakes the next wait
                data = json.dumps(self.state(), separators=(",", ":"), allow_nan=False)
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


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set on every response before it is sent (an event stream's headers go out at once)."""
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
