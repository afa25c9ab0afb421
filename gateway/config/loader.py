"""Read a site YAML file into :class:`~gateway.config.schema.Site`.

All problems in a file are collected and reported together, each as
``file:line: key.path: message``, so an engineer fixes a file in one pass. Nothing from the
file is executed: see :mod:`gateway.config.yamlsrc`.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import expr as ex
from gateway.config import schema as s
from gateway.config.sanity import audit_path_problems, sanity
from gateway.config.yamlsrc import Issue, Node, SourceError, load

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

E = TypeVar("E", bound=Enum)
T = TypeVar("T")


class ConfigError(Exception):
    """The site file is invalid. ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line))
        super().__init__("\n".join(str(i) for i in self.issues))


class Abort(Exception):
    """A value is missing or malformed; the error is already recorded."""


class Ctx:
    """The issues found so far, and the names of the items that failed to read.

    An item that fails (a device, tag, limits entry or model row) has its error recorded once;
    later checks that refer to it by name consult these sets and stay silent, so that one
    mistake is reported as that mistake and not also as "unknown device", "not a tag", ...
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[Issue] = []
        self.failed_devices: set[str] = set()
        self.failed_tags: set[str] = set()
        self.failed_limits: set[str] = set()
        self.failed_models: set[str] = set()

    def error(self, line: int, path: str, message: str) -> None:
        self.issues.append(Issue(self.filename, line, path, message))


class Section:
    """A YAML mapping being read: typed getters, error recording, unknown-key detection."""

    def __init__(self, ctx: Ctx, node: Node, path: str) -> None:
        self.ctx = ctx
        self.node = node
        self.path = path
        if not isinstance(node.value, dict):
            ctx.error(node.line, path, f"must be a mapping, found {_kind(node)}")
            raise Abort
        self.items: dict[str, Node] = node.value
        self.used: set[str] = set()

    def sub_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line(self, key: str) -> int:
        return self.node.key_lines.get(key, self.node.line)

    def error(self, key: str, message: str) -> None:
        self.ctx.error(self.line(key), self.sub_path(key), message)

    def has(self, key: str) -> bool:
        return key in self.items

    def raw(self, key: str, required: bool) -> Node | None:
        self.used.add(key)
        node = self.items.get(key)
        if node is None:
            if required:
                self.ctx.error(self.node.line, self.sub_path(key), "required key is missing")
                raise Abort
            return None
        if node.value is None and required:
            self.error(key, "must have a value")
            raise Abort
        return node

    def _get(self, key: str, required: bool, conv: Callable[[Node, str], T]) -> T | None:
        node = self.raw(key, required)
        if node is None:
            return None
        if node.value is None:
            # `max_rate_per_s:` with the value forgotten must not silently mean "no rate limit"
            # (or any other default): a key that is written needs a value.
            self.error(key, "must have a value")
            raise Abort
        return conv(node, self.sub_path(key))

    # Typed getters. `req_*` records an error and aborts when missing; `opt_*` returns None
    # when the key is absent. Either records an error and aborts when the key has no value.
    def req_str(self, key: str) -> str:
        return _need(self._get(key, True, self._str))

    def opt_str(self, key: str) -> str | None:
        return self._get(key, False, self._str)

    def req_float(self, key: str) -> float:
        return _need(self._get(key, True, self._float))

    def opt_float(self, key: str) -> float | None:
        return self._get(key, False, self._float)

    def req_int(self, key: str) -> int:
        return _need(self._get(key, True, self._int))

    def opt_int(self, key: str) -> int | None:
        return self._get(key, False, self._int)

    def opt_bool(self, key: str) -> bool | None:
        return self._get(key, False, self._bool)

    def req_enum(self, key: str, enum: type[E]) -> E:
        return _need(self._get(key, True, lambda n, p: self._enum(n, p, enum)))

    def opt_enum(self, key: str, enum: type[E]) -> E | None:
        return self._get(key, False, lambda n, p: self._enum(n, p, enum))

    def opt_floats(self, key: str) -> tuple[float, ...] | None:
        return self._get(key, False, lambda n, p: tuple(
            self._float(item, f"{p}[{i}]") for i, item in enumerate(self._seq(n, p))
        ))

    def opt_strs(self, key: str) -> tuple[str, ...] | None:
        return self._get(key, False, lambda n, p: tuple(
            self._str(item, f"{p}[{i}]") for i, item in enumerate(self._seq(n, p))
        ))

    def map(self, key: str, required: bool = False) -> Section | None:
        node = self.raw(key, required)
        if node is None or node.value is None:
            return None
        return Section(self.ctx, node, self.sub_path(key))

    def items_of(self, key: str) -> list[tuple[Node, str]]:
        node = self.raw(key, False)
        if node is None or node.value is None:
            return []
        path = self.sub_path(key)
        return [(item, f"{path}[{i}]") for i, item in enumerate(self._seq(node, path))]

    def entries(self) -> Iterator[tuple[str, Node, str]]:
        """Every key of this mapping (for mappings keyed by name, e.g. tags)."""
        for key, node in self.items.items():
            self.used.add(key)
            yield key, node, self.sub_path(key)

    def finish(self) -> None:
        for key in self.items:
            if key not in self.used:
                self.error(key, "unknown key")

    # Converters.
    def _fail(self, node: Node, path: str, message: str) -> Abort:
        self.ctx.error(node.line, path, message)
        return Abort()

    def _str(self, node: Node, path: str) -> str:
        if not isinstance(node.value, str):
            raise self._fail(node, path, f"must be text, found {_kind(node)}")
        return node.value

    def _float(self, node: Node, path: str) -> float:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(node, path, f"must be a number, found {_kind(node)}")
        result = float(value)
        if not math.isfinite(result):
            raise self._fail(node, path, f"must be a finite number, not {result}")
        return result

    def _int(self, node: Node, path: str) -> int:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(node, path, f"must be a whole number, found {_kind(node)}")
        return value

    def _bool(self, node: Node, path: str) -> bool:
        if not isinstance(node.value, bool):
            raise self._fail(node, path, f"must be true or false, found {_kind(node)}")
        return node.value

    def _enum(self, node: Node, path: str, enum: type[E]) -> E:
        choices = ", ".join(str(m.value) for m in enum)
        if not isinstance(node.value, str):
            raise self._fail(node, path, f"must be one of {choices}; found {_kind(node)}")
        for member in enum:
            if member.value == node.value:
                return member
        raise self._fail(node, path, f"must be one of {choices}; not {node.value!r}")

    def _seq(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node.value, list):
            raise self._fail(node, path, f"must be a list, found {_kind(node)}")
        return node.value


def _need(value: T | None) -> T:
    if value is None:
        raise Abort
    return value


def _kind(node: Node) -> str:
    value = node.value
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"text {shown!r}"
    return "a list" if isinstance(value, list) else "a mapping"


@contextmanager
def _section(ctx: Ctx) -> Iterator[None]:
    """Run one part of the reading; a recorded error aborts only that part."""
    with suppress(Abort):
        yield


def _build(m: Section, cls: Callable[..., T], **kwargs: Any) -> T:
    """Construct a dataclass, mapping its FieldError to the key's line in ``m``."""
    try:
        return cls(**kwargs)
    except s.FieldError as exc:
        m.error(exc.key, exc.message)
        raise Abort from None


