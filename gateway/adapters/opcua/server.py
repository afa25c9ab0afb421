"""Northbound OPC UA server: what SCADA and external AI controllers see of the gateway.

Address space (namespace ``urn:safety-gateway:<site name>``, index 2 as the first namespace the
server registers), under ``Objects/Gateway``::

    Sensors/<tag>      Double, read only     ns=2;s=Gateway.Sensors.<tag>
    Actuators/<tag>    Double, writable      ns=2;s=Gateway.Actuators.<tag>
    Status/Mode        String                ns=2;s=Gateway.Status.Mode
    Status/Latched     Boolean               ns=2;s=Gateway.Status.Latched
    Status/Heartbeat   UInt32                ns=2;s=Gateway.Status.Heartbeat
    Status/ActiveIncident Boolean            ns=2;s=Gateway.Status.ActiveIncident
    Status/LastRejection  String             ns=2;s=Gateway.Status.LastRejection
    Status/TripReason  String                ns=2;s=Gateway.Status.TripReason
    Status/IncidentId  String                ns=2;s=Gateway.Status.IncidentId
    Status/Bypasses    String[]              ns=2;s=Gateway.Status.Bypasses
    Status/BypassExpiries DateTime[]         ns=2;s=Gateway.Status.BypassExpiries
    RequestMode(Mode: String), ResetTrip(), Bypass(Detector: String, Seconds: Double),
    EndBypass(Detector: String), CandidateReport()   ns=2;s=Gateway.<method>

Writes. Every WriteValue that targets an Actuators variable is handed to the runtime on its own
(``handler.write(client, {tag: value}, atomic=False)``); the others of the same request go on
regardless. An **accepted** write is answered Good *without changing the node*: the runtime
forwards the (envelope-checked) value southbound and then mirrors what was really applied with
:meth:`OpcUaServer.set_actuator`, so reading an actuator always shows the applied value, never a
request. A refusal is answered for that node alone, by its kind
(:class:`~gateway.adapters.base.Refusal`): outside the envelope -> BadOutOfRange, read-only ->
BadNotWritable, the device did not confirm -> BadCommunicationError, not taken in this mode ->
BadInvalidState, not authorised -> BadUserAccessDenied, gateway starting or stopping ->
BadResourceUnavailable (anything else BadInternalError); ``Status/LastRejection`` then reads
``"<tag> refused (<kind>): <reason>"``. Sensors and Status refuse writes with BadNotWritable;
viewers get BadUserAccessDenied. Only Value attributes are writable.

Who: each session's user (UserName token, password checked against the environment variable
``password_env`` at login time, in constant time) has the role the site gives it; an anonymous
session gets ``Role.OPERATOR`` and is only possible when ``allow_anonymous`` is true (otherwise the
token type is not even offered, and the user manager refuses it as well). A user whose password
variable is missing cannot log in (logged once). Methods: RequestMode needs operator or admin;
ResetTrip, Bypass and EndBypass need admin; the incident methods follow
``gateway.ops.roles.INCIDENT_ROLES``: IncidentNote, IncidentAcknowledge, IncidentCheck,
IncidentSeverity, IncidentReported, IncidentReview and IncidentActionDone need operator or admin,
IncidentResolve and IncidentForceResolve admin; CandidateReport (read only: the candidate
site's report as one JSON object in Message, see ``gateway.runtime.candidate``) viewer,
operator or admin; others get BadUserAccessDenied. A method returns
(Accepted: Boolean, Message: String) with a Good status once the runtime has answered, and the
answer is the real outcome: the request was applied (Message says what changed) or refused
(Message says why). Users whose password variable is unset or empty are disabled with a
warning when the server starts.

Status: ``TripReason`` is the latched trip's ``"<detector>: <reason>"`` ("" when none is
latched), ``IncidentId`` the open incident's id ("" when none), ``Bypasses`` and
``BypassExpiries`` the detectors bypassed and when each bypass expires (UTC), index by index.

The mirror API (:meth:`set_sensor`, :meth:`set_actuator`, :meth:`set_status`,
:meth:`set_rejection`) writes through ``server.write_attribute_value``, the trusted path that
does not pass the write hook.

Channels, certificates and logins are checked before any of this, at every request, by
:class:`~gateway.adapters.opcua.security.ChannelGuard`: only the configured security policy and
mode (discovery alone on any other channel), only trusted client certificates, failed logins
throttled; refusals go to the listeners of :meth:`OpcUaServer.add_security_listener`.

Built on asyncua 2.1 internals (the attribute write service and session creation are wrapped;
see shared/NOTES-libraries.md): the version is pinned exactly.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlparse

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from gateway.adapters.base import ClientInfo, NorthboundHandler, Refusal, Role, WriteOutcome
from gateway.adapters.opcua.client import certificate_uri
from gateway.adapters.opcua.pki import Pki, application_uri, create_certificate, now_utc
from gateway.adapters.opcua.security import (
    ChannelGuard,
    GuardedServer,
    SecurityEvent,
    policy_type,
)
from gateway.config.schema import SecurityPolicy
from gateway.ops.roles import INCIDENT_ROLES
from gateway.ops.users import UserTable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from asyncua.server.server import Server

    from gateway.config.schema import OpcUaServerSpec, Site

_log = logging.getLogger("gateway.adapters.opcua")

NAMESPACE_INDEX: Final = 2
"""The index asyncua gives the first namespace a server registers (0 is OPC UA's, 1 the
server's own URI); :func:`opcua_nodes` and the server agree on it."""

STATUS_NODES: Final = (("Mode", ua.VariantType.String), ("Latched", ua.VariantType.Boolean),
                       ("Heartbeat", ua.VariantType.UInt32),
                       ("ActiveIncident", ua.VariantType.Boolean),
                       ("LastRejection", ua.VariantType.String),
                       ("TripReason", ua.VariantType.String),
                       ("IncidentId", ua.VariantType.String),
                       ("Bypasses", ua.VariantType.String),
                       ("BypassExpiries", ua.VariantType.DateTime))
METHODS: Final = ("RequestMode", "ResetTrip", "Bypass", "EndBypass", "IncidentNote",
                  "IncidentAcknowledge", "IncidentCheck", "IncidentResolve",
                  "IncidentSeverity", "IncidentReported", "IncidentReview",
                  "IncidentActionDone", "IncidentForceResolve", "CandidateReport",
                  "ReloadSite")
# ReloadSite's Mode: what the core does with the site file (gateway.runtime.reloader).
_RELOAD_MODES: Final = {"": "reload", "dry_run": "reload_dry_run", "commit": "reload_commit"}
# Incident methods: (action, argument names); every argument is a String. The core checks
# each argument's content (IncidentReview's Review is one JSON object, size-limited there).
_INCIDENT_METHODS: Final = {"IncidentNote": ("note", ("Id", "Text")),
                            "IncidentAcknowledge": ("acknowledge", ("Id", "Text")),
                            "IncidentCheck": ("check", ("Id", "Phase", "Item")),
                            "IncidentResolve": ("resolve", ("Id", "Summary")),
                            "IncidentSeverity": ("severity", ("Id", "Level", "Reason")),
                            "IncidentReported": ("reported", ("Id", "Obligation", "Ref")),
                            "IncidentReview": ("review", ("Id", "Review")),
                            "IncidentActionDone": ("action_done", ("Id", "Number", "Note")),
                            "IncidentForceResolve": ("force_resolve",
                                                     ("Id", "Summary", "Reason"))}

_REFUSAL_STATUS: Final = {Refusal.ENVELOPE: StatusCodes.BadOutOfRange,
                          Refusal.READ_ONLY: StatusCodes.BadNotWritable,
                          Refusal.DEVICE: StatusCodes.BadCommunicationError,
                          Refusal.UNKNOWN_TAG: StatusCodes.BadNodeIdUnknown,
                          Refusal.MODE: StatusCodes.BadInvalidState,
                          Refusal.NOT_AUTHORISED: StatusCodes.BadUserAccessDenied,
                          Refusal.STARTING: StatusCodes.BadResourceUnavailable,
                          Refusal.STOPPING: StatusCodes.BadResourceUnavailable,
                          Refusal.BUSY: StatusCodes.BadTooManyOperations}
_MODE_REQUESTS: Final = {"auto": "to_auto", "shadow": "to_shadow", "manual": "to_manual",
                         "safe_stop": "to_safe_stop"}
_METHOD_ROLES: Final = {"RequestMode": (Role.OPERATOR, Role.ADMIN), "ResetTrip": (Role.ADMIN,),
                        "Bypass": (Role.ADMIN,), "EndBypass": (Role.ADMIN,),
                        # An operator may see the difference (dry_run); the core lets only an
                        # admin stage or commit.
                        "ReloadSite": (Role.OPERATOR, Role.ADMIN),
                        # The incident methods: the same table as every other entry point.
                        **{name: tuple(r for r in (Role.OPERATOR, Role.ADMIN)
                                       if r in INCIDENT_ROLES[action])
                           for name, (action, _) in _INCIDENT_METHODS.items()},
                        "CandidateReport": (Role.VIEWER, Role.OPERATOR, Role.ADMIN)}
_WRITER_ROLES: Final = (Role.AI, Role.OPERATOR, Role.ADMIN)
# Each method's input arguments (name, type) and what it does: the server declares exactly
# these, and `safety-gateway map` prints them, so the two cannot disagree.
_METHOD_INPUTS: Final[dict[str, tuple[tuple[str, ua.VariantType], ...]]] = {
    "RequestMode": (("Mode", ua.VariantType.String),),
    "ResetTrip": (),
    "Bypass": (("Detector", ua.VariantType.String), ("Seconds", ua.VariantType.Double)),
    "EndBypass": (("Detector", ua.VariantType.String),),
    "ReloadSite": (("Mode", ua.VariantType.String),),
    **{name: tuple((arg, ua.VariantType.String) for arg in names)
       for name, (_, names) in _INCIDENT_METHODS.items()},
    "CandidateReport": (),
}
_METHOD_OUTPUTS: Final = (("Accepted", ua.VariantType.Boolean),
                          ("Message", ua.VariantType.String))
_METHOD_PURPOSE: Final = {
    "RequestMode": "ask for a mode: " + ", ".join(_MODE_REQUESTS),
    "ResetTrip": "reset a latched trip (refused while its cause persists)",
    "Bypass": "bypass a detector for Seconds (bounded by operation.bypass_max_s)",
    "EndBypass": "end a detector's bypass",
    "ReloadSite": "re-read and check the site file the gateway was started with, and apply it "
                  "between two cycles (Mode: \"\" to stage or commit, \"dry_run\" to only "
                  "show the difference, \"commit\" to commit a staged change); Message is "
                  "the outcome as one JSON object",
    "IncidentNote": "add a note to an incident's timeline",
    "IncidentAcknowledge": "take an incident on (it moves to investigating)",
    "IncidentCheck": "tick a checklist item of a phase (Item: its number from 0, or its text)",
    "IncidentResolve": "resolve an incident with a summary (refused while required "
                       "checklist items or the review are open)",
    "IncidentSeverity": "raise an incident's severity (Level: low, medium, high, critical) "
                        "with a reason; never lowered",
    "IncidentReported": "record that the report a reporting clock asks for was made (Ref: "
                        "its reference)",
    "IncidentReview": "record the post-incident review: Review is one JSON object "
                      "(root_cause, factors, went_well, went_badly, actions), at most 16000 "
                      "characters",
    "IncidentActionDone": "close a review's action item (Number: from 1) with a note",
    "IncidentForceResolve": "resolve although required items are open, recording the reason "
                            "and what was open",
    "CandidateReport": "read the candidate site's report so far (Message: one JSON object; "
                       "refused when the site names no candidate)",
}


def opcua_methods() -> list[dict[str, Any]]:
    """The northbound OPC UA methods, as ``safety-gateway map`` shows them: ``name``,
    ``nodeid``, ``inputs`` and ``outputs`` (lists of ``{"name", "type"}``, OPC UA built-in
    type names), ``roles`` (who may call it; anyone else gets BadUserAccessDenied) and
    ``does``. Every method answers with its real outcome: Accepted and the gateway's Message.
    Pure: no server is started."""
    def args(spec: tuple[tuple[str, ua.VariantType], ...]) -> list[dict[str, str]]:
        return [{"name": name, "type": vtype.name} for name, vtype in spec]

    return [{"name": name, "nodeid": _nodeid_text(name), "inputs": args(_METHOD_INPUTS[name]),
             "outputs": args(_METHOD_OUTPUTS),
             "roles": [str(r) for r in _METHOD_ROLES[name]], "does": _METHOD_PURPOSE[name]}
            for name in METHODS]


def refusal_statuses() -> dict[str, str]:
    """The OPC UA status a refused write gets, by kind of refusal (``safety-gateway map``)."""
    return {str(k): ua.StatusCode(ua.UInt32(v)).name for k, v in _REFUSAL_STATUS.items()}


def namespace_uri(site: Site) -> str:
    return f"urn:safety-gateway:{site.site.name}"


def _nodeid_text(path: str) -> str:
    return f"ns={NAMESPACE_INDEX};s=Gateway{'.' if path else ''}{path}"


def _nid(path: str) -> ua.NodeId:
    return ua.NodeId.from_string(_nodeid_text(path))


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def opcua_nodes(site: Site) -> list[dict[str, Any]]:
    """The northbound node ids, as ``safety-gateway map`` shows them: one entry per sensor,
    actuator, status variable and method, with ``tag`` (the tag, status or method name),
    ``nodeid`` (string form, namespace index 2), ``writable`` and ``kind`` ("sensor",
    "actuator", "status", "method"). Pure: no server is started."""
    nodes: list[dict[str, Any]] = []
    for tag in site.sensors:
        nodes.append({"tag": tag.name, "nodeid": _nodeid_text(f"Sensors.{tag.name}"),
                      "writable": False, "kind": "sensor"})
    for tag in site.actuators:
        nodes.append({"tag": tag.name, "nodeid": _nodeid_text(f"Actuators.{tag.name}"),
                      "writable": True, "kind": "actuator"})
    for name, _ in STATUS_NODES:
        nodes.append({"tag": name, "nodeid": _nodeid_text(f"Status.{name}"),
                      "writable": False, "kind": "status"})
    for name in METHODS:
        nodes.append({"tag": name, "nodeid": _nodeid_text(name), "writable": False,
                      "kind": "method"})
    return nodes


@dataclass
class _GatewayUser(User):
    """An authenticated northbound session's identity (asyncua role User, never Admin)."""

    gateway_role: Role = Role.VIEWER


# The session serving the current request (set by the wrapped session's write/call, which run
# in the request's own task), so hooks can name the client's address.
_SESSION: contextvars.ContextVar[Any] = contextvars.ContextVar("opcua_session", default=None)


class _Users(UserManager):
    """asyncua user manager: site users by name and env-var password; anonymous if allowed."""

    def __init__(self, spec: OpcUaServerSpec, guard: ChannelGuard | None = None) -> None:
        self._spec = spec
        self._users = UserTable(spec.users, "OPC UA", _log)
        self._guard = guard

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        user, reason = self._check(username, password)
        if self._guard is not None:  # failures are logged and audited by the guard
            self._guard.login_result(username, user is not None, reason)
        elif user is None:
            _log.info("OPC UA login refused: %s", reason)
        return user

    def _check(self, username: str | None, password: str | None
               ) -> tuple[_GatewayUser | None, str]:
        # asyncua passes the secure channel's client certificate for every token type; X509
        # identity tokens are not offered, so no username = anonymous.
        if username is None:
            if self._spec.allow_anonymous:
                return _GatewayUser(role=UserRole.User, name=None,
                                    gateway_role=Role.OPERATOR), "anonymous"
            return None, "anonymous access is not allowed"
        role, reason = self._users.check(username, password)
        if role is None:
            return None, reason
        return _GatewayUser(role=UserRole.User, name=username, gateway_role=role), "ok"


class OpcUaServer:
    """The gateway's northbound OPC UA server for ``site`` (needs ``site.northbound.opcua``)."""

    def __init__(self, site: Site, handler: NorthboundHandler) -> None:
        spec = site.northbound.opcua
        if spec is None:
            raise ValueError("the site has no northbound.opcua section")
        self.site = site
        self.spec = spec
        self._handler = handler
        self._server: Server | None = None
        self._sensors = {t.name: _nid(f"Sensors.{t.name}")
                         for t in site.sensors}
        self._actuators = {t.name: _nid(f"Actuators.{t.name}")
                           for t in site.actuators}
        self._actuator_by_node = {nid: name for name, nid in self._actuators.items()}
        self._status = {name: _nid(f"Status.{name}") for name, _ in STATUS_NODES}
        self._read_only = set(self._sensors.values()) | set(self._status.values())
        sec = spec.security
        self.guard = ChannelGuard(
            sec.policy, sec.mode,
            None if sec.policy is SecurityPolicy.NONE else Pki(spec.pki), spec.login)
        # The status details last mirrored (trip reason, incident id, bypasses).
        self._detail: tuple[str, str, tuple[tuple[str, datetime], ...]] | None = None

    def add_security_listener(self, listener: Callable[[SecurityEvent], None]) -> None:
        """Have ``listener`` called with every refused channel or certificate and every failed
        login (:class:`~gateway.adapters.opcua.security.SecurityEvent`), e.g. to audit it."""
        self.guard.listeners.append(listener)

    @property
    def endpoint(self) -> str:
        return self.spec.endpoint

    @property
    def port(self) -> int:
        port = urlparse(self.spec.endpoint).port
        return 4840 if port is None else port

    # ----------------------------------------------------------------- start / stop

    async def start(self) -> None:
        """Build the address space and listen. Raises ``RuntimeError`` if the namespace
        index is not 2 (the published node ids would be wrong) and ``OSError`` if the port
        is taken."""
        if self._server is not None:
            raise RuntimeError("already started")
        spec, sec = self.spec, self.spec.security
        for user in spec.users:
            value = os.environ.get(user.password_env)
            if not value:
                # Disabled, not fatal: the gateway's safety function must not wait for an
                # account; the other users (and the Modbus server) keep working.
                _log.warning("OPC UA user %r (role %s) is disabled: environment variable %s is "
                             "%s; set it before starting the gateway to enable the user",
                             user.name, user.role, user.password_env,
                             "empty" if value is not None else "not set")
        server = GuardedServer(self.guard, user_manager=_Users(spec, self.guard))
        await server.init()
        server.set_endpoint(spec.endpoint)
        server.set_server_name(f"safety-gateway {self.site.site.name}")
        if sec.policy is not SecurityPolicy.NONE:
            if sec.certificate is None or sec.private_key is None:
                raise ValueError("a secured endpoint needs certificate and private_key")
            if not sec.certificate.exists() and not sec.private_key.exists():
                # First run: make the application instance certificate (certs create does the
                # same); clients must then trust it.
                own_uri = application_uri(self.site.site.name)
                create_certificate(sec.certificate, sec.private_key, own_uri,
                                   f"safety-gateway {self.site.site.name}", now_utc())
                _log.warning("OPC UA server: created its application certificate %s (%s); "
                             "clients must trust it", sec.certificate, own_uri)
            await server.load_certificate(str(sec.certificate))
            await server.load_private_key(str(sec.private_key))
            uri = certificate_uri(sec.certificate.read_bytes())
            if uri is not None:
                await server.set_application_uri(uri)
            if self.guard.pki is not None:
                self.guard.pki.ensure()
        # The one configured policy and mode; ChannelGuard holds every channel to it.
        server.set_security_policy([policy_type(sec.policy, sec.mode)])
        _warn_insecure(spec)
        tokens: list[type] = []
        if spec.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if spec.users:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        idx = await server.register_namespace(namespace_uri(self.site))
        if idx != NAMESPACE_INDEX:
            raise RuntimeError(f"namespace index {idx}, expected {NAMESPACE_INDEX}")
        await self._build(server)
        self._hook(server)
        await server.start()
        self._server = server
        _log.info("OPC UA server for %s listening on %s", self.site.site.name, spec.endpoint)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def _build(self, server: Server) -> None:
        ns = NAMESPACE_INDEX
        gateway = await server.nodes.objects.add_object(_nid(""), f"{ns}:Gateway")
        waiting = _status(StatusCodes.BadWaitingForInitialData)
        for folder_name, nodes, writable in (("Sensors", self._sensors, False),
                                             ("Actuators", self._actuators, True)):
            folder = await gateway.add_folder(_nid(folder_name),
                                              f"{ns}:{folder_name}")
            for name, nid in nodes.items():
                var = await folder.add_variable(nid, f"{ns}:{name}",
                                                ua.Variant(0.0, ua.VariantType.Double))
                if writable:
                    await var.set_writable()
                await server.write_attribute_value(nid, ua.DataValue(StatusCode=waiting))
        status = await gateway.add_folder(_nid("Status"), f"{ns}:Status")
        # "starting" until the first control cycle mirrors the mode (writes are refused
        # until then), as on the Modbus status register.
        initial: dict[str, Any] = {"Mode": "starting",
                                   "Latched": False, "Heartbeat": 0, "ActiveIncident": False,
                                   "LastRejection": "", "TripReason": "", "IncidentId": "",
                                   "Bypasses": [], "BypassExpiries": []}
        for name, vtype in STATUS_NODES:
            await status.add_variable(self._status[name], f"{ns}:{name}",
                                      ua.Variant(initial[name], vtype))

        def arg(name: str, vtype: ua.VariantType) -> ua.Argument:
            return ua.Argument(Name=name, DataType=ua.NodeId(ua.Int32(vtype.value)), ValueRank=-1)

        outputs = [arg(n, t) for n, t in _METHOD_OUTPUTS]
        for name in METHODS:
            await gateway.add_method(_nid(name), f"{ns}:{name}", self._method(name),
                                     [arg(n, t) for n, t in _METHOD_INPUTS[name]], outputs)

    # ----------------------------------------------------------------- hooks into asyncua

    def _hook(self, server: Server) -> None:
        iserver = server.iserver
        original_create = iserver.create_session

        def create_session(name: Any, user: Any = None, external: bool = False) -> Any:
            session = (original_create(name, external=external) if user is None
                       else original_create(name, user=user, external=external))
            if external:
                for attr in ("write", "call"):
                    setattr(session, attr, _in_session(session, getattr(session, attr)))
            return session

        # asyncua 2.1 internals (pinned): per-session context and per-node write answers.
        iserver.create_session = create_session  # type: ignore[method-assign]
        service = iserver.attribute_service
        original_write = service.write

        async def write(params: ua.WriteParameters, user: Any = None) -> list[ua.StatusCode]:
            if not isinstance(user, _GatewayUser):
                # Only the server's own internal session is Admin; anything else that is not
                # one of our authenticated users is refused (fail closed).
                if user is None or (isinstance(user, User) and user.role is UserRole.Admin):
                    result: list[ua.StatusCode] = await (original_write(params) if user is None
                                                         else original_write(params, user=user))
                    return result
                return [_status(StatusCodes.BadUserAccessDenied)
                        for _ in params.NodesToWrite]
            return [await self._write_one(wv, user, original_write)
                    for wv in params.NodesToWrite]

        service.write = write  # type: ignore[method-assign]

    async def _write_one(self, wv: ua.WriteValue, user: _GatewayUser,
                         original_write: Any) -> ua.StatusCode:
        tag = self._actuator_by_node.get(wv.NodeId)
        if tag is None:
            if wv.NodeId in self._read_only or wv.NodeId.NamespaceIndex == NAMESPACE_INDEX:
                return self._refuse(user, str(wv.NodeId), wv, StatusCodes.BadNotWritable,
                                    "opcua: not a writable setpoint", 2)
            result: list[ua.StatusCode] = await original_write(
                ua.WriteParameters(NodesToWrite=[wv]), user=user)
            return result[0]
        if wv.AttributeId != AttributeIds.Value:
            return self._refuse(user, tag, wv, StatusCodes.BadNotWritable,
                                "opcua: only the Value attribute is writable", 2)
        if wv.IndexRange:
            return self._refuse(user, tag, wv, StatusCodes.BadWriteNotSupported,
                                "opcua: index ranges are not supported", 2)
        client = self._client_info(user)
        if client.role not in _WRITER_ROLES:
            return self._refuse(user, tag, wv, StatusCodes.BadUserAccessDenied,
                                f"opcua: role {client.role} may not write", 2)
        variant = wv.Value.Value if wv.Value is not None else None
        raw = variant.Value if variant is not None else None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return self._refuse(user, tag, wv, StatusCodes.BadTypeMismatch,
                                "opcua: not a number (bad type)", 3)
        try:
            outcomes = await self._handler.write(client, {tag: float(raw)}, atomic=False)
            outcome = outcomes[tag]
        except Exception:  # the runtime failed: refuse this node, keep serving the others
            _log.exception("northbound write of %s by %s failed in the handler", tag, client)
            return _status(StatusCodes.BadInternalError)
        if outcome.accepted:
            return _status(StatusCodes.Good)
        why = outcome.why
        return _status(StatusCodes.BadInternalError if why is None else _REFUSAL_STATUS[why])

    def _refuse(self, user: _GatewayUser, name: str, wv: ua.WriteValue, status: int,
                reason: str, code: int) -> ua.StatusCode:
        """Refuse one node's write here, before the handler, and report it as evidence."""
        variant = wv.Value.Value if wv.Value is not None else None
        raw = variant.Value if variant is not None else None
        value = (float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool)
                 else math.nan)
        try:
            self._handler.refused(self._client_info(user), {name: value}, reason, code)
        except Exception:  # a bug in the handler must not stop the server
            _log.exception("opcua: handler failed to take a refusal")
        return _status(status)

    def _client_info(self, user: _GatewayUser) -> ClientInfo:
        session = _SESSION.get()
        peer = getattr(session, "name", None)
        address = (f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2
                   else "unknown")
        return ClientInfo("opcua", address, user.name, user.gateway_role)

    def _method(self, name: str) -> Any:
        async def call(parent: ua.NodeId, *args: ua.Variant) -> Any:
            session = _SESSION.get()
            user = getattr(session, "user", None)
            if not isinstance(user, _GatewayUser):
                return _status(StatusCodes.BadUserAccessDenied)
            client = self._client_info(user)
            if client.role not in _METHOD_ROLES[name]:
                return _status(StatusCodes.BadUserAccessDenied)
            values = [a.Value if isinstance(a, ua.Variant) else a for a in args]
            if name in _INCIDENT_METHODS:
                return await self._incident(name, client, values)
            request = _parse_request(name, values)
            if request is None:
                return _status(StatusCodes.BadInvalidArgument)
            kind, detector, seconds = request
            try:
                outcome: WriteOutcome = await self._handler.request(client, kind, detector,
                                                                    seconds)
            except Exception:
                _log.exception("OPC UA %s by %s failed in the handler", name, client)
                return _status(StatusCodes.BadInternalError)
            message = outcome.reason or ("applied" if outcome.accepted else "refused")
            return [ua.Variant(outcome.accepted, ua.VariantType.Boolean),
                    ua.Variant(message, ua.VariantType.String)]

        return call

    async def _incident(self, name: str, client: ClientInfo, values: list[Any]) -> Any:
        action, names = _INCIDENT_METHODS[name]
        if len(values) != len(names) or not all(isinstance(v, str) for v in values):
            return _status(StatusCodes.BadInvalidArgument)
        try:
            outcome = await self._handler.incident(client, action, values[0], tuple(values[1:]))
        except Exception:
            _log.exception("OPC UA %s by %s failed in the handler", name, client)
            return _status(StatusCodes.BadInternalError)
        message = outcome.reason or ("accepted" if outcome.accepted else "refused")
        return [ua.Variant(outcome.accepted, ua.VariantType.Boolean),
                ua.Variant(message, ua.VariantType.String)]

    # ----------------------------------------------------------------- mirror (trusted path)

    async def _mirror(self, nid: ua.NodeId, variant: ua.Variant, good: bool = True) -> None:
        server = self._server
        if server is None:
            raise RuntimeError("server not started")
        now = cast("ua.DateTime", datetime.now(UTC))
        status = _status(StatusCodes.Good if good else StatusCodes.BadNoCommunication)
        await server.write_attribute_value(
            nid, ua.DataValue(variant, StatusCode=status, SourceTimestamp=now,
                              ServerTimestamp=now))

    async def set_sensor(self, name: str, value: float, good: bool) -> None:
        """Mirror a sensor reading. A bad reading shows as BadNoCommunication (OPC UA then
        carries no value, Part 4, 7.7.1). ``KeyError`` for an unknown sensor."""
        await self._mirror(self._sensors[name], ua.Variant(float(value), ua.VariantType.Double),
                           good and math.isfinite(value))

    async def set_actuator(self, name: str, value: float) -> None:
        """Mirror the value last applied to an actuator (what clients read back)."""
        await self._mirror(self._actuators[name], ua.Variant(float(value),
                                                             ua.VariantType.Double))

    async def set_status(self, mode: str, latched: bool, heartbeat: int, incident: bool,
                         *, trip_reason: str = "", incident_id: str = "",
                         bypasses: Sequence[tuple[str, datetime]] = ()) -> None:
        """Mirror the supervisor's status; ``heartbeat`` wraps modulo 2**32. ``trip_reason``
        is the latched trip's reason ("" when none), ``incident_id`` the open incident's
        ("" when none), ``bypasses`` the (detector, expiry as an aware UTC datetime) pairs in
        force. The values other than the mode, latch and heartbeat are written only when they
        change (they rarely do; the mirror runs every cycle)."""
        for name, value in (("Mode", mode), ("Latched", bool(latched)),
                            ("Heartbeat", heartbeat % 2**32),
                            ("ActiveIncident", bool(incident))):
            vtype = dict(STATUS_NODES)[name]
            await self._mirror(self._status[name], ua.Variant(value, vtype))
        detail = (trip_reason, incident_id, tuple(bypasses))
        if detail != self._detail:
            self._detail = detail
            await self._mirror(self._status["TripReason"],
                               ua.Variant(trip_reason, ua.VariantType.String))
            await self._mirror(self._status["IncidentId"],
                               ua.Variant(incident_id, ua.VariantType.String))
            await self._mirror(self._status["Bypasses"],
                               ua.Variant([d for d, _ in bypasses], ua.VariantType.String))
            await self._mirror(self._status["BypassExpiries"],
                               ua.Variant([e for _, e in bypasses], ua.VariantType.DateTime))

    async def set_rejection(self, text: str) -> None:
        """Mirror the latest refusal (what was refused and why) for operators."""
        await self._mirror(self._status["LastRejection"],
                           ua.Variant(text, ua.VariantType.String))


