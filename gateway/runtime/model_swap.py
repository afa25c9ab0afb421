"""The safety core's side of a fleet model rollout: record its steps, and load a verified
version in SHADOW, never in AUTO.

The communications process fetches an assigned version, stages it under the site's
``fleet.models_dir`` and checks it (``gateway.fleet.rollout``); then it asks the core, over
the request channel, with two narrow requests (``op: "rollout"``):

- ``record``: one step of the rollout (``fetched``, ``verified``, ``refused``, ...) for the
  core's audit chain, texts capped (:data:`MAX_TEXT`);
- ``load_shadow``: load staged version ``name`` ``version``. The core takes nothing but the
  name and number from the request: the folder follows from its own config, the trust store
  is its own ``fleet.trusted_keys``, and it checks everything again
  (:func:`gateway.registry.staged.verify_staged`: signature, approval, hashes, settings,
  canary; in a worker thread, so the cycles go on). Then, between two cycles (in the core's
  loop, which runs the cycles),
  it takes the AI out of control if it was in control (AUTO or SHADOW -> MANUAL), swaps the
  policy, and puts the mode machine in SHADOW: the new model is computed and judged while the
  fallback drives the plant. AUTO still needs the site's own authorised request after a clean
  shadow period, as for any model.

Refused, and nothing changes, while the site is not in a state to start a trial: a trip
latched, SAFE_STOP, a quarantined model, an operator holding setpoints in MANUAL (the
operator's hand is not taken away from afar), a site whose controller is not ONNX, or the
supervisor not running yet. Every answer is the real outcome and every request is in the
audit chain (kind ``rollout``).

The swap lasts for this run: a restart loads the model of the site file again (making a
rolled-out version the site's own is the site's decision).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from gateway.adapters.base import Refusal, WriteOutcome
from gateway.config.schema import ControllerKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from gateway.config.schema import Site
    from gateway.runtime.ai_source import AiSource
    from gateway.runtime.records import Records
    from gateway.runtime.safety_state import DurableState
    from gateway.supervisor.core import Supervisor

__all__ = ["MAX_TEXT", "REQUESTER", "ModelSwap", "models_dir"]

log = logging.getLogger("gateway.runtime")

MAX_TEXT: Final = 2000
"""Longest text of a recorded step's field (the communications process faces the network)."""
MAX_FIELDS: Final = 12
REQUESTER: Final = "fleet rollout"
"""Who the mode changes of a rollout name."""
STEPS: Final = frozenset({"assigned", "fetched", "verified", "refused", "withdrawn", "failed"})


def models_dir(site: Site) -> Path | None:
    """Where staged versions live: ``fleet.models_dir``, else beside the audit database;
    None for a site without a ``fleet:`` section."""
    if site.fleet is None:
        return None
    if site.fleet.models_dir is not None:
        return site.fleet.models_dir
    audit = site.audit.path
    return audit.with_name(audit.name + ".fleet-models")


def _refused(reason: str, code: int = 4, why: Refusal | None = Refusal.MODE) -> WriteOutcome:
    return WriteOutcome(False, code, reason, why)