def _build_at(m: Section, key: str, cls: Callable[..., T], **kwargs: Any) -> T:
    """Construct a dataclass read from the single value at ``key`` of ``m`` (e.g. a node id
    written as text); any FieldError is reported at ``key``."""
    try:
        return cls(**kwargs)
    except s.FieldError as exc:
        m.error(key, exc.message)
        raise Abort from None


# --------------------------------------------------------------------------- sections


def _read_site_info(root: Section) -> s.SiteInfo:
    m = _need(root.map("site", required=True))
    info = _build(m, s.SiteInfo, name=m.req_str("name"),
                  cycle_ms=_default(m.opt_float("cycle_ms"), 100.0),
                  description=m.opt_str("description") or "")
    m.finish()
    return info


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


def _read_security(m: Section | None) -> s.OpcUaSecurity:
    if m is None:
        return s.OpcUaSecurity()
    path = m.opt_str
    sec = _build(
        m, s.OpcUaSecurity,
        policy=_default(m.opt_enum("policy", s.SecurityPolicy), s.SecurityPolicy.NONE),
        mode=_default(m.opt_enum("mode", s.SecurityMode), s.SecurityMode.NONE),
        certificate=_path(path("certificate")), private_key=_path(path("private_key")),
        server_certificate=_path(path("server_certificate")),
        username=m.opt_str("username"), password_env=m.opt_str("password_env"),
    )
    m.finish()
    return sec


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def _read_modbus_ref(m: Section) -> s.ModbusRef:
    return _build(m, s.ModbusRef, table=m.req_enum("table", s.Table),
                  address=m.req_int("address"))


def _read_devices(ctx: Ctx, root: Section) -> dict[str, s.Device]:
    devices: dict[str, s.Device] = {}
    top = root.map("devices", required=True)
    assert top is not None
    for name, node, path in top.entries():
        with _section(ctx):
            m = Section(ctx, node, path)
            protocol = m.req_enum("protocol", s.Protocol)
            device: s.Device
            if protocol is s.Protocol.MODBUS_TCP:
                hb = m.map("heartbeat")
                heartbeat = None
                if hb is not None:
                    heartbeat = _read_modbus_ref(hb)
                    hb.finish()
                device = _build(
                    m, s.ModbusDevice, name=name, host=m.req_str("host"),
                    port=_default(m.opt_int("port"), 502), unit=_default(m.opt_int("unit"), 1),
                    timeout_ms=_default(m.opt_float("timeout_ms"), 1000.0),
                    poll_ms=_default(m.opt_float("poll_ms"), 100.0), heartbeat=heartbeat,
                    separate_write_connection=_default(
                        m.opt_bool("separate_write_connection"), False),
                    stale_after_ms=m.opt_float("stale_after_ms"),
                )
            else:
                hb_node = m.opt_str("heartbeat")
                device = _build(
                    m, s.OpcUaDevice, name=name, endpoint=m.req_str("endpoint"),
                    security=_read_security(m.map("security")),
                    timeout_ms=_default(m.opt_float("timeout_ms"), 2000.0),
                    poll_ms=_default(m.opt_float("poll_ms"), 100.0),
                    subscribe=_default(m.opt_bool("subscribe"), True),
                    heartbeat=None if hb_node is None
                    else _build_at(m, "heartbeat", s.OpcUaRef, node=hb_node),
                    stale_after_ms=m.opt_float("stale_after_ms"),
                )
            m.finish()
            devices[name] = device
        if name not in devices:
            ctx.failed_devices.add(name)
    if not top.items:
        top.ctx.error(top.node.line, "devices", "must define at least one device")
    return devices


def _read_tags(ctx: Ctx, root: Section, devices: dict[str, s.Device]) -> dict[str, s.Tag]:
    tags: dict[str, s.Tag] = {}
    top = root.map("tags", required=True)
    assert top is not None
    for name, node, path in top.entries():
        with _section(ctx):
            # The expression parser's own pattern: every tag can then be named in expressions.
            if not ex.is_name(name):
                top.error(name, "tag names must be identifiers (ASCII letters, digits and _, "
                                "not starting with a digit)")
                raise Abort
            m = Section(ctx, node, path)
            device_name = m.req_str("device")
            device = devices.get(device_name)
            ref: s.ModbusRef | s.OpcUaRef
            if device is None:
                if device_name not in ctx.failed_devices:
                    m.error("device", f"unknown device {device_name!r}")
                raise Abort
            if isinstance(device, s.ModbusDevice):
                if m.has("node"):
                    m.error("node", "a Modbus device's tags use table and address")
                    raise Abort
                ref = _read_modbus_ref(m)
            else:
                if m.has("table") or m.has("address"):
                    m.error("table" if m.has("table") else "address",
                            "an OPC UA device's tags use node")
                    raise Abort
                ref = _build(m, s.OpcUaRef, node=m.req_str("node"))
            rng = m.opt_floats("range")
            if rng is not None and len(rng) != 2:
                m.error("range", f"must be [min, max], found {len(rng)} values")
                raise Abort
            default_type = s.WireType.FLOAT32
            if isinstance(ref, s.ModbusRef) and ref.table.is_bits:
                default_type = s.WireType.BOOL
            tag = _build(
                m, s.Tag, name=name, device=device_name, kind=m.req_enum("kind", s.TagKind),
                ref=ref, wire_type=_default(m.opt_enum("type", s.WireType), default_type),
                byte_order=_default(m.opt_enum("byte_order", s.Order), s.Order.BIG),
                word_order=_default(m.opt_enum("word_order", s.Order), s.Order.BIG),
                scale=_default(m.opt_float("scale"), 1.0),
                offset=_default(m.opt_float("offset"), 0.0), unit=m.opt_str("unit") or "",
                range_min=None if rng is None else rng[0],
                range_max=None if rng is None else rng[1],
                safe_value=_read_safe_default(m),
                on_shutdown=_default(m.opt_enum("on_shutdown", s.ShutdownAction),
                                     s.ShutdownAction.SAFE),
            )
            m.finish()
            tags[name] = tag
        if name not in tags:
            ctx.failed_tags.add(name)
    # A tag that failed to read may have been the actuator; its own error is already reported.
    if (not any(t.kind is s.TagKind.ACTUATOR for t in tags.values()) and top.items
            and not ctx.failed_tags):
        top.ctx.error(top.node.line, "tags", "must define at least one actuator")
    _check_addresses(top, tags, devices)
    return tags


