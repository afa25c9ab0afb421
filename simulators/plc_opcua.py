"""A small OPC UA "PLC" for tests and benchmarks: an asyncua server on 127.0.0.1 that holds
variables at given string node ids and records every value clients write to it.

Usage (inside a running event loop)::

    plc = OpcUaPlc([PlcVariable("Boiler.Pressure", ua.VariantType.Double, 1.0),
                    PlcVariable("Boiler.Stage", ua.VariantType.Int32, 0)])
    await plc.start()                    # listens on plc.endpoint (a free port)
    ...                                  # clients read/subscribe/write ns=2;s=Boiler.*
    plc.writes                           # every client write, in arrival order
    await plc.set("Boiler.Pressure", 2.5)   # change a value from the PLC's side
    await plc.stop(); await plc.start()  # restart on the same port, values kept

Exactly one namespace is registered, so its index is 2 (0 is OPC UA's, 1 the server's own),
matching site files that say ``ns=2;s=...``. Writes are recorded by wrapping the server's
attribute write service (asyncua 2.1 internal API, see shared/NOTES-libraries.md), i.e. from the
server's own side: what the PLC received, with the variant type it arrived in, and the status
it answered. A write the PLC answers Bad is recorded too (with that status) but does not change
the value. ``reject`` makes the PLC refuse writes to a node with a chosen status.

Options: ``path`` (the endpoint's path, ``/plc/`` by default), ``server_name``, ``clock`` (stamps
``PlcWrite.at_s``), ``on_write`` (called with each ``PlcWrite`` as it is recorded, in arrival
order), and ``PlcVariable.writable=False`` for variables clients may only read (their writes are
answered BadUserAccessDenied by asyncua and recorded with that status).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds

from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

NAMESPACE_URI = "urn:safety-gateway:test-plc"


def _nid(name: str) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns=2;s={name}")


@dataclass(frozen=True)
class PlcVariable:
    """A variable at ``ns=2;s=<name>`` of OPC UA type ``vtype`` with an initial value;
    ``writable=False``: clients may only read it."""

    name: str
    vtype: ua.VariantType
    initial: Any = 0
    writable: bool = True

    @property
    def nodeid(self) -> str:
        return f"ns=2;s={self.name}"


@dataclass(frozen=True)
class PlcWrite:
    """One value a client wrote: the node's name, the value and the variant type it arrived in,
    the status the PLC answered (``"Good"`` when stored) and the PLC's ``clock()`` then."""

    name: str
    value: Any
    vtype: ua.VariantType
    status: str
    at_s: float = 0.0


@dataclass
class OpcUaPlc:
    variables: Sequence[PlcVariable]
    port: int = field(default_factory=free_port)
    writes: list[PlcWrite] = field(default_factory=list)
    reject: dict[str, int] = field(default_factory=dict)
    """Node name -> status code the PLC answers to writes to it (instead of storing them)."""
    path: str = "/plc/"
    server_name: str = "safety-gateway test PLC"
    clock: Callable[[], float] = time.monotonic
    on_write: Callable[[PlcWrite], None] | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")
        # The server whose address space holds the values: set from the moment the address
        # space is built until a stop has taken its snapshot, so that ``set``/``get`` never
        # race a start or a stop. ``_listening``: whether clients can reach it.
        self._server: Any = None
        self._listening = False
        self._values: dict[str, Any] = {v.name: v.initial for v in self.variables}
        self._types = {v.name: v.vtype for v in self.variables}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._listening

    async def start(self) -> None:
        """Listen on :attr:`endpoint`. Values survive a stop/start (a PLC keeps its memory).
        Raises OSError if the port cannot be bound (nothing is left running)."""
        if self._server is not None:
            raise RuntimeError("already running")
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.server_name)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE_URI)
        if idx != 2:
            raise RuntimeError(f"namespace index is {idx}, expected 2")
        folder = await server.nodes.objects.add_folder(_nid("PLC"), "PLC")
        for var in self.variables:
            node = await folder.add_variable(
                _nid(var.name), var.name,
                ua.Variant(self._values[var.name], var.vtype))
            if var.writable:
                await node.set_writable()
        service = server.iserver.attribute_service
        original = service.write

        async def recording_write(params: ua.WriteParameters, user: Any = None) -> Any:
            results: list[ua.StatusCode] = []
            for wv in params.NodesToWrite:
                name = wv.NodeId.Identifier if wv.NodeId.NamespaceIndex == idx else None
                variant = wv.Value.Value if wv.Value is not None else None
                if name in self.reject and wv.AttributeId == AttributeIds.Value:
                    status = ua.StatusCode(ua.UInt32(self.reject[name]))
                else:
                    one = ua.WriteParameters(NodesToWrite=[wv])
                    status = (await original(one) if user is None
                              else await original(one, user=user))[0]
                if (name in self._types and variant is not None
                        and wv.AttributeId == AttributeIds.Value):
                    record = PlcWrite(name, variant.Value, variant.VariantType, status.name,
                                      self.clock())
                    self.writes.append(record)
                    if self.on_write is not None:
                        self.on_write(record)
                results.append(status)
            return results

        service.write = recording_write  # type: ignore[method-assign]  # asyncua 2.1 internal
        self._server = server
        self._idx = idx
        try:
            await server.start()
        except BaseException:
            self._server = None
            raise
        self._listening = True

    async def stop(self) -> None:
        """Stop listening (clients see the connection drop). Idempotent."""
        server = self._server
        if server is None or not self._listening:
            return
        self._listening = False
        await server.stop()
        # Snapshot after the stop, so writes that arrived while stopping are kept; reading
        # the in-process address space does not suspend, so nothing lands in between.
        for var in self.variables:
            self._values[var.name] = (
                await server.get_node(_nid(var.name)).read_value())
        self._server = None

    async def set(self, name: str, value: Any, status: int = 0) -> None:
        """Change a variable from the PLC's side (not recorded as a client write). A Bad
        ``status`` makes readers see that status (and a null value, as OPC UA prescribes)."""
        self._values[name] = value
        if self._server is not None:
            dv = ua.DataValue(ua.Variant(value, self._types[name]),
                              StatusCode=ua.StatusCode(ua.UInt32(status)))
            await self._server.write_attribute_value(_nid(name), dv)

    async def get(self, name: str) -> Any:
        """The variable's current value (as the PLC holds it)."""
        if self._server is None:
            return self._values[name]
        return await self._server.get_node(_nid(name)).read_value()

    def written(self, name: str) -> list[PlcWrite]:
        """The writes clients made to ``name``."""
        return [w for w in self.writes if w.name == name]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulators.plc_opcua --port N NAME...``: serve Double variables at
    ``ns=2;s=NAME`` until SIGINT/SIGTERM (benchmarks run the PLC in its own process)."""
    import argparse
    import asyncio
    import signal

    parser = argparse.ArgumentParser(prog="python -m simulators.plc_opcua")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("names", nargs="+", help="variable names (Double, initially 0)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        plc = OpcUaPlc([PlcVariable(n, ua.VariantType.Double, 0.0) for n in args.names],
                       port=args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await plc.start()
        await stop.wait()
        await plc.stop()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
