"""Hot reload of the site file: check, difference, stage, commit, and the swap between cycles.

A reload re-reads the file the gateway was started with (like nginx: the same path) and goes
through these steps; any step that fails leaves the running gateway exactly as it was:

1. **Check** (:func:`read_candidate`, run in a worker thread so that the cycle keeps its
   period): the file is loaded and checked as ``safety-gateway check`` does; its errors are
   returned as ``check`` prints them.
2. **Difference** (:func:`gateway.runtime.site_diff.diff_sites`): what moved, which way for
   safety, and whether all of it can be applied live; anything that cannot is refused with
   ``needs a restart: ...``.
3. **Build** (:func:`build`, also in the worker thread): the new envelope is compiled and a new
   :class:`~gateway.supervisor.core.Supervisor` built for it, off the cycle.
4. **Swap** (:meth:`Reloader.swap`, called by the control cycle at the top of a step, i.e.
   between two cycles, never while a write-through is on its way): the accumulated state that
   still applies is moved into the new supervisor (:func:`transfer`), the tightened bounds that
   the actuators' present values exceed become ramps (:mod:`gateway.runtime.ramp`), and every
   reference to the site, envelope and supervisor is switched at once; an error in the middle
   switches every one of them back.

Staging, two-person commits and the audit records are kept by :class:`Reloader`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.control.bank import FallbackBank
from gateway.runtime.ramp import Ramp, private_envelope
from gateway.runtime.site_diff import SiteDiff, diff_sites
from gateway.runtime.view import DetectorGauges
from gateway.supervisor.core import Supervisor
from gateway.supervisor.modes import Mode, ModeConfig

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.config.schema import Site
    from gateway.envelope.engine import Envelope
    from gateway.envelope.wire import WireCodec
    from gateway.supervisor.detectors import CanaryCases

log = logging.getLogger("gateway.runtime")

__all__ = ["Candidate", "Outcome", "ReloadError", "Status", "build", "read_candidate",
           "transfer"]

# A staged change waits this long for its second approver, then it is dropped.
STAGED_FOR_S = 900.0


class ReloadError(Exception):
    """A step of a reload failed; the running gateway is as it was."""


class Status(StrEnum):
    """What a reload request came to."""

    INVALID = "invalid"  # the file does not pass check
    REFUSED = "refused"  # needs a restart, not authorised, nothing staged, ...
    UNCHANGED = "unchanged"  # the file's content equals the running site
    DRY_RUN = "dry_run"
    STAGED = "staged"  # waiting for a second, different approver
    APPLIED = "applied"
    FAILED = "failed"  # the swap failed; nothing changed


@dataclass(frozen=True)
class Outcome:
    """The real outcome of a reload request, for the requester and the audit chain."""

    status: Status
    message: str
    old_sha256: str
    new_sha256: str | None = None
    diff: SiteDiff | None = None
    errors: tuple[str, ...] = ()
    ramps: tuple[dict[str, Any], ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status in (Status.DRY_RUN, Status.STAGED, Status.APPLIED,
                               Status.UNCHANGED)

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "message": self.message,
                "old_sha256": self.old_sha256, "new_sha256": self.new_sha256,
                "diff": None if self.diff is None else self.diff.as_json(),
                "errors": list(self.errors), "ramps": list(self.ramps)}

    def text(self) -> str:
        """What ``ctl reload`` prints: the status line, then the errors or the difference."""
        lines = [f"{self.status.value}: {self.message}", *self.errors]
        if self.diff is not None and not self.errors:
            lines += [f"  {line}" for line in self.diff.lines()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Candidate:
    """A site file read and checked: its bytes' hash, the site, and its difference from the
    running one."""

    site: Site
    sha256: str
    diff: SiteDiff


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_candidate(path: Path, running: Site) -> Candidate | tuple[str, list[str]]:
    """Read ``path`` and check it as ``safety-gateway check`` does. Returns the candidate, or
    (sha256 or "", the errors exactly as ``check`` prints them). Does file I/O: run it in a
    worker thread, never in the cycle."""
    from gateway.config import ConfigError, load_config
    from gateway.config.loader import audit_environment

    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", [f"{path}: cannot be read: {exc.strerror or exc}"]
    sha = file_sha256(data)
    try:
        site = load_config(path)
    except ConfigError as exc:
        return sha, [str(exc)]
    issues = audit_environment(site)
    if issues and site.audit.required:
        return sha, [str(i) for i in issues]
    return Candidate(site, sha, diff_sites(running, site))


@dataclass
class Built:
    """What a commit swaps in: the new site, its private envelope and a fresh supervisor."""

    site: Site
    envelope: Envelope
    supervisor: Supervisor
    sha256: str
    diff: SiteDiff


def build(candidate: Candidate, engine: str, codec: WireCodec, canary: CanaryCases | None,
          initial: Any, start_s: float) -> Built:
    """Compile the candidate's envelope and build its supervisor (pure CPU work; run off the
    cycle). ``initial`` is only a placeholder: :func:`transfer` gives it the running state."""
    from gateway.envelope.compiled import compile_site

    envelope = private_envelope(compile_site(candidate.site), engine)
    sup = Supervisor(candidate.site, envelope, initial, start_s, canary=canary, codec=codec)
    return Built(candidate.site, envelope, sup, candidate.sha256, candidate.diff)


def _spans(site: Site) -> dict[str, tuple[float, float]]:
    return {lim.actuator: (lim.min, lim.max) for lim in site.envelope.limits}


def _same(a: Site, b: Site, *fields_: str) -> bool:
    return all(getattr(a.detection, f) == getattr(b.detection, f) for f in fields_)


def transfer(old: Supervisor, new: Supervisor) -> None:
    """Give ``new`` the accumulated state of ``old`` that still applies (reads ``old`` only;
    ``old`` keeps running unchanged until the swap).

    Kept: the mode machine (mode, latched trip and its reason, bypasses, the clean-shadow
    clock, pending second approvals; with the new operation policy), the last write and its
    time (rate limits measure from it), the AI's own trajectory, the trip and observation
    latches, the containment rate factor, the AI's silence clock, operator setpoints. Kept
    when their settings did not change: the fallback controllers (PID integrals, kept when no
    fallback and no actuator bound changed; else the new ones start bumplessly from the last
    write), the input-health detectors, each divergence detector (its CUSUM/Page-Hinkley
    statistic), the violation-rate window, the deadline counter and the canary clock."""
    a, b = old.site, new.site
    new.modes = old.modes  # the config is switched with the rest in Reloader.swap
    new.previous = old.previous.copy()
    new.ai_previous = old.ai_previous.copy()
    new.last_s = old.last_s
    new.written_at_s = old.written_at_s
    new._pending = list(old._pending)
    new._sensing = old._sensing
    new.replay_latches(*old.latches)
    new.rate_factor = old.rate_factor
    new._no_proposal_since = old._no_proposal_since
    new._ai_in_control = old._ai_in_control
    # The PIDs clamp their output (anti-windup) to the actuator's min and max: kept only when
    # neither the fallbacks nor any bound changed; else the new ones start from the last
    # write (bumpless).
    if a.fallback == b.fallback and _spans(a) == _spans(b):
        new.bank = old.bank
    else:
        new.bank.track(new.previous.tolist(), False)
        new.bank.overrides.update(old.bank.overrides)
    if a.detection == b.detection and a.sensors == b.sensors and a.devices == b.devices:
        new.inputs = old.inputs
    # Each divergence detector keeps its statistic when its own settings did not change (the
    # method, drift and threshold, its actuator's fallback and span).
    if _same(a, b, "divergence", "divergence_method", "divergence_drift",
             "divergence_threshold"):
        kept = {name: (inv_span, det) for _, name, inv_span, det in old.divergence.watch}
        fb_a = {f.actuator: f for f in a.fallback}
        fb_b = {f.actuator: f for f in b.fallback}
        watch = new.divergence.watch
        for k, (i, name, inv_span, _det) in enumerate(watch):
            old_one = kept.get(name)
            if (old_one is not None and old_one[0] == inv_span
                    and fb_a.get(name) == fb_b.get(name)):
                watch[k] = (i, name, inv_span, old_one[1])
    if _same(a, b, "violation_window_s", "violation_max"):
        new.violations = old.violations
    if _same(a, b, "deadline_misses_max"):
        new.controller = old.controller
    if _same(a, b, "canary_period_s", "canary_tolerance"):
        new.canary = old.canary


def ramp_site(site: Site, ramp: Ramp) -> Site:
    """``site`` with each ramped bound at its value in force now (for the fallbacks' output
    limits during a ramp)."""
    bounds = {b.name: b for b in ramp.bounds}
    limits = []
    for lim in site.envelope.limits:
        b = bounds.get(lim.actuator)
        if b is not None:
            lim = replace(lim, max=b.bound) if b.upper else replace(lim, min=b.bound)
        limits.append(lim)
    return replace(site, envelope=replace(site.envelope, limits=tuple(limits)))


def fallback_bank(site: Site, previous: Any, overrides: dict[int, float]) -> FallbackBank:
    """New fallback controllers for ``site`` starting from ``previous`` (the last write:
    bumpless), with the operator setpoints of ``overrides``."""
    bank = FallbackBank(site, np.array(previous, dtype=np.float64))
    bank.overrides.update(overrides)
    return bank


def mode_config(site: Site, sup: Supervisor) -> ModeConfig:
    """The mode policy of ``site`` for the supervisor ``sup`` (its detector names)."""
    op = site.operation
    return ModeConfig(start_mode=Mode(op.start_mode.value), clean_shadow_s=op.clean_shadow_s,
                      bypass_max_s=op.bypass_max_s, detectors=frozenset(sup.detector_names),
                      bypass_max_concurrent=op.bypass_max_concurrent,
                      bypass_second_approval_s=op.bypass_second_approval_s)


@dataclass
class Staged:
    """A change staged by one approver, waiting for a second, different one."""

    sha256: str
    user: str
    at_s: float  # the gateway's clock


@dataclass
class Swap:
    """A commit waiting for the top of the next cycle."""

    built: Built
    user: str
    old_sha256: str
    committed_s: float
    committed_cycle: int
    done: Any = None  # asyncio.Future[Outcome], set by Reloader.commit
    clients: dict[str, Any] = field(default_factory=dict)  # devices that reconnect: new clients
    applied_cycle: int | None = None
    ramp: Ramp | None = None
    # commissioning.candidate changed: the judge that replaces the running one (None: none)
    candidate_changed: bool = False
    judge: Any = None


@dataclass
class Reload:
    """The reload state of one gateway: the running file's hash, what is staged, the swap on
    its way and the ramp in force."""

    sha256: str
    staged: Staged | None = None
    pending: Swap | None = None
    ramp: Ramp | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # applied swaps (tests, bench)


def now_monotonic() -> float:
    return time.monotonic()


def references(gw: Any) -> list[tuple[object, str]]:
    """Every (object, attribute) of a running gateway that holds its site, envelope or
    supervisor, in the order :meth:`Reloader.swap` switches them."""
    refs: list[tuple[object, str]] = [(gw, "site"), (gw, "envelope"), (gw, "supervisor"),
                                      (gw.requests, "site"), (gw.requests, "envelope"),
                                      (gw.requests, "supervisor"), (gw.records, "site")]
    for holder in (gw.write_through, gw.control, gw.durable,
                   getattr(gw.control, "playbook", None)):
        if holder is not None and hasattr(holder, "supervisor"):
            refs.append((holder, "supervisor"))
    if gw.control is not None:
        refs.append((gw.control, "_gauges"))
    return refs


def swap_values(gw: Any, built: Built) -> list[object]:
    """The new value for each of :func:`references`, in the same order."""
    values: list[object] = [built.site, built.envelope, built.supervisor,
                            built.site, built.envelope, built.supervisor, built.site]
    for holder in (gw.write_through, gw.control, gw.durable,
                   getattr(gw.control, "playbook", None)):
        if holder is not None and hasattr(holder, "supervisor"):
            values.append(built.supervisor)
    if gw.control is not None:
        values.append(DetectorGauges(built.supervisor))
    return values


def apply_all(refs: list[tuple[object, str]], values: list[object],
              fault: Callable[[str], None] | None = None) -> None:
    """Set every reference at once, or none: an error part-way sets back the ones already
    set and re-raises."""
    olds = [getattr(obj, attr) for obj, attr in refs]
    done = 0
    try:
        for (obj, attr), value in zip(refs, values, strict=True):
            setattr(obj, attr, value)
            done += 1
            if fault is not None:
                fault(f"assign:{attr}")
    except BaseException:
        for (obj, attr), old in zip(refs[:done], olds[:done], strict=True):
            setattr(obj, attr, old)
        raise
