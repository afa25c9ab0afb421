"""What each signal does to `safety-gateway run`, handled the asyncio way.

As gunicorn's arbiter does, the signal handler only records the signal; the event loop acts on
it (:class:`SignalWatch`), between two steps of the control cycle, never inside one.

- :data:`STOP_SIGNALS` (SIGTERM, SIGINT, SIGQUIT, and the signals whose default action would
  end the process without a word: SIGXCPU, SIGPWR, SIGALRM, SIGVTALRM, SIGPROF, SIGIO) stop the
  gateway cleanly: each actuator is left as its ``on_shutdown`` says, and the shutdown record,
  naming the signal, closes the audit chain. A second stop signal while stopping is logged; the
  shutdown already under way is bounded by its own timeouts.
- :data:`IGNORED_SIGNALS` (SIGHUP, SIGUSR1, SIGUSR2) are logged and ignored: a closed terminal,
  a careless ``kill -HUP`` or a service manager's reload must never stop the control of a
  plant. (SIGHUP will reload the configuration once that exists.)
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
    from collections.abc import Callable

__all__ = ["IGNORED_SIGNALS", "STOP_SIGNALS", "SignalWatch", "ignore_in_child"]

log = logging.getLogger("gateway.runtime")


def _present(*names: str) -> tuple[signal.Signals, ...]:
    # SIGPWR exists on Linux only; the rest are POSIX.
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


STOP_SIGNALS: Final = _present("SIGTERM", "SIGINT", "SIGQUIT", "SIGXCPU", "SIGPWR", "SIGALRM",
                               "SIGVTALRM", "SIGPROF", "SIGIO")
IGNORED_SIGNALS: Final = _present("SIGHUP", "SIGUSR1", "SIGUSR2")


def ignore_in_child() -> None:
    """In the audit writer process: ignore every signal the gateway handles."""
    for sig in STOP_SIGNALS + IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class SignalWatch:
    """Installs the handlers on the running loop; :meth:`run` acts on what they recorded.

    ``stop`` is set on the first stop signal, after ``on_stop(name)`` is called with the
    signal's name (the gateway names it in its shutdown record); ``received`` lists every
    signal taken, in order."""

    def __init__(self, stop: asyncio.Event,
                 on_stop: Callable[[str], None] | None = None) -> None:
        self.stop = stop
        self.on_stop = on_stop
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
        for sig in STOP_SIGNALS + IGNORED_SIGNALS:
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
            if sig in IGNORED_SIGNALS:
                log.warning("%s received: ignored (the gateway keeps running; configuration "
                            "reload does not exist yet)", sig.name)
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
