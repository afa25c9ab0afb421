"""A forensic checkpoint: the supervisor state that accumulates over minutes, as plain JSON.

A window frozen in the middle of a run cannot show what the divergence detectors (CUSUM or
Page-Hinkley against the free-running reference PIDs), the violation-rate window and the trip
latches had accumulated before its first frame. The flight recorder keeps this small dict every
``checkpoint_every_n`` cycles (:class:`~gateway.forensics.recorder.FlightRecorder`), and the
warm start of a replay restores it at the first frame that carries one
(:func:`gateway.forensics.replay.replay_recording`).

Versioned (``"version"``): a recording without a checkpoint, or with one of an unknown
version, replays with the warm start alone. :func:`restore` is forensic-only: a live gateway
never calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from gateway.supervisor.changepoint import Cusum, PageHinkley

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.supervisor.core import Supervisor

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "capture", "restore", "usable"]

CHECKPOINT_VERSION: Final = 1


class CheckpointError(ValueError):
    """A checkpoint that does not fit the supervisor it is restored into, or is malformed."""


def capture(sup: Supervisor) -> dict[str, Any]:
    """The accumulated state of ``sup`` right after a step, as a new JSON-ready dict (floats
    may be non-finite: the recorder's JSON tags them)."""
    detectors = []
    for _, name, _, det in sup.divergence.watch:
        if isinstance(det, Cusum | PageHinkley):
            detectors.append({"actuator": name, **det.state()})
    latched, reason = sup.modes.latch
    tripped, observed = sup.latches
    return {
        "version": CHECKPOINT_VERSION,
        "divergence": detectors,
        "pids": [{"role": role, "index": i, **pid.state()} for role, i, pid in sup.bank.pids()],
        "reference": list(sup.bank.reference),
        "violations": sup.violations.window.state(),
        "latched": latched,
        "trip_reason": reason,
        "tripped": sorted(tripped),
        "observed": sorted(observed),
        "controller_misses": sup.controller.misses,
    }


def usable(checkpoint: Mapping[str, Any] | None) -> bool:
    """Whether ``checkpoint`` is one this version can restore (None, or another version: no)."""
    return checkpoint is not None and checkpoint.get("version") == CHECKPOINT_VERSION


def restore(sup: Supervisor, checkpoint: Mapping[str, Any]) -> None:
    """Put ``checkpoint`` (from :func:`capture`) into ``sup``. Forensic replay only.

    Checks first that it fits ``sup`` (same divergence detectors and PIDs), so that a
    checkpoint that does not fit changes nothing; raises :class:`CheckpointError` then, or when
    it is malformed (a malformed value may leave ``sup`` partly restored: the replay stops).
    """
    if not usable(checkpoint):
        raise CheckpointError(f"checkpoint version {checkpoint.get('version')!r} is not "
                              f"{CHECKPOINT_VERSION}")
    try:
        detectors = {name: det for _, name, _, det in sup.divergence.watch}
        recorded = {d["actuator"]: d for d in checkpoint["divergence"]}
        if set(recorded) != set(detectors):
            raise CheckpointError(f"checkpoint's divergence detectors {sorted(recorded)} are "
                                  f"not the site's {sorted(detectors)}")
        pids = {(role, i): pid for role, i, pid in sup.bank.pids()}
        states = {(p["role"], p["index"]): p for p in checkpoint["pids"]}
        if set(states) != set(pids):
            raise CheckpointError("checkpoint's PIDs are not the site's fallback PIDs")
        reference = [float(x) for x in checkpoint["reference"]]
        if len(reference) != len(sup.bank.reference):
            raise CheckpointError("checkpoint's reference outputs do not fit the site")
        for name, det in detectors.items():
            if not isinstance(det, Cusum | PageHinkley):
                raise CheckpointError(f"divergence detector of {name} cannot be restored")
            det.restore(recorded[name])
        for key, pid in pids.items():
            pid.restore(states[key])
        sup.bank.reference = reference
        sup.violations.window.restore(checkpoint["violations"])
        reason = checkpoint["trip_reason"]
        sup.modes.replay_latch(bool(checkpoint["latched"]),
                               reason if isinstance(reason, str) else None)
        sup.replay_latches((str(x) for x in checkpoint["tripped"]),
                           (str(x) for x in checkpoint["observed"]))
        sup.controller.misses = int(checkpoint["controller_misses"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"malformed checkpoint: {type(exc).__name__}: {exc}") from None
