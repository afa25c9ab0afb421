"""``drill --live``: the drill hands its incident to the people on shift and scores them. The
test plays the person: it waits for the handover on the drill's stderr, then runs the
``incidents`` commands against the live drill's audit database (ack, then every checklist
item), and the drill reports the time to acknowledge and the checklist's completion."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.cli import main as safety_gateway
from simulators.drill.live import wait_for_people

ROOT = Path(__file__).resolve().parents[2]


def _sg(*args: str) -> tuple[int, str]:
    """Run a ``safety-gateway`` command in this process (as a person would type it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = safety_gateway(list(args))
    return code, out.getvalue()


class _Page:
    """The person's browser, reduced to the dashboard's HTTP API: a session cookie and the
    CSRF token every action carries."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookie = ""
        self.csrf = ""

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="GET" if body is None
                                     else "POST", headers={"Content-Type": "application/json"})
        if self.cookie:
            req.add_header("Cookie", self.cookie)
        if self.csrf:
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                cookie = r.headers.get("Set-Cookie")
                if cookie:
                    self.cookie = cookie.split(";", 1)[0]
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def login(self, user: str, password: str) -> None:
        status, me = self.call("/api/login", {"user": user, "password": password})
        assert status == 200, me
        self.csrf = me["csrf"]

    def incident(self, action: str, ident: str, *args: str) -> tuple[int, Any]:
        return self.call("/api/incident", {"action": action, "incident_id": ident,
                                           "args": list(args)})


def test_a_person_works_the_live_drills_incident_on_the_running_gateway(tmp_path, monkeypatch):
    # The drill's gateway keeps running after the timeline: the person logs in to its
    # dashboard, acknowledges and ticks the checklist there (its incident database is held by
    # the gateway), ticks the last item through `incidents check --via`, and the drill scores
    # them by name from the incident's records, then closes the gateway.
    report = tmp_path / "report"
    monkeypatch.setenv("SG_DRILL_PASSWORD", "drill-pw")
    drill = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "drill", "own_model_water_tank", "--live",
         "--markdown", "--report", str(report), "--live-timeout-s", "120",
         "--user", "alice", "--user", "boss:admin"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert drill.stderr is not None
        handover = ""
        for line in drill.stderr:  # blocks until the drill has run its timeline
            handover += line
            if line.startswith("waiting until"):
                break
        match = re.search(r"incident (\S+) is yours", handover)
        assert match, handover
        ident = match.group(1)
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/) \(log in", handover)
        via = re.search(r"--via (opc\.tcp://127\.0\.0\.1:\d+/drill/) --user alice", handover)
        assert url and via, handover
        assert "drill users: alice (operator), boss (admin)" in handover
        page = _Page(url.group(1).rstrip("/"))
        status, state = page.call("/api/state")
        assert status == 200 and state["incident"]["id"] == ident
        assert state["view"]["mode"] != "auto"  # still running, on fallback control
        # Without a session nothing is accepted; then alice logs in and works the incident.
        assert page.incident("acknowledge", ident, "on it")[0] == 401
        page.login("alice", "drill-pw")
        status, body = page.incident("acknowledge", ident, "on it")
        assert status == 200, body
        # Reading works beside the running gateway (read-only connections).
        db = report / "own_model_water_tank" / "audit.db"
        code, shown = _sg("incidents", "show", ident, "--db", str(db), "--json")
        assert code == 0
        checklist = json.loads(shown)["checklist"]
        # Writing with --db waits for the gateway to close: refused meanwhile, and said so.
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code, _ = _sg("incidents", "note", ident, "x", "--db", str(db), "--by", "bob")
        assert code == 1 and "open for writing by a running gateway" in err.getvalue()
        index: dict[str, int] = {}
        items = []
        for item in checklist:
            k = index.get(item["phase"], 0)
            index[item["phase"]] = k + 1
            items.append((item["phase"], str(k)))
        for phase, k in items[:-1]:
            status, body = page.incident("check", ident, phase, k)
            assert status == 200, (phase, k, body)
        # ctl reaches the same running gateway: on fallback control since the trip.
        code, status = _sg("ctl", "status", "--via", via.group(1), "--user", "alice",
                           "--password-env", "SG_DRILL_PASSWORD", "--json")
        assert code == 0 and json.loads(status)["mode"] in ("manual", "safe_stop"), status
        # The last item through the running gateway's OPC UA endpoint, as alice; with it
        # the wait is over.
        code, _ = _sg("incidents", "check", ident, *items[-1], "--via", via.group(1),
                      "--user", "alice", "--password-env", "SG_DRILL_PASSWORD")
        assert code == 0
        stdout, stderr = drill.communicate(timeout=120)
    finally:
        if drill.poll() is None:
            drill.kill()
            drill.wait()
    assert drill.returncode == 0, stdout + stderr
    n = len(checklist)
    assert re.search(rf"live: incident {ident}: acknowledged after [0-9.]+ s by alice; "
                     rf"checklist {n} of {n} done; not resolved\n", stdout), stdout
    live = json.loads((report / "own_model_water_tank" / "live.json").read_text())
    assert live["incident"] == ident and live["checklist_done"] == n > 0
    assert live["acknowledged_by"] == "alice" and not live["timed_out"]
    assert 0 <= live["acknowledged_after_s"] <= live["opened_to_ack_s"]
    # The gateway closed after the wait: the chain verifies, and the checklist ticks made
    # through it (dashboard and --via) are in it.
    code, shown = _sg("incidents", "show", ident, "--db", str(db), "--json")
    assert code == 0
    assert all(i["done"] for i in json.loads(shown)["checklist"])
    assert _sg("audit", "verify", str(db))[0] == 0
    # The summary a team files (--markdown prints it; --report keeps it as summary.md and
    # summary.json), with the people's score.
    md = (report / "summary.md").read_text()
    assert stdout.endswith(md)
    assert md.startswith("# Drill summary\n")
    assert "1 of 1 scenarios passed; 2 of 2 injections passed; 0 unsafe writes" in md
    assert "| own_model_water_tank | PASS | 0.10 s (0.5 s) | 0.10 s | 0 |" in md
    assert ("- injection 2, level forged at 35 s: detected after 0.10 s, budget 0.5 s; "
            "cause named sensing, expected sensing: **PASS**") in md
    assert "- injection 1, demand surge at 15 s: benign (no trip expected)" in md
    assert f"- incident {ident}: cause sensing (trips: input.rate.level" in md
    assert f"- live: incident {ident}: acknowledged after" in md
    summary = json.loads((report / "summary.json").read_text())
    assert (summary["scenarios"], summary["passed"], summary["unsafe_writes"]) == (1, 1, 0)
    (card,) = summary["cards"]
    assert [r["passed"] for r in card["injections"]] == [True, True]
    assert card["incident_causes"][0]["cause"] == "sensing"
    assert summary["live"]["own_model_water_tank"]["checklist_done"] == n
    assert (report / "own_model_water_tank" / "ran" / "manifest.json").is_file()


def test_an_unworked_incident_times_out_unacknowledged(own_run):
    # Nobody answers: the wait ends at its timeout (virtual clock, no real waiting) and the
    # score says the incident was never acknowledged.
    run, _, db = own_run
    (ident,) = run.incidents
    now = [1000.0]

    def sleep(s: float) -> None:
        now[0] += s

    score = wait_for_people(db, ident, run.scenario.name, timeout_s=60.0,
                            clock=lambda: now[0], sleep=sleep)
    assert score.timed_out and score.acknowledged_after_s is None
    assert score.checklist_done == 0 < score.checklist_items
    assert now[0] >= 1060.0
    assert "not acknowledged" in score.text()


def test_the_handover_asks_for_the_review_before_resolve(tmp_path):
    # resolve is refused without a post-incident review: the people are told to record one.
    from simulators.drill.live import handover_text

    lines = handover_text("INC-1", tmp_path / "audit.db").splitlines()
    review = next(i for i, line in enumerate(lines) if " incidents review INC-1 " in line)
    resolve = next(i for i, line in enumerate(lines) if " incidents resolve INC-1 " in line)
    assert review < resolve and "--root-cause TEXT" in lines[review]


def test_the_live_watch_ends_at_its_timeout_unworked(own_run):
    # The in-run wait (the gateway still running): before each step the runner asks the
    # watch; unworked, it answers None until the timeout has passed on its wall clock, then
    # the score says timed out and never acknowledged.
    from gateway.incident.store import load_incident
    from simulators.drill.live import LiveWatch

    run, _, db = own_run
    (ident,) = run.incidents
    incident = load_incident(db, ident)
    said: list[str] = []
    wall = [5000.0]
    watch = LiveWatch(30.0, said.append, lambda i: f"yours: {i}", wall=lambda: wall[0])
    watch.handover(ident)
    assert said == [f"yours: {ident}"]
    wall[0] += 29.9
    assert watch.check(incident, run.scenario.name) is None
    wall[0] += 0.1
    score = watch.check(incident, run.scenario.name)
    assert score is not None and score.timed_out and score.acknowledged_after_s is None
    assert score.handed_over_wall_s == 5000.0
