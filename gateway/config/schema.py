"""The site configuration as frozen, validated dataclasses.

Every field carries its unit in its name where it has one. Each class checks its own fields in
``__post_init__`` and raises :class:`FieldError` naming the key; the loader turns that into a
``file:line: key.path: message`` line. Checks that need several sections (tag names in
expressions, duplicate addresses) live in :mod:`gateway.config.loader`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final


class FieldError(ValueError):
    """A field's value is invalid. ``key`` is the field's key in the YAML mapping."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise FieldError(key, f"must be a finite number, not {value}")


def _positive(key: str, value: float) -> None:
    _finite(key, value)
    if value <= 0:
        raise FieldError(key, f"must be > 0, not {value}")


class Protocol(StrEnum):
    MODBUS_TCP = "modbus_tcp"
    OPCUA = "opcua"


class TagKind(StrEnum):
    SENSOR = "sensor"
    ACTUATOR = "actuator"


class Table(StrEnum):
    """Modbus data tables."""

    HOLDING_REGISTER = "holding_register"
    INPUT_REGISTER = "input_register"
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        return self in (Table.HOLDING_REGISTER, Table.COIL)


class WireType(StrEnum):
    """Data type on the wire. Register widths: 16-bit types take one, 32-bit two, 64-bit four."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    # Looked up in tables built once (below the class): the codec asks on every value.
    @property
    def registers(self) -> int:
        return _REGISTERS[self]

    @property
    def is_integer(self) -> bool:
        return self in _INTEGER_TYPES

    @property
    def integer_range(self) -> tuple[int, int]:
        """Representable raw range of an integer or bool type (KeyError for a float type)."""
        return _INTEGER_RANGES[self]


_REGISTERS: dict[WireType, int] = {
    WireType.BOOL: 1, WireType.INT16: 1, WireType.UINT16: 1, WireType.INT32: 2,
    WireType.UINT32: 2, WireType.FLOAT32: 2, WireType.FLOAT64: 4}
_INTEGER_TYPES = frozenset({WireType.INT16, WireType.UINT16, WireType.INT32, WireType.UINT32})
_INTEGER_RANGES: dict[WireType, tuple[int, int]] = {
    WireType.BOOL: (0, 1),
    WireType.INT16: (-(2**15), 2**15 - 1),
    WireType.UINT16: (0, 2**16 - 1),
    WireType.INT32: (-(2**31), 2**31 - 1),
    WireType.UINT32: (0, 2**32 - 1),
}


class Order(StrEnum):
    """Byte order within a register, or word order across registers."""

    BIG = "big"
    LITTLE = "little"


class Policy(StrEnum):
    """What a violated constraint does. Ordered by severity (see :attr:`severity`)."""

    CLAMP = "clamp"
    REJECT = "reject"
    TRIP = "trip"

    @property
    def severity(self) -> int:
        return {"clamp": 1, "reject": 2, "trip": 3}[self.value]


class ShutdownAction(StrEnum):
    """What the gateway leaves an actuator at when it shuts down cleanly."""

    SAFE = "safe"
    HOLD = "hold"


class SecurityMode(StrEnum):
    NONE = "none"
    SIGN = "sign"
    SIGN_AND_ENCRYPT = "sign_and_encrypt"


class SecurityPolicy(StrEnum):
    """OPC UA security policies (Part 7's profiles). Basic128Rsa15 and Basic256 are deprecated
    (SHA-1 signatures, RSA PKCS#1 v1.5): the northbound server offers them only with
    ``allow_deprecated_policies: true``; southbound devices support Basic256Sha256 only."""

    NONE = "none"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"
    BASIC256 = "Basic256"
    BASIC128RSA15 = "Basic128Rsa15"

    @property
    def deprecated(self) -> bool:
        return self in (SecurityPolicy.BASIC256, SecurityPolicy.BASIC128RSA15)


# --------------------------------------------------------------------------- site, devices


@dataclass(frozen=True)
class SiteInfo:
    name: str
    cycle_ms: float = 100.0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise FieldError("name", "must not be empty")
        _positive("cycle_ms", self.cycle_ms)


@dataclass(frozen=True)
class ModbusRef:
    """A Modbus address: table and 0-based register/bit address."""

    table: Table
    address: int

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 65535:
            raise FieldError("address", f"must be 0..65535, not {self.address}")


@dataclass(frozen=True)
class OpcUaRef:
    """An OPC UA node id in its string form, e.g. ``ns=2;s=Tank.Level``."""

    node: str

    def __post_init__(self) -> None:
        if not _looks_like_nodeid(self.node):
            raise FieldError(
                "node", f"{self.node!r} is not a node id (expected e.g. 'ns=2;s=Tank.Level')"
            )


# OPC UA Part 6, 5.3.1.10 (NodeId string form): `[ns=<index>;]<type>=<identifier>`, the type
# being i (numeric, UInt32), s (string), g (GUID) or b (opaque, base64). The namespace index is
# a UInt16. asyncua splits the text on ';', so a ';' inside a string identifier is refused too.
_DIGITS = re.compile(r"[0-9]+")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _looks_like_nodeid(text: str) -> bool:
    parts = text.split(";")
    if len(parts) == 2:
        ns = parts[0]
        if not ns.startswith("ns=") or not _DIGITS.fullmatch(ns[3:]) or int(ns[3:]) > 0xFFFF:
            return False
    elif len(parts) != 1:
        return False
    kind, eq, ident = parts[-1].partition("=")
    if not eq or not ident:
        return False
    if kind == "i":
        return _DIGITS.fullmatch(ident) is not None and int(ident) <= 0xFFFF_FFFF
    if kind == "g":
        return _GUID.fullmatch(ident) is not None
    return kind in ("s", "b")


@dataclass(frozen=True)
class OpcUaSecurity:
    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.NONE
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    username: str | None = None
    password_env: str | None = None

    def __post_init__(self) -> None:
        secured = self.policy is not SecurityPolicy.NONE
        if secured != (self.mode is not SecurityMode.NONE):
            raise FieldError("mode", "policy and mode must both be none or both be set")
        if secured and (self.certificate is None or self.private_key is None):
            key = "certificate" if self.certificate is None else "private_key"
            raise FieldError(key, f"required with security policy {self.policy.value}")
        if (self.username is None) != (self.password_env is None):
            key = "password_env" if self.password_env is None else "username"
            raise FieldError(key, "username and password_env go together")


# How often the OPC UA client confirms a subscribed device's values as current (a probe of
# the session: a subscription sends nothing while a value does not change).
OPCUA_CONFIRM_MS = 250.0


@dataclass(frozen=True)
class ModbusDevice:
    """A Modbus TCP device. ``separate_write_connection`` opens a second TCP connection for
    writes and heartbeats, so that they never wait behind polls (lower write latency); leave it
    off for devices that accept a single connection. ``stale_after_ms`` (optional) is the
    staleness limit of this device's sensors, in place of ``detection.stale_after_ms``."""

    name: str
    host: str
    port: int = 502
    unit: int = 1
    timeout_ms: float = 1000.0
    poll_ms: float = 100.0
    heartbeat: ModbusRef | None = None
    separate_write_connection: bool = False
    stale_after_ms: float | None = None

    def __post_init__(self) -> None:
        if self.stale_after_ms is not None:
            _positive("stale_after_ms", self.stale_after_ms)
        if not self.host:
            raise FieldError("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise FieldError("port", f"must be 1..65535, not {self.port}")
        if not 0 <= self.unit <= 255:
            raise FieldError("unit", f"must be 0..255, not {self.unit}")
        _positive("timeout_ms", self.timeout_ms)
        _positive("poll_ms", self.poll_ms)
        if self.heartbeat is not None and not self.heartbeat.table.writable:
            raise FieldError("heartbeat", "must be a holding_register or coil (it is written)")

    @property
    def protocol(self) -> Protocol:
        return Protocol.MODBUS_TCP


@dataclass(frozen=True)
class OpcUaDevice:
    """An OPC UA server. ``poll_ms`` is the polling period, or with ``subscribe`` the
    subscription's publishing and sampling interval. ``stale_after_ms`` as for Modbus."""

    name: str
    endpoint: str
    security: OpcUaSecurity = field(default_factory=OpcUaSecurity)
    timeout_ms: float = 2000.0
    poll_ms: float = 100.0
    subscribe: bool = True
    heartbeat: OpcUaRef | None = None
    stale_after_ms: float | None = None

    def __post_init__(self) -> None:
        if self.stale_after_ms is not None:
            _positive("stale_after_ms", self.stale_after_ms)
        if not self.endpoint.startswith("opc.tcp://"):
            raise FieldError("endpoint", f"must start with opc.tcp://, not {self.endpoint!r}")
        _positive("timeout_ms", self.timeout_ms)
        _positive("poll_ms", self.poll_ms)
        # The device client speaks Basic256Sha256 only; any other policy would connect unsecured.
        if self.security.policy not in (SecurityPolicy.NONE, SecurityPolicy.BASIC256SHA256):
            raise FieldError("security", f"policy {self.security.policy.value} is offered by the "
                                         "northbound server only; devices use Basic256Sha256")

    @property
    def protocol(self) -> Protocol:
        return Protocol.OPCUA


Device = ModbusDevice | OpcUaDevice


# A sensor's staleness limit when none is written (and its device can meet it).
DEFAULT_STALE_AFTER_MS = 1000.0


def update_period_ms(device: Device) -> float:
    """How often a healthy ``device`` refreshes its tags' readings in the tag store: its
    polling period, or for an OPC UA subscription the longer of the publishing interval and
    the session probe that confirms unchanged values (``OPCUA_CONFIRM_MS``)."""
    if isinstance(device, OpcUaDevice) and device.subscribe:
        return max(device.poll_ms, OPCUA_CONFIRM_MS)
    return device.poll_ms


def min_stale_after_ms(device: Device) -> float:
    """The shortest staleness limit that a healthy ``device`` can meet: a reading is renewed
    every update period, and a request may take up to ``timeout_ms`` before it is answered
    (an answer within the timeout is a healthy answer)."""
    return update_period_ms(device) + device.timeout_ms


# --------------------------------------------------------------------------- tags

_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Tag:
    """One process value: a sensor the gateway reads or an actuator it writes.

    Engineering value = raw * ``scale`` + ``offset``. Sensors declare their plausible range
    (``range_min``/``range_max``, a reading outside it is bad input); actuators declare the
    ``safe_value`` written on trip and on loss of control.
    """

    name: str
    device: str
    kind: TagKind
    ref: ModbusRef | OpcUaRef
    wire_type: WireType = WireType.FLOAT32
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    range_min: float | None = None
    range_max: float | None = None
    safe_value: float | None = None
    on_shutdown: ShutdownAction = ShutdownAction.SAFE

    def __post_init__(self) -> None:
        _finite("scale", self.scale)
        if self.scale == 0:
            raise FieldError("scale", "must not be 0")
        _finite("offset", self.offset)
        if (isinstance(self.ref, ModbusRef) and self.ref.table.is_bits
                and self.wire_type is not WireType.BOOL):
            raise FieldError("type", f"a {self.ref.table.value} holds bits: type must be bool")
        if self.kind is TagKind.SENSOR:
            if self.safe_value is not None:
                raise FieldError("safe_value", "only actuators have a safe value")
            if self.range_min is None or self.range_max is None:
                raise FieldError("range", "a sensor needs its plausible range [min, max]")
            _finite("range", self.range_min)
            _finite("range", self.range_max)
            if self.range_min > self.range_max:
                raise FieldError("range", f"min ({self.range_min}) > max ({self.range_max})")
        else:
            if self.safe_value is None:
                raise FieldError("safe_value", "every actuator needs a safe value")
            _finite("safe_value", self.safe_value)
            if isinstance(self.ref, ModbusRef) and not self.ref.table.writable:
                raise FieldError(
                    "table", f"an actuator must be writable; {self.ref.table.value} is read-only"
                )
            self.check_encodable(self.safe_value)

    def check_encodable(self, value: float) -> None:
        """Raise FieldError (key ``safe_value``) unless ``value`` survives encoding.

        A safe value is what the gateway writes when everything else has failed, so it must
        survive encoding: raw = round((value - offset) / scale) must fit the wire type and decode
        back to ``value`` (to 1e-9 relative)."""
        raw_exact = (value - self.offset) / self.scale
        if not self.wire_type.is_integer and self.wire_type is not WireType.BOOL:
            if self.wire_type is WireType.FLOAT32 and abs(raw_exact) > _FLOAT32_MAX:
                raise FieldError("safe_value", f"{value} cannot be represented as float32 with "
                                               f"scale {self.scale} and offset {self.offset} "
                                               f"(raw {raw_exact:g} overflows)")
            return
        raw = round(raw_exact) if math.isfinite(raw_exact) else None
        low, high = self.wire_type.integer_range
        if (raw is None or not low <= raw <= high
                or abs(raw * self.scale + self.offset - value) > 1e-9 * max(1.0, abs(value))):
            hint = ""
            if self.wire_type is WireType.BOOL:
                hint = (f"; the only values allowed for a bool are {self.offset + 0.0} and "
                        f"{self.offset + self.scale}")
            raise FieldError(
                "safe_value",
                f"{value} cannot be represented as {self.wire_type.value} with scale "
                f"{self.scale} and offset {self.offset} (raw {raw_exact:g}){hint}",
            )

    @property
    def register_count(self) -> int:
        return 1 if isinstance(self.ref, ModbusRef) and self.ref.table.is_bits else (
            self.wire_type.registers
        )


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class ActuatorLimits:
    """Per-actuator limits, engineering units. Rate in units per second, step per write."""

    actuator: str
    min: float
    max: float
    max_rate_per_s: float | None = None
    max_step: float | None = None
    allowed: tuple[float, ...] | None = None
    policy: Policy = Policy.CLAMP

    def __post_init__(self) -> None:
        _finite("min", self.min)
        _finite("max", self.max)
        if self.max < self.min:
            raise FieldError("max", f"must be >= min ({self.min})")
        if self.max_rate_per_s is not None:
            _positive("max_rate_per_s", self.max_rate_per_s)
        if self.max_step is not None:
            _positive("max_step", self.max_step)
        if self.allowed is not None:
            if not self.allowed:
                raise FieldError("allowed", "must list at least one value")
            for value in self.allowed:
                _finite("allowed", value)
                if not self.min <= value <= self.max:
                    raise FieldError("allowed", f"{value} is outside [{self.min}, {self.max}]")
            if len(set(self.allowed)) != len(self.allowed):
                raise FieldError("allowed", "values must be distinct")


@dataclass(frozen=True)
class LinearConstraint:
    """``sum(coef * tag) <= rhs`` over actuators and sensors (``>=`` is stored negated)."""

    name: str
    expr: str
    terms: tuple[tuple[str, float], ...]
    rhs: float
    policy: Policy = Policy.REJECT

    def __post_init__(self) -> None:
        if self.policy is Policy.CLAMP:
            raise FieldError(
                "policy",
                "clamp is not defined for a constraint coupling several values (no unique "
                "projection respects every other limit); use reject or trip",
            )


class ConditionOp(StrEnum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


@dataclass(frozen=True)
class Tightening:
    """While an interlock holds: ``actuator <= value`` (upper) or ``actuator >= value``."""

    actuator: str
    upper: bool
    value: float


@dataclass(frozen=True)
class Interlock:
    """``when`` a linear condition on sensors holds, actuator limits tighten (``then``).

    A condition over a sensor that reads NaN counts as holding: unknown state is treated as
    the dangerous one.
    """

    name: str
    when: str
    condition: tuple[tuple[str, float], ...]
    op: ConditionOp
    rhs: float
    then: tuple[Tightening, ...]
    policy: Policy = Policy.CLAMP

    def __post_init__(self) -> None:
        if not self.then:
            raise FieldError("then", "must tighten at least one actuator")


@dataclass(frozen=True)
class SensorModel:
    """``d sensor / dt = sum(coef * tag) + constant`` (per second), tags being sensors or
    actuators."""

    sensor: str
    expr: str
    terms: tuple[tuple[str, float], ...]
    constant: float


@dataclass(frozen=True)
class KeepRange:
    sensor: str
    min: float
    max: float

    def __post_init__(self) -> None:
        if math.isnan(self.min) or math.isnan(self.max):
            raise FieldError("min", "must not be NaN")
        if self.max < self.min:
            raise FieldError("max", f"must be >= min ({self.min})")


@dataclass(frozen=True)
class Prediction:
    """A linear process model rolled forward by explicit Euler steps of ``step_s`` for
    ``horizon_steps`` steps with the command held; a command that would take a kept sensor
    outside its range (or further outside, if it already is) violates ``predict.<sensor>``."""

    step_s: float
    horizon_steps: int
    model: tuple[SensorModel, ...]
    keep: tuple[KeepRange, ...]
    policy: Policy = Policy.REJECT

    def __post_init__(self) -> None:
        _positive("step_s", self.step_s)
        if not 1 <= self.horizon_steps <= 10_000:
            raise FieldError("horizon_steps", f"must be 1..10000, not {self.horizon_steps}")
        if self.policy is Policy.CLAMP:
            raise FieldError("policy",
                             "clamp is not defined for the prediction; use reject or trip")
        if not self.keep:
            raise FieldError("keep", "must name at least one sensor to keep in range")


@dataclass(frozen=True)
class Envelope:
    limits: tuple[ActuatorLimits, ...]
    constraints: tuple[LinearConstraint, ...] = ()
    interlocks: tuple[Interlock, ...] = ()
    prediction: Prediction | None = None
    nonfinite_policy: Policy = Policy.TRIP
    # Conditional safe values, in file order (see SafeCase); the plain safe values are on the
    # actuator tags.
    safe_cases: tuple[SafeCase, ...] = ()

    def __post_init__(self) -> None:
        if self.nonfinite_policy is Policy.CLAMP:
            raise FieldError("nonfinite_policy", "NaN/inf cannot be clamped; use reject or trip")


# --------------------------------------------------------------------------- the rest


class ControllerKind(StrEnum):
    ONNX = "onnx"
    EXTERNAL = "external"
    NONE = "none"


@dataclass(frozen=True)
class ControllerSpec:
    """The AI controller: an ONNX model run in-process, or an external program writing its
    commands through the northbound servers, or none (fallback control only).

    An ONNX model is named either by ``model`` and its pinned ``sha256``, or by a model
    ``registry`` folder and the ``name`` registered there: the gateway then loads the current
    approved version, refusing it (and running on fallback control) if it is unsigned,
    tampered with, revoked or not approved, and takes its canary cases from the registry."""

    kind: ControllerKind = ControllerKind.NONE
    model: Path | None = None
    sha256: str | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    input_offset: tuple[float, ...] = ()
    input_scale: tuple[float, ...] = ()
    output_offset: tuple[float, ...] = ()
    output_scale: tuple[float, ...] = ()
    deadline_ms: float = 20.0
    silence_timeout_ms: float = 1000.0
    registry: Path | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _positive("deadline_ms", self.deadline_ms)
        _positive("silence_timeout_ms", self.silence_timeout_ms)
        if self.registry is not None or self.name is not None:
            # The model comes from a registry: its current approved, signed version.
            if self.kind is not ControllerKind.ONNX:
                raise FieldError("registry", "only an onnx controller loads from a registry")
            if self.registry is None or not self.name:
                raise FieldError("name" if self.registry is not None else "registry",
                                 "registry and name go together")
            if self.model is not None or self.sha256 is not None:
                raise FieldError("model", "give either model and sha256, or registry and "
                                          "name (the registry pins the hash), not both")
            if not self.inputs:
                raise FieldError("inputs", "must list the model's input tags")
        elif self.kind is ControllerKind.ONNX:
            if self.model is None:
                raise FieldError("model", "required for an onnx controller (or registry "
                                          "and name)")
            if self.sha256 is None or len(self.sha256) != 64 or any(
                c not in "0123456789abcdef" for c in self.sha256
            ):
                raise FieldError("sha256", "must be the model's sha256 as 64 lowercase hex digits")
            if not self.inputs:
                raise FieldError("inputs", "must list the model's input tags")
        if self.kind is not ControllerKind.NONE and not self.outputs:
            raise FieldError("outputs", "must list the actuators the controller drives")
        for key, size in (("input_offset", len(self.inputs)), ("input_scale", len(self.inputs)),
                          ("output_offset", len(self.outputs)),
                          ("output_scale", len(self.outputs))):
            values: tuple[float, ...] = getattr(self, key)
            if values and len(values) != size:
                raise FieldError(key, f"has {len(values)} values for {size} tags")
            for value in values:
                _finite(key, value)
                if key.endswith("scale") and value == 0:
                    raise FieldError(key, "scales must not be 0")


class FallbackKind(StrEnum):
    PID = "pid"
    FIXED = "fixed"
    HOLD = "hold"
    RULES = "rules"


@dataclass(frozen=True)
class Rule:
    """``when`` the condition on sensors holds, output ``value``. First match wins."""

    when: str
    condition: tuple[tuple[str, float], ...]
    op: ConditionOp
    rhs: float
    value: float

    def __post_init__(self) -> None:
        _finite("value", self.value)


@dataclass(frozen=True)
class SafeCase(Rule):
    """One row of an actuator's conditional safe state: ``when`` the condition on sensors
    holds, the safe value is ``value``. Rows are tried in file order and the first that holds
    wins; the tag's plain ``safe_value`` (the last row, without ``when``) applies otherwise. A
    condition over a sensor that reads NaN (unknown or untrusted) holds, as an interlock's
    does: the engineer lists the protective case first."""

    actuator: str = field(kw_only=True)


@dataclass(frozen=True)
class FallbackSpec:
    """The deterministic controller that drives one actuator when the AI does not."""

    actuator: str
    kind: FallbackKind
    measurement: str | None = None
    setpoint: float | None = None
    kp: float = 0.0
    ki_per_s: float = 0.0
    kd_s: float = 0.0
    reverse: bool = False
    value: float | None = None
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        for key in ("kp", "ki_per_s", "kd_s"):
            gain: float = getattr(self, key)
            _finite(key, gain)
            if gain < 0:
                raise FieldError(key, "gains must be >= 0 (use reverse: true to invert action)")
        if self.kind is FallbackKind.PID:
            if self.measurement is None:
                raise FieldError("measurement", "a pid needs the sensor it controls")
            if self.setpoint is None:
                raise FieldError("setpoint", "a pid needs a setpoint")
            _finite("setpoint", self.setpoint)
        if self.kind in (FallbackKind.FIXED, FallbackKind.RULES):
            if self.value is None:
                raise FieldError(
                    "value", "required (the fixed value, or the rules' default output)"
                )
            _finite("value", self.value)
        if self.kind is FallbackKind.RULES and not self.rules:
            raise FieldError("rules", "must list at least one rule")


class DivergenceMethod(StrEnum):
    """The change detector run on each actuator's divergence residual.

    ``cusum`` measures the residual against zero, so it also flags an offset present from the
    first sample; ``page_hinkley`` measures it against its own running mean and reacts only to
    changes (see :mod:`gateway.supervisor.changepoint`).
    """

    CUSUM = "cusum"
    PAGE_HINKLEY = "page_hinkley"


@dataclass(frozen=True)
class Detection:
    """Detector settings; each can be switched off.

    Divergence: per actuator, the residual is ``(ai - fallback) / (max - min)``, the gap
    between the AI's and the fallback controller's outputs as a fraction of the actuator's range
    (its limits' max - min), so one setting suits actuators with different units.
    ``divergence_drift`` (the slack per sample: CUSUM's k, Page-Hinkley's delta) and
    ``divergence_threshold`` (the accumulated excess that raises the alarm: h, lambda) are in
    those fractions (the threshold in fractions times samples), and must be > 0.
    ``divergence_method`` picks the detector.

    ``violation_max``: cycles with a non-OK proposal (any verdict other than OK) tolerated within
    ``violation_window_s`` seconds; one more trips the detector (>= 0).

    ``input_range_margin``: how far a sensor reading may lie outside its declared range before it
    counts as out of range, as a fraction of the range (max - min); 0 means none (>= 0).

    ``gross_violation``: a proposal that the envelope would have to move by more than this
    fraction of an actuator's range (its limits' max - min) to make it admissible this cycle
    trips at once (to MANUAL). Small clamps are routine (a
    controller a little faster than a rate limit); a proposal far outside what the actuator may
    do now is a controller that is not doing its job (a hijack, a backdoor firing). In [0, 1];
    0 turns the check off.

    Input plausibility, per sensor and opt-in (both default to empty: off). Each is a sequence
    of ``(sensor tag name, number)`` pairs, written in YAML as a mapping from sensor name to
    a finite number > 0; each name at most once. A finding demands SAFE_STOP, like a stale
    reading, and the reading is NaN for everything downstream while it stands.

    * ``frozen_after_s``: a sensor whose good readings have been bit-for-bit identical for
      this many seconds (between the readings' timestamps) is frozen: a stuck transmitter or
      a frozen PLC image, since a live instrument has measurement noise. A bad, stale or
      out-of-range reading restarts the count (each of those is a fault of its own). Leave
      out sensors that legitimately repeat a value: counters, setpoints, coarse quantisation.
    * ``max_rate_per_s``: the fastest the measured quantity can physically change, in its
      engineering units per second, measurement noise included. A good reading that differs
      from the last plausible one by more than ``max_rate_per_s * dt`` is implausible (a
      spoofed or glitching value); ``dt`` is the time between the two readings' timestamps,
      never less than one cycle (``site.cycle_ms``), so the limit must also cover the noise
      between two readings one cycle apart. An implausible reading does not become the
      baseline: a value that jumped stays implausible until enough time has passed since the
      last plausible reading for the move to be possible. The first reading, and the first
      after a bad, stale or out-of-range one, is not judged: it becomes the new baseline.

    Raises :class:`FieldError` for a value that is not finite and > 0 or a repeated name;
    that the names are sensors is checked by the loader.
    """

    divergence: bool = True
    divergence_method: DivergenceMethod = DivergenceMethod.CUSUM
    divergence_drift: float = 0.05
    divergence_threshold: float = 1.0
    violation_window_s: float = 10.0
    violation_max: int = 20
    stale_after_ms: float | None = None
    deadline_misses_max: int = 3
    canary_period_s: float = 60.0
    canary_tolerance: float = 1e-4
    input_range_margin: float = 0.0
    gross_violation: float = 0.25
    frozen_after_s: tuple[tuple[str, float], ...] = ()
    max_rate_per_s: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.gross_violation <= 1.0:
            raise FieldError("gross_violation", f"must be in [0, 1], not {self.gross_violation}")
        for key in ("frozen_after_s", "max_rate_per_s"):
            seen: set[str] = set()
            for name, value in getattr(self, key):
                if name in seen:
                    raise FieldError(key, f"{name!r} is listed twice")
                seen.add(name)
                if not (math.isfinite(value) and value > 0):
                    raise FieldError(key, f"{name}: must be finite and > 0, not {value}")
        for key in ("divergence_drift", "divergence_threshold", "violation_window_s",
                    "canary_period_s"):
            _positive(key, getattr(self, key))
        if self.stale_after_ms is not None:
            _positive("stale_after_ms", self.stale_after_ms)
        for key in ("canary_tolerance", "input_range_margin"):
            value = getattr(self, key)
            _finite(key, value)
            if value < 0:
                raise FieldError(key, f"must be >= 0, not {value}")
        for key in ("violation_max", "deadline_misses_max"):
            if getattr(self, key) < 0:
                raise FieldError(key, "must be >= 0")


class StartMode(StrEnum):
    """Where the gateway starts. Never AUTO: the AI earns control through a clean SHADOW
    period and an authorised approval, also after a restart."""

    SHADOW = "shadow"
    MANUAL = "manual"


@dataclass(frozen=True)
class Operation:
    """Mode policy: where the gateway starts and how recovery toward the AI is gated, and
    how a changed site file is taken: with ``two_person_change`` a reload is staged by one
    authorised user and committed by a second, different one (``ctl reload`` twice, or
    SIGHUP then ``ctl reload --commit``); without it (the default) one admin's reload
    commits at once."""

    start_mode: StartMode = StartMode.MANUAL
    clean_shadow_s: float = 300.0
    bypass_max_s: float = 3600.0
    # At most this many bypasses in force at once; longer than bypass_second_approval_s
    # (None: never), a bypass needs a second, different approver.
    bypass_max_concurrent: int = 3
    bypass_second_approval_s: float | None = None
    two_person_change: bool = False

    def __post_init__(self) -> None:
        _positive("clean_shadow_s", self.clean_shadow_s)
        _positive("bypass_max_s", self.bypass_max_s)
        if not 1 <= self.bypass_max_concurrent <= 100:
            raise FieldError("bypass_max_concurrent",
                             f"must be 1..100, not {self.bypass_max_concurrent}")
        if self.bypass_second_approval_s is not None:
            _positive("bypass_second_approval_s", self.bypass_second_approval_s)


@dataclass(frozen=True)
class ModbusTlsSpec:
    """Modbus/TCP Security: the northbound Modbus server over mutually authenticated TLS.

    ``roles`` maps a certificate's Modbus role (or, without the role extension, its subject's
    common name) to a gateway role: ``operator``, ``ai`` or ``viewer``."""

    certificate: Path
    private_key: Path
    client_ca: Path
    roles: tuple[tuple[str, str], ...]
    port: int = 802

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise FieldError("port", f"must be 1..65535, not {self.port}")
        if not self.roles:
            raise FieldError("roles", "map at least one certificate role or name to a role")
        for name, role in self.roles:
            if role not in ("operator", "ai", "viewer"):
                raise FieldError("roles", f"{name!r}: must map to operator, ai or viewer, not "
                                          f"{role!r}")


@dataclass(frozen=True)
class ModbusServerSpec:
    host: str = "127.0.0.1"
    port: int = 1502
    unit: int = 1
    allow: tuple[str, ...] = ("127.0.0.1",)
    ai_clients: tuple[str, ...] = ()
    # An entry that admits every address (0.0.0.0/0, ::/0) is refused unless this is set.
    allow_any: bool = False
    # Connection slots: in all, per source address, and how long a silent one is kept. When
    # all are taken, the oldest idle connection of the source holding the most makes room.
    max_connections: int = 16
    max_per_source: int = 4
    idle_timeout_s: float = 15.0
    # Modbus/TCP Security on its own port; `plain: false` then turns plain Modbus off.
    tls: ModbusTlsSpec | None = None
    plain: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise FieldError("port", f"must be 1..65535, not {self.port}")
        if not 0 <= self.unit <= 255:
            raise FieldError("unit", f"must be 0..255, not {self.unit}")
        if not 1 <= self.max_connections <= 1024:
            raise FieldError("max_connections", f"must be 1..1024, not {self.max_connections}")
        if not 1 <= self.max_per_source <= self.max_connections:
            raise FieldError("max_per_source", f"must be 1..max_connections "
                                               f"({self.max_connections}), not "
                                               f"{self.max_per_source}")
        if not (math.isfinite(self.idle_timeout_s) and 0 < self.idle_timeout_s <= 3600):
            raise FieldError("idle_timeout_s", f"must be > 0 and at most 3600 s, not "
                                               f"{self.idle_timeout_s}")
        if not self.plain and self.tls is None:
            raise FieldError("plain", "plain Modbus can be turned off only when tls is set")
        if self.tls is not None and self.plain and self.tls.port == self.port:
            raise FieldError("tls", f"port {self.port} is the plain server's too")


@dataclass(frozen=True)
class OpcUaUser:
    name: str
    password_env: str
    role: str = "operator"

    def __post_init__(self) -> None:
        if self.role not in ("operator", "ai", "viewer", "admin"):
            raise FieldError("role", f"must be operator, ai, viewer or admin, not {self.role!r}")


@dataclass(frozen=True)
class LoginThrottleSpec:
    """Failed-login throttle of the northbound OPC UA server (see
    :mod:`gateway.adapters.opcua.throttle`): once a user name or a source address has
    ``max_failures`` failures, each coming within ``window_s`` of the previous one, its next
    attempt waits ``delay_s``, then twice that, up to ``max_delay_s``; an attempt that would wait
    longer is refused unchecked. A success clears the user's and the source's count."""

    max_failures: int = 5
    window_s: float = 60.0
    delay_s: float = 1.0
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_failures <= 1000:
            raise FieldError("max_failures", f"must be 1..1000, not {self.max_failures}")
        _positive("window_s", self.window_s)
        _positive("delay_s", self.delay_s)
        _positive("max_delay_s", self.max_delay_s)
        if self.max_delay_s < self.delay_s:
            raise FieldError("max_delay_s", f"must be >= delay_s ({self.delay_s}), not "
                                            f"{self.max_delay_s}")


@dataclass(frozen=True)
class OpcUaServerSpec:
    """The northbound OPC UA server. ``security`` is the one policy and mode its endpoint offers
    (and the only one a session may use; discovery alone is answered on a None channel).
    ``pki`` is the certificate store (``trusted/``, ``issuers/``, ``rejected/``, see
    :mod:`gateway.adapters.opcua.pki`): with a secured policy, only clients whose certificate
    is trusted there may open a channel. ``allow_insecure_passwords`` must be set to list users
    on an unsecured endpoint (their passwords cross the wire in clear);
    ``allow_deprecated_policies`` to use Basic256 or Basic128Rsa15."""

    endpoint: str = "opc.tcp://127.0.0.1:4841/gateway/"
    allow_anonymous: bool = False
    security: OpcUaSecurity = field(default_factory=OpcUaSecurity)
    users: tuple[OpcUaUser, ...] = ()
    pki: Path = Path("pki")
    allow_insecure_passwords: bool = False
    allow_deprecated_policies: bool = False
    login: LoginThrottleSpec = field(default_factory=LoginThrottleSpec)

    def __post_init__(self) -> None:
        if not self.endpoint.startswith("opc.tcp://"):
            raise FieldError("endpoint", f"must start with opc.tcp://, not {self.endpoint!r}")
        if not self.allow_anonymous and not self.users:
            raise FieldError("users", "list users, or set allow_anonymous: true explicitly")
        if (self.users and self.security.policy is SecurityPolicy.NONE
                and not self.allow_insecure_passwords):
            raise FieldError("users", "users' passwords would cross the wire in clear with "
                                      "security policy none: set a security policy (e.g. "
                                      "Basic256Sha256, sign_and_encrypt), or "
                                      "allow_insecure_passwords: true")
        if self.security.policy.deprecated and not self.allow_deprecated_policies:
            raise FieldError("security", f"policy {self.security.policy.value} is deprecated "
                                         "(SHA-1): use Basic256Sha256, Aes128_Sha256_RsaOaep or "
                                         "Aes256_Sha256_RsaPss, or allow_deprecated_policies: "
                                         "true")


@dataclass(frozen=True)
class HttpServerSpec:
    """The live dashboard (``gateway.ops.http``), served by the communications process: HTTP
    on ``host``:``port``, or HTTPS when ``certificate`` and ``private_key`` (PEM files) are both
    set. It is read-only."""

    host: str = "127.0.0.1"
    port: int = 8080
    certificate: Path | None = None
    private_key: Path | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise FieldError("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise FieldError("port", f"must be 1..65535, not {self.port}")
        if (self.certificate is None) != (self.private_key is None):
            raise FieldError("certificate" if self.certificate is None else "private_key",
                             "HTTPS needs both certificate and private_key")


_AGENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class McpAgent:
    """One MCP agent: its name (the identity in the audit chain), its role (``viewer``
    reads; ``ai`` proposes, as an external AI; ``operator`` sets setpoints in MANUAL) and where
    its bearer token is read: ``token_file`` (a file holding the token, relative to the site
    file) or ``token_env`` (an environment variable), exactly one, never the command line.
    ``calls_per_s`` and ``burst``: its call rate limit (a token bucket); calls beyond it are
    refused and recorded."""

    name: str
    role: str
    token_file: Path | None = None
    token_env: str | None = None
    calls_per_s: float = 20.0
    burst: int = 40

    def __post_init__(self) -> None:
        if not _AGENT_NAME.fullmatch(self.name):
            raise FieldError("name", f"must be 1-64 letters, digits, '_', '.' or '-', not "
                                     f"{self.name!r}")
        if self.role not in ("viewer", "ai", "operator"):
            raise FieldError("role", f"must be viewer, ai or operator, not {self.role!r}")
        if (self.token_file is None) == (self.token_env is None):
            raise FieldError("token_file", "set exactly one of token_file and token_env")
        if self.token_env is not None and not self.token_env:
            raise FieldError("token_env", "must name an environment variable")
        _positive("calls_per_s", self.calls_per_s)
        if not 1 <= self.burst <= 100_000:
            raise FieldError("burst", f"must be 1..100000, not {self.burst}")


@dataclass(frozen=True)
class McpServerSpec:
    """The MCP server for LLM agents (``gateway.mcp``), served by the communications process:
    streamable HTTP on ``host``:``port`` at ``path``, or HTTPS when ``certificate`` and
    ``private_key`` (PEM files) are both set; each agent authenticates with its bearer token."""

    agents: tuple[McpAgent, ...]
    host: str = "127.0.0.1"
    port: int = 8765
    path: str = "/mcp"
    certificate: Path | None = None
    private_key: Path | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise FieldError("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise FieldError("port", f"must be 1..65535, not {self.port}")
        if not (self.path.startswith("/") and len(self.path) > 1):
            raise FieldError("path", f"must start with / and name a path, not {self.path!r}")
        if (self.certificate is None) != (self.private_key is None):
            raise FieldError("certificate" if self.certificate is None else "private_key",
                             "HTTPS needs both certificate and private_key")
        if not self.agents:
            raise FieldError("agents", "list at least one agent")
        names = [a.name for a in self.agents]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FieldError("agents", f"duplicate agent names: {', '.join(dup)}")

    def agent(self, name: str) -> McpAgent:
        """The agent called ``name``; KeyError if none."""
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)


@dataclass(frozen=True)
class Northbound:
    modbus: ModbusServerSpec | None = None
    opcua: OpcUaServerSpec | None = None
    http: HttpServerSpec | None = None
    mcp: McpServerSpec | None = None


SITE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a fleet site id may be: one NATS subject token (no dots, wildcards or spaces)."""


@dataclass(frozen=True)
class FleetSpec:
    """The site's link to a fleet's central NATS JetStream (``gateway.fleet``), used only by
    the communications process: the safety core never waits on it.

    ``url`` is a ``nats://`` or ``tls://`` server (the central cluster, or a leaf node beside
    the gateway). ``site_id`` names the site's subjects (``sg.site.<site_id>.>``) and defaults
    to the site's name. The site authenticates with a client certificate (``certificate`` and
    ``private_key``, PEM, checked against ``ca``) or a NATS credentials file
    (``credentials``: a user JWT and nkey seed), or both; the central server's permissions let
    it publish only under its own subjects. ``heartbeat_s`` is the period of its status
    heartbeat.

    Model rollout (``gateway.fleet.rollout``): ``trusted_keys`` is the site's own trust store,
    a folder of ed25519 public keys (``*.pub``) whose signatures on a model version and on its
    approvals the site accepts (no folder: every rollout is refused); ``models_dir`` is where
    assigned versions are staged (default ``<audit path>.fleet-models``)."""

    url: str
    site_id: str
    ca: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    credentials: Path | None = None
    heartbeat_s: float = 5.0
    connect_timeout_s: float = 5.0
    trusted_keys: Path | None = None
    models_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("nats://", "tls://")):
            raise FieldError("url", f"must start with nats:// or tls://, not {self.url!r}")
        if SITE_ID_PATTERN.fullmatch(self.site_id) is None:
            raise FieldError("site_id", f"{self.site_id!r} is not a fleet site id (1 to 64 "
                                        "letters, digits, '_' or '-'; set fleet.site_id)")
        if (self.certificate is None) != (self.private_key is None):
            raise FieldError("certificate" if self.certificate is None else "private_key",
                             "a client certificate needs both certificate and private_key")
        _positive("heartbeat_s", self.heartbeat_s)
        _positive("connect_timeout_s", self.connect_timeout_s)

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("tls://") or self.ca is not None or self.certificate is not None


@dataclass(frozen=True)
class Commissioning:
    """A candidate site judged beside this one (``commissioning.candidate``: its file, relative
    to this site's file). ``candidate_site`` is that file, loaded and checked like the site
    itself when this site is loaded, with the same tags in the same order; its envelope and
    detectors judge every command this site's supervisor judges, and never act
    (``gateway.runtime.candidate``). None: no candidate."""

    candidate: Path | None = None
    candidate_site: Site | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AuditSpec:
    """The audit database, how many nominal cycles to sample (one in ``sample_every_n``;
    every cycle that differs from nominal is recorded), and the flight recorder's window:
    ``recorder_before_s`` of full-rate cycles kept in memory, frozen into the incident on a
    trip together with the ``recorder_after_s`` that follow.

    The chain's head is signed with the key at ``key`` (default ``<path>.head-key``, created
    with mode 0600 on first use) and written every ``head_export_s`` seconds and at every
    clean stop to ``<path>.head.json`` and to the same name in each folder of ``head_sinks``
    (gateway.audit.signed_head). ``required`` (default true): ``run`` refuses to control
    without a usable audit log (exit 3), ``check`` refuses a path that cannot be written;
    false: both warn instead, and the gateway runs without an audit trail."""

    path: Path = Path("audit.db")
    sample_every_n: int = 100
    recorder_before_s: float = 30.0
    recorder_after_s: float = 30.0
    head_export_s: float = 10.0
    head_sinks: tuple[Path, ...] = ()
    key: Path | None = None
    required: bool = True

    @property
    def key_path(self) -> Path:
        """The head-signing key: ``key``, or ``<path>.head-key`` beside the database."""
        return self.key if self.key is not None else self.path.with_name(
            self.path.name + ".head-key")

    def __post_init__(self) -> None:
        if self.sample_every_n < 0:
            raise FieldError("sample_every_n", "must be >= 0 (0 records no nominal cycles)")
        _positive("head_export_s", self.head_export_s)
        _positive("recorder_before_s", self.recorder_before_s)
        _finite("recorder_after_s", self.recorder_after_s)
        if self.recorder_after_s < 0:
            raise FieldError("recorder_after_s", f"must be >= 0, not {self.recorder_after_s}")


@dataclass(frozen=True)
class Site:
    """A whole validated site file. Tag order in the file fixes the order of the envelope's
    actuator and sensor vectors."""

    source: Path
    site: SiteInfo
    devices: tuple[Device, ...]
    tags: tuple[Tag, ...]
    envelope: Envelope
    controller: ControllerSpec = field(default_factory=ControllerSpec)
    fallback: tuple[FallbackSpec, ...] = ()
    detection: Detection = field(default_factory=Detection)
    operation: Operation = field(default_factory=Operation)
    northbound: Northbound = field(default_factory=Northbound)
    audit: AuditSpec = field(default_factory=AuditSpec)
    fleet: FleetSpec | None = None
    commissioning: Commissioning = field(default_factory=Commissioning)

    @property
    def actuators(self) -> tuple[Tag, ...]:
        return tuple(t for t in self.tags if t.kind is TagKind.ACTUATOR)

    @property
    def sensors(self) -> tuple[Tag, ...]:
        return tuple(t for t in self.tags if t.kind is TagKind.SENSOR)

    def stale_after_ms(self, tag: Tag) -> float:
        """The staleness limit of ``tag``'s readings: its device's ``stale_after_ms`` when
        set, else ``detection.stale_after_ms`` when set, else the longer of
        ``DEFAULT_STALE_AFTER_MS`` and what the device can meet
        (:func:`min_stale_after_ms`). The loader refuses a written limit shorter than that."""
        device = next(d for d in self.devices if d.name == tag.device)
        if device.stale_after_ms is not None:
            return device.stale_after_ms
        if self.detection.stale_after_ms is not None:
            return self.detection.stale_after_ms
        return max(DEFAULT_STALE_AFTER_MS, min_stale_after_ms(device))

    def tag(self, name: str) -> Tag:
        for tag in self.tags:
            if tag.name == name:
                return tag
        raise KeyError(name)
