"""Channel, certificate and login checks of the northbound OPC UA server, at our boundary.

asyncua 2.1 does not tie a secure channel to the endpoints it advertises: a client that skips
its own endpoint check can open a SecurityPolicy#None channel on a server configured for
Basic256Sha256 SignAndEncrypt only (``SecureConnection.select_policy`` falls back to the None
policy every connection starts with), create and activate a session there, and send passwords
in clear (shared/NOTES-libraries.md). Nor does it check a client's certificate at
OpenSecureChannel. So every request of every connection passes :class:`ChannelGuard` first:

- A channel whose policy and mode are not the configured ones may only ask for discovery
  (GetEndpoints, FindServers: OPC UA Part 4, 5.4 and Part 6, 7.1.2.4 allow them on an unsecured
  channel); anything else (CreateSession, ActivateSession, Read, Write, Call, ...) is answered
  BadSecurityPolicyRejected and the connection is closed, so no session can activate on it.
- On a secured channel, the client's certificate must be trusted by the store
  (:mod:`gateway.adapters.opcua.pki`); otherwise BadCertificateUntrusted, the certificate is
  kept in ``pki/rejected/certs`` and the connection is closed.
- An ActivateSession waits its turn in the login throttle
  (:mod:`gateway.adapters.opcua.throttle`) or is refused unchecked (BadUserAccessDenied).

Every refusal and every failed login is logged and handed to the listeners as a
:class:`SecurityEvent` (the runtime audits them).

The hook: :class:`GuardedServer` is asyncua's ``Server`` whose ``start`` builds the binary
server with a protocol that wraps each connection's ``UaProcessor.process_message``. asyncua
internals, version pinned exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

from asyncua import ua
from asyncua.crypto import security_policies as sp
from asyncua.crypto import uacrypto
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary

from gateway.adapters.opcua.pki import Verdict
from gateway.adapters.opcua.throttle import LoginThrottle
from gateway.config.schema import SecurityMode, SecurityPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.adapters.opcua.pki import Pki
    from gateway.config.schema import LoginThrottleSpec

_log = logging.getLogger("gateway.adapters.opcua.security")

_POLICY_TYPES: Final = {
    (SecurityPolicy.NONE, SecurityMode.NONE): ua.SecurityPolicyType.NoSecurity,
    (SecurityPolicy.BASIC256SHA256, SecurityMode.SIGN): ua.SecurityPolicyType.Basic256Sha256_Sign,
    (SecurityPolicy.BASIC256SHA256, SecurityMode.SIGN_AND_ENCRYPT):
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    (SecurityPolicy.AES128_SHA256_RSAOAEP, SecurityMode.SIGN):
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    (SecurityPolicy.AES128_SHA256_RSAOAEP, SecurityMode.SIGN_AND_ENCRYPT):
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    (SecurityPolicy.AES256_SHA256_RSAPSS, SecurityMode.SIGN):
        ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    (SecurityPolicy.AES256_SHA256_RSAPSS, SecurityMode.SIGN_AND_ENCRYPT):
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    (SecurityPolicy.BASIC256, SecurityMode.SIGN): ua.SecurityPolicyType.Basic256_Sign,
    (SecurityPolicy.BASIC256, SecurityMode.SIGN_AND_ENCRYPT):
        ua.SecurityPolicyType.Basic256_SignAndEncrypt,
    (SecurityPolicy.BASIC128RSA15, SecurityMode.SIGN): ua.SecurityPolicyType.Basic128Rsa15_Sign,
    (SecurityPolicy.BASIC128RSA15, SecurityMode.SIGN_AND_ENCRYPT):
        ua.SecurityPolicyType.Basic128Rsa15_SignAndEncrypt,
}

# Requests answered on a channel that is not the configured one (Part 4, 5.4: discovery
# services may be called without security); CloseSecureChannel ends it.
_DISCOVERY: Final = frozenset(ua.NodeId(ua.Int32(i)) for i in (
    ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
    ObjectIds.FindServersRequest_Encoding_DefaultBinary,
    ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary))
_ACTIVATE: Final = ua.NodeId(ua.Int32(ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary))


def policy_type(policy: SecurityPolicy, mode: SecurityMode) -> ua.SecurityPolicyType:
    """asyncua's endpoint type for a configured policy and mode (the schema pairs them)."""
    return _POLICY_TYPES[(policy, mode)]


