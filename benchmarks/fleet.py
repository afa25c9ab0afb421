"""``safety-gateway bench fleet [--sites N] [--rate R]``: many simulated sites publishing their
audit records to one nats-server with JetStream, started by the bench.

Each simulated site is an asyncio task that publishes, every 100 ms, the records due at
``R`` records/s: decision-sized audit records (about 600 bytes of JSON, as
:func:`gateway.fleet.publisher.record_message` makes them), pipelined, each expecting the one
before it exactly as the real publisher does (``Nats-Msg-Id``, the batch's first record
``Nats-Expected-Last-Subject-Sequence``, the rest ``Nats-Expected-Last-Msg-Id``), into its own
file-stored stream ``SG_<site>`` created as ``fleet init`` does. The sites are spread over
two worker processes (this machine has two cores; the server gets what is left).

Reported:

- ``ingest_records_per_s``: records held centrally (acknowledged by JetStream: stored in the
  site's stream) per second over the measured window, against the offered ``N x R``;
- ``lag_s_p50``/``p99``/``max``: from the moment a record was due at its site (the time in its
  payload) to the acknowledgement that the centre holds it: a publisher that falls behind
  shows as lag, not as a lower rate;
- ``refused``: publishes the stream refused (must be 0: nothing else publishes);
- ``server_rss_mb_max``: the nats-server's resident memory (``/proc``), sampled every 0.5 s;
- the load average at the end (the machine is shared).

Target (issue 21): 100 sites x 50 records/s with lag p99 <= 2 s.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

from benchmarks.errors import BenchUnavailable

TARGETS = {"sites": 100, "rate_per_site": 50.0, "lag_s_p99_max": 2.0}
TICK_S = 0.1
WORKERS = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    """The resident memory of the bench's own nats-server. A server that is gone raises
    (OSError), and so does a status without VmRSS: the bench reports no made-up figure."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def _record(site: str, seq: int, due_s: float, prev: str) -> bytes:
    payload = json.dumps({"at_s": due_s, "nominal": False, "mode": "AUTO", "source": "ai",
                          "command": {"inflow_valve": 40.0 + seq % 7, "outflow_pump": 30.0},
                          "proposal": {"inflow_valve": 40.5, "outflow_pump": 30.0},
                          "sensors": {"level": 2.5, "inflow_rate": 0.01, "demand": 0.005},
                          "verdict": {"action": 1, "violations": ["inflow_valve.rate"]},
                          "clamped": True, "good": [True, True, True], "events": []},
                         sort_keys=True, separators=(",", ":"))
    return json.dumps({"site": site, "seq": seq, "at_s": due_s, "kind": "decision",
                       "actor": "gateway", "source": "", "payload": payload,
                       "prev_hash": prev, "hash": f"{seq:064x}", "db_id": "bench",
                       "published_at_s": due_s}, separators=(",", ":")).encode()


async def _site(client: Any, site: str, rate: float, start_s: float, end_s: float,
                measure_from_s: float, lags: list[float], counts: dict[str, int]) -> None:
    from gateway.fleet.publisher import WRONG_LAST_SEQUENCE, AckInbox
    from gateway.fleet.subjects import (
        EXPECTED_LAST_MSG_ID,
        EXPECTED_LAST_SUBJECT_SEQUENCE,
        MSG_ID,
        SiteSubjects,
    )

    names = SiteSubjects(site)
    inbox = AckInbox(client)
    seq = 0
    audit_last = 0
    prev = "0" * 64
    while True:
        now = time.time()
        if now >= end_s:
            return
        due = int((now - start_s) * rate)  # records due by now at this site
        batch = []
        while seq < due:
            seq += 1
            due_s = start_s + seq / rate
            batch.append((seq, due_s, _record(site, seq, due_s, prev)))
            prev = f"{seq:064x}"
        futures = []
        for i, (s, _, data) in enumerate(batch):
            headers = {MSG_ID: names.msg_id(s)}
            if i == 0:
                headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(audit_last)
            else:
                headers[EXPECTED_LAST_MSG_ID] = names.msg_id(s - 1)
            futures.append(await inbox.publish(names.audit, data, headers))
        for (_, due_s, _), fut in zip(batch, futures, strict=True):
            ack = await asyncio.wait_for(fut, 30.0)
            if ack.error is not None:
                counts["refused" if ack.error_code == WRONG_LAST_SEQUENCE else "errors"] += 1
                continue
            audit_last = ack.seq
            received = time.time()
            if due_s >= measure_from_s:
                lags.append(received - due_s)
                counts["held"] += 1
        await asyncio.sleep(max(0.0, TICK_S - (time.time() - now)))


def _worker(url: str, sites: list[str], rate: float, warmup_s: float, duration_s: float,
            out: Any) -> None:
    async def main() -> tuple[list[float], dict[str, int]]:
        import nats

        client = await nats.connect(url, pending_size=64 * 1024 * 1024)
        # The schedule starts once this process is up (spawning one takes seconds on a busy
        # machine): a site's lag is measured against its own schedule.
        start_s = time.time() + 0.2
        measure_from_s = start_s + warmup_s
        end_s = measure_from_s + duration_s
        lags: list[float] = []
        counts = {"held": 0, "refused": 0, "errors": 0}
        try:
            await asyncio.gather(*(_site(client, site, rate, start_s, end_s, measure_from_s,
                                         lags, counts) for site in sites))
        finally:
            await client.close()
        return lags, counts

    out.put(asyncio.run(main()))


