"""The post-incident review, action items tracked to closure across incidents, and resolve
refused while required checklist items or the review are open."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import textwrap
from dataclasses import replace

import pytest

from gateway.audit.store import verify
from gateway.config import ConfigError
from gateway.incident.cli import add_parser
from gateway.incident.model import (
    BadRequest,
    ChecklistPhase,
    IncidentError,
    OpenItems,
    Phase,
    ResolveRequirements,
    finite_json,
)
from gateway.incident.playbook import DEFAULT_PLAYBOOK, load_playbook
from gateway.incident.store import load_incident
from tests.incident.rig import Rig


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", *argv])
    return int(args.func(args))


def incident(tmp_path, **kw):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0, **kw)
    rig.to_auto()
    rig.hijack()
    rig.good(15)
    return rig, rig.manager.incidents[0].id


def test_a_review_with_action_items_tracked_to_closure(tmp_path, capsys):
    rig, first = incident(tmp_path / "a")
    rig.close()
    db = str(rig.db)
    assert cli("review", first, "--root-cause", "a backdoored policy update",
               "--factor", "no registry signature check on the AI host",
               "--went-well", "failover in one cycle", "--went-badly", "ack took 40 min",
               "--action", "sign every model in the registry", "mallory", "2099-01-31",
               "--action", "page the shift lead directly", "oscar", "2000-01-01",
               "--by", "alice", "--db", db) == 0
    inc = load_incident(db, first)
    assert inc.review is not None and inc.review.root_cause == "a backdoored policy update"
    assert inc.review.factors == ("no registry signature check on the AI host",)
    assert [(a.number, a.owner, a.due) for a in inc.actions] == [
        (1, "mallory", dt.date(2099, 1, 31)), (2, "oscar", dt.date(2000, 1, 1))]
    capsys.readouterr()
    assert cli("actions", "--db", db) == 0
    out = capsys.readouterr().out.splitlines()
    # Soonest due first; the one past its date says so.
    assert out[0].startswith(f"{first} #2  due 2000-01-01  oscar") and "[OVERDUE]" in out[0]
    assert out[1].startswith(f"{first} #1  due 2099-01-31  mallory") and "[open]" in out[1]
    assert cli("action-done", first, "2", "--note", "pager rule added", "--by", "oscar",
               "--db", db) == 0
    assert cli("action-done", first, "2", "--by", "oscar", "--db", db) == 1
    assert "closed already" in capsys.readouterr().err
    assert cli("action-done", first, "7", "--by", "oscar", "--db", db) == 1
    assert cli("action-done", first, "x", "--by", "oscar", "--db", db) == 2
    assert cli("actions", "--db", db, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["number"], r["done"]) for r in rows] == [(1, False)]
    assert cli("actions", "--db", db, "--all", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["number"], r["done"], r["done_by"]) for r in rows] == [
        (1, False, None), (2, True, "oscar")]
    # A revised review keeps the earlier items and numbers its own on.
    assert cli("review", first, "--root-cause", "a backdoored policy update via the CI",
               "--action", "pin the CI runner image", "mallory", "2099-02-01",
               "--by", "alice", "--db", db) == 0
    inc = load_incident(db, first)
    assert inc.review is not None and inc.review.revisions == 2
    assert [a.number for a in inc.actions] == [1, 2, 3]
    assert cli("show", first, "--db", db) == 0
    out = capsys.readouterr().out
    assert "root cause   a backdoored policy update via the CI" in out
    assert "[x] 2. page the shift lead directly  (owner oscar, due 2000-01-01)  done by oscar" \
        in out
    assert verify(db).ok
    # Strict JSON, as the evidence bundle writes incident.json.
    data = json.loads(json.dumps(finite_json(inc.to_json()), sort_keys=True, allow_nan=False))
    assert data["actions"][0]["due"] == "2099-01-31"
    assert data["review"]["root_cause"] == "a backdoored policy update via the CI"


@pytest.mark.parametrize(("argv", "message"), [
    (["--root-cause", " "], "root cause"),
    (["--root-cause", "x", "--action", "t", "o", "31/01/2099"], "YYYY-MM-DD"),
    (["--root-cause", "x", "--action", "t", " ", "2099-01-31"], "action owner"),
    (["--root-cause", "x", "--factor", ""], "an entry is empty"),
])
def test_a_malformed_review_is_refused_and_nothing_recorded(tmp_path, capsys, argv, message):
    rig, ident = incident(tmp_path)
    rig.close()
    assert cli("review", ident, *argv, "--by", "alice", "--db", str(rig.db)) == 2
    assert message in capsys.readouterr().err
    assert load_incident(rig.db, ident).review is None


def test_resolve_waits_for_the_checklist_and_the_review(tmp_path):
    rig, ident = incident(tmp_path)
    m = rig.manager
    with pytest.raises(OpenItems) as info:
        m.resolve(ident, "alice", "t", "done", enforce=True)
    assert len(info.value.open) == 17 and info.value.open[-1] == "review"
    inc = m.get(ident)
    for phase in ChecklistPhase:
        for k in range(len(inc.checklist_of(phase))):
            m.check(ident, phase, k, "bob")
    with pytest.raises(OpenItems, match="resolved: no post-incident review recorded"):
        m.resolve(ident, "alice", "t", "done", enforce=True)
    m.review(ident, "alice", "t", "sensor spoofing", actions=[("fix", "bob", "2099-01-01")])
    inc = m.resolve(ident, "alice", "t", "done", enforce=True)
    assert inc.phase is Phase.RESOLVED and inc.resolution is not None
    assert not inc.resolution.forced
    # Open action items do not hold up resolution; they are tracked on after it.
    assert not inc.actions[0].done
    m.action_done(ident, 1, "bob")
    rig.close()


def test_a_forced_resolution_records_the_reason_and_what_was_open(tmp_path, capsys):
    rig, ident = incident(tmp_path)
    m = rig.manager
    with pytest.raises(BadRequest):
        m.resolve(ident, "alice", "t", "done", enforce=True, force_reason=" ")
    with pytest.raises(IncidentError, match="not authorised"):
        m.resolve(ident, "mallory", "t", "done", enforce=True, force_reason="x",
                  authorised=False)
    inc = m.resolve(ident, "alice", "t", "done", enforce=True,
                    force_reason="plant handed to the vendor")
    r = inc.resolution
    assert r is not None and r.forced and r.force_reason == "plant handed to the vendor"
    assert len(r.open) == 17
    assert "FORCED with 17 required item(s) open" in inc.timeline[-2].text
    rig.close()
    assert cli("show", ident, "--db", str(rig.db)) == 0
    assert "resolution FORCED by alice: plant handed to the vendor" in capsys.readouterr().out


def test_the_playbook_says_what_resolution_requires(tmp_path):
    book = load_playbook(DEFAULT_PLAYBOOK)
    assert book.resolve_requires == ResolveRequirements()  # everything, by default
    lenient = replace(book, resolve_requires=ResolveRequirements(
        (ChecklistPhase.DETECTION,), review=False))
    rig, ident = incident(tmp_path, playbook=lenient)
    m = rig.manager
    with pytest.raises(OpenItems, match="2 required checklist item"):
        m.resolve(ident, "alice", "t", "done", enforce=True)
    m.check(ident, "detection", 0, "bob")
    m.check(ident, "detection", 1, "bob")
    assert m.resolve(ident, "alice", "t", "done", enforce=True).phase is Phase.RESOLVED
    rig.close()
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        resolve_requires:
          checklist: [detection, triage]
          review: maybe
        rules:
          - {name: any, match: "*"}
        """))
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    assert {(i.line, i.path) for i in info.value.issues} == {
        (2, "resolve_requires.checklist"), (3, "resolve_requires.review")}