def _safe_rows(m: Section) -> list[tuple[Node, str]] | None:
    """The rows of a conditional ``safe_value`` (a list), or None for a plain number."""
    node = m.items.get("safe_value")
    if node is None or not isinstance(node.value, list):
        return None
    return m.items_of("safe_value")


def _read_safe_default(m: Section) -> float | None:
    """An actuator's plain safe value: the number, or the last row of a conditional table.

    A conditional table (``safe_value: [{when: "level < 0.3", value: 0}, {value: 20}]``) is a
    cause-and-effect table read top to bottom: every row but the last has ``when`` and
    ``value``, the last has only ``value`` (what holds when no condition does). The
    conditions are parsed with the envelope, once every sensor is known
    (:func:`_read_safe_cases`). Raises :class:`Abort` after reporting a malformed table.
    """
    rows = _safe_rows(m)
    if rows is None:
        return m.opt_float("safe_value")
    if not rows:
        m.error("safe_value", "a conditional safe value needs at least one row")
        raise Abort
    default: float | None = None
    for i, (node, path) in enumerate(rows):
        rm = Section(m.ctx, node, path)
        last = i == len(rows) - 1
        if last and rm.has("when"):
            rm.error("when", "the last row is the default: it has only `value` (what holds "
                             "when no condition does)")
            raise Abort
        if not last and not rm.has("when"):
            rm.error("value", "every row but the last needs `when` (rows after a row without "
                              "`when` would never apply)")
            raise Abort
        value = rm.req_float("value")
        rm.used.add("when")
        rm.finish()
        if last:
            default = value
    return default


def _read_safe_cases(ctx: Ctx, root: Section, tags: dict[str, s.Tag], names: _Names,
                     limits: dict[str, s.ActuatorLimits]) -> list[s.SafeCase]:
    """The conditional rows of every actuator's safe value, checked against its limits."""
    top = root.items.get("tags")
    if top is None or not isinstance(top.value, dict):
        return []
    cases: list[s.SafeCase] = []
    for name, node in top.value.items():
        tag = tags.get(name)
        if tag is None or tag.kind is not s.TagKind.ACTUATOR or not isinstance(node.value, dict):
            continue
        tm = Section(ctx, node, f"tags.{name}")
        rows = _safe_rows(tm)
        if rows is None:
            continue
        for rnode, rpath in rows[:-1]:
            with _section(ctx):
                rm = Section(ctx, rnode, rpath)
                cond = _read_condition(rm, "when", names)
                value = rm.req_float("value")
                lim = limits.get(name)
                if lim is not None and lim.allowed is not None and value not in lim.allowed:
                    rm.error("value", f"{value} is not one of the allowed values "
                                      f"{list(lim.allowed)}")
                    raise Abort
                if lim is not None and not lim.min <= value <= lim.max:
                    rm.error("value", f"{value} is outside its own limits "
                                      f"[{lim.min}, {lim.max}]")
                    raise Abort
                try:
                    tag.check_encodable(value)
                except s.FieldError as exc:
                    rm.error("value", exc.message)
                    raise Abort from None
                cases.append(_build(rm, s.SafeCase, actuator=name, when=rm.req_str("when"),
                                    condition=cond.form.terms, op=s.ConditionOp(cond.op.value),
                                    rhs=cond.rhs, value=value))
    return cases


def _check_addresses(top: Section, tags: dict[str, s.Tag], devices: dict[str, s.Device]) -> None:
    """Two tags may not share a register, bit or node of the same device."""
    taken: dict[tuple[str, str, int | str], str] = {}
    for tag in tags.values():
        slots: list[tuple[str, str, int | str]]
        if isinstance(tag.ref, s.ModbusRef):
            table = tag.ref.table
            # Holding and input registers, coils and discrete inputs are separate tables.
            slots = [(tag.device, table.value, tag.ref.address + i)
                     for i in range(tag.register_count)]
            if tag.ref.address + tag.register_count - 1 > 65535:
                top.error(tag.name, f"{tag.wire_type.value} at address {tag.ref.address} "
                                    "runs past register 65535")
        else:
            slots = [(tag.device, "node", tag.ref.node)]
        for slot in slots:
            other = taken.get(slot)
            if other is not None:
                top.error(tag.name, f"address overlaps tag {other!r} on device {tag.device!r}")
                break
            taken[slot] = tag.name
    for device in devices.values():
        hb = device.heartbeat
        if isinstance(device, s.ModbusDevice) and isinstance(hb, s.ModbusRef):
            other = taken.get((device.name, hb.table.value, hb.address))
            if other is not None:
                top.error(other, f"address is the heartbeat of device {device.name!r}")
        elif isinstance(hb, s.OpcUaRef) and (device.name, "node", hb.node) in taken:
            top.error(taken[(device.name, "node", hb.node)],
                      f"node is the heartbeat of device {device.name!r}")


class _Names:
    """Tag names known to expressions, by kind, and the names of tags that failed to read
    (``failed``: their kind is unknown and their error is already reported)."""

    def __init__(self, tags: dict[str, s.Tag], failed: set[str]) -> None:
        self.actuators = {n for n, t in tags.items() if t.kind is s.TagKind.ACTUATOR}
        self.sensors = {n for n, t in tags.items() if t.kind is s.TagKind.SENSOR}
        self.failed = frozenset(failed)

    def require(self, form: ex.LinearForm, allow: str, m: Section, key: str) -> None:
        """Check the names of ``form``, read from ``key`` of ``m``; ``allow`` is 'any' or 'sensor'.

        The first name that is unknown or not allowed is reported at ``key``. Raises
        :class:`Abort` after reporting, and also, without reporting, if the form names a tag
        that failed to read: the expression cannot be checked, and a second message about that
        tag would mislead.
        """
        for name in form.names:
            if name in self.failed:
                continue
            if name not in self.actuators and name not in self.sensors:
                m.error(key, f"unknown tag {name!r}")
                raise Abort
            if allow == "sensor" and name not in self.sensors:
                m.error(key, f"{name!r} is an actuator; only sensors may appear here")
                raise Abort
        if any(name in self.failed for name in form.names):
            raise Abort

    def reserved(self) -> frozenset[str]:
        """Names the envelope compiler gives its own slots; constraints and interlocks may not
        take them, as verdicts, the audit log and the dashboard name violations by slot."""
        # Must match gateway.envelope.compiled (ACTUATOR_SLOTS, INFEASIBLE, "predict.<sensor>");
        # not imported from there because the envelope depends on the config, not the reverse.
        return frozenset(
            {f"{a}.{slot}" for a in self.actuators for slot in _ACTUATOR_SLOTS}
            | {f"predict.{sensor}" for sensor in self.sensors}
            | {"envelope.clamp_infeasible"}
        )


