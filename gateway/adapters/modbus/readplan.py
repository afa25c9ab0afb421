"""Group a device's Modbus tags into as few read requests as is safe.

Pure. Rules:

- one block per table and run of *contiguous* addresses: a gap is never read, because many PLCs
  answer a read touching an unmapped register with exception 2 (illegal data address), which
  would make the whole block's tags bad;
- tags that overlap (two views of the same registers) count as contiguous;
- a multi-register value is never split across blocks;
- a block holds at most ``max_registers`` registers (Modbus application protocol v1.1b3, 6.3/6.4:
  FC3/FC4 read 1..125) or ``max_bits`` bits (6.1/6.2: FC1/FC2 read 1..2000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.schema import ModbusRef, Table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config.schema import Tag

__all__ = ["MAX_READ_BITS", "MAX_READ_REGISTERS", "ReadBlock", "plan_reads"]

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000

# A stable table order so plans (and so request order on the wire) are reproducible.
_TABLE_ORDER = (Table.HOLDING_REGISTER, Table.INPUT_REGISTER, Table.COIL, Table.DISCRETE_INPUT)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers or bits of ``table`` from ``start``; ``members`` are
    the tags it carries as (tag name, offset of the tag's first register/bit in the block)."""

    table: Table
    start: int
    count: int
    members: tuple[tuple[str, int], ...]


def _width(tag: Tag) -> int:
    assert isinstance(tag.ref, ModbusRef)
    return 1 if tag.ref.table.is_bits else tag.wire_type.registers


def plan_reads(tags: Sequence[Tag], max_registers: int = MAX_READ_REGISTERS,
               max_bits: int = MAX_READ_BITS) -> list[ReadBlock]:
    """The read blocks covering every tag in ``tags``, ordered by table (holding, input, coil,
    discrete input) then address.

    Raises ValueError for a tag that is not a Modbus tag, a value running past address 65535, a
    value wider than the limit, or limits outside 1..125 / 1..2000.
    """
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_READ_REGISTERS}, not {max_registers}")
    if not 1 <= max_bits <= MAX_READ_BITS:
        raise ValueError(f"max_bits must be 1..{MAX_READ_BITS}, not {max_bits}")
    by_table: dict[Table, list[tuple[int, int, str]]] = {}
    for tag in tags:
        if not isinstance(tag.ref, ModbusRef):
            raise ValueError(f"{tag.name}: not a Modbus tag")
        width = _width(tag)
        limit = max_bits if tag.ref.table.is_bits else max_registers
        if width > limit:
            raise ValueError(f"{tag.name}: {width} registers exceed the read limit {limit}")
        if tag.ref.address + width - 1 > 0xFFFF:
            raise ValueError(f"{tag.name}: {tag.wire_type.value} at address {tag.ref.address} "
                             f"runs past address 65535")
        by_table.setdefault(tag.ref.table, []).append((tag.ref.address, width, tag.name))

    blocks: list[ReadBlock] = []
    for table in _TABLE_ORDER:
        entries = sorted(by_table.get(table, ()))
        limit = max_bits if table.is_bits else max_registers
        start = end = -1  # current block covers [start, end)
        members: list[tuple[str, int]] = []
        for address, width, name in entries:
            stop = address + width
            joins = members and address <= end and max(end, stop) - start <= limit
            if not joins:
                if members:
                    blocks.append(ReadBlock(table, start, end - start, tuple(members)))
                start, end, members = address, stop, []
            end = max(end, stop)
            members.append((name, address - start))
        if members:
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks
