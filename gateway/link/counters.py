"""What the safety core counts, as one fixed block of unsigned 64-bit integers.

The core counts (cycles, skipped cycles, cycle lateness and duration as histograms, the
envelope's verdicts by action and its violations by constraint, trips by detector, refused
writes by reason, write-throughs and their latency, each device's link state and connections,
audit alarms; once a second, the restarts of the communications process and the audit sink's
backlog, losses and fault) and publishes the block in the mirror every cycle. The counters
live in the core, so a restart of the communications process, which serves them as metrics,
loses nothing; they start at zero with the core.

The block's slots are fixed by the site (its sensors, actuators and devices) and by this
module: :class:`CounterLayout` names every slot, and both sides build the same one. Label sets
are bounded by construction: a detector's trips are counted under its own slot if the site can
have that detector, else under ``other``; a refusal kind this module does not know is counted
under ``other`` too.

Counting is a few integer additions into an ``array('Q')`` (no allocation); a histogram
observation is one bisection over a short tuple. :meth:`CoreCounters.snapshot` copies the block
as ``bytes`` (one small allocation per cycle) for the immutable view.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.adapters.base import ConnectionState, Refusal

if TYPE_CHECKING:
    from gateway.config.schema import Site

__all__ = [
    "ACTIONS",
    "CYCLE_BUCKETS_S",
    "LINK_STATES",
    "OTHER",
    "REFUSALS",
    "WRITE_THROUGH_BUCKETS_S",
    "CoreCounters",
    "CounterLayout",
    "Histogram",
]

OTHER: Final = "other"
# The envelope's verdict actions, in the order of gateway.envelope.compiled.Action's codes.
ACTIONS: Final = ("ok", "clamp", "reject", "trip")
REFUSALS: Final = (*(r.value for r in Refusal), OTHER)
# Link states as a number in the device-state slot (0: the client does not say).
LINK_STATES: Final = ("unknown", *(s.value for s in ConnectionState))
_LINK_CODE: Final = {s: i for i, s in enumerate(LINK_STATES)}

# Upper bounds (seconds) of the histograms' buckets; one more bucket counts the rest (+Inf).
CYCLE_BUCKETS_S: Final = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                          0.25, 0.5, 1.0)
WRITE_THROUGH_BUCKETS_S: Final = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                                  0.25, 0.5, 1.0)

# The detectors a finding can name whatever the site (gateway.supervisor.core._detector_names;
# a test checks every shipped site's names are slots here).
_FIXED_DETECTORS: Final = ("violation_rate", "envelope", "envelope.gross", "canary",
                           "deadline", "ai_silent", "controller.nonfinite_output",
                           "controller.wrong_output_shape", "controller.runtime_error")
_PER_SENSOR: Final = ("input.quality", "input.stale", "input.range", "input.frozen",
                      "input.rate")


@dataclass(frozen=True)
class Histogram:
    """Where a histogram sits in the block: one count per bucket of ``bounds_s`` and one for
    the rest (``start`` .. ``start + len(bounds_s)``), then the sum of the observations in
    nanoseconds (slot ``start + len(bounds_s) + 1``)."""

    start: int
    bounds_s: tuple[float, ...]
    sum_at: int = dataclasses.field(init=False)  # computed once: read on the cycle's path

    def __post_init__(self) -> None:
        object.__setattr__(self, "sum_at", self.start + len(self.bounds_s) + 1)

    @property
    def size(self) -> int:
        return len(self.bounds_s) + 2


@dataclass(frozen=True)
class CounterLayout:
    """The slots of a site's counter block (see the module docstring). Names must be distinct
    (``ValueError`` otherwise, as the mirror's layout checks them first)."""

    sensors: tuple[str, ...]
    actuators: tuple[str, ...]
    devices: tuple[str, ...]
    constraints: tuple[str, ...] = ()  # the envelope's constraint (slot) names

    def __post_init__(self) -> None:
        if len(set(self.devices)) != len(self.devices) or not all(self.devices):
            raise ValueError(f"`devices` must be distinct, non-empty names: {self.devices!r}")

    @classmethod
    def for_site(cls, site: Site) -> CounterLayout:
        """The layout of ``site``: its sensors, actuators and devices in config order (the
        mirror's :meth:`~gateway.link.mirror.MirrorLayout.for_site` holds the same)."""
        return cls(tuple(t.name for t in site.sensors), tuple(t.name for t in site.actuators),
                   tuple(d.name for d in site.devices), constraint_names(site))

    @functools.cached_property
    def violation_names(self) -> tuple[str, ...]:
        """Every constraint with a violation slot of its own, then ``other``."""
        return (*dict.fromkeys(c for c in self.constraints if c != OTHER), OTHER)

    @functools.cached_property
    def violation_index(self) -> dict[str, int]:
        return {name: self.violations + i for i, name in enumerate(self.violation_names)}

    @functools.cached_property
    def detectors(self) -> tuple[str, ...]:
        """Every detector name with a slot of its own, then ``other``."""
        per_sensor = tuple(f"{kind}.{s}" for s in self.sensors for kind in _PER_SENSOR)
        return (*_FIXED_DETECTORS, *per_sensor,
                *(f"divergence.{a}" for a in self.actuators),
                *(f"device.{d}" for d in self.devices), OTHER)

    @functools.cached_property
    def detector_index(self) -> dict[str, int]:
        return {name: self.trips + i for i, name in enumerate(self.detectors)}

    # Slot offsets, in block order.
    cycles = 0
    skipped = 1
    comms_restarts = 2
    audit_alarms = 3
    # The audit sink's figures, sampled once a second: records not yet committed (a level),
    # records lost (a count), and whether the sink reports a fault now (0/1).
    audit_pending = 4
    audit_lost = 5
    audit_fault = 6
    lateness = Histogram(7, CYCLE_BUCKETS_S)
    duration = Histogram(lateness.start + lateness.size, CYCLE_BUCKETS_S)
    write_through = Histogram(duration.start + duration.size, WRITE_THROUGH_BUCKETS_S)
    verdicts = write_through.start + write_through.size

    @functools.cached_property
    def refusals(self) -> int:
        return self.verdicts + len(ACTIONS)

    @functools.cached_property
    def trips(self) -> int:
        return self.refusals + len(REFUSALS)

    @functools.cached_property
    def violations(self) -> int:
        return self.trips + len(self.detectors)

    @functools.cached_property
    def link_state(self) -> int:
        return self.violations + len(self.violation_names)

    @functools.cached_property
    def connects(self) -> int:
        return self.link_state + len(self.devices)

    @functools.cached_property
    def size(self) -> int:
        """How many slots (each 8 bytes)."""
        return self.connects + len(self.devices)

    @property
    def names(self) -> tuple[str, ...]:
        """A name per slot, for the mirror's layout id (both sides must agree on them)."""
        def hist(key: str, h: Histogram) -> list[str]:
            return [*(f"{key}.le.{b!r}" for b in h.bounds_s), f"{key}.inf", f"{key}.sum_ns"]

        return ("cycles", "skipped", "comms_restarts", "audit_alarms", "audit_pending",
                "audit_lost", "audit_fault",
                *hist("lateness", self.lateness), *hist("duration", self.duration),
                *hist("write_through", self.write_through),
                *(f"verdict.{a}" for a in ACTIONS), *(f"refusal.{r}" for r in REFUSALS),
                *(f"trip.{d}" for d in self.detectors),
                *(f"violation.{c}" for c in self.violation_names),
                *(f"link_state.{d}" for d in self.devices),
                *(f"connects.{d}" for d in self.devices))

    def histogram(self, values: array[int] | tuple[int, ...], h: Histogram
                  ) -> tuple[list[int], int]:
        """The bucket counts (not cumulative, the last one for +Inf) and the sum (ns)."""
        return list(values[h.start:h.start + len(h.bounds_s) + 1]), values[h.sum_at]


_REFUSAL_SLOT: Final = {r: i for i, r in enumerate(REFUSALS)}


class CoreCounters:
    """The core's counter block for ``layout``; all counts start at zero. Not thread-safe:
    the core's event loop is its only writer."""

    def __init__(self, layout: CounterLayout) -> None:
        self.layout = layout
        self.values = array("Q", bytes(8 * layout.size))
        self._detector = layout.detector_index
        self._other_detector = self._detector[OTHER]
        self._violation = layout.violation_index
        self._other_violation = self._violation[OTHER]
        self._links: list[str | None] = [None] * len(layout.devices)
        # Offsets as plain ints: read on the cycle's path.
        self._verdicts = layout.verdicts
        self._refusals = layout.refusals
        self._link_state = layout.link_state
        self._connects = layout.connects

    def observe(self, h: Histogram, value_s: float) -> None:
        """One observation of ``value_s`` seconds into histogram ``h`` (negative or NaN:
        counted in the first bucket; not added to the sum, nor is inf)."""
        values = self.values
        values[h.start + bisect.bisect_left(h.bounds_s, value_s)] += 1
        if 0 < value_s < 1e9:  # inf: counted, not summed (int() would raise)
            values[h.sum_at] += int(value_s * 1e9)

    def verdict(self, action: int) -> None:
        """One verdict of the envelope (``action``: an ``Action`` code, 0..3)."""
        self.values[self._verdicts + action] += 1

    def violated(self, constraints: tuple[str, ...]) -> None:
        """One verdict's violated constraints (a name without a slot counts under
        ``other``)."""
        values, index, other = self.values, self._violation, self._other_violation
        for name in constraints:
            values[index.get(name, other)] += 1

    def trip(self, detector: str) -> None:
        """One trip by ``detector`` (a name without a slot counts under ``other``)."""
        self.values[self._detector.get(detector, self._other_detector)] += 1

    def refused(self, kind: str, count: int = 1) -> None:
        """``count`` refused writes of kind ``kind`` (a ``Refusal`` value, else ``other``)."""
        slot = _REFUSAL_SLOT.get(kind, len(REFUSALS) - 1)
        self.values[self._refusals + slot] += max(0, count)

    def set_link(self, device_index: int, state: str, connects: int) -> None:
        """Device ``device_index``'s link state now (a ``ConnectionState``; any other text is
        unknown) and its connections so far (>= 0; ``OverflowError`` otherwise)."""
        values = self.values
        # Looked up only when it changes: an enum member's hash is computed in Python.
        if state is not self._links[device_index]:
            self._links[device_index] = state
            values[self._link_state + device_index] = _LINK_CODE.get(state, 0)
        values[self._connects + device_index] = connects

    def snapshot(self) -> bytes:
        """A copy of the block (8 bytes per slot, native order: the mirror's layout is
        little-endian, and so is every platform the gateway runs on)."""
        return self.values.tobytes()


def constraint_names(site: Site) -> tuple[str, ...]:
    """The names a verdict of ``site``'s envelope can carry (its compiled slots, in order)."""
    from gateway.envelope.compiled import compile_site  # numpy and the schema: at start only

    return compile_site(site).slot_names


def decode(layout: CounterLayout, data: bytes) -> tuple[int, ...]:
    """The slots of ``data`` (a snapshot), or all zeros when ``data`` is empty or not of this
    layout's size (a view made before the core counted anything)."""
    if len(data) != 8 * layout.size:
        return (0,) * layout.size
    return tuple(array("Q", data))
