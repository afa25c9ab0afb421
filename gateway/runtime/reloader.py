"""A running gateway's reload requests: check, stage, commit, swap, ramp, audit.

One :class:`Reloader` per :class:`~gateway.runtime.gateway.Gateway`. :meth:`Reloader.request`
is what ``ctl reload`` (through the OPC UA method ``ReloadSite``) and SIGHUP call; the control
cycle calls :meth:`Reloader.between` at the top of each step, where a committed change is
swapped in and a ramp's bounds move (see :mod:`gateway.runtime.reload` and
:mod:`gateway.runtime.ramp`).

Two-person change: where the running site says ``operation.two_person_change: true``, the
first approver's request stages the change (its file hash) and a second request by a
*different* user commits it. A staged change is dropped when it is older than
``STAGED_FOR_S`` (15 minutes) or when the file's content changes again. SIGHUP only stages
then (its user, ``signal:SIGHUP``, is never a second approver).

Every stage, commit, refusal and failure is an audit record of kind ``reload`` with the
running and the new file's sha256, the user and the difference; the swap and the end of each
ramp are recorded too (``action``: ``applied``, ``ramp_done``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gateway.adapters.base import AdapterError
from gateway.adapters.factory import make_client
from gateway.runtime.candidate import start_candidate
from gateway.runtime.ramp import Ramp
from gateway.runtime.reload import (
    STAGED_FOR_S,
    Built,
    Candidate,
    Outcome,
    Reload,
    ReloadError,
    Staged,
    Status,
    Swap,
    apply_all,
    build,
    fallback_bank,
    mode_config,
    ramp_site,
    read_candidate,
    references,
    swap_values,
    transfer,
)
from gateway.runtime.view import DetectorGauges

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from gateway.adapters.base import DeviceClient
    from gateway.runtime.gateway import Gateway

log = logging.getLogger("gateway.runtime")

__all__ = ["SIGHUP_USER", "Reloader"]

SIGHUP_USER = "signal:SIGHUP"
# How long a commit waits for the cycle to swap it in before it gives up (and withdraws it).
_SWAP_WAIT_CYCLES = 50
_SWAP_WAIT_MIN_S = 5.0
# How long a retired device task may take to end once its client is closed and it is cancelled.
_TASK_STOP_S = 5.0


class Reloader:
    """Reload requests of one gateway (see the module docstring). ``fault`` is for tests: it
    is called with the name of each step of the swap and may raise to inject a failure."""

    def __init__(self, gw: Gateway, sha256: str) -> None:
        self.gw = gw
        self.state = Reload(sha256)
        self.fault: Callable[[str], None] | None = None
        self._lock = asyncio.Lock()  # one request at a time
        self._tasks: set[asyncio.Task[None]] = set()  # device reconnections under way

    # ------------------------------------------------------------------ requests

    async def request(self, user: str, *, dry_run: bool = False,
                      commit_only: bool = False) -> Outcome:
        """Re-read the running site's file and check it; with ``dry_run`` stop at the
        difference; else stage or commit (see the module docstring; ``commit_only``: commit
        a staged change, never stage). Never raises for a bad file or a refused change: the
        outcome says what happened."""
        async with self._lock:
            return await self._request(user, dry_run, commit_only)

    def refused(self, out: Outcome, user: str) -> None:
        """Record a reload refused before it was read (e.g. the requester's role)."""
        self._audit(out, user, "refuse")

    async def _request(self, user: str, dry_run: bool, commit_only: bool) -> Outcome:
        gw = self.gw
        old_sha = self.state.sha256
        running = gw.site
        got = await asyncio.to_thread(read_candidate, running.source, running)
        if not isinstance(got, Candidate):
            sha, errors = got
            out = Outcome(Status.INVALID, f"{running.source} does not pass check; nothing "
                          "changed", old_sha, sha or None, errors=tuple(errors))
            return self._audit(out, user, "refuse", dry_run)
        cand = got
        self._expire(cand.sha256)
        if cand.diff.empty:
            return Outcome(Status.UNCHANGED, "the file holds the running site; nothing to "
                           "do", old_sha, cand.sha256, cand.diff)
        if not cand.diff.live:
            out = Outcome(Status.REFUSED, cand.diff.restart_reason() + "; nothing changed",
                          old_sha, cand.sha256, cand.diff)
            return self._audit(out, user, "refuse", dry_run)
        if dry_run:
            return Outcome(Status.DRY_RUN, f"{cand.diff.summary()} (dry run: nothing "
                           "changed)", old_sha, cand.sha256, cand.diff)
        if gw.control is None or gw.supervisor is None:
            out = Outcome(Status.REFUSED, "the gateway is not running its cycle yet; "
                          "nothing changed", old_sha, cand.sha256, cand.diff)
            return self._audit(out, user, "refuse")
        if running.operation.two_person_change:
            staged = self.state.staged
            if staged is None and commit_only:
                out = Outcome(Status.REFUSED, "nothing is staged to commit (the file changed "
                              "since, or the staged change expired); nothing changed",
                              old_sha, cand.sha256, cand.diff)
                return self._audit(out, user, "refuse")
            if staged is None or user == SIGHUP_USER:
                if staged is None:
                    self.state.staged = Staged(cand.sha256, user, gw.clock())
                    out = Outcome(Status.STAGED, f"{cand.diff.summary()}; staged: a second, "
                                  f"different authorised user commits it within "
                                  f"{STAGED_FOR_S / 60:g} min", old_sha, cand.sha256,
                                  cand.diff)
                    return self._audit(out, user, "stage")
                out = Outcome(Status.REFUSED, "already staged; a signal is never the second "
                              "approver", old_sha, cand.sha256, cand.diff)
                return self._audit(out, user, "refuse")
            if staged.user == user:
                out = Outcome(Status.REFUSED, f"staged by {user}: a second, different "
                              "authorised user must commit it", old_sha, cand.sha256,
                              cand.diff)
                return self._audit(out, user, "refuse")
            return await self._commit(cand, user, old_sha, staged.user)
        return await self._commit(cand, user, old_sha)

    def _expire(self, sha: str) -> None:
        """Drop a staged change that is too old or whose file changed since."""
        staged = self.state.staged
        if staged is None:
            return
        reason = None
        if self.gw.clock() - staged.at_s > STAGED_FOR_S:
            reason = f"expired after {STAGED_FOR_S / 60:g} min"
        elif staged.sha256 != sha:
            reason = "the file changed again"
        if reason is not None:
            self.state.staged = None
            self.gw.records.reload({"action": "drop", "reason": reason,
                                    "old_sha256": self.state.sha256,
                                    "new_sha256": staged.sha256, "staged_by": staged.user},
                                   actor=staged.user)

    async def _commit(self, cand: Candidate, user: str, old_sha: str,
                      staged_by: str | None = None) -> Outcome:
        """Build the new supervisor off the cycle, record the commit (naming who staged it,
        with two-person change) and wait for the cycle to swap it in."""
        gw = self.gw
        sup, control = gw.supervisor, gw.control
        assert sup is not None
        assert control is not None
        try:
            built = await asyncio.to_thread(
                build, cand, gw.envelope.engine, _codec(), sup.canary.cases,
                sup.previous.copy(), sup.last_s)
            gauges = DetectorGauges(built.supervisor).names
        except (ValueError, ReloadError) as exc:
            out = Outcome(Status.FAILED, f"the new supervisor could not be built: {exc}; "
                          "nothing changed", old_sha, cand.sha256, cand.diff)
            return self._audit(out, user, "fail")
        if gauges != control._gauges.names:
            out = Outcome(Status.REFUSED, "needs a restart: the detectors shown northbound "
                          "change (the mirror's layout); nothing changed", old_sha,
                          cand.sha256, cand.diff)
            return self._audit(out, user, "refuse")
        old_devices = {d.name: d for d in gw.site.devices}
        changed = [d for d in built.site.devices if d != old_devices.get(d.name)]
        if changed and not gw.own_clients:
            out = Outcome(Status.REFUSED, "needs a restart: this gateway's device clients were "
                          "given to it, it cannot reconnect them; nothing changed", old_sha,
                          cand.sha256, cand.diff)
            return self._audit(out, user, "refuse")
        try:
            # Built here, not started: the swap starts each once its old client has closed.
            clients = {d.name: make_client(d, [t for t in built.site.tags
                                               if t.device == d.name],
                                           gw.store, gw.clock, not gw.stepped)
                       for d in changed}
        except (ValueError, AdapterError) as exc:
            out = Outcome(Status.FAILED, f"a device client could not be built: {exc}; "
                          "nothing changed", old_sha, cand.sha256, cand.diff)
            return self._audit(out, user, "fail")
        candidate_changed = any(c.area == "commissioning" for c in cand.diff.changes)
        judge = gw.candidate
        if candidate_changed:
            judged = built.site.commissioning.candidate_site
            judge = None if judged is None else await asyncio.to_thread(
                start_candidate, judged, gw.envelope.engine, sup.previous.copy(), sup.last_s,
                _codec(), lambda: gw.records.audit, gw.wall_clock)
            if judged is not None and judge is None:
                for client in clients.values():  # built, never started
                    self._spawn(client.close(), "reload: close an unused client")
                out = Outcome(Status.FAILED, f"the candidate {judged.source} could not be "
                              "built (see the log); nothing changed", old_sha, cand.sha256,
                              cand.diff)
                return self._audit(out, user, "fail")
        self.state.staged = None
        loop = asyncio.get_running_loop()
        swap = Swap(built, user, old_sha, gw.clock(), control.count, loop.create_future(),
                    clients=clients, candidate_changed=candidate_changed, judge=judge)
        extra: dict[str, Any] = {"cycle": control.count}
        if staged_by is not None:
            extra["staged_by"] = staged_by
        self._audit(Outcome(Status.APPLIED, "committed", old_sha, cand.sha256, cand.diff),
                    user, "commit", extra=extra)
        self.state.pending = swap
        wait_s = max(_SWAP_WAIT_MIN_S, _SWAP_WAIT_CYCLES * gw.period_s)
        try:
            outcome: Outcome = await asyncio.wait_for(asyncio.shield(swap.done), wait_s)
        except TimeoutError:
            if self.state.pending is swap:
                self.state.pending = None
            out = Outcome(Status.FAILED, f"the cycle did not take the change within "
                          f"{wait_s:g} s; nothing changed", old_sha, cand.sha256, cand.diff)
            return self._audit(out, user, "fail")
        return outcome

    # ------------------------------------------------------------------ between two cycles

    def between(self, now: float) -> None:
        """At the top of a cycle: swap in a committed change (unless a write-through is on
        its way: then at the next cycle), then move the ramp's bounds for this cycle."""
        gw = self.gw
        swap = self.state.pending
        if swap is not None and not gw.southbound.lock.locked():
            self.state.pending = None
            try:
                outcome = self._swap(swap)
            except Exception as exc:  # any failure: everything was set back (apply_all)
                log.exception("reload: the swap failed; nothing changed")
                for client in swap.clients.values():  # built, never started
                    self._spawn(client.close(), "reload: close an unused client")
                outcome = self._audit(
                    Outcome(Status.FAILED, f"the swap failed ({type(exc).__name__}: {exc}); "
                            "nothing changed", swap.old_sha256, swap.built.sha256,
                            swap.built.diff), swap.user, "fail")
            if not swap.done.done():
                swap.done.set_result(outcome)
        ramp = self.state.ramp
        sup = gw.supervisor
        if ramp is not None and sup is not None:
            dt = now - sup.written_at_s
            for b in ramp.advance(dt if dt > 1e-6 else 1e-6, sup.rate_factor):
                gw.records.reload({"action": "ramp_done", "sha256": self.state.sha256,
                                   "actuator": b.name, "bound": "max" if b.upper else "min",
                                   "value": b.target}, actor="gateway")
            if ramp.done:
                self.state.ramp = None
                # The fallbacks' own bounds are the site's again; they start from the last
                # write, which lies inside them now (bumpless).
                sup.bank = fallback_bank(sup.site, sup.previous, sup.bank.overrides)

    def _swap(self, swap: Swap) -> Outcome:
        gw = self.gw
        old, built = gw.supervisor, swap.built
        assert old is not None
        assert gw.control is not None
        fault = self.fault
        new = built.supervisor
        transfer(old, new)
        if fault is not None:
            fault("transfer")
        ramp = Ramp.plan(built.envelope, new.previous, tuple(t.name for t in built.site.actuators))
        if ramp.bounds:
            # The fallback PIDs clamp their output to their actuator's bounds: during the ramp
            # they take the bounds in force (a PID clamped at once to the new max would jump
            # there, a move the envelope allows because it heads for the safe state); the
            # ramp's end gives them the site's own (between()).
            new.bank = fallback_bank(ramp_site(built.site, ramp), new.previous,
                                     old.bank.overrides)
        refs = [*references(gw), (old.modes, "_config")]
        values = [*swap_values(gw, built), mode_config(built.site, new)]
        south = gw.southbound
        old_clients = dict(south.clients)
        if swap.clients:
            clients = {**south.clients, **swap.clients}
            counters = gw.control.counters
            refs += [(gw, "clients"), (south, "clients"), (south, "devices"),
                     (gw.control, "_links")]
            values += [clients, clients, {d.name: d for d in built.site.devices},
                       [clients.get(d) for d in counters.layout.devices]
                       if counters is not None else []]
        old_judge = gw.candidate
        if swap.candidate_changed:
            judge = swap.judge
            refs += [(gw, "candidate"), (gw.control, "candidate")]
            values += [judge, judge]
            if gw.write_through is not None:
                refs.append((gw.write_through, "on_write"))
                values.append(None if judge is None else judge.judge_write)
        if fault is not None:
            fault("swap")
        apply_all(refs, values, fault)
        if swap.candidate_changed and old_judge is not None:
            old_judge.close(gw.clock())  # its final report stays in the audit chain
        for name, client in swap.clients.items():
            self._spawn(self._reconnect(name, old_clients[name], client), f"reconnect:{name}")
        self.state.sha256 = built.sha256
        self.state.ramp = ramp if ramp.bounds else None
        swap.ramp = ramp
        cycle = gw.control.count + 1  # this step is the first under the new envelope
        swap.applied_cycle = cycle
        ramps = tuple(b.as_json() for b in ramp.bounds)
        self.state.history.append({"committed_cycle": swap.committed_cycle,
                                   "applied_cycle": cycle, "committed_s": swap.committed_s,
                                   "applied_s": gw.clock()})
        out = Outcome(Status.APPLIED, f"{built.diff.summary()}; applied at cycle {cycle} "
                      f"({cycle - swap.committed_cycle} after the commit)"
                      + (f"; {len(ramps)} bound(s) ramping at their rate limits" if ramps
                         else ""), swap.old_sha256, built.sha256, built.diff, ramps=ramps)
        self._audit(out, swap.user, "applied", extra={"cycle": cycle,
                                                      "committed_cycle": swap.committed_cycle})
        self._notify(built)
        return out

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, name: str, old: DeviceClient, new: DeviceClient) -> None:
        """Retire ``old`` (after its write on its way, if any, within the device's bound) and
        start ``new`` in its place: only this device reconnects. Meanwhile the cycle's writes
        to it fail as to a device not connected (its actuators stay unknown and are written
        again once it answers)."""
        south = self.gw.southbound
        pending = south.on_its_way(name)
        if pending is not None:
            await asyncio.wait([pending], timeout=south.write_bound_s(name))
        await old.close()
        old_tasks = [t for t in south.tasks if t.get_name() == f"device:{name}"]
        for task in old_tasks:
            task.cancel()
        if old_tasks:
            await asyncio.wait(old_tasks, timeout=_TASK_STOP_S)
        if south.clients.get(name) is not new or self.gw.requests.stopping:
            await new.close()  # replaced again meanwhile, or the gateway is closing
            return
        task = asyncio.get_running_loop().create_task(new.run(), name=f"device:{name}")
        south.tasks = [t for t in south.tasks if t not in old_tasks] + [task]
        log.info("reload: device %s reconnects with its new settings", name)
        self.gw.records.reload({"action": "reconnect", "device": name,
                                "sha256": self.state.sha256}, actor="gateway")

    def _notify(self, built: Built) -> None:
        """Tell what shows the site (northbound servers here, or the communications process)
        that it changed, without restarting anything."""
        north = self.gw.northbound
        reloaded = getattr(north, "site_reloaded", None)
        if reloaded is not None:
            reloaded(built.site, built.sha256)

    # ------------------------------------------------------------------ audit

    def _audit(self, out: Outcome, user: str, action: str, dry_run: bool = False,
               extra: dict[str, Any] | None = None) -> Outcome:
        if dry_run:
            return out
        payload: dict[str, Any] = {
            "action": action, "status": out.status.value, "message": out.message,
            "file": str(self.gw.site.source), "old_sha256": out.old_sha256,
            "new_sha256": out.new_sha256,
            "summary": out.diff.summary() if out.diff is not None else "",
            "changes": out.diff.lines() if out.diff is not None else [],
            "errors": list(out.errors)}
        if out.ramps:
            payload["ramps"] = list(out.ramps)
        if extra:
            payload.update(extra)
        self.gw.records.reload(payload, actor=user)
        return out


def _codec() -> Any:
    from gateway.adapters import codec

    return codec
