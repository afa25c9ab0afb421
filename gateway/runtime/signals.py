"""What each signal does to `safety-gateway run`, handled the asyncio way.

As gunicorn's arbiter does, the signal handler only records the signal; the event loop acts on
it (:class:`SignalWatch`), between two steps of the control cycle, never inside one.

- :data:`STOP_SIGNALS` (SIGTERM, SIGINT, SIGQUIT, and the signals whose default action would
  end the process without a word: SIGXCPU, SIGPWR, SIGALRM, SIGVTALRM, SIGPROF, SIGIO) stop the
  gateway cleanly: each actuator is left as its ``on_shutdown`` says, and the shutdown record,
  naming the signal, closes the audit chain. A second stop signal while stopping is logged; the
  shutdown already under way is bounded by its own timeouts.
- :data:`RELOAD_SIGNALS` (SIGHUP; ``systemctl reload``) reload the site file the gateway was
  started with, as ``ctl reload`` does (checked first, applied between two cycles, audited with
  the user ``signal:SIGHUP``; where the site asks for two-person change it only stages). A
  reload that fails changes nothing and never stops the gateway. Without a reload handler
  (``on_reload``) SIGHUP is logged and ignored.
- :data:`IGNORED_SIGNALS` (SIGUSR1, SIGUSR2) are logged and ignored: a careless signal must
  never stop the control of a plant.
- SIGKILL and SIGSTOP cannot be caught: the PLC's own watchdog on the gateway's heartbeat is
  what protects the plant then. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) keep their
  default action, with Python's fault handler where enabled.

The audit writer process ignores all of these (:func:`ignore_in_child`): it stops when the
gateway closes it, so that the shutdown record still reaches the disk.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

__all__ = ["IGNORED_SIGNALS", "RELOAD_SIGNALS", "STOP_SIGNALS", "SignalWatch",
           "ignore_in_child"]

log = logging.getLogger("gateway.runtime")


def _present(*names: str) -> tuple[signal.Signals, ...]:
    # SIGPWR exists on Linux only; the rest are POSIX.
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


STOP_SIGNALS: Final = _present("SIGTERM", "SIGINT", "SIGQUIT", "SIGXCPU", "SIGPWR", "SIGALRM",
                               "SIGVTALRM", "SIGPROF", "SIGIO")
RELOAD_SIGNALS: Final = _present("SIGHUP")
IGNORED_SIGNALS: Final = _present("SIGUSR1", "SIGUSR2")


def ignore_in_child() -> None:
    """In the audit writer process: ignore every signal the gateway handles."""
    for sig in STOP_SIGNALS + RELOAD_SIGNALS + IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class SignalWatch:
    """Installs the handlers on the running loop; :meth:`run` acts on what they recorded.

    ``stop`` is set on the first stop signal, after ``on_stop(name)`` is called with the
    signal's name (the gateway names it in its shutdown record); ``received`` lists every
    signal taken, in order. ``on_reload`` (SIGHUP) returns an awaitable that reloads the
    site file; it runs in a task of its own (one at a time: a SIGHUP during a reload is
    logged and dropped), and whatever it raises is logged, never propagated."""

    def __init__(self, stop: asyncio.Event,
                 on_stop: Callable[[str], None] | None = None,
                 on_reload: Callable[[], Awaitable[object]] | None = None) -> None:
        self.stop = stop
        self.on_stop = on_stop
        self.on_reload = on_reload
        self.reloading: asyncio.Task[None] | None = None
        self.received: list[signal.Signals] = []
        self.stopped_by: signal.Signals | None = None
        # asyncio is imported where it is used: the audit writer process imports this module
        # for ignore_in_child alone, and waits for nothing else before it says it is ready.
        import asyncio

        self._queue: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS + RELOAD_SIGNALS + IGNORED_SIGNALS:
            # The handler only records: the loop acts in run().
            loop.add_signal_handler(sig, self._queue.put_nowait, sig)
            self._installed.append(sig)

    def uninstall(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed = []

    async def run(self) -> None:
        """Act on the signals as they come, until cancelled."""
        while True:
            sig = await self._queue.get()
            self.received.append(sig)
            if sig in RELOAD_SIGNALS:
                self._reload(sig)
            elif sig in IGNORED_SIGNALS:
                log.warning("%s received: ignored (the gateway keeps running)", sig.name)
            elif self.stopped_by is None:
                self.stopped_by = sig
                log.warning("%s received: stopping (each actuator is left as its "
                            "on_shutdown says)", sig.name)
                if self.on_stop is not None:
                    self.on_stop(sig.name)
                self.stop.set()
            else:
                log.warning("%s received while stopping (after %s): the shutdown under way "
                            "goes on", sig.name, self.stopped_by.name)

    def _reload(self, sig: signal.Signals) -> None:
        import asyncio

        if self.on_reload is None or self.stopped_by is not None:
            log.warning("%s received: ignored (%s)", sig.name,
                        "stopping" if self.stopped_by is not None else "no reload here")
            return
        if self.reloading is not None and not self.reloading.done():
            log.warning("%s received during a reload: dropped (send it again after)",
                        sig.name)
            return
        log.warning("%s received: reloading the site file", sig.name)
        self.reloading = asyncio.get_running_loop().create_task(self._reloaded(sig),
                                                                name="reload")

    async def _reloaded(self, sig: signal.Signals) -> None:
        assert self.on_reload is not None
        try:
            outcome = await self.on_reload()
        except Exception:  # a reload that fails must never stop the gateway
            log.exception("%s: the reload failed; nothing changed", sig.name)
            return
        text = getattr(outcome, "text", None)
        log.warning("%s: %s", sig.name, text() if callable(text) else outcome)
