"""A Modbus PLC stand-in, in a process of its own, that records when each heartbeat arrives.

``python -m simulators.heartbeat_plc --port N --address 100 --out PATH`` serves a
:class:`simulators.plc_modbus.TestPLC` on 127.0.0.1:N until SIGINT or SIGTERM, then writes
``PATH`` (JSON): ``{"at_s": [...], "values": [...]}``, one entry per write that reached holding
register ``--address`` (the gateway's heartbeat), in arrival order. ``at_s`` is this process's
``time.monotonic()`` when the request came off the wire; on Linux that clock is system-wide
(CLOCK_MONOTONIC), so it compares with the gateway's own cycle timeline and with the caller's.

The PLC runs apart from whoever loads the gateway so that a load generator's own stalls are
never mistaken for the gateway's: the gap between two arrivals here is what a PLC watchdog
would see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC


def heartbeats(plc: TestPLC, address: int) -> dict[str, list[float] | list[int]]:
    """The heartbeat writes in ``plc``'s record: single-register writes to holding register
    ``address`` (FC6, or FC16 of one register starting there)."""
    at: list[float] = []
    values: list[int] = []
    for w in plc.writes:
        if w.table is Table.HOLDING_REGISTER and w.address == address and w.values:
            at.append(w.at_s)
            values.append(w.values[0])
    return {"at_s": at, "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.heartbeat_plc")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", type=int, default=100,
                        help="holding register the heartbeat is written to (default 100)")
    parser.add_argument("--out", type=Path, required=True,
                        help="where to write the heartbeat arrivals (JSON) when stopped")
    args = parser.parse_args(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with TestPLC(holding=128, input_registers=128, port=args.port) as plc:
            await stop.wait()
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(heartbeats(plc, args.address)))
        os.replace(tmp, args.out)  # whole or absent: a reader never sees half a file

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
