"""Telling systemd how the safety core is doing: the ``sd_notify`` protocol, our own.

The protocol (``man 3 sd_notify``): newline-separated ``KEY=VALUE`` lines in one datagram to
the Unix socket named by ``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract
namespace (the ``@`` stands for a leading NUL byte). We send:

- ``READY=1`` once the core is open, just before the first cycle (``Type=notify``: systemd
  counts the service as started only then, so ``systemctl start`` returns after the devices
  were read back and the supervisor was seeded);
- ``WATCHDOG=1`` from the control cycle itself (this object is one of the cycle's
  publishers), at most once per half of ``$WATCHDOG_USEC``: a cycle that stops completing
  stops feeding the watchdog and systemd restarts the service. Never from a timer or a
  thread, which would keep a live process with a dead safety function looking healthy;
- ``STATUS=`` with the mode, when it changes (``systemctl status`` shows it);
- ``STOPPING=1`` when shutdown begins.

Without ``$NOTIFY_SOCKET`` every call does nothing. The socket is non-blocking and a send that
fails is logged once (then at debug while it keeps failing): the cycle never waits on systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from gateway.runtime.view import PlantView

log = logging.getLogger("gateway.runtime")


class ServiceNotifier:
    """Notifications to systemd (see the module docstring).

    ``address`` is the socket's name as ``$NOTIFY_SOCKET`` gives it (``None``: notify
    nothing); ``watchdog_s`` the watchdog's timeout (``None``: no watchdog); ``clock`` a
    monotonic clock in seconds. :meth:`publish` is the cycle's hook (the ``Publisher``
    protocol of ``gateway.runtime.view``).
    """

    def __init__(self, address: str | None, watchdog_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if watchdog_s is not None and not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0, got {watchdog_s!r}")
        self.address = address
        # systemd's advice (sd_watchdog_enabled(3)): notify at half the timeout.
        self.watchdog_interval_s = watchdog_s / 2 if watchdog_s is not None else None
        self.clock = clock
        self._next_watchdog_s = -float("inf")
        self._mode: str | None = None
        self._failing = False
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         clock: Callable[[], float] = time.monotonic) -> ServiceNotifier:
        """The notifier systemd asked for through the environment: ``$NOTIFY_SOCKET``, and
        ``$WATCHDOG_USEC`` (microseconds) when ``$WATCHDOG_PID`` is unset or names this
        process (a watchdog meant for another process is not ours to feed). A malformed
        ``$WATCHDOG_USEC`` is logged and ignored: systemd then restarts a service that never
        pings, which is loud, rather than us refusing to start."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                value = int(usec)
            except ValueError:
                value = 0
            if value > 0:
                watchdog_s = value / 1_000_000
            else:
                log.error("sd_notify: WATCHDOG_USEC=%r is not a positive integer; no watchdog "
                          "notifications", usec)
        return cls(address, watchdog_s, clock)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self) -> None:
        """The core is open and about to run its first cycle."""
        self._send("READY=1")

    def publish(self, view: PlantView) -> None:
        """One completed cycle: feed the watchdog (rate limited) and say the mode when it
        changed. Never blocks."""
        if self._sock is None:
            return
        lines = []
        if view.mode != self._mode:
            self._mode = view.mode
            lines.append(f"STATUS=mode {view.mode}" + (
                f", latched: {view.trip_reason}" if view.latched and view.trip_reason else ""))
        if self.watchdog_interval_s is not None:
            now = self.clock()
            if now >= self._next_watchdog_s:
                self._next_watchdog_s = now + self.watchdog_interval_s
                lines.append("WATCHDOG=1")
        if lines:
            self._send("\n".join(lines))

    def stopping(self) -> None:
        """Shutdown has begun (the shutdown policy runs next)."""
        self._send("STOPPING=1\nSTATUS=stopping: applying the shutdown policy")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._sock is None or self.address is None:
            return
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # the abstract namespace (unix(7))
        try:
            self._sock.sendto(message.encode(), target)
        except OSError as exc:
            # A full socket buffer (BlockingIOError), systemd gone, a wrong path: the cycle
            # goes on; a watchdog that stops hearing from us restarts the service.
            (log.debug if self._failing else log.error)(
                "sd_notify: cannot notify %s: %s", self.address, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("sd_notify: notifying %s again", self.address)
            self._failing = False
