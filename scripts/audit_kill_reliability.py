#!/usr/bin/env python3
"""kill -9 a process that appends heavily to the audit log, many times over; after each kill,
check that every record it was told was acknowledged is in the database, intact, and that the
whole chain verifies. The next child reopens the same database, so recovery after a crash (a
hot WAL, a half-written batch, a kill during creation) is exercised too.

    python scripts/audit_kill_reliability.py --kills 100

Prints one line per failure and a summary; exits 1 if any kill lost an acknowledged record,
broke the chain, or left a database the next process could not open.

The child appends bursts of 1..400 records of a few hundred bytes. After each burst it either
calls ``flush`` and, when that returns True, prints ``ack <acknowledged_seq>``, or just prints
``acknowledged_seq`` when it has moved: both are promises that those records are on disk. Each
payload carries ``n``, the seq it must get, so that loss or reordering shows up as
``payload n != seq`` even where the chain would hide it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.audit import NotAuditDatabase, read_records, verify  # noqa: E402

KILLS_PER_DATABASE = 10  # a fresh database now and then keeps each verify short


def child(db: str) -> int:
    from gateway.audit import AuditLog

    audit = AuditLog(db, flush_interval_s=0.005, batch_max=512, max_pending=1_000_000)
    n = audit.acknowledged_seq
    print(f"start {n}", flush=True)
    rng = random.Random(os.getpid())
    last = n
    while True:
        for _ in range(rng.randint(1, 400)):
            n += 1
            audit.append("decision", {"n": n, "mode": "AUTO", "pad": "x" * rng.randint(0, 300),
                                      "command": [rng.random(), rng.random(), 0.0]})
        if rng.random() < 0.5:
            if audit.flush(30.0):
                last = audit.acknowledged_seq
                print(f"ack {last}", flush=True)
        else:
            time.sleep(rng.random() * 0.01)
            acked = audit.acknowledged_seq
            if acked != last:
                last = acked
                print(f"ack {acked}", flush=True)


@dataclass
class Outcome:
    ok: bool
    message: str
    acked: int = 0
    records: int = 0


def one_kill(db: Path, rng: random.Random) -> Outcome:
    """Start a child on ``db``, kill -9 it at a random moment, check the database."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("start "):
                started.set()
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if rng.random() < 0.1:
        time.sleep(rng.random() * 0.15)  # now and then, while it opens (or creates) the db
    else:
        started.wait(30.0)
        time.sleep(rng.uniform(0.01, 0.6))
    early_exit = proc.poll()
    if early_exit is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(10.0)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.stderr is not None
    err = proc.stderr.read().strip()
    proc.stderr.close()
    if early_exit is not None:
        return Outcome(False, f"child exited by itself ({early_exit}) before the kill: "
                              f"{err.splitlines()[-1] if err else ''}")
    base = None
    acked = 0
    for line in lines:
        word, _, value = line.strip().partition(" ")
        if not value.isdigit():
            continue  # a line cut by the kill (never seen: lines are one write)
        if word == "start":
            base = int(value)
        elif word == "ack":
            acked = max(acked, int(value))
    if base is None:
        # Killed before it had opened the database: nothing was acknowledged. The next child
        # must still be able to open whatever was left.
        return Outcome(True, "killed while opening", 0, 0)
    try:
        result = verify(db)
    except NotAuditDatabase as exc:
        return Outcome(False, f"not readable after the kill: {exc}", acked)
    if not result.ok:
        return Outcome(False, f"chain broken after the kill: {result.message}", acked)
    if result.last_seq < acked:
        return Outcome(False, f"acknowledged seq {acked} but the database ends at "
                              f"{result.last_seq}", acked, result.records)
    for rec in read_records(db, first_seq=base + 1):
        n = rec.data().get("n")
        if n != rec.seq:
            return Outcome(False, f"record seq {rec.seq} holds payload n={n}", acked,
                           result.records)
    return Outcome(True, "ok", acked, result.records)


def run(kills: int, folder: Path, seed: int | None = None,
        progress: bool = False) -> tuple[int, list[str]]:
    """Do ``kills`` kills; return (kills done, failures)."""
    rng = random.Random(seed)
    failures: list[str] = []
    acked_total = 0
    for k in range(kills):
        db = folder / f"kill-{k // KILLS_PER_DATABASE}.db"
        outcome = one_kill(db, rng)
        acked_total += outcome.acked
        if not outcome.ok:
            failures.append(f"kill {k + 1}: {db.name}: {outcome.message}")
            print(f"FAIL kill {k + 1}: {outcome.message}", flush=True)
        elif progress:
            print(f"kill {k + 1}/{kills}: {outcome.message}; acknowledged up to "
                  f"{outcome.acked}, {outcome.records} records verify", flush=True)
    return kills, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="how many kills (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (for a rerun)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to keep the databases (default: a temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="one line per kill")
    parser.add_argument("--child", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    import tempfile

    t0 = time.monotonic()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        done, failures = run(args.kills, args.dir, args.seed, args.verbose)
    else:
        with tempfile.TemporaryDirectory(prefix="audit-kill-") as folder:
            done, failures = run(args.kills, Path(folder), args.seed, args.verbose)
    print(f"kills: {done}  failures: {len(failures)}  ({time.monotonic() - t0:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