_ACTUATOR_SLOTS = ("finite", "min", "max", "allowed", "rate", "step")


def _parse(m: Section, key: str, fn: Callable[[str], T]) -> T:
    text = m.req_str(key)
    try:
        return fn(text)
    except ex.ExprError as exc:
        m.error(key, f"{exc} in {text!r}")
        raise Abort from None


_CONDITION_OPS = frozenset({ex.Comparison.LT, ex.Comparison.LE, ex.Comparison.GT,
                            ex.Comparison.GE})


def _read_condition(m: Section, key: str, names: _Names) -> ex.LinearRelation:
    rel = _parse(m, key, lambda t: ex.parse_relation(t, _CONDITION_OPS))
    names.require(rel.form, "sensor", m, key)
    return rel


def _read_envelope(ctx: Ctx, root: Section, tags: dict[str, s.Tag], names: _Names) -> s.Envelope:
    m = _need(root.map("envelope", required=True))
    limits: dict[str, s.ActuatorLimits] = {}
    lim_map = m.map("limits", required=True)
    assert lim_map is not None
    for name, node, path in lim_map.entries():
        if name in names.failed:
            continue  # the tag's own error is reported; its limits cannot be checked
        with _section(ctx):
            if name not in names.actuators:
                what = "a sensor" if name in names.sensors else "not a tag"
                lim_map.error(name, f"limits name actuators; {name!r} is {what}")
                raise Abort
            lm = Section(ctx, node, path)
            allowed = lm.opt_floats("allowed")
            if allowed is not None and not allowed:
                lm.error("allowed", "must list at least one value")
                raise Abort
            low = lm.opt_float("min")
            high = lm.opt_float("max")
            if allowed and (low is None or high is None):
                low = min(allowed) if low is None else low
                high = max(allowed) if high is None else high
            if low is None:
                lm.error("min", "required (or give allowed values)")
                raise Abort
            if high is None:
                lm.error("max", "required (or give allowed values)")
                raise Abort
            lim = _build(
                lm, s.ActuatorLimits, actuator=name, min=low, max=high,
                max_rate_per_s=lm.opt_float("max_rate_per_s"), max_step=lm.opt_float("max_step"),
                allowed=allowed, policy=_default(lm.opt_enum("policy", s.Policy), s.Policy.CLAMP),
            )
            lm.finish()
            tag = tags[name]
            safe = tag.safe_value
            assert safe is not None
            if lim.allowed is not None and safe not in lim.allowed:
                ctx.error(tag_line(root, name), f"tags.{name}.safe_value",
                          f"{safe} is not one of the allowed values {list(lim.allowed)}")
            elif not lim.min <= safe <= lim.max:
                ctx.error(tag_line(root, name), f"tags.{name}.safe_value",
                          f"{safe} is outside its own limits [{lim.min}, {lim.max}]")
            limits[name] = lim
        if name not in limits:
            ctx.failed_limits.add(name)
    for name in sorted(names.actuators - set(limits) - ctx.failed_limits):
        ctx.error(lim_map.node.line, f"envelope.limits.{name}",
                  "every actuator needs limits (min and max, or allowed values)")

    constraints: list[s.LinearConstraint] = []
    seen: dict[str, str] = {}
    reserved = names.reserved()
    for node, path in m.items_of("constraints"):
        with _section(ctx):
            cm = Section(ctx, node, path)
            cname = cm.req_str("name")
            _unique(cm, seen, reserved, cname, path)
            rel = _parse(cm, "expr", lambda t: ex.parse_relation(
                t, frozenset({ex.Comparison.LE, ex.Comparison.GE})))
            names.require(rel.form, "any", cm, "expr")
            sign = 1.0 if rel.op is ex.Comparison.LE else -1.0
            constraints.append(_build(
                cm, s.LinearConstraint, name=cname, expr=cm.req_str("expr"),
                terms=tuple((n, sign * c) for n, c in rel.form.terms), rhs=sign * rel.rhs + 0.0,
                policy=_default(cm.opt_enum("policy", s.Policy), s.Policy.REJECT),
            ))
            cm.finish()

    interlocks: list[s.Interlock] = []
    for node, path in m.items_of("interlocks"):
        with _section(ctx):
            im = Section(ctx, node, path)
            iname = im.req_str("name")
            _unique(im, seen, reserved, iname, path)
            cond = _read_condition(im, "when", names)
            then: list[s.Tightening] = []
            single = im.items.get("then")
            if single is not None and isinstance(single.value, str):
                im.used.add("then")  # one tightening may be written without a list
                then_items = [(single, f"{path}.then")]
            else:
                then_items = im.items_of("then")
            for tnode, tpath in then_items:
                then.append(_read_tightening(ctx, tnode, tpath, names, limits))
            interlocks.append(_build(
                im, s.Interlock, name=iname, when=im.req_str("when"),
                condition=cond.form.terms, op=s.ConditionOp(cond.op.value), rhs=cond.rhs,
                then=tuple(then),
                policy=_default(im.opt_enum("policy", s.Policy), s.Policy.CLAMP),
            ))
            im.finish()

    prediction = None
    pm = m.map("prediction")
    if pm is not None:
        with _section(ctx):
            prediction = _read_prediction(ctx, pm, names)
    safe_cases = _read_safe_cases(ctx, root, tags, names, limits)
    env = _build(m, s.Envelope, limits=tuple(limits[t] for t in tags if t in limits),
                 constraints=tuple(constraints), interlocks=tuple(interlocks),
                 safe_cases=tuple(safe_cases),
                 prediction=prediction,
                 nonfinite_policy=_default(m.opt_enum("nonfinite_policy", s.Policy),
                                           s.Policy.TRIP))
    m.finish()
    return env


def tag_line(root: Section, name: str) -> int:
    tags = root.items.get("tags")
    if tags is None or not isinstance(tags.value, dict) or name not in tags.value:
        return root.node.line
    node = tags.value[name]
    if isinstance(node.value, dict) and "safe_value" in node.key_lines:
        return node.key_lines["safe_value"]
    return tags.key_lines.get(name, node.line)