def run_fleet(sites: int, rate: float, duration_s: float, warmup_s: float = 2.0,
              ) -> dict[str, Any]:
    """Run ``sites`` simulated sites at ``rate`` records/s each for ``duration_s`` (after
    ``warmup_s``) against a fresh nats-server; returns the figures."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise BenchUnavailable("nats-server is not installed (apt-get install nats-server)")
    from gateway.fleet.central import RetentionPolicy, ensure_streams

    names = [f"site-{i:05d}" for i in range(sites)]
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        port = _free_port()
        conf = Path(tmp) / "nats.conf"
        conf.write_text(f"listen: 127.0.0.1:{port}\nmax_payload: 1MB\n"
                        f'jetstream {{ store_dir: "{tmp}/js", max_file_store: 20GB }}\n')
        server = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            url = f"nats://127.0.0.1:{port}"
            created_s = asyncio.run(_create(url, names, ensure_streams, RetentionPolicy()))
            rss_idle = _rss_mb(server.pid)
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            workers = max(1, min(WORKERS, sites))
            procs = [ctx.Process(target=_worker, args=(url, names[w::workers], rate, warmup_s,
                                                       duration_s, queue))
                     for w in range(workers)]
            for proc in procs:
                proc.start()
            rss_max = rss_idle
            results: list[tuple[list[float], dict[str, int]]] = []
            deadline = time.monotonic() + 180 + warmup_s + duration_s
            while len(results) < len(procs):
                rss_max = max(rss_max, _rss_mb(server.pid))
                try:
                    results.append(queue.get(timeout=0.5))
                except Empty:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the publisher processes did not finish") from None
            for proc in procs:
                proc.join(timeout=60)
            load = os.getloadavg()
            rss_end = _rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    lags = sorted(lag for part, _ in results for lag in part)
    counts = {key: sum(c[key] for _, c in results) for key in ("held", "refused", "errors")}

    def pct(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else float("nan")

    return {"sites": sites, "rate_per_site": rate, "offered_records_per_s": sites * rate,
            "duration_s": duration_s, "ingest_records_per_s": counts["held"] / duration_s,
            "held": counts["held"], "refused": counts["refused"], "errors": counts["errors"],
            "lag_s_p50": pct(0.50), "lag_s_p99": pct(0.99), "lag_s_max": lags[-1] if lags
            else float("nan"), "server_rss_mb_idle": rss_idle, "server_rss_mb_max":
            max(rss_max, rss_end), "streams_created_s": created_s, "workers": workers,
            "load_avg": list(load), "cpus": os.cpu_count()}


async def _create(url: str, names: list[str], ensure: Any, policy: Any) -> float:
    import nats

    client = await nats.connect(url)
    began = time.monotonic()
    try:
        await ensure(client, names, policy)
    finally:
        await client.close()
    return time.monotonic() - began


def run(quick: bool, sites: int | None = None, rate: float | None = None) -> dict[str, Any]:
    """The bench for ``safety-gateway bench fleet``: ``sites`` (default 100; 10 with
    ``quick``) at ``rate`` records/s each (default 50), 20 s measured after 2 s (3 s after 1 s
    with ``quick``)."""
    n = sites if sites is not None else (10 if quick else TARGETS["sites"])
    r = rate if rate is not None else TARGETS["rate_per_site"]
    if n < 1 or n > 10_000:
        raise ValueError(f"--sites must be 1..10000, not {n}")
    if not (0 < r <= 1000):
        raise ValueError(f"--rate must be in (0, 1000], not {r}")
    result = run_fleet(int(n), float(r), 3.0 if quick else 20.0,
                       warmup_s=1.0 if quick else 2.0)
    result["target"] = dict(TARGETS)
    result["met"] = (result["sites"] >= TARGETS["sites"]
                     and result["rate_per_site"] >= TARGETS["rate_per_site"]
                     and result["lag_s_p99"] <= TARGETS["lag_s_p99_max"]
                     and result["refused"] == 0 and result["errors"] == 0)
    return result


def format_text(result: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in result["load_avg"])
    return "\n".join([
        f"fleet: {result['sites']} sites x {result['rate_per_site']:g} records/s "
        f"(offered {result['offered_records_per_s']:,.0f}/s) for {result['duration_s']:g} s, "
        f"{result['workers']} publisher processes, one nats-server (file store)",
        f"  ingest {result['ingest_records_per_s']:,.0f} records/s held centrally "
        f"({result['held']:,} records; refused {result['refused']}, errors "
        f"{result['errors']})",
        f"  lag due -> held: p50 {result['lag_s_p50'] * 1000:.1f} ms, p99 "
        f"{result['lag_s_p99'] * 1000:.1f} ms, max {result['lag_s_max'] * 1000:.1f} ms",
        f"  nats-server RSS: {result['server_rss_mb_idle']:.0f} MB idle with the streams, "
        f"{result['server_rss_mb_max']:.0f} MB max; {result['sites']} streams created in "
        f"{result['streams_created_s']:.1f} s",
        f"  load average {load} on {result['cpus']} CPUs",
        f"target (100 sites x 50/s, lag p99 <= 2 s): "
        f"{'met' if result['met'] else 'not met (or not this configuration)'}",
    ])
