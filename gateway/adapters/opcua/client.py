"""Southbound OPC UA client: keeps one device's tags current in the :class:`TagStore` and writes
actuator values to it, each in the node's own data type.

Lifecycle: :meth:`OpcUaDeviceClient.run` is one long-lived task. It connects (security and user
from the device config), reads every tag node's DataType once, then keeps the store current by
subscription or by polling, and watches the connection with a cheap read of the server's
ServerState. On any fault it marks the device's tags bad, backs off exponentially and reconnects
with a fresh client and a fresh subscription. It never raises, except ``CancelledError``.

Writes never queue: when the device is not connected a write raises :class:`DeviceUnavailable`
at once, and nothing is replayed after a reconnect (a stale command must never reach the plant).

Values in the store are engineering units: ``raw * tag.scale + tag.offset``; writes invert that
and refuse (before any I/O) a value that the node's type cannot hold exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.adapters.base import (
    AdapterError,
    ConnectionState,
    DeviceRejected,
    DeviceUnavailable,
    EncodingError,
)
from gateway.config.schema import OpcUaRef, SecurityMode, SecurityPolicy, TagKind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from gateway.adapters.base import TagStore
    from gateway.config.schema import OpcUaDevice, Tag

_log = logging.getLogger("gateway.adapters.opcua")

_FLOAT32_MAX: Final = 3.4028234663852886e38

VT = ua.VariantType
# Raw range of each integer type (Boolean as 0/1). Float and Double have none.
_INT_RANGE: Final[dict[ua.VariantType, tuple[int, int]]] = {
    VT.Boolean: (0, 1),
    VT.SByte: (-(2**7), 2**7 - 1), VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1), VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1), VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1), VT.UInt64: (0, 2**64 - 1),
}
SUPPORTED_TYPES: Final = frozenset(_INT_RANGE) | {VT.Float, VT.Double}

# What a lost or dead connection raises inside asyncua 2.1: socket errors (ConnectionError is
# an OSError), request timeouts, and service faults (BadSessionIdInvalid, BadShutdown, ...).
_IO_ERRORS: Final = (OSError, TimeoutError, UaError)

# ServerStatus.State (OPC UA Part 5, 12.10): a cheap read that proves the session is alive.
_SERVER_STATE: Final = ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_State))


def encode(value: float, vtype: ua.VariantType, tag: Tag) -> ua.Variant:
    """The variant to write for engineering ``value`` to a node of type ``vtype``.

    raw = (value - offset) / scale. Integer and Boolean types need a raw value that is integral
    (to 1e-9 relative, so that a scale of 0.1 works) and inside the type's range; Float needs
    a finite raw within float32 range. Raises :class:`EncodingError` otherwise, and for types
    other than Boolean, integers, Float and Double.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodingError(f"{tag.name}: {value!r} is not a number")
    if not math.isfinite(value):
        raise EncodingError(f"{tag.name}: {value} is not finite")
    raw = (value - tag.offset) / tag.scale
    if not math.isfinite(raw):
        raise EncodingError(f"{tag.name}: {value} overflows with scale {tag.scale}")
    if vtype is VT.Double:
        return ua.Variant(float(raw), VT.Double)
    if vtype is VT.Float:
        if abs(raw) > _FLOAT32_MAX:
            raise EncodingError(f"{tag.name}: raw {raw:g} is outside the float32 range")
        return ua.Variant(float(raw), VT.Float)
    span = _INT_RANGE.get(vtype)
    if span is None:
        raise EncodingError(f"{tag.name}: node type {vtype.name} is not a supported number type")
    whole = round(raw)
    if abs(whole * tag.scale + tag.offset - value) > 1e-9 * max(1.0, abs(value)):
        raise EncodingError(f"{tag.name}: {value} is not a whole raw value for a "
                            f"{vtype.name} node (raw {raw:g})")
    low, high = span
    if not low <= whole <= high:
        raise EncodingError(f"{tag.name}: raw {whole} is outside {vtype.name} [{low}, {high}]")
    if vtype is VT.Boolean:
        return ua.Variant(bool(whole), VT.Boolean)
    return ua.Variant(whole, vtype)


def decode(variant_value: Any, tag: Tag) -> float | None:
    """Engineering value of a read raw value, or None if it is not a number."""
    if not isinstance(variant_value, (bool, int, float)):
        return None
    return float(variant_value) * tag.scale + tag.offset


