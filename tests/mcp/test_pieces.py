"""The pure pieces: proposal waiters, rate limits, the call log, agents' tokens, the site's
``northbound.mcp`` (errors as file:line: key: message)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gateway
from gateway.config.loader import ConfigError
from gateway.config.schema import McpAgent, McpServerSpec
from gateway.envelope.compiled import Action
from gateway.envelope.engine import Verdict
from gateway.mcp.agents import AgentTable
from gateway.mcp.calls import OTHER_AGENTS, CallLog
from gateway.mcp.limits import RateLimit
from gateway.mcp.outcome import Result
from gateway.runtime.external import ExternalCommands
from gateway.runtime.proposals import ProposalWaiters
from gateway.supervisor.decision import Decision, Source
from gateway.supervisor.modes import Mode

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("a", "b")


def decision(mode: Mode, action: Action, command: list[float], source: Source = Source.AI,
             violations: tuple[str, ...] = ()) -> Decision:
    cmd = np.array(command)
    verdict = Verdict(action, violations, None if action >= Action.REJECT else cmd)
    return Decision(5.0, mode, cmd, source, (source,) * len(command), verdict, cmd,
                    action == Action.CLAMP, (), False, np.zeros(1), 0.1)


def test_waiters_answer_what_the_cycle_did() -> None:
    async def main() -> None:
        ext = ExternalCommands(NAMES)
        waiters = ProposalWaiters(NAMES, ext, max_waiting=2)
        ext.write({"a": 1.0}, 0.0)
        first = waiters.wait({"a": 1.0})
        ext.write({"a": 2.0, "b": 3.0}, 0.0)  # replaces a: the first is superseded
        second = waiters.wait({"a": 2.0, "b": 3.0})
        assert waiters.full
        ext.proposal(np.zeros(2))  # the cycle takes its proposal
        waiters.judged(decision(Mode.AUTO, Action.CLAMP, [1.5, 3.0],
                                violations=("a.rate",)))
        assert first.result().result is Result.SUPERSEDED
        out = second.result()
        assert out.result is Result.CLAMPED and out.written == (("a", 1.5), ("b", 3.0))
        assert out.violations == ("a.rate",)
        assert len(waiters) == 0
        cases = [(Mode.AUTO, Action.OK, Source.AI, Result.APPLIED),
                 (Mode.AUTO, Action.REJECT, Source.FALLBACK, Result.REFUSED),
                 (Mode.MANUAL, Action.TRIP, Source.FALLBACK, Result.REFUSED),
                 (Mode.SHADOW, Action.OK, Source.FALLBACK, Result.SHADOW),
                 (Mode.MANUAL, Action.OK, Source.FALLBACK, Result.NOT_IN_CONTROL),
                 (Mode.AUTO, Action.OK, Source.SAFE, Result.REFUSED)]
        for mode, action, source, expected in cases:
            ext.write({"a": 2.0}, 0.0)
            fut = waiters.wait({"a": 2.0})
            ext.proposal(np.zeros(2))
            waiters.judged(decision(mode, action, [2.0, 3.0], source))
            got = fut.result()
            assert got.result is expected, (mode, action, source)
            assert got.reached_plant == (expected in (Result.APPLIED, Result.CLAMPED))
            assert (got.written != ()) == got.reached_plant
        # Written after the cycle took its proposal: that cycle's decision does not answer it.
        ext.write({"a": 4.0}, 0.0)
        late = waiters.wait({"a": 4.0})
        waiters.judged(decision(Mode.AUTO, Action.OK, [2.0, 3.0]))
        assert not late.done() and len(waiters) == 1
        ext.proposal(np.zeros(2))
        ext.write({"a": 5.0}, 0.0)  # a later write after this cycle took: not superseding
        waiters.judged(decision(Mode.AUTO, Action.OK, [4.0, 3.0]))
        assert late.result().result is Result.APPLIED
        assert late.result().written == (("a", 4.0),)
        left = waiters.wait({"a": 2.0})
        waiters.close("stopping")
        assert left.result().result is Result.REFUSED
    asyncio.run(main())


def test_rate_limit_is_a_token_bucket() -> None:
    limit = RateLimit(2.0, 3, 0.0)
    assert [limit.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow(0.5) and not limit.allow(0.5)  # 1 token back in 0.5 s
    assert not limit.allow(0.4)  # a clock that went back adds nothing
    assert limit.refused == 3


def test_call_log_aggregates_floods_and_bounds_keys() -> None:
    out: list[dict[str, Any]] = []
    log = CallLog(out.append, window_s=1.0, max_keys=2, max_arg_chars=50)
    for k in range(1000):
        log.call(k * 0.0005, agent="x", role="ai", address="h:1", tool="propose",
                 args={"values": {"a": k}}, outcome="refused: rate_limited")
    log.call(0.1, agent="y", role="ai", address="h:2", tool="read_plant", args={}, outcome="ok")
    log.call(0.2, agent="z", role="ai", address="h:3", tool="read_plant", args={},
             outcome="ok")
    log.call(0.3, agent="big", role="ai", address="h:4", tool="propose",
             args={"values": {"a": "x" * 500}}, outcome="refused: bad_arguments")
    assert log.tick(0.9) == 0
    assert log.tick(1.0) == 1  # x's window opened at 0.0
    assert out[0]["count"] == 1000 and out[0]["first"]["args"] == {"values": {"a": 0}}
    assert out[0]["last"]["args"] == {"values": {"a": 999}}
    log.flush()
    others = [w for w in out if w["agent"] == OTHER_AGENTS]
    assert {w["tool"] for w in others} == {"read_plant", "propose"}
    big = next(w for w in others if w["tool"] == "propose")
    assert big["first"]["args"]["chars"] > 500  # cut, counted
    assert sum(w["count"] for w in out) == log.total == 1003


def test_agents_tokens_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(" secret-one\n")
    spec = McpServerSpec(agents=(McpAgent("a", "ai", token_file=tmp_path / "t"),
                                 McpAgent("b", "viewer", token_env="B_TOKEN"),
                                 McpAgent("c", "viewer", token_env="C_TOKEN")))
    table = AgentTable(spec, {"B_TOKEN": "secret-two", "C_TOKEN": ""})
    assert table.check("secret-one") is spec.agents[0]
    assert table.check("secret-two") is spec.agents[1]
    assert table.check("") is None and table.check("secret") is None
    with pytest.raises(ValueError, match="same token"):
        AgentTable(spec, {"B_TOKEN": "secret-one", "C_TOKEN": "x"})


SITE_MCP = """
northbound:
  mcp:
    port: 8765
    agents:
      - {name: planner, role: ai, token_file: planner.token}
      - {name: planner, role: viewer, token_env: W}
      - {name: bad name, role: admin, token_env: X, token_file: y}
      - {name: quiet, role: viewer}
      - {name: fast, role: viewer, token_env: F, calls_per_s: 0}
