"""The mirror: the core's sensors, actuators and status in shared memory, one writer, many readers.

The safety core writes a :class:`MirrorWriter` every cycle; the communications process reads
it with a :class:`MirrorReader` on its own schedule, without the core's help and without ever
making the core wait (no lock is shared: a reader that stops half-way, is killed or hangs holds
nothing the writer needs).

Consistency is a seqlock with a checksum. The writer makes the sequence number odd, writes the
body, writes the body's CRC-32, and makes the sequence even again. A reader takes the sequence,
copies the body, takes the sequence again, and keeps the copy only if both are the same even
number and the CRC matches; otherwise it tries again, at most ``retries`` times (never for ever),
and then answers None. The CRC is there because Python gives no memory barriers: on a weakly
ordered CPU (ARM edge hardware) the sequence alone could let a torn copy through; a torn copy
with a matching CRC-32 has a chance of 2**-32.

The segment's memory layout (little-endian, offsets in bytes)::

    0   header   magic "SGMR", version, counts, fixed string sizes, total size, layout id
    32  seq      u64: odd while being written, 0 before the first publish
    40  crc      u32: CRC-32 of the body, then 4 bytes of padding
    48  body     the detector gauges' names and their lengths (padded to 8 bytes), then
                 status (cycle, heartbeat, wall time, generation, mode, latched, lengths,
                 how many detector gauges),
                 float64 arrays (sensor values and read times, applied values, proposals,
                 bypass expiries, detector statistics and thresholds), the core's counters
                 (uint64, see gateway.link.counters), uint8 arrays (sensor quality, source of
                 each applied value), then the trip reason, the open incident id and the
                 bypassed detectors' names

The gauges' names come first because they are the largest part and change only with the
tuple the core passes (normally never): the writer keeps their CRC-32 and continues it over the
rest of the body (``zlib.crc32(rest, names_crc)`` is the CRC of the whole), so a publish
checksums only what can change.

Every part has a fixed size set by the layout: at most ``max_bypasses`` bypasses and
``max_detectors`` detector gauges, each name in ``detector_name_bytes`` (a longer one is cut,
ending in "…"), so nothing the core publishes can grow the segment or overflow a field.
Strings are copied only when they change (names once, normally): a cycle copies numbers.

The layout id is a hash of the sensor, actuator and counter names: a reader built for another
site (or another version of this file) fails at once with :class:`MirrorMismatch`, never reads
values into the wrong tags.

Segments are named ``sgw-mirror-<pid>-<random>`` after the core's pid. CPython 3.11's
``SharedMemory`` registers every segment it opens with the resource tracker, which unlinks it
when the opening process exits (cpython gh-82300; ``track=False`` only came in 3.13), and the
tracker is a helper process that a signal to the process group can end. So neither side uses
it: the writer creates the segment with ``shm_open`` and unlinks it at :meth:`MirrorWriter.close`,
the reader opens it with ``shm_open`` and maps it read-only (it can never unlink the core's
segment, nor write into it), and a writer unlinks segments left by cores that are no longer
running (:func:`remove_stale`: a core killed with SIGKILL leaves its segment until the next
start).
"""

from __future__ import annotations

# The stdlib's own shm_open/shm_unlink (what SharedMemory calls), without its resource
# tracker; typeshed has no stub for it.
import _posixshmem  # type: ignore[import-not-found]
import contextlib
import enum
import functools
import hashlib
import math
import mmap
import os
import re
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from gateway.link.counters import CounterLayout

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from gateway.config.schema import Site

__all__ = [
    "MirrorLayout",
    "MirrorMismatch",
    "MirrorReader",
    "MirrorSnapshot",
    "MirrorWriter",
    "Source",
    "remove_stale",
]

MAGIC: Final = b"SGMR"
VERSION: Final = 3  # 2: the counters block; 3: the detector gauges
NAME_PREFIX: Final = "sgw-mirror-"
_NAME_RE: Final = re.compile(r"^sgw-mirror-(\d+)-[0-9a-f]+$")
_SHM_DIR: Final = Path("/dev/shm")  # where Linux keeps POSIX shared memory (for remove_stale)