def _unique(m: Section, seen: dict[str, str], reserved: frozenset[str], name: str,
            path: str) -> None:
    if not name.strip():
        m.error("name", "must not be empty")
        raise Abort
    if name in reserved:
        m.error("name", f"{name!r} is reserved for a built-in constraint")
        raise Abort
    if name in seen:
        m.error("name", f"{name!r} is already the name of {seen[name]}")
        raise Abort
    seen[name] = path


def _read_tightening(ctx: Ctx, node: Node, path: str, names: _Names,
                     limits: dict[str, s.ActuatorLimits]) -> s.Tightening:
    def fail(message: str) -> Abort:
        ctx.error(node.line, path, message)
        return Abort()

    if not isinstance(node.value, str):
        raise fail("must be text such as 'inflow_valve <= 0'")
    try:
        rel = ex.parse_relation(node.value, frozenset({ex.Comparison.LE, ex.Comparison.GE}))
    except ex.ExprError as exc:
        raise fail(f"{exc} in {node.value!r}") from None
    if len(rel.form.terms) != 1 or rel.form.terms[0][1] <= 0:
        raise fail("must bound one actuator, e.g. 'inflow_valve <= 0'")
    name, coef = rel.form.terms[0]
    if name in names.failed:
        raise Abort  # the tag's own error is reported
    if name not in names.actuators:
        raise fail(f"{name!r} is not an actuator")
    value = rel.rhs / coef
    lim = limits.get(name)
    if lim is not None and not lim.min <= value <= lim.max:
        raise fail(f"bound {value} is outside {name}'s limits [{lim.min}, {lim.max}]")
    return s.Tightening(name, rel.op is ex.Comparison.LE, value)


def _read_prediction(ctx: Ctx, pm: Section, names: _Names) -> s.Prediction:
    models: list[s.SensorModel] = []
    mm = _need(pm.map("model", required=True))
    for sensor, node, _path in mm.entries():
        with _section(ctx):
            if sensor in names.failed:
                raise Abort  # the tag's own error is reported
            if sensor not in names.sensors:
                mm.error(sensor, f"{sensor!r} is not a sensor")
                raise Abort
            if not isinstance(node.value, str):
                mm.error(sensor, "must be a linear expression (the sensor's rate per second)")
                raise Abort
            try:
                form = ex.parse_form(node.value)
            except ex.ExprError as exc:
                mm.error(sensor, f"{exc} in {node.value!r}")
                raise Abort from None
            names.require(form, "any", mm, sensor)
            models.append(s.SensorModel(sensor, node.value, form.terms, form.constant))
        if not models or models[-1].sensor != sensor:
            ctx.failed_models.add(sensor)
    keep: list[s.KeepRange] = []
    km = _need(pm.map("keep", required=True))
    modelled = {m.sensor for m in models}
    for sensor, node, path in km.entries():
        with _section(ctx):
            if sensor in names.failed or sensor in ctx.failed_models:
                raise Abort  # the tag's or the model row's own error is reported
            if sensor not in names.sensors:
                known = sensor in names.actuators
                km.error(sensor, f"{sensor!r} is not a sensor" if known
                         else f"unknown tag {sensor!r}")
                raise Abort
            if sensor not in modelled:
                km.error(sensor, f"{sensor!r} has no model row, so its prediction is constant; "
                                 "add it under prediction.model")
                raise Abort
            rm = Section(ctx, node, path)
            low, high = rm.opt_float("min"), rm.opt_float("max")
            if low is None and high is None:
                rm.error("min", "give min, max or both")
                raise Abort
            keep.append(_build(rm, s.KeepRange, sensor=sensor,
                               min=-math.inf if low is None else low,
                               max=math.inf if high is None else high))
            rm.finish()
    if not keep and km.items:
        raise Abort  # every entry failed, each with its own error; "must name one" would mislead
    pred = _build(pm, s.Prediction, step_s=pm.req_float("step_s"),
                  horizon_steps=pm.req_int("horizon_steps"), model=tuple(models),
                  keep=tuple(keep),
                  policy=_default(pm.opt_enum("policy", s.Policy), s.Policy.REJECT))
    pm.finish()
    return pred


def _read_controller(ctx: Ctx, root: Section, names: _Names, base: Path) -> s.ControllerSpec:
    m = root.map("controller")
    if m is None:
        return s.ControllerSpec()
    model = m.opt_str("model")
    registry = m.opt_str("registry")
    spec = _build(
        m, s.ControllerSpec,
        kind=_default(m.opt_enum("kind", s.ControllerKind), s.ControllerKind.NONE),
        model=None if model is None else (base / model),
        registry=None if registry is None else (base / registry), name=m.opt_str("name"),
        sha256=m.opt_str("sha256"), inputs=m.opt_strs("inputs") or (),
        outputs=m.opt_strs("outputs") or (),
        input_offset=m.opt_floats("input_offset") or (),
        input_scale=m.opt_floats("input_scale") or (),
        output_offset=m.opt_floats("output_offset") or (),
        output_scale=m.opt_floats("output_scale") or (),
        deadline_ms=_default(m.opt_float("deadline_ms"), 20.0),
        silence_timeout_ms=_default(m.opt_float("silence_timeout_ms"), 1000.0),
    )
    for name in spec.inputs:
        if name not in names.sensors and name not in names.actuators | names.failed:
            m.error("inputs", f"unknown tag {name!r}")
    for name in spec.outputs:
        if name not in names.actuators | names.failed:
            m.error("outputs", f"{name!r} is not an actuator")
    m.finish()
    return spec


def _read_fallback(ctx: Ctx, root: Section, names: _Names) -> tuple[s.FallbackSpec, ...]:
    m = root.map("fallback")
    specs: list[s.FallbackSpec] = []
    if m is None:
        return ()
    for name, node, path in m.entries():
        with _section(ctx):
            if name in names.failed:
                raise Abort  # the tag's own error is reported
            if name not in names.actuators:
                m.error(name, f"{name!r} is not an actuator")
                raise Abort
            fm = Section(ctx, node, path)
            rules: list[s.Rule] = []
            rule_items = fm.items_of("rules")
            for rnode, rpath in rule_items:
                with _section(ctx):
                    rm = Section(ctx, rnode, rpath)
                    cond = _read_condition(rm, "when", names)
                    rules.append(_build(rm, s.Rule, when=rm.req_str("when"),
                                        condition=cond.form.terms,
                                        op=s.ConditionOp(cond.op.value), rhs=cond.rhs,
                                        value=rm.req_float("value")))
                    rm.finish()
            measurement = fm.opt_str("measurement")
            if measurement is not None and measurement not in names.sensors | names.failed:
                fm.error("measurement", f"{measurement!r} is not a sensor")
                raise Abort
            kwargs: dict[str, Any] = dict(
                actuator=name, kind=fm.req_enum("kind", s.FallbackKind),
                measurement=measurement, setpoint=fm.opt_float("setpoint"),
                kp=_default(fm.opt_float("kp"), 0.0),
                ki_per_s=_default(fm.opt_float("ki_per_s"), 0.0),
                kd_s=_default(fm.opt_float("kd_s"), 0.0),
                reverse=_default(fm.opt_bool("reverse"), False), value=fm.opt_float("value"),
                rules=tuple(rules),
            )
            fm.finish()
            if len(rules) < len(rule_items):
                # A rule failed with its own error: the spec's checks (e.g. "must list at least
                # one rule") would run on a partial list and mislead.
                raise Abort
            specs.append(_build(fm, s.FallbackSpec, **kwargs))
    return tuple(specs)