"""


def test_site_mcp_section_and_its_errors(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    assert "\nnorthbound:" in text
    good = text.replace("\nnorthbound:", "\nnorthbound:\n  mcp:\n    port: 8799\n    agents:\n"
                        "      - {name: planner, role: ai, token_file: planner.token}\n"
                        "      - {name: watcher, role: viewer, token_env: W_TOKEN, "
                        "calls_per_s: 5, burst: 10}", 1)
    path = tmp_path / "site.yaml"
    path.write_text(good)
    site = gateway.load_config(path)
    spec = site.northbound.mcp
    assert spec is not None and spec.port == 8799
    assert spec.agents[0].token_file == tmp_path / "planner.token"
    assert spec.agents[1] == McpAgent("watcher", "viewer", token_env="W_TOKEN",
                                      calls_per_s=5.0, burst=10)
    bad = text.replace("\nnorthbound:", SITE_MCP.rstrip("\n") + "\n", 1)
    path.write_text(bad)
    with pytest.raises(ConfigError) as err:
        gateway.load_config(path)
    lines = str(err.value)
    assert "northbound.mcp.agents[2].name" in lines  # "bad name"
    assert "northbound.mcp.agents[3].token_file: set exactly one" in lines
    assert "northbound.mcp.agents[4].calls_per_s" in lines
    assert "northbound.mcp.agents: duplicate agent names: planner" in lines
    assert f"{path}:" in lines
    # An `ai` agent needs an external AI controller.
    onnx = good.replace("kind: external", "kind: none", 1)
    path.write_text(onnx)
    with pytest.raises(ConfigError, match=r"agents\[0\]\.role: an `ai` agent"):
        gateway.load_config(path)


def test_nan_in_answers_is_null() -> None:
    from gateway.mcp.server import _json_safe

    assert _json_safe({"a": [math.nan, 1.0, math.inf], "b": {"c": -math.inf}}) == {
        "a": [None, 1.0, None], "b": {"c": None}}


def test_descriptions_carry_the_sites_limits() -> None:
    from gateway.mcp.descriptions import describe_tools

    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    tools = describe_tools(replace(site))
    assert '"inflow_valve":{"unit":"%","min":0.0,"max":100.0' in tools["propose"][0]
    assert "Role ai only" in tools["propose"][0]


def test_the_core_holds_at_most_max_waiting_proposals_and_refuses_the_rest() -> None:
    from gateway.adapters.base import ClientInfo, Role
    from tests.runtime.test_northbound_handler import VIEWER, started

    ai = ClientInfo("mcp", "127.0.0.1:1", "planner", Role.AI)

    async def main() -> None:
        gw, device = await started()
        full = gw.requests.proposals.max_waiting
        waiting = [asyncio.create_task(gw.propose(ai, {"inflow_valve": 10.0}))
                   for _ in range(full)]
        await asyncio.sleep(0)
        assert len(gw.requests.proposals) == full
        busy = await gw.propose(ai, {"inflow_valve": 10.0})
        assert busy.result is Result.REFUSED and "too many proposals" in busy.reason
        assert (await gw.propose(VIEWER, {"inflow_valve": 10.0})).result is Result.REFUSED
        assert gw.refusals.total == 2  # both kept as evidence
        await gw.cycle(gw.clock())
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        # MANUAL, and this stand-in's unread sensors take it to SAFE_STOP: not in control.
        assert {o.result for o in outcomes} == {Result.NOT_IN_CONTROL}
        assert len(gw.requests.proposals) == 0
        # Out of control, the proposals were judged, never written (the cycle wrote its own).
        assert all(w.get("inflow_valve") != 10.0 for w in device.writes)
    asyncio.run(main())


def test_an_oversized_call_window_is_cut_before_the_audit_chain() -> None:
    from tests.runtime.test_northbound_handler import started

    kept: list[dict[str, Any]] = []

    async def main() -> None:
        gw, _ = await started()
        gw.records.agent_calls = kept.append  # type: ignore[method-assign]
        gw.agent_calls({"agent": "a", "tool": "propose", "outcome": "ok", "count": 3,
                        "first": {"args": "x" * 100_000}})
        gw.agent_calls({"agent": "a", "tool": "read_plant", "outcome": "ok", "count": 1})
    asyncio.run(main())
    big, small = kept
    assert big["count"] == 3 and big["chars"] > 100_000
    assert len(big["oversized_json"]) == 8192 and "first" not in big
    assert small == {"agent": "a", "tool": "read_plant", "outcome": "ok", "count": 1}
