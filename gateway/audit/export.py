"""Publishing the chain head outside the database, so that truncation is detectable.

A head (:class:`~gateway.audit.chain.ExportedHead`) is one line of JSON. Sinks send it to
standard output, append it to a file, send it to syslog, or POST it to an HTTP endpoint. A
sink reports failure by raising :class:`ExportError`; :func:`send_head` collects those, so a
caller in the gateway never sees an exception from a sink (the periodic exporter runs on its
own thread: a slow endpoint does not delay the audit writer, let alone the control loop).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from gateway.audit.store import last_head

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.audit.chain import ExportedHead
    from gateway.audit.log import AuditLog

HTTP_TIMEOUT_S = 3.0


class ExportError(Exception):
    """A sink could not publish a head."""


class HeadSink(Protocol):
    """Where heads go. ``send`` raises :class:`ExportError` on failure."""

    @property
    def name(self) -> str: ...

    def send(self, head: ExportedHead) -> None: ...

    def close(self) -> None: ...


class PrintSink:
    """One line on a text stream (standard output by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.name = "print"

    def send(self, head: ExportedHead) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        try:
            stream.write(head.dumps() + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: write to a closed stream
            raise ExportError(f"print: {exc}") from exc

    def close(self) -> None:
        return None


class FileSink:
    """Appends one line per head to a file, fsynced (the file can live on other storage, or
    be shipped elsewhere by the site's own tools)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def send(self, head: ExportedHead) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(head.dumps() + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise ExportError(f"{self.name}: {exc}") from exc

    def close(self) -> None:
        return None


class _ReportingSysLogHandler(logging.handlers.SysLogHandler):
    # logging handlers swallow their errors (handleError); keep the error so we can report it.
    failure: BaseException | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failure = sys.exc_info()[1]


class SyslogSink:
    """Sends each head as one syslog message (facility ``auth``, severity ``notice``) to
    ``HOST:PORT`` over UDP (RFC 5426), or to a local socket path such as ``/dev/log``. UDP
    gives no delivery report: only local failures (resolution, sending) are reported."""

    def __init__(self, address: tuple[str, int] | str) -> None:
        self.address = address
        self.name = (f"syslog:{address[0]}:{address[1]}" if isinstance(address, tuple)
                     else f"syslog:{address}")
        self._handler: _ReportingSysLogHandler | None = None

    def send(self, head: ExportedHead) -> None:
        try:
            if self._handler is None:
                self._handler = _ReportingSysLogHandler(
                    address=self.address,
                    facility=logging.handlers.SysLogHandler.LOG_AUTH,
                    socktype=socket.SOCK_DGRAM)
                self._handler.ident = "safety-gateway-audit: "
        except OSError as exc:
            raise ExportError(f"{self.name}: {exc}") from exc
        handler = self._handler
        handler.failure = None
        record = logging.LogRecord("gateway.audit", logging.WARNING, __file__, 0,
                                   "audit head %s", (head.dumps(),), None)
        handler.emit(record)
        if handler.failure is not None:
            failure = handler.failure
            self.close()  # reconnect next time (a restarted syslog daemon, a new address)
            raise ExportError(f"{self.name}: {failure}") from failure

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


class HttpSink:
    """POSTs each head as ``application/json``; any status other than 2xx, a timeout or a
    connection error is a failure."""

    def __init__(self, url: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"HTTP head sink needs an http:// or https:// URL, not {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.name = f"http:{url}"

    def send(self, head: ExportedHead) -> None:
        # Imported here: urllib.request brings http.client and email with it, and the audit
        # writer process of a site without an HTTP sink never needs them.
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url, data=head.dumps().encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "User-Agent": "safety-gateway-audit"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as exc:
            raise ExportError(f"{self.name}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:  # incl. timeouts
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ExportError(f"{self.name}: {reason}") from exc
        if not 200 <= status < 300:
            raise ExportError(f"{self.name}: HTTP {status}")

    def close(self) -> None:
        return None


def parse_sink(spec: str) -> HeadSink:
    """A sink from its command-line form: ``print`` (or ``-``), ``file:PATH``,
    ``syslog:HOST:PORT``, ``syslog:/path/to/socket``, ``http:URL`` (or the URL itself).
    Raises ``ValueError`` naming what is wrong."""
    if spec in ("print", "-", "stdout"):
        return PrintSink()
    if spec.startswith(("http://", "https://")):
        return HttpSink(spec)
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"head sink {spec!r}: expected file:PATH, syslog:HOST:PORT, "
                         "syslog:/SOCKET or http:URL")
    if kind == "file":
        return FileSink(rest)
    if kind == "http":
        return HttpSink(rest)
    if kind == "syslog":
        if rest.startswith("/"):
            return SyslogSink(rest)
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"head sink {spec!r}: expected syslog:HOST:PORT with a port "
                             "1..65535, or syslog:/SOCKET")
        return SyslogSink((host.strip("[]"), int(port)))
    raise ValueError(f"head sink {spec!r}: unknown kind {kind!r} (file, syslog, http)")


def send_head(head: ExportedHead, sinks: Iterable[HeadSink]) -> list[str]:
    """Send ``head`` to every sink; return the failures (empty when all succeeded). Never
    raises for a sink's failure."""
    errors = []
    for sink in sinks:
        try:
            sink.send(head)
        except ExportError as exc:
            errors.append(str(exc))
    return errors


def export_head(log_or_path: AuditLog | str | os.PathLike[str]) -> ExportedHead:
    """The current head: of a running :class:`~gateway.audit.log.AuditLog` (its last
    committed record, from memory), or of the database at a path (its last record, read and
    not verified: run :func:`~gateway.audit.store.verify` first if that matters). Raises
    :class:`~gateway.audit.store.NotAuditDatabase` for a path that is not an audit
    database."""
    if isinstance(log_or_path, (str, os.PathLike)):
        return last_head(log_or_path)
    return log_or_path.exported_head()