def _read_simple(root: Section, key: str, cls: Callable[..., T],
                 fields: dict[str, Callable[[Section, str], Any]]) -> T:
    """A flat section whose keys map one to one onto the dataclass's fields.

    A key that is absent takes the dataclass's default; a key that is present must have a
    value (``divergence:`` with nothing after it is an error, never a silent default or None:
    the getters refuse it). Every bad key is reported, not only the first.
    """
    m = root.map(key)
    if m is None:
        return cls()
    kwargs: dict[str, Any] = {}
    failed = False
    for name, getter in fields.items():
        if not m.has(name):
            continue
        try:
            kwargs[name] = getter(m, name)
        except Abort:
            failed = True
    m.finish()
    if failed:
        raise Abort
    return _build(m, cls, **kwargs)


def _read_per_sensor(m: Section, key: str, names: _Names | None) -> tuple[tuple[str, float], ...]:
    """A mapping from sensor tag name to a finite number > 0 (``detection.max_rate_per_s``).

    Every bad entry is reported at its own line and key path: a name that is not a sensor (an
    actuator, or no tag at all), a value that is not a finite number > 0. ``names`` is None
    when the tags could not be read (their errors are reported); names are then not checked.
    Raises :class:`Abort` after reporting.
    """
    node = _need(m.raw(key, True))  # `max_rate_per_s:` with nothing after it is an error
    sub = Section(m.ctx, node, m.sub_path(key))
    pairs: list[tuple[str, float]] = []
    failed = False
    for name, item, path in sub.entries():
        try:
            if names is not None and name not in names.sensors:
                if name in names.failed:
                    raise Abort  # the tag's own error is reported
                sub.error(name, f"{name!r} is not a sensor" if name in names.actuators
                          else f"unknown tag {name!r}")
                raise Abort
            value = sub._float(item, path)
            if not value > 0:
                sub.error(name, f"must be > 0, not {value}")
                raise Abort
            pairs.append((name, value))
        except Abort:
            failed = True
    if failed:
        raise Abort
    return tuple(pairs)


def _read_modbus_tls(tm: Section, base: Path) -> s.ModbusTlsSpec:
    roles_map = tm.map("roles", required=True)
    assert roles_map is not None
    roles = [(name, roles_map._str(node, path)) for name, node, path in roles_map.entries()]
    kw: dict[str, Any] = {"roles": tuple(roles)}
    for key in ("certificate", "private_key", "client_ca"):
        kw[key] = base / tm.req_str(key)
    if tm.has("port"):
        kw["port"] = tm.req_int("port")
    spec = _build(tm, s.ModbusTlsSpec, **kw)
    tm.finish()
    return spec


def _read_northbound(ctx: Ctx, root: Section, base: Path,
                     controller: s.ControllerSpec | None = None) -> s.Northbound:
    m = root.map("northbound")
    if m is None:
        return s.Northbound()
    modbus = opcua = None
    mm = m.map("modbus")
    if mm is not None:
        with _section(ctx):
            kw: dict[str, Any] = {}
            for key in ("host",):
                if mm.has(key):
                    kw[key] = mm.req_str(key)
            for key in ("port", "unit"):
                if mm.has(key):
                    kw[key] = mm.req_int(key)
            for key in ("allow", "ai_clients"):
                if mm.has(key):
                    kw[key] = mm.opt_strs(key) or ()
            if mm.has("allow_any"):
                kw["allow_any"] = mm.opt_bool("allow_any")
            for key in ("max_connections", "max_per_source"):
                if mm.has(key):
                    kw[key] = mm.req_int(key)
            if mm.has("idle_timeout_s"):
                kw["idle_timeout_s"] = mm.req_float("idle_timeout_s")
            if mm.has("plain"):
                kw["plain"] = mm.opt_bool("plain")
            tm = mm.map("tls")
            if tm is not None:
                kw["tls"] = _read_modbus_tls(tm, base)
            modbus = _build(mm, s.ModbusServerSpec, **kw)
            mm.finish()
    om = m.map("opcua")
    if om is not None:
        with _section(ctx):
            users: list[s.OpcUaUser] = []
            for unode, upath in om.items_of("users"):
                with _section(ctx):
                    um = Section(ctx, unode, upath)
                    users.append(_build(um, s.OpcUaUser, name=um.req_str("name"),
                                        password_env=um.req_str("password_env"),
                                        role=um.opt_str("role") or "operator"))
                    um.finish()
            okw: dict[str, Any] = {"users": tuple(users),
                                   "security": _read_security(om.map("security"))}
            if om.has("endpoint"):
                okw["endpoint"] = om.req_str("endpoint")
            for key in ("allow_anonymous", "allow_insecure_passwords",
                        "allow_deprecated_policies"):
                if om.has(key):
                    okw[key] = om.opt_bool(key)
            if om.has("pki"):
                okw["pki"] = Path(om.req_str("pki"))
            lm = om.map("login")
            if lm is not None:
                lkw: dict[str, Any] = {}
                if lm.has("max_failures"):
                    lkw["max_failures"] = lm.req_int("max_failures")
                for key in ("window_s", "delay_s", "max_delay_s"):
                    if lm.has(key):
                        lkw[key] = lm.req_float(key)
                okw["login"] = _build(lm, s.LoginThrottleSpec, **lkw)
                lm.finish()
            opcua = _build(om, s.OpcUaServerSpec, **okw)
            om.finish()
    http = None
    hm = m.map("http")
    if hm is not None:
        with _section(ctx):
            hkw: dict[str, Any] = {}
            if hm.has("host"):
                hkw["host"] = hm.req_str("host")
            if hm.has("port"):
                hkw["port"] = hm.req_int("port")
            for key in ("certificate", "private_key"):
                if hm.has(key):
                    hkw[key] = base / hm.req_str(key)
            http = _build(hm, s.HttpServerSpec, **hkw)
            hm.finish()
    mcp = None
    cm = m.map("mcp")
    if cm is not None:
        with _section(ctx):
            mcp = _read_mcp(ctx, cm, base, controller)
    m.finish()
    return s.Northbound(modbus=modbus, opcua=opcua, http=http, mcp=mcp)