def _warn_insecure(spec: OpcUaServerSpec) -> None:
    if spec.security.policy is SecurityPolicy.NONE and spec.users:
        _log.warning("OPC UA server %s: users' passwords cross the wire in clear (security "
                     "policy none, allow_insecure_passwords: true)", spec.endpoint)
    if spec.security.policy.deprecated:
        _log.warning("OPC UA server %s offers the deprecated security policy %s "
                     "(allow_deprecated_policies: true)", spec.endpoint,
                     spec.security.policy.value)


def _parse_request(name: str, values: list[Any]
                   ) -> tuple[str, str | None, float | None] | None:
    """(kind, detector, duration_s) for a method call, or None if the arguments are wrong."""
    if name == "RequestMode":
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        kind = _MODE_REQUESTS.get(values[0].strip().lower())
        return None if kind is None else (kind, None, None)
    if name == "ResetTrip":
        return ("reset_trip", None, None) if not values else None
    if name == "CandidateReport":
        return ("candidate_report", None, None) if not values else None
    if name == "ReloadSite":
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        reload = _RELOAD_MODES.get(values[0].strip().lower())
        return None if reload is None else (reload, None, None)
    if name == "EndBypass":
        if len(values) != 1 or not isinstance(values[0], str) or not values[0]:
            return None
        return "end_bypass", values[0], None
    if (len(values) != 2 or not isinstance(values[0], str) or not values[0]
            or isinstance(values[1], bool) or not isinstance(values[1], (int, float))
            or not math.isfinite(values[1]) or values[1] <= 0):
        return None
    return "bypass", values[0], float(values[1])


def _in_session(session: Any, method: Any) -> Any:
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _SESSION.set(session)
        try:
            return await method(*args, **kwargs)
        finally:
            _SESSION.reset(token)

    return wrapped