def _status_name(status: ua.StatusCode) -> str:
    name: str = status.name
    return name


class OpcUaDeviceClient:
    """One OPC UA device (see the module docstring).

    ``tags`` are the site's tags on this device (their ``ref`` must be an :class:`OpcUaRef`);
    ``clock`` stamps readings (monotonic seconds); backoff doubles from ``backoff_initial_s``
    up to ``backoff_max_s`` between reconnect attempts.

    ``polling=False`` is stepped time (drills): no subscription and no polling; the tags are
    read when :meth:`refresh` is awaited, once per step, and :meth:`run` only keeps the session
    alive (a probe every quarter second notices a lost server).
    """

    def __init__(self, device: OpcUaDevice, tags: Sequence[Tag], store: TagStore,
                 clock: Callable[[], float] = time.monotonic,
                 backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0,
                 *, polling: bool = True) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.device = device
        self._tags: dict[str, Tag] = {}
        self._nodeids: dict[str, ua.NodeId] = {}
        for tag in tags:
            if tag.device != device.name or not isinstance(tag.ref, OpcUaRef):
                raise ValueError(f"tag {tag.name!r} is not an OPC UA tag of {device.name!r}")
            self._tags[tag.name] = tag
            self._nodeids[tag.name] = ua.NodeId.from_string(tag.ref.node)
        self._by_nodeid = {nid: name for name, nid in self._nodeids.items()}
        self._heartbeat = (ua.NodeId.from_string(device.heartbeat.node)
                           if device.heartbeat is not None else None)
        self._store = store
        self._clock = clock
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = device.timeout_ms / 1000.0
        self._poll_s = device.poll_ms / 1000.0
        self._polling = polling
        # With a subscription the probe also vouches for unchanged values (see _serve): often
        # enough that a value is never older than a quarter second while the link is healthy.
        self._subscription_probe_s = 0.25
        self.state = ConnectionState.DISCONNECTED
        self.connects = 0  # sessions opened (the first connect and every reconnect)
        self._client: Client | None = None
        # Node types read at connect: a VariantType, or the Bad status name when unreadable.
        self._types: dict[str, ua.VariantType | str] = {}
        self._heartbeat_type: ua.VariantType | str | None = None
        self._lost = asyncio.Event()
        self._fault: str | None = None
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect and keep the store current until cancelled or :meth:`close`d."""
        delay = self._backoff_initial_s
        try:
            while not self._closed:
                self.state = ConnectionState.CONNECTING
                try:
                    await self._connect()
                    self.state = ConnectionState.CONNECTED
                    self.connects += 1  # the core's metrics: reconnects are connects - 1
                    delay = self._backoff_initial_s
                    if self._fault is not None:
                        _log.info("%s: connected to %s again", self.device.name,
                                  self.device.endpoint)
                    self._fault = None
                    await self._serve()
                except (*_IO_ERRORS, AdapterError) as exc:
                    if not self._closed:  # close() ends the session on purpose
                        self._report(exc)
                except Exception as exc:  # a bug or a library surprise: keep the device going
                    _log.exception("%s: unexpected error", self.device.name)
                    self._fault = f"unexpected {type(exc).__name__}"
                self._store.mark_bad(self._tags)
                await self._drop_client()
                if self._closed:
                    break
                self.state = ConnectionState.BACKOFF
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)
        finally:
            self._store.mark_bad(self._tags)
            await asyncio.shield(self._drop_client())
            self.state = ConnectionState.CLOSED if self._closed else (
                ConnectionState.DISCONNECTED)

    async def close(self) -> None:
        """Disconnect; a running :meth:`run` ends at its next step (cancel it to end at once)."""
        self._closed = True
        self._lost.set()
        await self._drop_client()
        self.state = ConnectionState.CLOSED

    def _report(self, exc: BaseException) -> None:
        """One warning per distinct fault; repeats of the same fault at debug level."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if text != self._fault:
            _log.warning("%s (%s): %s; tags marked bad, reconnecting with backoff",
                         self.device.name, self.device.endpoint, text)
            self._fault = text
        else:
            _log.debug("%s: still failing: %s", self.device.name, text)

    def _password(self) -> str | None:
        sec = self.device.security
        if sec.password_env is None:
            return None
        password = os.environ.get(sec.password_env)
        if password is None:
            raise AdapterError(f"device {self.device.name}: environment variable "
                               f"{sec.password_env} (password of user {sec.username!r}) "
                               "is not set")
        return password

    async def _connect(self) -> None:
        sec = self.device.security
        password = self._password()
        client = Client(self.device.endpoint, timeout=self._timeout_s)
        client.name = client.description = f"safety-gateway {self.device.name}"
        if sec.policy is SecurityPolicy.BASIC256SHA256:
            assert sec.certificate is not None  # the config requires both with a policy
            assert sec.private_key is not None
            uri = certificate_uri(sec.certificate.read_bytes())
            if uri is not None:
                client.application_uri = uri
            mode = (ua.MessageSecurityMode.Sign if sec.mode is SecurityMode.SIGN
                    else ua.MessageSecurityMode.SignAndEncrypt)
            await asyncio.wait_for(client.set_security(
                SecurityPolicyBasic256Sha256, str(sec.certificate), str(sec.private_key),
                server_certificate=(str(sec.server_certificate)
                                    if sec.server_certificate is not None else None),
                mode=mode), self._timeout_s)
        if sec.username is not None:
            client.set_user(sec.username)
            client.set_password(password or "")
        self._client = client
        self._lost.clear()
        await asyncio.wait_for(client.connect(), self._timeout_s)
        await self._read_types(client)

    async def _read_types(self, client: Client) -> None:
        """Each tag node's DataType, in one Read. Builtin types only (ns=0, id 1..25)."""
        names = list(self._tags)
        nodes = [client.get_node(self._nodeids[n]) for n in names]
        if self._heartbeat is not None:
            nodes.append(client.get_node(self._heartbeat))
        values = await asyncio.wait_for(
            client.read_attributes(nodes, AttributeIds.DataType), self._timeout_s)
        types: list[ua.VariantType | str] = []
        for node, dv in zip(nodes, values, strict=True):
            status = dv.StatusCode
            if status is not None and not status.is_good():
                _log.warning("%s: node %s: %s", self.device.name, node.nodeid.to_string(),
                             _status_name(status))
                types.append(_status_name(status))
                continue
            dtype = dv.Value.Value if dv.Value is not None else None
            vtype: ua.VariantType | str = "BadDataTypeIdUnknown"
            if (isinstance(dtype, ua.NodeId) and dtype.NamespaceIndex == 0
                    and isinstance(dtype.Identifier, int)):
                with contextlib.suppress(ValueError):
                    vtype = ua.VariantType(dtype.Identifier)
            if not isinstance(vtype, ua.VariantType) or vtype not in SUPPORTED_TYPES:
                _log.warning("%s: node %s has data type %s, not a number type; its values "
                             "read as bad and writes are refused", self.device.name,
                             node.nodeid.to_string(), dtype)
            types.append(vtype)
        self._types = dict(zip(names, types, strict=False))
        self._heartbeat_type = types[-1] if self._heartbeat is not None else None
        for name, vtype in self._types.items():
            tag = self._tags[name]
            if isinstance(vtype, ua.VariantType) and tag.wire_type.value != _WIRE_NAME.get(vtype):
                _log.warning("%s: tag %s is declared %s but node %s is %s; writing %s",
                             self.device.name, name, tag.wire_type.value,
                             self._nodeids[name].to_string(), vtype.name, vtype.name)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self._timeout_s)
        except (*_IO_ERRORS, RuntimeError) as exc:
            _log.debug("%s: disconnect: %r", self.device.name, exc)
        finally:
            client.disconnect_socket()

    # ----------------------------------------------------------------- keeping the store current

    async def _serve(self) -> None:
        """Return or raise when the connection is lost (or on close)."""
        client = self._client
        assert client is not None
        if not self._polling:
            while not self._closed:
                await self._probe(client)
                try:
                    await asyncio.wait_for(self._lost.wait(), self._subscription_probe_s)
                except TimeoutError:
                    continue
                raise DeviceUnavailable("connection lost")
        elif self.device.subscribe:
            sub = await asyncio.wait_for(
                client.create_subscription(self.device.poll_ms, _Handler(self)), self._timeout_s)
            nodes = [client.get_node(self._nodeids[n]) for n in self._tags]
            if nodes:
                sampling = ua.Double(self.device.poll_ms)
                results = await asyncio.wait_for(
                    sub.subscribe_data_change(nodes, sampling_interval=sampling), self._timeout_s)
                for name, result in zip(self._tags, results, strict=True):
                    if isinstance(result, ua.StatusCode):
                        _log.warning("%s: cannot subscribe to %s: %s", self.device.name,
                                     name, _status_name(result))
            while not self._closed:
                await self._probe(client)
                # A subscription sends nothing while a value does not change, so a healthy
                # connection must vouch for its values, or they would look stale to the
                # supervisor's input detector: a successful probe confirms every good value
                # as current now.
                self._confirm_current()
                try:
                    await asyncio.wait_for(self._lost.wait(), self._subscription_probe_s)
                except TimeoutError:
                    continue
                raise DeviceUnavailable("connection lost")
        else:
            names = list(self._tags)
            nodes = [client.get_node(self._nodeids[n]) for n in names]
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while not self._closed:
                if nodes:
                    values = await asyncio.wait_for(client.read_attributes(nodes),
                                                    self._timeout_s)
                    now = self._clock()
                    for name, dv in zip(names, values, strict=True):
                        self._apply(name, dv, now)
                else:
                    await self._probe(client)
                next_at = max(next_at + self._poll_s, loop.time())
                try:
                    await asyncio.wait_for(self._lost.wait(), next_at - loop.time())
                except TimeoutError:
                    continue
                raise DeviceUnavailable("connection lost")

    async def refresh(self) -> None:
        """Read every tag once now (stepped time). Without a session the tags stay as they
        are (bad after a loss) and :meth:`run` reconnects; a read that fails marks them bad.
        Never raises for the server's behaviour."""
        client = self._client
        if client is None or self.state is not ConnectionState.CONNECTED or not self._tags:
            return
        names = list(self._tags)
        try:
            values = await asyncio.wait_for(
                client.read_attributes([client.get_node(self._nodeids[n]) for n in names]),
                self._timeout_s)
        except (*_IO_ERRORS, AdapterError) as exc:
            self._store.mark_bad(names)
            self._report(exc)
            self._lost.set()
            return
        now = self._clock()
        for name, dv in zip(names, values, strict=True):
            self._apply(name, dv, now)

    def _confirm_current(self) -> None:
        now = self._clock()
        for name in self._tags:
            reading = self._store.get(name)
            if reading.good:
                self._store.update(name, reading.value, True, now)

    async def _probe(self, client: Client) -> None:
        dv = (await asyncio.wait_for(
            client.read_attributes([client.get_node(_SERVER_STATE)]), self._timeout_s))[0]
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            raise DeviceUnavailable(f"server state unreadable: {_status_name(dv.StatusCode)}")
        state = dv.Value.Value if dv.Value is not None else None
        if state not in (ua.ServerState.Running, int(ua.ServerState.Running)):
            raise DeviceUnavailable(f"server state is {state!r}, not Running")

    def _apply(self, name: str, dv: ua.DataValue, now: float) -> None:
        status = dv.StatusCode
        value = decode(dv.Value.Value, self._tags[name]) if dv.Value is not None else None
        if (status is not None and not status.is_good()) or value is None:
            self._store.mark_bad((name,))
        else:
            self._store.update(name, value, True, now)

    # ----------------------------------------------------------------- writes

    async def write(self, values: Mapping[str, float]) -> None:
        """Write actuator values (engineering units), all in one Write request.

        Every value is encoded first; if any fails (:class:`EncodingError`), nothing is sent.
        Raises :class:`DeviceUnavailable` when not connected or when the request gets no
        answer (then it is unknown whether it was applied: treat it as not), and
        :class:`DeviceRejected` (``code`` = the first Bad status name) when the server answers
        Bad for any node; the other nodes' statuses are in the message. ``KeyError`` for a tag
        that is not an actuator of this device.
        """
        nodeids: list[ua.NodeId] = []
        dvs: list[ua.DataValue] = []
        names = list(values)
        for name in names:
            tag = self._tags.get(name)
            if tag is None or tag.kind is not TagKind.ACTUATOR:
                raise KeyError(f"{name!r} is not an actuator of device {self.device.name!r}")
        client = self._client
        if client is None or self.state is not ConnectionState.CONNECTED:
            raise DeviceUnavailable(f"{self.device.name}: not connected")
        for name in names:
            vtype = self._types.get(name)
            if isinstance(vtype, str):
                raise DeviceRejected(f"{name}: node {self._nodeids[name].to_string()}: "
                                     f"{vtype}", vtype)
            if vtype is None:  # pragma: no cover - types are read before CONNECTED
                raise DeviceUnavailable(f"{self.device.name}: node types not read yet")
            nodeids.append(self._nodeids[name])
            dvs.append(ua.DataValue(encode(values[name], vtype, self._tags[name])))
        if not names:
            return
        await self._send(client, names, nodeids, dvs)

    async def write_heartbeat(self, counter: int) -> None:
        """Write ``counter`` to the device's heartbeat node, wrapped into the node's type
        (modulo 2**16 for UInt16, 2**31 for Int32, alternating for Boolean, 2**24 for floats).
        No-op without a heartbeat node. Raises like :meth:`write`."""
        if self._heartbeat is None:
            return
        client = self._client
        if client is None or self.state is not ConnectionState.CONNECTED:
            raise DeviceUnavailable(f"{self.device.name}: not connected")
        vtype = self._heartbeat_type
        if isinstance(vtype, str) or vtype is None:
            raise DeviceRejected(f"heartbeat node {self._heartbeat.to_string()}: {vtype}",
                                 vtype or "BadNodeIdUnknown")
        if vtype in (VT.Float, VT.Double):
            variant = ua.Variant(float(counter % 2**24), vtype)
        elif vtype is VT.Boolean:
            variant = ua.Variant(bool(counter % 2), vtype)
        elif vtype in _INT_RANGE:
            high = _INT_RANGE[vtype][1]
            variant = ua.Variant(counter % (high + 1), vtype)
        else:
            raise EncodingError(f"heartbeat node has type {vtype.name}, not a number type")
        await self._send(client, ["heartbeat"], [self._heartbeat], [ua.DataValue(variant)])

    async def _send(self, client: Client, names: list[str], nodeids: list[ua.NodeId],
                    dvs: list[ua.DataValue]) -> None:
        try:
            results = await asyncio.wait_for(
                client.uaclient.write_attributes(nodeids, dvs, AttributeIds.Value),
                self._timeout_s)
        except UaStatusCodeError as exc:
            # The whole request was refused (e.g. BadSessionIdInvalid): the link is suspect.
            self._lost.set()
            raise DeviceUnavailable(f"{self.device.name}: write failed: {exc}") from exc
        except (OSError, TimeoutError, UaError) as exc:
            self._lost.set()
            raise DeviceUnavailable(f"{self.device.name}: write failed: {exc!r}") from exc
        except asyncio.CancelledError:
            # Abandoned before its answer (the runtime does that only to a write that outlived
            # every timeout, or at shutdown). asyncua matches answers by request id, so the
            # session is not confused, but whether and when the server applies the write is
            # unknown: start a fresh session rather than write behind it.
            self._lost.set()
            raise
        bad = [(n, s) for n, s in zip(names, results, strict=True) if not s.is_good()]
        if bad:
            detail = ", ".join(f"{n}: {_status_name(s)}" for n, s in bad)
            raise DeviceRejected(f"{self.device.name} refused {detail}", _status_name(bad[0][1]))