def _read_mcp(ctx: Ctx, cm: Section, base: Path,
              controller: s.ControllerSpec | None) -> s.McpServerSpec:
    """``northbound.mcp``: the MCP server and its agents (token files relative to the site
    file)."""
    agents: list[s.McpAgent] = []
    for anode, apath in cm.items_of("agents"):
        with _section(ctx):
            am = Section(ctx, anode, apath)
            akw: dict[str, Any] = {"name": am.req_str("name"), "role": am.req_str("role")}
            if am.has("token_file"):
                akw["token_file"] = base / am.req_str("token_file")
            if am.has("token_env"):
                akw["token_env"] = am.req_str("token_env")
            if am.has("calls_per_s"):
                akw["calls_per_s"] = am.req_float("calls_per_s")
            if am.has("burst"):
                akw["burst"] = am.req_int("burst")
            agent = _build(am, s.McpAgent, **akw)
            if (agent.role == "ai" and controller is not None
                    and controller.kind is not s.ControllerKind.EXTERNAL):
                # Its proposals would never be used: accepting them would tell it they count.
                am.error("role", "an `ai` agent proposes as an external AI: the site's "
                                 "controller.kind must be external")
            agents.append(agent)
            am.finish()
    kw: dict[str, Any] = {"agents": tuple(agents)}
    for key in ("host", "path"):
        if cm.has(key):
            kw[key] = cm.req_str(key)
    if cm.has("port"):
        kw["port"] = cm.req_int("port")
    for key in ("certificate", "private_key"):
        if cm.has(key):
            kw[key] = base / cm.req_str(key)
    if not cm.has("agents"):
        cm.error("agents", "list at least one agent")
        raise Abort
    spec = _build(cm, s.McpServerSpec, **kw)
    cm.finish()
    return spec


def _rebase_opcua(nb: s.Northbound, base: Path) -> s.Northbound:
    """The northbound OPC UA server's certificate, key and store, relative to the site file."""
    if nb.opcua is None:
        return nb
    sec = nb.opcua.security
    sec = dataclasses.replace(
        sec, certificate=None if sec.certificate is None else base / sec.certificate,
        private_key=None if sec.private_key is None else base / sec.private_key)
    return dataclasses.replace(nb, opcua=dataclasses.replace(nb.opcua, security=sec,
                                                             pki=base / nb.opcua.pki))


_SECTIONS = ("site", "devices", "tags", "envelope", "controller", "fallback", "detection",
             "operation", "northbound", "audit", "fleet", "commissioning")


def load_config(path: str | Path) -> s.Site:
    """Read and validate the site file at ``path``.

    Raises :class:`ConfigError` listing every problem as ``file:line: key.path: message``.
    Relative paths inside the file (models, certificates, the audit database, the candidate
    site) are resolved against the file's folder. A candidate site
    (``commissioning.candidate``) is loaded and checked the same way, its own problems named
    in its own file; it must have this site's tags in the same order, and cannot name a
    candidate of its own.
    """
    return _load_config(path, candidate_of=None)


def _load_config(path: str | Path, candidate_of: str | None) -> s.Site:
    source = Path(path)
    name = str(path)
    try:
        root_node = load(source)
    except SourceError as exc:
        raise ConfigError([exc.issue]) from None
    ctx = Ctx(name)
    root = Section(ctx, root_node, "")
    base = source.parent
    site_info = devices = tags = envelope = None
    with _section(ctx):
        site_info = _read_site_info(root)
    with _section(ctx):
        devices = _read_devices(ctx, root)
    if devices is not None:
        with _section(ctx):
            tags = _read_tags(ctx, root, devices)
    result: dict[str, Any] = {}
    if tags is not None:
        names = _Names(tags, ctx.failed_tags)
        with _section(ctx):
            envelope = _read_envelope(ctx, root, tags, names)
        with _section(ctx):
            result["controller"] = _read_controller(ctx, root, names, base)
        with _section(ctx):
            result["fallback"] = _read_fallback(ctx, root, names)
    with _section(ctx):
        known = None if tags is None else _Names(tags, ctx.failed_tags)
        result["detection"] = _read_simple(root, "detection", s.Detection, {
            "divergence": lambda m, k: m.opt_bool(k),
            "divergence_method": lambda m, k: m.opt_enum(k, s.DivergenceMethod),
            **{k: (lambda m, k: m.opt_float(k)) for k in (
                "divergence_drift", "divergence_threshold", "violation_window_s",
                "stale_after_ms", "canary_period_s", "canary_tolerance", "input_range_margin",
                "gross_violation")},
            **{k: (lambda m, k: m.opt_int(k)) for k in ("violation_max", "deadline_misses_max")},
            **{k: (lambda m, k: _read_per_sensor(m, k, known)) for k in (
                "frozen_after_s", "max_rate_per_s")},
        })
    with _section(ctx):
        result["operation"] = _read_simple(root, "operation", s.Operation, {
            "start_mode": lambda m, k: m.opt_enum(k, s.StartMode),
            "clean_shadow_s": lambda m, k: m.opt_float(k),
            "bypass_max_s": lambda m, k: m.opt_float(k),
            "bypass_max_concurrent": lambda m, k: m.opt_int(k),
            "bypass_second_approval_s": lambda m, k: m.opt_float(k),
            "two_person_change": lambda m, k: m.opt_bool(k),
        })
    with _section(ctx):
        result["northbound"] = _rebase_opcua(
            _read_northbound(ctx, root, base, result.get("controller")), base)
    with _section(ctx):
        audit = _read_simple(root, "audit", s.AuditSpec, {
            "path": lambda m, k: Path(m.req_str(k)),
            "sample_every_n": lambda m, k: m.opt_int(k),
            "recorder_before_s": lambda m, k: m.opt_float(k),
            "recorder_after_s": lambda m, k: m.opt_float(k),
            "head_export_s": lambda m, k: m.opt_float(k),
            "head_sinks": lambda m, k: tuple(Path(p) for p in m.opt_strs(k) or ()),
            "key": lambda m, k: Path(m.req_str(k)),
            "required": lambda m, k: m.opt_bool(k),
        })
        result["audit"] = dataclasses.replace(
            audit, path=base / audit.path, head_sinks=tuple(base / p for p in audit.head_sinks),
            key=None if audit.key is None else base / audit.key)
    with _section(ctx):
        result["fleet"] = _read_fleet(root, base, site_info)
    with _section(ctx):
        result["commissioning"] = _read_commissioning(root, base, candidate_of)
    for key in root.items:
        if key not in _SECTIONS:
            root.error(key, f"unknown section (expected one of: {', '.join(_SECTIONS)})")
    if ctx.issues or site_info is None or devices is None or tags is None or envelope is None:
        if not ctx.issues:  # every abort records an issue first; this guards a broken reader
            ctx.error(root_node.line, "", "invalid site file")
        raise ConfigError(ctx.issues)
    site = s.Site(source=source, site=site_info, devices=tuple(devices.values()),
                  tags=tuple(tags.values()), envelope=envelope, **result)
    _check_sanity(ctx, root, site)
    _prove(ctx, root, site)
    if site.commissioning.candidate is not None:
        site = _with_candidate(ctx, root, site)
    return site