class ModelSwap:
    """Handles the core's ``rollout`` requests for one gateway (see the module docstring).
    The callables return the gateway's current records and supervisor (both are replaced
    while the gateway opens); ``on_swap(path, sha256)`` is called once a new model runs, so
    that incidents and the playbook's quarantine name it."""

    def __init__(self, site: Site, ai: AiSource, durable: DurableState,
                 records: Callable[[], Records], supervisor: Callable[[], Supervisor | None],
                 witness: Path | None,
                 on_swap: Callable[[str, str], None] | None = None) -> None:
        self.site = site
        self.on_swap = on_swap  # (path, sha256): incidents and the playbook name the new model
        self.ai = ai
        self.durable = durable
        self._records = records
        self._supervisor = supervisor
        self.witness = witness
        self.loaded: tuple[str, int, str] | None = None  # name, version, sha256 in shadow
        self._loading = False  # one load at a time: a second would swap twice

    async def handle(self, action: str, args: Mapping[str, str]) -> WriteOutcome:
        """``record`` or ``load_shadow`` (see the module docstring); code 3 for malformed
        arguments, 4 refused."""
        if len(args) > MAX_FIELDS or any(len(v) > MAX_TEXT for v in args.values()):
            return _refused(f"at most {MAX_FIELDS} fields of {MAX_TEXT} characters", 3, None)
        if action == "record":
            return self._record(args)
        if action == "load_shadow":
            return await self._load_shadow(args)
        return _refused(f"unknown rollout action {action!r}", 3, None)

    def _record(self, args: Mapping[str, str]) -> WriteOutcome:
        step = args.get("step")
        if step not in STEPS:
            return _refused(f"unknown rollout step {step!r}; one of {sorted(STEPS)}", 3, None)
        self._append(dict(args))
        return WriteOutcome(True, 0, f"{step} recorded")

    def _append(self, payload: dict[str, Any]) -> None:
        self._records().rollout(payload)

    async def _load_shadow(self, args: Mapping[str, str]) -> WriteOutcome:
        name = args.get("name", "")
        text = args.get("version", "")
        rollout = args.get("rollout", "")
        if not text.isdigit():
            return _refused(f"version {text!r} is not a number", 3, None)
        version = int(text)
        base = {"step": "load_shadow", "name": name, "version": text, "rollout": rollout}
        outcome = self._precheck()
        if outcome is None and self._loading:
            outcome = _refused("another version is being loaded", why=None)
        folder = models_dir(self.site)
        if outcome is None and folder is None:
            outcome = _refused("this site has no fleet: section")
        if outcome is not None:
            self._append({**base, "result": f"refused: {outcome.reason}"})
            return outcome
        assert folder is not None
        assert self.site.fleet is not None
        self._loading = True
        try:
            return await self._verify_and_swap(folder, name, version, base)
        finally:
            self._loading = False

    async def _verify_and_swap(self, folder: Path, name: str, version: int,
                               base: dict[str, Any]) -> WriteOutcome:
        from gateway.registry.staged import StagedRefused, staged_folder, verify_staged

        assert self.site.fleet is not None
        text = str(version)
        rollout = base["rollout"]
        try:
            # Hashing, loading the ONNX session and running the canary take milliseconds to
            # seconds: done in a worker thread, so the cycles go on meanwhile.
            staged = await asyncio.to_thread(
                verify_staged, staged_folder(folder, name, version),
                self.site.fleet.trusted_keys, name, version, self.site, witness=self.witness)
        except StagedRefused as exc:
            self._append({**base, "result": f"refused: {exc}", "check": exc.kind})
            log.error("rollout of %s v%s refused by the core: %s", name, text, exc)
            return _refused(f"refused ({exc.kind}): {exc}")
        # The plant may have tripped, or an operator taken over, while the check ran.
        outcome = self._precheck()
        if outcome is not None:
            staged.policy.close()
            self._append({**base, "result": f"refused: {outcome.reason}"})
            return outcome
        sup = self._supervisor()
        assert sup is not None  # _precheck
        # Out of control first (a move toward safety), then the trial: both as an operator
        # request would be, named for the rollout.
        if sup.mode is not Mode.MANUAL:
            self._request(sup, RequestKind.TO_MANUAL, f"{staged.label} rolled out")
        events = self._request(sup, RequestKind.TO_SHADOW, f"{staged.label} on trial")
        if sup.mode is not Mode.SHADOW:
            staged.policy.close()
            reason = events[-1].reason if events else "the mode machine refused"
            self._append({**base, "result": f"refused: {reason}"})
            return _refused(f"not loaded: {reason}")
        old = self.ai.policy
        self.ai.policy = staged.policy
        if self.ai.wiring is None:
            from gateway.control.ai import AiWiring

            self.ai.wiring = AiWiring(self.site)
        cases = staged.verified.canary
        self.ai.canary = cases
        sup.canary.cases = cases
        sup.canary.next_due_s = sup.last_s  # the new model answers its golden cases at once
        if old is not None:
            old.close()
        sha = staged.verified.sha256
        self.loaded = (name, version, sha)
        if self.on_swap is not None:
            self.on_swap(str(staged.verified.path), sha)
        records = self._records()
        records.model_loaded(staged.verified.path, sha, True,
                             f"fleet rollout {rollout}: {staged.label}, in shadow")
        self._append({**base, "result": "loaded in shadow", "sha256": sha})
        log.info("rollout %s: %s loaded in shadow (sha256 %s)", rollout, staged.label, sha)
        return WriteOutcome(True, 0, f"{staged.label} loaded in shadow")

    def _precheck(self) -> WriteOutcome | None:
        """Why the site cannot start a trial now, or None."""
        sup = self._supervisor()
        if sup is None:
            return _refused("the supervisor is not running yet", why=Refusal.STARTING)
        if self.site.controller.kind is not ControllerKind.ONNX:
            return _refused(f"this site's controller is {self.site.controller.kind}, not onnx")
        if sup.modes.latched:
            return _refused(f"a trip is latched ({sup.modes.trip_reason})")
        if sup.mode is Mode.SAFE_STOP:
            return _refused("the site is in safe_stop")
        if self.durable.quarantined is not None:
            return _refused(f"a model is quarantined ({self.durable.quarantined[1]})")
        if sup.mode is Mode.MANUAL and sup.bank.overrides:
            return _refused("an operator holds setpoints in manual")
        return None

    def _request(self, sup: Supervisor, kind: RequestKind, reason: str) -> list[Any]:
        req = OperatorRequest(kind, REQUESTER, True, reason=reason)
        events = sup.apply_request(req)
        from gateway.runtime.requests_log import request_result

        result = request_result(events)
        # Its events reach the audit chain and the incident manager with the next cycle's
        # decision, as an operator request's do.
        self._records().request(req, "fleet", result)
        return events
