"""``safety-gateway run`` as systemd starts it: with ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``
set, the process systemd started (the unit's NotifyAccess=main accepts no other) sends READY=1,
then WATCHDOG=1 while it cycles, and STOPPING=1 on SIGTERM before it exits 0. The socket is a
real Unix datagram socket with SO_PASSCRED, so each message names its sender's pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulators.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def site_on_free_ports(folder: Path) -> Path:
    """The water tank site with its PLC and northbound ports moved to free ones (nothing
    listens at the PLC's: the gateway runs with bad sensing, in its safe state)."""
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    for old in ("port: 5020", "port: 1502", "127.0.0.1:4841"):
        assert text.count(old) == 1, old
    text = (text.replace("port: 5020", f"port: {free_port()}")
            .replace("port: 1502", f"port: {free_port()}")
            .replace("127.0.0.1:4841", f"127.0.0.1:{free_port()}"))
    site = folder / "site.yaml"
    site.write_text(text)
    return site


def receive(sock: socket.socket, deadline: float) -> tuple[str, int]:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        raise AssertionError("no notification from the gateway before the deadline") from None
    pids = [struct.unpack("3i", payload)[0] for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert len(pids) == 1, ancillary
    return data.decode(), pids[0]


def test_run_notifies_systemd_from_its_main_process(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="sdr"))  # sun_path holds 108 bytes
    path = str(folder / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    site = site_on_free_ports(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    command = [str(Path(sys.executable).parent / "safety-gateway"), "run", str(site),
               "--no-audit", "--playbook", str(ROOT / "configs" / "playbooks" / "default.yaml")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60.0
        messages = []
        while sum(m.endswith("WATCHDOG=1") for m, _ in messages) < 3:
            messages.append(receive(sock, deadline))
        assert messages[0] == ("READY=1", proc.pid), messages
        assert all(pid == proc.pid for _, pid in messages), messages
        assert messages[1][0].startswith("STATUS=mode "), messages
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60.0
        while not (message := receive(sock, deadline))[0].startswith("STOPPING=1"):
            assert message[0] == "WATCHDOG=1", message
        assert message[1] == proc.pid
        assert proc.wait(60.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60.0)
        sock.close()
        shutil.rmtree(folder)
    assert "Traceback" not in err, err
