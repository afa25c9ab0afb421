"""A real nats-server with JetStream for the fleet tests, started and stopped by the tests.

Debian's ``nats-server`` package (installed by ``.ci/run``) provides the binary. A missing
binary fails the test that needs it: the fleet is tested against the real server or not at all.
``kill``/``stop`` and ``start`` again keep the port and the JetStream store, which is how the
tests cut a site's link and bring it back.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from simulators.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

READY_TIMEOUT_S = 30.0


class NatsServer:
    """One nats-server process on 127.0.0.1 with JetStream in ``root``/jetstream.

    ``config`` is extra configuration text appended to the generated file (accounts,
    authorization, tls, leafnodes: whatever a test needs); ``{root}`` in it is replaced by the
    server's folder."""

    def __init__(self, root: Path, *, config: str = "", jetstream: bool = True,
                 name: str = "central") -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.monitor_port = free_port()
        self.name = name
        self.config_path = root / "nats.conf"
        self.log_path = root / "nats.log"
        lines = [
            f'server_name: "{name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
        ]
        if jetstream:
            store = root / "jetstream"
            lines.append(f'jetstream {{ store_dir: "{store}", max_memory_store: 256MB, '
                         "max_file_store: 4GB }")
        self.config_path.write_text("\n".join(lines) + "\n" + config.replace("{root}", str(root))
                                    + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start (again) and wait until the server, and JetStream if enabled, are ready."""
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.fail("nats-server is not installed (apt-get install nats-server; .ci/run "
                        "does it)")
        assert self.process is None or self.process.poll() is not None, "already running"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([binary, "-c", str(self.config_path)],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"nats-server exited with {self.process.returncode}:\n"
                            + self.log_path.read_text(errors="replace")[-4000:])
            with contextlib.suppress(urllib.error.URLError, OSError), \
                    urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server not ready within {READY_TIMEOUT_S} s:\n"
                            + self.log_path.read_text(errors="replace")[-4000:])
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM), waiting for the process to end."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill without warning (SIGKILL): a crashed server or a cut link."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def port_closed(self) -> bool:
        """True when nothing listens on the client port any more."""
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) != 0
