"""Engineering values ⇄ wire values: scaling, rounding, range checks and Modbus register layout.

Pure: no protocol library is imported here (pymodbus is only used by the tests, as a cross-check).

The model, per tag: ``engineering = raw * scale + offset``, ``raw`` being what the device holds in
its ``wire_type``:

- integer types (int16, uint16, int32, uint32): ``raw = round((value - offset) / scale)``, ties
  to even (IEEE 754's default, Python's :func:`round`: raw 2.5 → 2, 3.5 → 4). A raw outside the
  type's range is an :class:`EncodingError`; nothing is ever clipped silently.
- bool: the only values are ``offset`` (raw 0) and ``offset + scale`` (raw 1), compared exactly;
  anything else is an :class:`EncodingError` (with the defaults: exactly 0 or 1).
- float32: ``(value - offset) / scale`` rounded to the nearest float32 (ties to even); a finite
  value whose raw rounds past the float32 range is an :class:`EncodingError`.
- float64: ``(value - offset) / scale``.

NaN and ±inf are never encodable. A raw of -0.0 is written as +0.0 (the sign of zero carries no
engineering meaning, and one representation keeps :func:`wire_value` a fixed point).

Register layout (Modbus application protocol v1.1b3, 4.2: data is big-endian): the raw's
big-endian bytes are cut into 16-bit words, most significant first. ``byte_order=little`` swaps
the two bytes inside every word; ``word_order=little`` reverses the order of the words. big/big
is "ABCD", word little "CDAB", byte little "BADC", both little "DCBA".
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from gateway.adapters.base import EncodingError
from gateway.config.schema import ModbusRef, Order, WireType

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from gateway.config.schema import Tag

__all__ = ["decode", "decode_bit", "encode", "encode_bit", "neighbours", "wire_value"]

_SIGNED = (WireType.INT16, WireType.INT32)
_FLOATS = (WireType.FLOAT32, WireType.FLOAT64)
# How many ulps around decode(raw) wire_value() searches for a float that encodes back to raw
# (float arithmetic in scale/offset can land one or two ulps off).
_SEARCH_ULPS = 4


# --------------------------------------------------------------------------- raw values


def _check_finite(tag: Tag, value: float) -> None:
    if not math.isfinite(value):
        raise EncodingError(f"{tag.name}: {value} is not a finite number")


def _to_float32(tag: Tag, x: float) -> float:
    try:
        packed = struct.pack(">f", x)
    except OverflowError:
        raise EncodingError(
            f"{tag.name}: raw {x:g} overflows float32 (scale {tag.scale}, offset {tag.offset})"
        ) from None
    f: float = struct.unpack(">f", packed)[0]
    return f + 0.0  # -0.0 → +0.0


def _raw(tag: Tag, value: float) -> int | float:
    """The raw the device would hold for engineering ``value``; raises EncodingError."""
    _check_finite(tag, value)
    wt = tag.wire_type
    if wt is WireType.BOOL:
        if value == tag.offset:
            return 0
        if value == tag.offset + tag.scale:
            return 1
        raise EncodingError(
            f"{tag.name}: {value} is not a bool value (allowed: {tag.offset + 0.0} and "
            f"{tag.offset + tag.scale})"
        )
    x = (value - tag.offset) / tag.scale
    if not math.isfinite(x):
        raise EncodingError(
            f"{tag.name}: {value} overflows with scale {tag.scale} and offset {tag.offset}"
        )
    if wt.is_integer:
        r = round(x)
        low, high = wt.integer_range
        if not low <= r <= high:
            raise EncodingError(
                f"{tag.name}: {value} needs raw {r}, outside {wt.value}'s range [{low}, {high}] "
                f"(scale {tag.scale}, offset {tag.offset})"
            )
        return r
    if wt is WireType.FLOAT32:
        return _to_float32(tag, x)
    return x + 0.0


def _raw_or_none(tag: Tag, value: float) -> int | float | None:
    try:
        return _raw(tag, value)
    except EncodingError:
        return None


def _eng(tag: Tag, raw: int | float) -> float:
    return float(raw * tag.scale + tag.offset)


def _raw_bytes(tag: Tag, raw: int | float) -> bytes:
    wt = tag.wire_type
    if wt is WireType.FLOAT32:
        return struct.pack(">f", raw)
    if wt is WireType.FLOAT64:
        return struct.pack(">d", raw)
    assert isinstance(raw, int)
    return raw.to_bytes(2 * wt.registers, "big", signed=wt in _SIGNED)


def _same_raw(tag: Tag, a: int | float, b: int | float) -> bool:
    return _raw_bytes(tag, a) == _raw_bytes(tag, b)


def _nearby(w: float) -> Iterator[float]:
    """``w``, then the floats around it, nearest first, below before above (lazily: ``w``
    itself nearly always is the answer)."""
    yield w
    down = up = w
    for _ in range(_SEARCH_ULPS):
        down = math.nextafter(down, -math.inf)
        yield down
        up = math.nextafter(up, math.inf)
        yield up


def _wire_of_raw(tag: Tag, raw: int | float) -> float:
    """The engineering value that stands for ``raw``: a float ``w`` with ``_raw(w) == raw``.

    For integer raws, ``raw * scale + offset`` rounded to 15 significant digits when that still
    encodes to ``raw`` (decimal scales give decimal values). Otherwise ``raw * scale + offset``,
    which is rounded once or twice, so that the division in :func:`_raw` may not undo it
    exactly: the few floats around it are searched. None found (an offset so large
    against the scale that neighbouring raws collapse to one float) is an EncodingError.
    """
    if isinstance(raw, int):
        low, high = tag.wire_type.integer_range
        if not low <= raw <= high:
            raise EncodingError(f"{tag.name}: raw {raw} is outside {tag.wire_type.value}'s range")
    w = _eng(tag, raw)
    if not math.isfinite(w):
        raise EncodingError(f"{tag.name}: raw {raw!r} has no finite engineering value")
    if isinstance(raw, int):
        # Integer raws stand for decimal-looking values (raw 3 * scale 0.1 is "0.3"): prefer
        # the float with 15 significant digits when it encodes back to the same raw, so that
        # 0.3 is representable as itself rather than as 0.30000000000000004. Still a function
        # of raw alone, so the fixed point holds.
        short = float(format(w, ".15g"))
        if short != w and _raw_or_none(tag, short) == raw:
            return short
    for c in _nearby(w):
        try:
            if _same_raw(tag, _raw(tag, c), raw):
                return c
        except EncodingError:
            continue
    raise EncodingError(
        f"{tag.name}: raw {raw!r} cannot be told apart from its neighbours in engineering units "
        f"(scale {tag.scale}, offset {tag.offset} lose precision)"
    )


# --------------------------------------------------------------------------- registers


def _words(tag: Tag, data: bytes) -> tuple[int, ...]:
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if tag.byte_order is Order.LITTLE:
        words = [w[::-1] for w in words]
    if tag.word_order is Order.LITTLE:
        words.reverse()
    return tuple(int.from_bytes(w, "big") for w in words)


def _register_tag(tag: Tag) -> None:
    if not isinstance(tag.ref, ModbusRef) or tag.ref.table.is_bits:
        raise EncodingError(f"{tag.name}: not in a Modbus register table")


def _bit_tag(tag: Tag) -> None:
    if not isinstance(tag.ref, ModbusRef) or not tag.ref.table.is_bits:
        raise EncodingError(f"{tag.name}: not in a Modbus coil or discrete input table")


def encode(tag: Tag, value: float) -> tuple[int, ...]:
    """The 16-bit register values (0..65535, ``tag.wire_type.registers`` of them, in wire order)
    that make the device hold engineering ``value``.

    Raises EncodingError: NaN/inf, an integer raw out of range, a float32 overflow, a bool value
    other than ``offset``/``offset + scale``, or a tag outside the Modbus register tables.
    """
    _register_tag(tag)
    return _words(tag, _raw_bytes(tag, _raw(tag, value)))


def decode(tag: Tag, registers: Sequence[int]) -> float:
    """The engineering value held in ``registers`` (wire order, as read).

    A float register pair holding NaN or ±inf decodes to NaN or ±inf (the supervisor treats it
    as an anomaly). Raises EncodingError on the wrong number of registers, a register outside
    0..65535, or a bool register other than 0 or 1.
    """
    _register_tag(tag)
    wt = tag.wire_type
    if len(registers) != wt.registers:
        raise EncodingError(
            f"{tag.name}: {wt.value} takes {wt.registers} registers, got {len(registers)}")
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise EncodingError(f"{tag.name}: register values must be 0..65535, got {registers}")
    words = [r.to_bytes(2, "big") for r in registers]
    if tag.word_order is Order.LITTLE:
        words.reverse()
    if tag.byte_order is Order.LITTLE:
        words = [w[::-1] for w in words]
    data = b"".join(words)
    raw: int | float
    if wt is WireType.FLOAT32:
        raw = struct.unpack(">f", data)[0]
    elif wt is WireType.FLOAT64:
        raw = struct.unpack(">d", data)[0]
    else:
        raw = int.from_bytes(data, "big", signed=wt in _SIGNED)
        if wt is WireType.BOOL and raw not in (0, 1):
            raise EncodingError(f"{tag.name}: bool register holds {raw}, not 0 or 1")
    return _eng(tag, raw)


def encode_bit(tag: Tag, value: float) -> bool:
    """The coil state that makes the device hold ``value``: ``offset`` → False,
    ``offset + scale`` → True (with the defaults, exactly 0 and 1). Anything else, NaN
    included, raises EncodingError, as does a tag outside the coil/discrete input tables."""
    _bit_tag(tag)
    return _raw(tag, value) == 1


def decode_bit(tag: Tag, bit: bool) -> float:
    """The engineering value of a coil or discrete input: ``offset`` or ``offset + scale``."""
    _bit_tag(tag)
    return _eng(tag, 1 if bit else 0)


# --------------------------------------------------------------------------- representability


def wire_value(tag: Tag, value: float) -> float:
    """The engineering value the device will hold after ``value`` is written: what the envelope
    must be checked against. Works for any tag (OPC UA tags follow the same rules by
    ``wire_type``, without registers).

    A fixed point: ``encode(wire_value(v)) == encode(v)`` and ``wire_value(wire_value(v)) ==
    wire_value(v)``. Raises EncodingError where :func:`encode` would, and when the tag's
    scale/offset cannot represent the raw distinctly (see :func:`_wire_of_raw`).
    """
    raw = _raw(tag, value)
    if tag.scale == 1.0 and tag.offset == 0.0 and tag.wire_type in _FLOATS:
        # Unscaled floats (most float setpoints): the raw is its own engineering value (it
        # is a float of its type, never -0.0), so the search in _wire_of_raw would return it
        # at its first candidate. This path runs for every write-through.
        return float(raw)
    return _wire_of_raw(tag, raw)


def _float32_step(x: float, up: bool) -> float:
    """The float32 next to float32 ``x`` (inf past the largest finite one)."""
    if x == 0.0:
        tiny: float = struct.unpack(">f", struct.pack(">I", 1))[0]
        return tiny if up else -tiny
    bits: int = struct.unpack(">I", struct.pack(">f", x))[0]
    bits += 1 if (x > 0) == up else -1
    f: float = struct.unpack(">f", struct.pack(">I", bits))[0]
    return f


def neighbours(tag: Tag, value: float) -> tuple[float, ...]:
    """The representable engineering values next to ``value``: the largest one <= ``value``
    and the smallest one >= ``value``, ascending (one value when ``value`` is representable).

    The candidates are the raws next to ``value``'s own raw: floor/ceil for integer types (one
    raw step), float32 next-after for float32, float64 next-after for float64, both states for
    bool. Each returned ``w`` satisfies ``wire_value(w) == w``; a side with no representable value
    (past the end of the type's range) is left out. The caller still checks the result against
    its limits. Raises EncodingError when ``value`` itself is not encodable.
    """
    raw = _raw(tag, value)
    wt = tag.wire_type
    candidates: list[int | float]
    if wt is WireType.BOOL:
        candidates = [0, 1]
    elif wt.is_integer:
        assert isinstance(raw, int)
        candidates = [raw - 1, raw, raw + 1]
    else:
        candidates = [raw]
        down = up = float(raw)
        for _ in range(2):
            if wt is WireType.FLOAT32:
                down, up = _float32_step(down, False), _float32_step(up, True)
            else:
                down, up = math.nextafter(down, -math.inf), math.nextafter(up, math.inf)
            candidates += (down, up)
    values: list[float] = []
    for c in candidates:
        try:
            values.append(_wire_of_raw(tag, c))
        except EncodingError:
            continue
    below = [w for w in values if w <= value]
    above = [w for w in values if w >= value]
    picked = {max(below)} if below else set()
    if above:
        picked.add(min(above))
    return tuple(sorted(picked))