@dataclass(frozen=True)
class SecurityEvent:
    """A refused channel or certificate, or a failed login. ``kind`` is ``channel_refused``,
    ``certificate_refused`` or ``login_failed``; ``user`` is None when no user name was
    given (or none was known yet); ``source`` is the client's host:port."""

    kind: str
    source: str
    reason: str
    user: str | None = None


# The connection serving the current request: (source "host:port", the throttle's source key).
_PEER: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "opcua_peer", default=None)


def current_peer() -> tuple[str, str] | None:
    """(host:port, host) of the connection whose request is being served, if any."""
    return _PEER.get()


class ChannelGuard:
    """The checks in the module docstring for one server: the configured ``policy`` and
    ``mode``, the store ``pki`` (None for an unsecured endpoint), the login ``throttle`` spec
    and a monotonic ``clock`` in seconds."""

    def __init__(self, policy: SecurityPolicy, mode: SecurityMode, pki: Pki | None,
                 throttle: LoginThrottleSpec,
                 clock: Callable[[], float] = time.monotonic) -> None:
        ptype = policy_type(policy, mode)
        cls, umode, _ = sp.SECURITY_POLICY_TYPE_MAP[ptype]
        self._allowed: Final[tuple[str, ua.MessageSecurityMode]] = (
            cast("type[sp.SecurityPolicy]", cls).URI, cast("ua.MessageSecurityMode", umode))
        self.pki = pki
        self.throttle = LoginThrottle(throttle)
        self._clock = clock
        self.listeners: list[Callable[[SecurityEvent], None]] = []

    def emit(self, event: SecurityEvent) -> None:
        """Log ``event`` and hand it to every listener (a failing listener is logged, the
        others still get it)."""
        _log.warning("OPC UA %s from %s%s: %s", event.kind.replace("_", " "), event.source,
                     f" (user {event.user!r})" if event.user is not None else "", event.reason)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("security event listener failed on %s", event)

    def login_result(self, user: str | None, ok: bool, reason: str) -> None:
        """Called by the user manager with each login's outcome."""
        peer = _PEER.get()
        source, host = peer if peer is not None else ("unknown", "unknown")
        if ok:
            self.throttle.succeeded(user, host)
        else:
            self.emit(SecurityEvent("login_failed", source, reason, user))

    def wrap(self, processor: Any) -> None:
        """Screen every request ``processor`` (one connection's asyncua UaProcessor) gets."""
        original = processor.process_message
        peer = processor.name
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        source = (f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2
                  else "unknown")
        checked: list[bytes] = []  # the peer certificate already found trusted

        def fault(seqhdr: Any, body: Any, code: int) -> None:
            buf = body.copy()
            try:
                nodeid_from_binary(buf)
                header = struct_from_binary(ua.RequestHeader, buf)
            except Exception:  # malformed: no handle to answer; the connection is closed
                _log.debug("malformed request from %s: not answered", source, exc_info=True)
                return
            response = ua.ServiceFault()
            response.ResponseHeader.ServiceResult = ua.StatusCode(ua.UInt32(code))
            processor.send_response(header.RequestHandle, seqhdr, response)

        async def process_message(seqhdr: Any, body: Any) -> Any:
            token = _PEER.set((source, host))
            try:
                policy = processor._connection.security_policy
                try:
                    typeid: ua.NodeId | None = nodeid_from_binary(body.copy())
                except Exception:  # asyncua answers a malformed request with a fault
                    typeid = None
                if (policy.URI, policy.Mode) != self._allowed:
                    if typeid in _DISCOVERY:
                        return await original(seqhdr, body)
                    self.emit(SecurityEvent(
                        "channel_refused", source,
                        f"{policy.URI.rpartition('#')[2]} {policy.Mode.name} channel: only "
                        "discovery is answered on it (the endpoint requires "
                        f"{self._allowed[0].rpartition('#')[2]} {self._allowed[1].name})"))
                    fault(seqhdr, body, StatusCodes.BadSecurityPolicyRejected)
                    return False
                peer_cert = policy.peer_certificate
                if self.pki is not None and peer_cert not in checked:
                    try:  # a secured channel without a client certificate trusts no one
                        verdict = (Verdict(False, "no client certificate") if not peer_cert
                                   else self.pki.validate(peer_cert, datetime.now(UTC)))
                        kept = (None if verdict.trusted or not peer_cert
                                else self.pki.reject(peer_cert))
                    except OSError as exc:  # fail closed: an unreadable store trusts no one
                        verdict, kept = Verdict(False, f"certificate store: {exc}"), None
                    if not verdict.trusted:
                        self.emit(SecurityEvent(
                            "certificate_refused", source,
                            verdict.reason + (f"; kept as {kept}" if kept is not None else "")))
                        fault(seqhdr, body, StatusCodes.BadCertificateUntrusted)
                        return False
                    checked.append(cast("bytes", peer_cert))
                if typeid == _ACTIVATE and not await self._admit_login(seqhdr, body, source,
                                                                       host, fault):
                    return True
                return await original(seqhdr, body)
            finally:
                _PEER.reset(token)

        processor.process_message = process_message

    async def _admit_login(self, seqhdr: Any, body: Any, source: str, host: str,
                           fault: Callable[[Any, Any, int], None]) -> bool:
        buf = body.copy()
        user: str | None = None
        try:
            nodeid_from_binary(buf)
            struct_from_binary(ua.RequestHeader, buf)
            token = struct_from_binary(ua.ActivateSessionParameters, buf).UserIdentityToken
            if isinstance(token, ua.UserNameIdentityToken) and token.UserName is not None:
                user = str(token.UserName)
        except Exception:  # malformed: throttled by its source alone; asyncua refuses it
            _log.debug("malformed ActivateSession from %s", source, exc_info=True)
        admission = self.throttle.admit(user, host, self._clock())
        if admission.refused:
            self.emit(SecurityEvent("login_failed", source,
                                    f"too many failed logins: refused unchecked, retry in "
                                    f"{admission.wait_s:.1f} s", user))
            fault(seqhdr, body, StatusCodes.BadUserAccessDenied)
            return False
        if admission.wait_s > 0:
            _log.info("OPC UA login of %r from %s delayed %.2f s (failed logins)", user, source,
                      admission.wait_s)
            await asyncio.sleep(admission.wait_s)
        return True


class _GuardedProtocol(OPCUAProtocol):
    guard: ChannelGuard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.processor is not None:
            self.guard.wrap(self.processor)


class _GuardedBinaryServer(BinaryServer):
    def __init__(self, guard: ChannelGuard, *args: Any) -> None:
        super().__init__(*args)
        self._guard = guard

    def _make_protocol(self) -> OPCUAProtocol:
        protocol = _GuardedProtocol(iserver=self.iserver, policies=self._policies,
                                    clients=self.clients, closing_tasks=self.closing_tasks,
                                    limits=self.limits)
        protocol.guard = self._guard
        return protocol


class GuardedServer(Server):
    """asyncua's Server whose every connection passes ``guard`` (see the module docstring)."""

    def __init__(self, guard: ChannelGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard

    async def start(self) -> None:
        # asyncua 2.1's Server.start, with our binary server in place of its own.
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(self.iserver.certificate, self._application_uri,
                                       socket.gethostname())
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            ipaddress, port = self._get_bind_socket_info()
            self.bserver = _GuardedBinaryServer(self.guard, self.iserver, ipaddress, port,
                                                self.limits)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise
