"""Cross-section sanity checks of a loaded site: values each section accepts on its own but
that make no sense together, or that admit more than anyone meant (IEC 62443-3-3 SR 3.5,
input validation, applied to the configuration itself).

Pure: takes a validated :class:`~gateway.config.schema.Site`, returns (key path, message)
pairs; the loader turns them into located errors.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tempfile
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config import schema as s

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# The cycle time a gateway can keep (below 1 ms the loop itself cannot), and beyond which a
# "control cycle" no longer supervises anything (a trip would act 10 s late).
MIN_CYCLE_MS = 1.0
MAX_CYCLE_MS = 10_000.0

_FLOAT32_MAX = 3.4028234663852886e38
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
_ANY_HOST = frozenset({"", "0.0.0.0", "::", "*"})


def sanity(site: s.Site) -> Iterator[tuple[str, str]]:
    """Every sanity problem of ``site`` as (key path, message)."""
    yield from _cycle(site)
    yield from _wire_ranges(site)
    yield from _ports(site)
    yield from _allowlist(site)
    yield from _staleness(site)


def _cycle(site: s.Site) -> Iterator[tuple[str, str]]:
    cycle_ms = site.site.cycle_ms
    if not MIN_CYCLE_MS <= cycle_ms <= MAX_CYCLE_MS:
        yield ("site.cycle_ms", f"must be {MIN_CYCLE_MS:g} to {MAX_CYCLE_MS:g} ms, not "
                                f"{cycle_ms:g}")
    pred = site.envelope.prediction
    if pred is not None and pred.step_s * 1000.0 < cycle_ms:
        yield ("envelope.prediction.step_s",
               f"{pred.step_s:g} s is shorter than the cycle ({cycle_ms:g} ms): a prediction "
               f"step finer than the control cycle predicts nothing the next cycle cannot see, "
               f"and a vanishing step disables the check")


def _wire_ranges(site: s.Site) -> Iterator[tuple[str, str]]:
    """The engineering range each actuator's wire type can carry must hold its limits."""
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    for tag in site.actuators:
        lim = limits.get(tag.name)
        if lim is None or tag.wire_type is s.WireType.BOOL:
            continue
        if tag.wire_type is s.WireType.FLOAT64:
            continue  # scale and offset are finite and non-zero: float64 holds any limit
        low: float
        high: float
        if tag.wire_type.is_integer:
            low, high = tag.wire_type.integer_range
        else:
            low, high = -_FLOAT32_MAX, _FLOAT32_MAX
        ends = sorted((low * tag.scale + tag.offset, high * tag.scale + tag.offset))
        if not (ends[0] <= lim.min and lim.max <= ends[1]) or not all(map(math.isfinite, ends)):
            yield (f"tags.{tag.name}.scale",
                   f"{tag.wire_type.value} with scale {tag.scale:g} and offset "
                   f"{tag.offset:g} carries {ends[0]:g} to {ends[1]:g}, which cannot hold the "
                   f"limits [{lim.min:g}, {lim.max:g}]")


def _endpoints(site: s.Site) -> list[tuple[str, str, int]]:
    out = []
    for dev in site.devices:
        if isinstance(dev, s.ModbusDevice):
            out.append((f"devices.{dev.name}", dev.host, dev.port))
        else:
            parts = urlsplit(dev.endpoint)
            out.append((f"devices.{dev.name}", parts.hostname or "", parts.port or 4840))
    return out


def _same_host(server: str, device: str) -> bool:
    if server in _ANY_HOST:
        return True  # a server on every interface also answers on the device's address
    if server == device:
        return True

    def loopback(host: str) -> bool:
        if host in _LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    return loopback(server) and loopback(device) and (server == device or not (
        server.startswith("127.") and device.startswith("127.")))


def _ports(site: s.Site) -> Iterator[tuple[str, str]]:
    """A northbound server on a device's own host:port would poll itself."""
    servers = []
    nb = site.northbound
    if nb.modbus is not None:
        servers.append(("northbound.modbus.port", nb.modbus.host, nb.modbus.port))
    if nb.opcua is not None:
        parts = urlsplit(nb.opcua.endpoint)
        servers.append(("northbound.opcua.endpoint", parts.hostname or "", parts.port or 4840))
    for key, host, port in servers:
        for dev_key, dev_host, dev_port in _endpoints(site):
            if port == dev_port and _same_host(host, dev_host):
                yield (key, f"{host}:{port} is {dev_key}'s own address: the gateway would "
                            f"serve on the port it polls (it would read itself and trip)")
    if len(servers) == 2 and servers[0][2] == servers[1][2] and _same_host(servers[0][1],
                                                                            servers[1][1]):
        yield ("northbound.opcua.endpoint", f"port {servers[1][2]} is also the Modbus server's")


