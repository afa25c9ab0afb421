"""Notifications, sent off the control path.

:class:`Notifier` runs each :class:`~gateway.incident.manager.Notify` action as an asyncio task
bounded by its hook's ``timeout_s``, and reports the outcome to a callback (the incident
manager's :meth:`~gateway.incident.manager.IncidentManager.notified`, which records it in the
incident). A failing webhook or command is logged and reported, never raised into the control
loop.

* ``log``: one log line at the hook's level (logger ``gateway.incident.notify``).
* ``webhook``: an HTTP/1.1 POST of a JSON object (``incident``, ``site``, ``detector``,
  ``reason``, ``message``) over asyncio streams (https with the system's default
  certificate checks); any status other than 2xx, a refused connection or the timeout is a
  failure. Credentials in the URL (``https://user:pass@host/...``) are sent as HTTP basic
  authentication and never recorded.
* ``command``: ``asyncio.create_subprocess_exec`` of the hook's ``argv`` with its placeholders
  filled (no shell, so nothing in an incident's text can be interpreted as shell syntax), stdin
  from /dev/null, the variables ``SG_INCIDENT``, ``SG_SITE``, ``SG_DETECTOR``, ``SG_REASON`` and
  ``SG_MESSAGE`` added to its environment; a non-zero exit or the timeout (the process is then
  killed) is a failure.

:meth:`Notifier.start_timer` also runs a periodic task that asks the incident manager what the
escalation plans and reporting clocks call for (:meth:`~gateway.incident.manager.IncidentManager.
tick`) and sends it: escalations live here, beside the other notifications, never in the
control cycle, so a slow webhook or command delays nothing but itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.incident.playbook import HookKind, redact_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.incident.manager import Notify
    from gateway.incident.playbook import NotificationSpec

__all__ = ["HookError", "Notifier", "NotifyResult", "post_json", "run_command"]

log = logging.getLogger("gateway.incident.notify")

_DETAIL_CHARS: Final = 300
_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


@dataclass(frozen=True, slots=True)
class NotifyResult:
    """The outcome of one notification: ``ok``, a one-line ``detail`` ("HTTP 204", "exit 0",
    or what failed) and how long it took in seconds."""

    ok: bool
    detail: str
    duration_s: float


class HookError(Exception):
    """A notification failed (the message says how)."""


class Notifier:
    """Sends notifications as asyncio tasks and reports each outcome to ``on_result``.

    ``on_result(action, result)`` runs on the event loop; an exception from it is logged, not
    raised. ``task_group``, if given, owns the tasks (the runtime's structured task group);
    otherwise the notifier keeps them itself. :meth:`aclose` waits for the outstanding ones.
    """

    def __init__(self, on_result: Callable[[Notify, NotifyResult], None] | None = None, *,
                 task_group: asyncio.TaskGroup | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_result = on_result
        self.task_group = task_group
        self.clock = clock
        self._tasks: set[asyncio.Task[NotifyResult]] = set()
        self._failing: set[str] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Notifications still running."""
        return len(self._tasks)

    def submit(self, action: Notify) -> None:
        """Send ``action`` in the background (a ``log`` hook is written at once). Returns at
        once; must be called from the running event loop (``RuntimeError`` otherwise)."""
        if action.spec.kind is HookKind.LOG:
            self._report(action, self._log(action))
            return
        coro = self.send(action)
        task = (self.task_group.create_task(coro) if self.task_group is not None
                else asyncio.get_running_loop().create_task(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_timer(self, tick: Callable[[], list[Notify]], period_s: float = 1.0) -> None:
        """Call ``tick()`` every ``period_s`` seconds (and at once after :meth:`wake`) on the
        running event loop, submitting what it returns. An exception from ``tick`` is logged
        and the timer goes on. ``ValueError`` if ``period_s`` is not finite and > 0,
        ``RuntimeError`` if a timer runs already or no event loop runs."""
        if isinstance(period_s, bool) or not (isinstance(period_s, int | float)
                                              and 0 < period_s < float("inf")):
            raise ValueError(f"`period_s` must be finite and > 0, not {period_s!r}")
        if self._timer is not None and not self._timer.done():
            raise RuntimeError("the notifier's timer runs already")
        coro = self._tick_loop(tick, float(period_s))
        self._timer = (self.task_group.create_task(coro) if self.task_group is not None
                       else asyncio.get_running_loop().create_task(coro))

    def wake(self) -> None:
        """Make the timer tick now (e.g. an incident just opened: its first escalation step
        is due at once). Cheap; safe to call from the control cycle."""
        self._wake.set()

    async def _tick_loop(self, tick: Callable[[], list[Notify]], period_s: float) -> None:
        while True:
            try:
                actions = tick()
            except Exception:  # a bug of the manager's must not stop the escalations
                log.exception("escalation tick failed; trying again in %g s", period_s)
                actions = []
            for action in actions:
                self.submit(action)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await self._wake.wait()
            self._wake.clear()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop the timer; wait up to ``timeout_s`` for the notifications still running;
        cancel the rest (each cancelled one is reported as failed)."""
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done():
            timer.cancel()
            await asyncio.wait([timer])  # returns once it ended; raises nothing of its own
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def send(self, action: Notify) -> NotifyResult:
        """Send one notification and report it; return the outcome. Never raises, except
        ``CancelledError`` (the outcome is then reported as failed first)."""
        start = self.clock()
        try:
            detail = await self._dispatch(action)
        except asyncio.CancelledError:
            self._report(action, NotifyResult(False, "cancelled (gateway stopping)",
                                              self.clock() - start))
            raise
        except (OSError, HookError, ValueError, UnicodeError, EOFError) as exc:
            # OSError covers refused connections, resolution and TLS errors, timeouts
            # (TimeoutError) and a program that cannot be started.
            text = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError) and not str(exc):
                text = f"timed out after {action.spec.timeout_s:g} s"
            result = NotifyResult(False, _short(f"{type(exc).__name__}: {text}"
                                                if not isinstance(exc, HookError) else text),
                                  self.clock() - start)
        else:
            result = NotifyResult(True, detail, self.clock() - start)
        self._report(action, result)
        return result

    # ------------------------------------------------------------------------------------

    async def _dispatch(self, action: Notify) -> str:
        spec = action.spec
        if spec.kind is HookKind.WEBHOOK:
            body = json.dumps(action.values(), sort_keys=True).encode()
            return await post_json(spec.url or "", body, spec.timeout_s)
        if spec.kind is HookKind.COMMAND:
            return await run_command(spec, action.values())
        return self._log(action).detail

    def _log(self, action: Notify) -> NotifyResult:
        log.log(_LEVELS.get(action.spec.level, logging.WARNING), "%s", action.message)
        return NotifyResult(True, "logged", 0.0)

    def _report(self, action: Notify, result: NotifyResult) -> None:
        name = action.spec.name
        if not result.ok:
            if name not in self._failing:
                self._failing.add(name)
                log.warning("notification %s for incident %s failed: %s", name,
                            action.incident_id, result.detail)
            else:
                log.debug("notification %s still failing: %s", name, result.detail)
        elif name in self._failing:
            self._failing.discard(name)
            log.info("notification %s works again", name)
        if self.on_result is not None:
            try:
                self.on_result(action, result)
            except Exception:  # the callback's own bug must not kill the notifier
                log.exception("notification result callback failed")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


async def post_json(url: str, body: bytes, timeout_s: float) -> str:
    """POST ``body`` as JSON to ``url`` (http or https) within ``timeout_s``; return
    "HTTP <status>". Raises :class:`HookError` for a non-2xx status or a malformed answer,
    ``OSError`` (incl. ``TimeoutError``) for network trouble, ``ValueError`` for a bad URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {redact_url(url)}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [f"POST {target} HTTP/1.1", f"Host: {host_header}",
               "Content-Type: application/json", f"Content-Length: {len(body)}",
               "User-Agent: safety-gateway-incident", "Connection: close"]
    if parts.username is not None:
        cred = f"{urllib.parse.unquote(parts.username)}:" \
               f"{urllib.parse.unquote(parts.password or '')}"
        headers.append("Authorization: Basic " + base64.b64encode(cred.encode()).decode())
    request = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body
    context = ssl.create_default_context() if secure else None
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            # The answer (or its absence) is what matters; closing can fail on its own.
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    words = status_line.decode("latin-1").split(maxsplit=2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise HookError(f"webhook {redact_url(url)}: no HTTP answer "
                        f"({status_line[:60]!r})")
    status = int(words[1])
    if not 200 <= status < 300:
        reason = words[2].strip() if len(words) > 2 else ""
        raise HookError(f"webhook {redact_url(url)}: HTTP {status} {reason}".rstrip())
    return f"HTTP {status}"


async def run_command(spec: NotificationSpec, values: dict[str, str]) -> str:
    """Run the hook's command with ``values`` in its placeholders and environment; return
    "exit 0". Raises :class:`HookError` for a non-zero exit or the timeout (the process is
    killed), ``OSError`` when it cannot be started."""
    argv = spec.command(values)
    env = dict(os.environ)
    env.update({f"SG_{key.upper()}": value for key, value in values.items()})
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    try:
        async with asyncio.timeout(spec.timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        raise HookError(f"command {argv[0]}: timed out after {spec.timeout_s:g} s; "
                        "killed") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: do not leave it running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        tail = (err or out).decode("utf-8", "replace").strip()[-200:]
        raise HookError(f"command {argv[0]}: exit {proc.returncode}"
                        + (f": {tail}" if tail else ""))
    return "exit 0"