def _read_fleet(root: Section, base: Path, info: s.SiteInfo | None) -> s.FleetSpec | None:
    """``fleet:``; ``site_id`` defaults to the site's name (an error at ``fleet.site_id``
    when that name is not a subject token)."""
    m = root.map("fleet")
    if m is None:
        return None
    kwargs: dict[str, Any] = {"url": m.req_str("url")}
    site_id = m.opt_str("site_id")
    if site_id is None and info is None:
        raise Abort  # the site section's own error is already recorded
    kwargs["site_id"] = site_id if site_id is not None else _need(info).name
    for key in ("ca", "certificate", "private_key", "credentials", "trusted_keys",
                "models_dir"):
        value = m.opt_str(key)
        if value is not None:
            kwargs[key] = base / value
    for key in ("heartbeat_s", "connect_timeout_s"):
        number = m.opt_float(key)
        if number is not None:
            kwargs[key] = number
    m.finish()
    return _build(m, s.FleetSpec, **kwargs)


def _read_commissioning(root: Section, base: Path, candidate_of: str | None
                        ) -> s.Commissioning:
    """The ``commissioning`` section: ``candidate`` (a site file's path, relative to this
    file). A candidate's own file may not name a candidate (no chains, no loops)."""
    m = root.map("commissioning")
    if m is None:
        return s.Commissioning()
    candidate = m.opt_str("candidate") if m.has("candidate") else None
    m.finish()
    if candidate is None:
        return s.Commissioning()
    if not candidate.strip():
        m.error("candidate", "must name a site file")
        raise Abort
    if candidate_of is not None:
        m.error("candidate", f"a candidate site cannot name a candidate of its own (this file "
                             f"is the candidate of {candidate_of})")
        raise Abort
    return s.Commissioning(candidate=base / candidate)


def _with_candidate(ctx: Ctx, root: Section, site: s.Site) -> s.Site:
    """Load the candidate ``site`` names, checked like a site (its problems are reported in
    its own file, with this file's ``commissioning.candidate`` line saying why it was read),
    and refuse one whose tags are not this site's, in the same order."""
    path = site.commissioning.candidate
    assert path is not None
    comm = root.map("commissioning")
    assert comm is not None
    line = comm.line("candidate")
    key = "commissioning.candidate"
    if not path.is_file():
        ctx.error(line, key, f"candidate site {str(path)!r} is not a readable file")
        raise ConfigError(ctx.issues)
    try:
        candidate = _load_config(path, candidate_of=str(site.source))
    except ConfigError as exc:
        ctx.error(line, key, f"the candidate site {str(path)!r} is invalid ({len(exc.issues)} "
                             "problem(s), listed with their own file and line)")
        raise ConfigError(ctx.issues + exc.issues) from None
    ours = [(t.name, t.kind.value) for t in site.tags]
    theirs = [(t.name, t.kind.value) for t in candidate.tags]
    if ours != theirs:
        for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
            if a != b:
                what = (f"tag {i + 1} is {b[0]!r} ({b[1]}) in the candidate but {a[0]!r} "
                        f"({a[1]}) here")
                break
        else:
            what = f"the candidate has {len(theirs)} tags, this site {len(ours)}"
        ctx.error(line, key, f"the candidate site {str(path)!r} must have this site's tags in "
                             f"the same order: {what}")
        raise ConfigError(ctx.issues)
    return dataclasses.replace(site, commissioning=dataclasses.replace(
        site.commissioning, candidate_site=candidate))


def _line_of(root: Section, path: str) -> int:
    """The line of the key at dotted ``path`` (``a.b[2].c``), or of its deepest ancestor."""
    node = root.node
    line = node.line
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node.value, list) or index >= len(node.value):
                break
            node = node.value[index]
            line = node.line
        else:
            if not isinstance(node.value, dict) or part not in node.value:
                break
            line = node.key_lines.get(part, node.line)
            node = node.value[part]
    return line


def _check_sanity(ctx: Ctx, root: Section, site: s.Site) -> None:
    """Refuse what each section accepts alone but the site as a whole must not
    (gateway.config.sanity)."""
    for path, message in sanity(site):
        ctx.error(_line_of(root, path), path, message)
    if ctx.issues:
        raise ConfigError(ctx.issues)


def audit_environment(site: s.Site) -> list[Issue]:
    """What stands in the way of the audit log of ``site``, located like any other config
    error (``file:line: audit.path: message``): a database path that cannot be created or
    written, a key or head sink folder that cannot be written
    (:func:`gateway.config.sanity.audit_path_problems`; it probes the file system and
    leaves nothing behind). Empty when the audit log can be written."""
    problems = list(audit_path_problems(site.audit))
    if not problems:
        return []
    name = str(site.source)
    try:
        root: Section | None = Section(Ctx(name), load(site.source), "")
    except SourceError:
        root = None
    return [Issue(name, 0 if root is None else _line_of(root, key), key, message)
            for key, message in problems]


def _prove(ctx: Ctx, root: Section, site: s.Site) -> None:
    """Refuse a site whose safe state is not proven (gateway.envelope.proof)."""
    from gateway.envelope.proof import prove_safe_state  # the envelope builds on this package

    for finding in prove_safe_state(site):
        if not finding.refuse:
            continue
        if finding.actuator is None:
            env = root.items.get("envelope")
            ctx.error(root.line("envelope") if env is None else env.line, "envelope",
                      finding.message)
        else:
            ctx.error(tag_line(root, finding.actuator), f"tags.{finding.actuator}.safe_value",
                      finding.message)
    if ctx.issues:
        raise ConfigError(ctx.issues)