def _allowlist(site: s.Site) -> Iterator[tuple[str, str]]:
    spec = site.northbound.modbus
    if spec is None:
        return
    for key, entries in (("allow", spec.allow), ("ai_clients", spec.ai_clients)):
        for k, text in enumerate(entries):
            try:
                net = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                yield (f"northbound.modbus.{key}[{k}]",
                       f"{text!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)")
                continue
            if net.prefixlen == 0 and not spec.allow_any:
                yield (f"northbound.modbus.{key}[{k}]",
                       f"{text!r} admits every address; name the SCADA and AI hosts or their "
                       f"subnet, or set northbound.modbus.allow_any: true to mean it")


def _staleness(site: s.Site) -> Iterator[tuple[str, str]]:
    """A written staleness limit (or frozen limit) that a healthy device cannot meet: its
    readings are renewed every update period and it may take up to its ``timeout_ms`` to
    answer, so a shorter limit judges its healthy readings stale (or frozen) and sends the
    plant to SAFE_STOP while the device answers within the time it is allowed. Reported where
    the limit is written: the device's ``stale_after_ms``, else ``detection.stale_after_ms``
    (a limit not written defaults to what the device can meet: ``Site.stale_after_ms``)."""
    sensing = {t.device for t in site.sensors}
    for device in site.devices:
        if device.name not in sensing:
            continue
        need = s.min_stale_after_ms(device)
        if device.stale_after_ms is not None:
            limit, path = device.stale_after_ms, f"devices.{device.name}.stale_after_ms"
        elif site.detection.stale_after_ms is not None:
            limit, path = site.detection.stale_after_ms, "detection.stale_after_ms"
        else:
            continue
        if limit < need:
            yield (path, f"{limit:g} ms is shorter than device {device.name!r} can meet "
                         f"({_cadence(device)}): its healthy readings would be judged stale; "
                         f"at least {need:g} ms (or a shorter timeout_ms / poll_ms)")
    devices = {d.name: d for d in site.devices}
    for sensor, seconds in site.detection.frozen_after_s:
        owner = devices.get(site.tag(sensor).device)
        if owner is None or seconds * 1000.0 >= s.min_stale_after_ms(owner):
            continue
        yield (f"detection.frozen_after_s.{sensor}",
               f"{seconds:g} s is shorter than device {owner.name!r} renews a reading "
               f"({_cadence(owner)}): an unchanged reading would be judged frozen; at least "
               f"{s.min_stale_after_ms(owner) / 1000.0:g} s")


def _cadence(device: s.Device) -> str:
    mode = ("subscription confirmed every" if isinstance(device, s.OpcUaDevice)
            and device.subscribe else "polled every")
    return (f"{mode} {s.update_period_ms(device):g} ms, plus its timeout_ms "
            f"{device.timeout_ms:g}")


# ---------------------------------------------------------------------------- environment


def audit_path_problems(audit: s.AuditSpec) -> Iterator[tuple[str, str]]:
    """Every reason the audit log could not be written where ``audit`` says, as (key path,
    message). Not pure, unlike :func:`sanity`: it probes the file system (the database, or
    the nearest folder that exists on its way, must take a new file: one is created there
    and removed at once, so nothing is left behind; missing folders are not created), so it
    is run by ``check`` and ``run`` (``gateway.config.loader.audit_environment``), not at
    every load. An existing database must open for writing and be an audit database."""
    yield from _writable("audit.path", audit.path, "the audit database", database=True)
    if audit.key is not None:
        yield from _writable("audit.key", audit.key, "the audit signing key")
    for k, folder in enumerate(audit.head_sinks):
        key = f"audit.head_sinks[{k}]"
        if not folder.is_dir():
            yield (key, f"{folder} is not a folder (the signed head is written there)")
            continue
        problem = _probe(folder)
        if problem is not None:
            yield (key, f"{folder}: cannot write the signed head there: {problem}")


def _probe(folder: Path) -> str | None:
    """None if a new file can be created in ``folder`` (it is removed at once), else why."""
    try:
        fd, name = tempfile.mkstemp(prefix=".safety-gateway-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:
        return f"a probe file could not be removed ({name}): {exc.strerror}"
    return None


def _writable(key: str, path: Path, what: str, *, database: bool = False,
              ) -> Iterator[tuple[str, str]]:
    if path.is_dir():
        yield (key, f"{path} is a folder, not a file for {what}")
        return
    # The file's own folder takes its side files (the WAL, its lock, the head files), so
    # it must take new files even when the file exists.
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        yield (key, f"{path}: {folder} is not a folder, so {what} cannot be created")
        return
    problem = _probe(folder)
    if problem is not None:
        verb = "create" if folder == path.parent else "create the folders of"
        yield (key, f"{path}: cannot {verb} {what} there ({folder}: {problem})")
        return
    if not path.exists():
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        yield (key, f"{path}: cannot open {what} for writing: {exc.strerror or exc}")
        return
    empty = os.fstat(fd).st_size == 0
    os.close(fd)
    if database and not empty:
        from gateway.audit.store import AuditError, open_read

        try:
            conn, _ = open_read(path)
        except AuditError as exc:
            yield (key, f"{exc} (the gateway writes only to its own audit database)")
            return
        conn.close()