_WIRE_NAME: Final[dict[ua.VariantType, str]] = {
    VT.Boolean: "bool", VT.Int16: "int16", VT.UInt16: "uint16", VT.Int32: "int32",
    VT.UInt32: "uint32", VT.Float: "float32", VT.Double: "float64",
}


class _Handler:
    """asyncua subscription callbacks -> the store (runs on the event loop)."""

    def __init__(self, owner: OpcUaDeviceClient) -> None:
        self._owner = owner

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        owner = self._owner
        name = owner._by_nodeid.get(node.nodeid)
        if name is not None:
            owner._apply(name, data.monitored_item.Value, owner._clock())

    def status_change_notification(self, status: Any) -> None:
        # The server ended the subscription (timeout, shutdown): reconnect and re-subscribe.
        _log.info("%s: subscription status change: %s", self._owner.device.name, status)
        self._owner._lost.set()


def certificate_uri(cert_bytes: bytes) -> str | None:
    """The URI in a certificate's SubjectAltName (OPC UA Part 6, 6.2.2: it must equal the
    application's ApplicationUri), or None."""
    from cryptography import x509

    try:
        cert = (x509.load_pem_x509_certificate(cert_bytes) if b"-----BEGIN" in cert_bytes
                else x509.load_der_x509_certificate(cert_bytes))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
