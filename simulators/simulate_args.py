"""The ``simulate`` command's arguments, kept apart from the server it runs: building the
command line (``safety-gateway --help``) must not import asyncua and pymodbus."""

from __future__ import annotations

import argparse
import math
from typing import Any

#: Plants the ``simulate`` command knows, as ``module:class`` (imported only when chosen). A plant
#: class is constructed as ``cls(seed=N)``.
PLANTS: dict[str, str] = {
    "water_tank": "simulators.plants.water_tank:WaterTank",
    "boiler": "simulators.plants.boiler:Boiler",
}


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0: any free port): {port}")
    return port


def speed_arg(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(speed) and speed > 0):
        raise argparse.ArgumentTypeError(f"speed must be finite and > 0: {text}")
    return speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plant", choices=sorted(PLANTS), help="which plant to simulate")
    parser.add_argument("--modbus-port", type=port_arg, default=None,
                        help="Modbus TCP port on 127.0.0.1 (default: water_tank 5020, "
                             "boiler 5021; 0: any free port)")
    parser.add_argument("--opcua-port", type=port_arg, default=None,
                        help="OPC UA port on 127.0.0.1 (default 4840; 0: any free port)")
    parser.add_argument("--no-modbus", action="store_true", help="do not serve Modbus TCP")
    parser.add_argument("--no-opcua", action="store_true", help="do not serve OPC UA")
    parser.add_argument("--speed", type=speed_arg, default=1.0,
                        help="plant seconds per wall-clock second (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="plant noise seed (default 0)")


def _simulate(args: argparse.Namespace) -> int:
    from simulators.plant_server import cmd_simulate

    return cmd_simulate(args)


def add_parser(sub: Any) -> None:
    """Register ``simulate`` on an argparse subparsers object (``parser.add_subparsers()``),
    with ``func`` set to a callable taking the parsed Namespace and returning the exit code."""
    parser = sub.add_parser(
        "simulate", help="serve a simulated plant over Modbus TCP and OPC UA "
                         "(SIGINT/SIGTERM stop it cleanly)")
    add_arguments(parser)
    parser.set_defaults(func=_simulate)