_HEADER = struct.Struct("<4sHHHHHHHIQH")  # magic, version, ns, na, max_bypasses, reason,
#                                    id, detector name bytes, size, layout id, max_detectors
_SEQ_AT: Final = 32
_SEQ = struct.Struct("<Q")
_CRC_AT: Final = 40
_CRC = struct.Struct("<I")
_BODY_AT: Final = 48
# cycle, heartbeat, wall time of the publish, comms generation, mode, latched, bypass count,
# trip reason length, incident id length, detector gauge count; padded to 8 bytes so the
# float64 arrays align.
_STATUS = struct.Struct("<QQdI16sBBHHH")
_STATUS_SIZE: Final = (_STATUS.size + 7) // 8 * 8
_ELLIPSIS: Final = "\u2026".encode()


class MirrorMismatch(ValueError):
    """The segment is not a mirror of this layout (wrong magic, version, tags or size)."""


class Source(enum.IntEnum):
    """Where an actuator's applied value came from this cycle."""

    NONE = 0  # nothing applied yet
    AI = 1  # the AI's proposal
    FALLBACK = 2  # a fallback controller
    OPERATOR = 3  # an operator's setpoint (MANUAL)
    SAFE = 4  # the site's safe state


@dataclass(frozen=True)
class MirrorLayout:
    """What a mirror holds and how big it is; both sides must build the same one.

    ``max_bypasses`` bypasses are mirrored (more are counted, the earliest expiring kept), and
    ``max_detectors`` detector gauges (statistic, threshold, name; the first ones kept);
    strings are cut at a character boundary to their byte sizes (UTF-8), ending in "…" when cut.
    ``devices`` and ``constraints`` (the envelope's) name slots of the core's counters
    (:attr:`counters`).
    Raises ``ValueError`` for duplicate or empty names or sizes out of range.
    """

    sensors: tuple[str, ...]
    actuators: tuple[str, ...]
    devices: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    max_bypasses: int = 16
    reason_bytes: int = 256
    incident_id_bytes: int = 64
    detector_name_bytes: int = 64
    max_detectors: int = 64

    def __post_init__(self) -> None:
        for kind, names in (("sensors", self.sensors), ("actuators", self.actuators)):
            if len(set(names)) != len(names) or not all(names):
                raise ValueError(f"`{kind}` must be distinct, non-empty names: {names!r}")
            if len(names) > 65535:
                raise ValueError(f"too many {kind}: {len(names)}")
        for key, value in (("reason_bytes", self.reason_bytes),
                           ("incident_id_bytes", self.incident_id_bytes),
                           ("detector_name_bytes", self.detector_name_bytes)):
            if not 4 <= value <= 65535:
                raise ValueError(f"`{key}` must be 4..65535, not {value}")
        if not 0 <= self.max_bypasses <= 255:
            raise ValueError(f"`max_bypasses` must be 0..255, not {self.max_bypasses}")
        if not 0 <= self.max_detectors <= 1024:
            raise ValueError(f"`max_detectors` must be 0..1024, not {self.max_detectors}")

    @classmethod
    def for_site(cls, site: Site) -> MirrorLayout:
        """The layout of ``site``: its sensors, actuators and devices in config order, and
        its envelope's constraints."""
        counters = CounterLayout.for_site(site)
        return cls(counters.sensors, counters.actuators, counters.devices, counters.constraints)

    @functools.cached_property
    def counters(self) -> CounterLayout:
        """The slots of the core's counter block (see :mod:`gateway.link.counters`)."""
        return CounterLayout(self.sensors, self.actuators, self.devices, self.constraints)

    @property
    def layout_id(self) -> int:
        """A 64-bit hash of the names and sizes: equal layouts, equal ids."""
        text = "\n".join((*self.sensors, "", *self.actuators, "",
                          f"{self.max_bypasses},{self.reason_bytes},{self.incident_id_bytes},"
                          f"{self.detector_name_bytes},{self.max_detectors}", "",
                          *self.counters.names))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")

    @property
    def offsets(self) -> dict[str, int]:
        """Byte offset of each field in the segment (see the module docstring)."""
        ns, na, nb = len(self.sensors), len(self.actuators), self.max_bypasses
        nd = self.max_detectors
        names = self.detector_name_bytes * nd + 2 * nd
        out: dict[str, int] = {"detector_names": _BODY_AT,
                               "detector_name_lengths": _BODY_AT + self.detector_name_bytes * nd,
                               "status": _BODY_AT + (names + 7) // 8 * 8}
        at = out["status"] + _STATUS_SIZE
        for name, size in (("sensor_values", 8 * ns), ("sensor_read_s", 8 * ns),
                           ("applied", 8 * na), ("proposal", 8 * na),
                           ("bypass_expiry", 8 * nb), ("detector_values", 8 * nd),
                           ("detector_limits", 8 * nd), ("counters", 8 * self.counters.size),
                           ("sensor_good", ns), ("source", na),
                           ("trip_reason", self.reason_bytes),
                           ("incident_id", self.incident_id_bytes),
                           ("bypass_names", self.detector_name_bytes * nb),
                           ("bypass_name_lengths", 2 * nb), ("end", 0)):
            out[name] = at
            at += size
        return out

    @property
    def size_bytes(self) -> int:
        """The segment's size in bytes."""
        return self.offsets["end"]

    def header(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, len(self.sensors), len(self.actuators),
                            self.max_bypasses, self.reason_bytes, self.incident_id_bytes,
                            self.detector_name_bytes, self.size_bytes, self.layout_id,
                            self.max_detectors)


@dataclass(frozen=True)
class MirrorSnapshot:
    """One consistent publish of the core, as the reader copied it.

    Times: ``sensor_read_s`` is the core's monotonic clock (``time.monotonic``, the same clock
    in every process of the host), ``wall_s`` the core's ``time.time()`` at the publish,
    ``bypasses`` each bypassed detector with its expiry as UTC seconds since the epoch.
    ``proposal`` is NaN where the AI proposed nothing. ``detectors``: each detector gauge's
    name, statistic and threshold (NaN: not known).
    """

    cycle: int
    heartbeat: int
    wall_s: float
    generation: int
    mode: str
    latched: bool
    trip_reason: str
    incident_id: str
    bypasses: tuple[tuple[str, float], ...]
    sensor_values: tuple[float, ...]
    sensor_good: tuple[bool, ...]
    sensor_read_s: tuple[float, ...]
    applied: tuple[float, ...]
    proposal: tuple[float, ...]
    source: tuple[Source, ...]
    counters: bytes = b""  # the core's counter block (gateway.link.counters.decode)
    detectors: tuple[tuple[str, float, float], ...] = ()


def _cut(text: str, limit: int) -> bytes:
    """``text`` as UTF-8 in at most ``limit`` bytes, cut at a character boundary, "…" when cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    head = data[:limit - len(_ELLIPSIS)].decode("utf-8", "ignore").encode()
    return head + _ELLIPSIS


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(directory: Path = _SHM_DIR) -> list[str]:
    """Unlink every mirror segment whose core (the pid in its name) is no longer running,
    e.g. after a core was killed with its resource tracker. Returns the names removed. Does
    nothing where POSIX shared memory has no directory (not Linux)."""
    removed: list[str] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _NAME_RE.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + entry.name)
            removed.append(entry.name)
    return removed


class MirrorWriter:
    """Creates the mirror segment (the core's side) and publishes into it.

    ``name`` None picks ``sgw-mirror-<pid>-<random>`` (see :attr:`name`); a name taken by a
    running core raises ``FileExistsError``. Segments of dead cores are removed first.
    :meth:`close` unlinks the segment; until then readers may attach by :attr:`name`.
    """

    def __init__(self, name: str | None, layout: MirrorLayout) -> None:
        remove_stale()
        if name is None:
            name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.layout = layout
        # shm_open directly, not multiprocessing's SharedMemory: that one registers the
        # segment with multiprocessing's resource tracker, a helper process that a signal to
        # the process group (a terminal's SIGHUP) can end; its successor then does not know
        # the segment and prints a traceback when it is unlinked. Stale segments are removed
        # by pid instead (remove_stale).
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, layout.size_bytes)
            self._map: mmap.mmap | None = mmap.mmap(fd, layout.size_bytes)
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        self.name: str = name
        buf = memoryview(self._map)
        self._buf: memoryview | None = buf
        off = layout.offsets
        ns, na, nb = len(layout.sensors), len(layout.actuators), layout.max_bypasses

        def f64(key: str, n: int) -> npt.NDArray[np.float64]:
            return np.ndarray((n,), np.float64, buffer=buf, offset=off[key])

        def u8(key: str, n: int) -> npt.NDArray[np.uint8]:
            return np.ndarray((n,), np.uint8, buffer=buf, offset=off[key])

        self._sensor_values = f64("sensor_values", ns)
        self._sensor_read_s = f64("sensor_read_s", ns)
        self._applied = f64("applied", na)
        self._proposal = f64("proposal", na)
        self._bypass_expiry = f64("bypass_expiry", nb)
        self._sensor_good = u8("sensor_good", ns)
        self._source = u8("source", na)
        self._counters_at = off["counters"]
        self._counters_bytes = 8 * layout.counters.size
        self._off = off
        self._seq = 0
        self._modes: dict[str, bytes] = {}
        # Strings are encoded and copied only when they change (they rarely do).
        self._reason: tuple[str, int] = ("", 0)
        self._incident: tuple[str, int] = ("", 0)
        self._bypasses: tuple[tuple[str, float], ...] = ()
        self._n_bypasses = 0
        self._detector_names: tuple[str, ...] = ()
        self._n_detectors = 0
        self._gauges = struct.Struct("<0d")  # packs the gauges' values (n doubles)
        self._limits_from: object = None  # the limits last written (the core's same tuple)
        self._status_at = off["status"]
        buf[:_HEADER.size] = layout.header()
        self._names_crc = zlib.crc32(buf[_BODY_AT:self._status_at])  # all zeros so far
        self.publishes = 0

    def publish(self, *, cycle: int, heartbeat: int, wall_s: float, mode: str, latched: bool,
                sensor_values: Sequence[float] | npt.NDArray[np.float64],
                sensor_good: Sequence[bool] | npt.NDArray[np.bool_],
                sensor_read_s: Sequence[float] | npt.NDArray[np.float64],
                applied: Sequence[float] | npt.NDArray[np.float64],
                proposal: Sequence[float] | npt.NDArray[np.float64] | None,
                source: Sequence[int] | npt.NDArray[np.uint8],
                trip_reason: str = "", incident_id: str = "",
                bypasses: Sequence[tuple[str, float]] = (), generation: int = 0,
                counters: bytes = b"", detector_names: tuple[str, ...] = (),
                detector_values: Sequence[float] = (),
                detector_limits: Sequence[float] = ()) -> None:
        """Publish one cycle's values and status (arrays in the layout's tag order).

        ``cycle`` must move for readers to take the publish as new (the comms pump only
        updates on a new cycle). ``proposal`` None: no proposal (NaN for every actuator).
        ``bypasses``: (detector, expiry as UTC epoch seconds); beyond ``max_bypasses`` the
        earliest expiring are kept. ``counters``: the core's counter block
        (:meth:`~gateway.link.counters.CoreCounters.snapshot`), b"" to leave it as it was
        (zero before the first). ``mode`` a :class:`~gateway.supervisor.modes.Mode`
        value (at most 16 ASCII bytes). ``detector_names`` with their ``detector_values`` and
        ``detector_limits`` (same lengths): the detector gauges; beyond ``max_detectors`` the
        first are kept; the names are copied only when another tuple is passed, and the limits
        only when another object is passed (pass tuples: a list changed in place is not
        seen). Raises ``ValueError`` for arrays, gauges or counters of the wrong length
        (numpy's broadcast error; the publish is then left unfinished, which readers see as
        one being written, until the next publish), ``RuntimeError`` after :meth:`close`.
        """
        buf = self._buf
        if buf is None:
            raise RuntimeError("mirror closed")
        mode_b = self._modes.get(mode)
        if mode_b is None:
            mode_b = mode.encode("ascii")
            if len(mode_b) > 16:
                raise ValueError(f"mode code {mode!r} longer than 16 bytes")
            self._modes[mode] = mode_b
        seq = self._seq + 1
        _SEQ.pack_into(buf, _SEQ_AT, seq)  # odd: being written
        off = self._off
        lay = self.layout
        self._sensor_values[:] = sensor_values
        self._sensor_good[:] = sensor_good
        self._sensor_read_s[:] = sensor_read_s
        self._applied[:] = applied
        self._proposal[:] = math.nan if proposal is None else proposal
        self._source[:] = source
        if counters:
            if len(counters) != self._counters_bytes:
                raise ValueError(f"counters: {len(counters)} bytes, the layout has "
                                 f"{self._counters_bytes}")
            at = self._counters_at
            buf[at:at + len(counters)] = counters
        if trip_reason != self._reason[0]:
            data = _cut(trip_reason, lay.reason_bytes)
            at = off["trip_reason"]
            buf[at:at + len(data)] = data
            self._reason = (trip_reason, len(data))
        if incident_id != self._incident[0]:
            data = _cut(incident_id, lay.incident_id_bytes)
            at = off["incident_id"]
            buf[at:at + len(data)] = data
            self._incident = (incident_id, len(data))
        if tuple(bypasses) != self._bypasses:
            self._write_bypasses(tuple(bypasses))
        if detector_names is not self._detector_names:  # the same tuple every cycle: skip
            self._write_detector_names(detector_names)
        n = self._n_detectors
        if n:
            if len(detector_values) < n or len(detector_limits) < n:
                raise ValueError(f"detector gauges: {len(detector_names)} names, "
                                 f"{len(detector_values)} values, {len(detector_limits)} limits")
            gauges = self._gauges
            gauges.pack_into(buf, off["detector_values"], *detector_values[:n])
            if detector_limits is not self._limits_from:  # the same tuple every cycle: skip
                gauges.pack_into(buf, off["detector_limits"], *detector_limits[:n])
                self._limits_from = detector_limits
        status_at = self._status_at
        _STATUS.pack_into(buf, status_at, cycle, heartbeat % 2**64, wall_s,
                          generation % 2**32, mode_b, bool(latched), self._n_bypasses,
                          self._reason[1], self._incident[1], n)
        # The CRC of the names (kept since they last changed), continued over the rest.
        _CRC.pack_into(buf, _CRC_AT, zlib.crc32(buf[status_at:lay.size_bytes],
                                                self._names_crc))
        self._seq = seq + 1
        _SEQ.pack_into(buf, _SEQ_AT, self._seq)  # even: consistent
        self.publishes += 1

    def _write_bypasses(self, bypasses: tuple[tuple[str, float], ...]) -> None:
        lay, buf, off = self.layout, self._buf, self._off
        assert buf is not None
        kept = sorted(bypasses, key=lambda b: b[1])[:lay.max_bypasses]
        width = lay.detector_name_bytes
        for i, (detector, expiry_s) in enumerate(kept):
            data = _cut(detector, width)
            at = off["bypass_names"] + i * width
            buf[at:at + len(data)] = data
            struct.pack_into("<H", buf, off["bypass_name_lengths"] + 2 * i, len(data))
            self._bypass_expiry[i] = expiry_s
        self._bypasses = bypasses
        self._n_bypasses = len(kept)

    def _write_detector_names(self, names: tuple[str, ...]) -> None:
        lay, buf, off = self.layout, self._buf, self._off
        assert buf is not None
        kept = names[:lay.max_detectors]
        width = lay.detector_name_bytes
        for i, name in enumerate(kept):
            data = _cut(name, width)
            at = off["detector_names"] + i * width
            buf[at:at + len(data)] = data
            struct.pack_into("<H", buf, off["detector_name_lengths"] + 2 * i, len(data))
        self._detector_names = names
        self._n_detectors = len(kept)
        self._gauges = struct.Struct(f"<{len(kept)}d")
        self._limits_from = None  # written again with the next publish
        self._names_crc = zlib.crc32(buf[_BODY_AT:self._status_at])

    def close(self) -> None:
        """Unlink the segment and release it (readers attached keep their mapping until they
        close it; no new reader can attach). Idempotent."""
        if self._buf is None:
            return
        # numpy views export the buffer: the mapping cannot close while they live.
        del self._sensor_values, self._sensor_read_s, self._applied, self._proposal
        del self._bypass_expiry, self._sensor_good, self._source
        buf, self._buf = self._buf, None
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + self.name)
        buf.release()
        if self._map is not None:
            self._map.close()
            self._map = None


class MirrorReader:
    """Attaches to the mirror named ``name`` (the communications side), read-only.

    Raises ``FileNotFoundError`` if there is no such segment and :class:`MirrorMismatch` if
    it does not hold ``layout``. Never unlinks the segment (see the module docstring).
    """

    def __init__(self, name: str, layout: MirrorLayout, *, retries: int = 100) -> None:
        if retries < 1:
            raise ValueError(f"`retries` must be >= 1, not {retries}")
        self.name = name
        self.layout = layout
        self.retries = retries
        self.torn = 0  # reads that found a publish in progress or a bad checksum
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0)
        try:
            size = os.fstat(fd).st_size
            if size < _BODY_AT:
                raise MirrorMismatch(f"mirror {name}: {size} bytes, not a mirror")
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._view: memoryview | None = memoryview(self._map)
        head = bytes(self._view[:_HEADER.size])
        if head != layout.header():
            self.close()
            raise MirrorMismatch(_explain(name, head, layout, size))
        off = layout.offsets
        ns, na, nb = len(layout.sensors), len(layout.actuators), layout.max_bypasses
        nd = layout.max_detectors
        base = _CRC_AT
        self._floats = struct.Struct(f"<{2 * ns + 2 * na + nb + 2 * nd}d")
        self._floats_at = off["sensor_values"] - base
        self._small = struct.Struct(f"<{ns + na}B")
        self._small_at = off["sensor_good"] - base
        self._lengths = struct.Struct(f"<{nb}H")
        self._detector_lengths = struct.Struct(f"<{nd}H")
        # The gauges' names as last decoded, with the bytes they came from (they rarely
        # change: decoded again only when those bytes do).
        self._names_raw = b""
        self._names: tuple[str, ...] = ()
        self._off = {k: v - base for k, v in off.items()}
        self._ns, self._na = ns, na

    def read(self) -> MirrorSnapshot | None:
        """The latest consistent publish, or None: nothing published yet, or no consistent
        copy within ``retries`` tries (the writer kept writing; try again next period).
        Raises ``RuntimeError`` after :meth:`close`."""
        view = self._view
        if view is None:
            raise RuntimeError("mirror reader closed")
        end = self.layout.size_bytes
        for _ in range(self.retries):
            (seq1,) = _SEQ.unpack_from(view, _SEQ_AT)
            if seq1 == 0:
                return None
            if seq1 & 1:
                self.torn += 1
                continue
            raw = bytes(view[_CRC_AT:end])
            (seq2,) = _SEQ.unpack_from(view, _SEQ_AT)
            if seq2 != seq1 or _CRC.unpack_from(raw, 0)[0] != zlib.crc32(
                    memoryview(raw)[_BODY_AT - _CRC_AT:]):
                self.torn += 1
                continue
            return self._parse(raw)
        return None

    def _parse(self, raw: bytes) -> MirrorSnapshot:
        off, ns, na = self._off, self._ns, self._na
        (cycle, heartbeat, wall_s, generation, mode_b, latched, n_bypass, n_reason,
         n_incident, n_detectors) = _STATUS.unpack_from(raw, off["status"])
        floats = self._floats.unpack_from(raw, self._floats_at)
        small = self._small.unpack_from(raw, self._small_at)
        nb = self.layout.max_bypasses
        expiry = floats[2 * ns + 2 * na:2 * ns + 2 * na + nb]
        nd = self.layout.max_detectors
        at_v = 2 * ns + 2 * na + nb
        n_det = min(n_detectors, nd)
        gauges = tuple(zip(self._detector_names(raw, n_det), floats[at_v:at_v + n_det],
                           floats[at_v + nd:at_v + nd + n_det], strict=True))
        width = self.layout.detector_name_bytes
        lengths = self._lengths.unpack_from(raw, off["bypass_name_lengths"])
        names = off["bypass_names"]
        bypasses = tuple(
            (raw[names + i * width:names + i * width + lengths[i]].decode("utf-8", "replace"),
             expiry[i]) for i in range(min(n_bypass, nb)))
        at_r, at_i, at_c = off["trip_reason"], off["incident_id"], off["counters"]
        return MirrorSnapshot(
            cycle=cycle, heartbeat=heartbeat, wall_s=wall_s, generation=generation,
            mode=mode_b.rstrip(b"\0").decode("ascii", "replace"), latched=bool(latched),
            trip_reason=raw[at_r:at_r + n_reason].decode("utf-8", "replace"),
            incident_id=raw[at_i:at_i + n_incident].decode("utf-8", "replace"),
            bypasses=bypasses,
            sensor_values=floats[:ns], sensor_read_s=floats[ns:2 * ns],
            applied=floats[2 * ns:2 * ns + na], proposal=floats[2 * ns + na:2 * ns + 2 * na],
            sensor_good=tuple(bool(g) for g in small[:ns]),
            source=tuple(Source(s) if s in _SOURCES else Source.NONE for s in small[ns:]),
            counters=raw[at_c:at_c + 8 * self.layout.counters.size], detectors=gauges)

    def _detector_names(self, raw: bytes, n: int) -> tuple[str, ...]:
        off, width = self._off, self.layout.detector_name_bytes
        at = off["detector_names"]
        key = raw[at:off["detector_name_lengths"] + 2 * self.layout.max_detectors]
        if key != self._names_raw or len(self._names) != n:
            lengths = self._detector_lengths.unpack_from(raw, off["detector_name_lengths"])
            self._names = tuple(
                raw[at + i * width:at + i * width + min(lengths[i], width)].decode(
                    "utf-8", "replace") for i in range(n))
            self._names_raw = key
        return self._names

    def close(self) -> None:
        """Unmap the segment (never unlinks it). Idempotent."""
        view, self._view = self._view, None
        if view is not None:
            view.release()
            self._map.close()


_SOURCES: Final = frozenset(int(s) for s in Source)


def _explain(name: str, head: bytes, layout: MirrorLayout, size: int) -> str:
    try:
        (magic, version, ns, na, nb, _r, _i, _d, total, lid, _nd) = _HEADER.unpack(head)
    except struct.error:
        return f"mirror {name}: header unreadable"
    if magic != MAGIC:
        return f"mirror {name}: not a mirror (magic {magic!r}, expected {MAGIC!r})"
    if version != VERSION:
        return f"mirror {name}: layout version {version}, this program reads {VERSION}"
    if (ns, na) != (len(layout.sensors), len(layout.actuators)):
        return (f"mirror {name}: {ns} sensors and {na} actuators, this site has "
                f"{len(layout.sensors)} and {len(layout.actuators)}")
    if lid != layout.layout_id:
        return f"mirror {name}: written for other tag names, devices or sizes than this site's"
    return (f"mirror {name}: size {total} (segment {size} bytes), expected "
            f"{layout.size_bytes}; max bypasses {nb}")
