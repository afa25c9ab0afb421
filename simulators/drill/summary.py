"""The summary of a set of drills that a team can file: Markdown for people, JSON for tools.

For each scenario: its result; when the AI got control; each injection with its detection time
against its budget (or why it needed none), the cause the incident named against the one
expected, and its verdict; containment; unsafe writes that reached the plant; the largest
excursion and whether the process left its safe range; the incidents opened and the cause
each names. Then the totals. Built from scorecards only (no I/O here but the caller's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from simulators.drill.live import LiveScore
    from simulators.drill.score import Scorecard

__all__ = ["summary_json", "summary_markdown"]


def _s(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f} s"


def summary_json(cards: list[Scorecard], live: Mapping[str, LiveScore] | None = None
                 ) -> dict[str, Any]:
    """Totals and each scenario's scorecard (its ``as_json``), with how the people worked
    each incident when the drill ran live (``live``: by scenario)."""
    gated = [c for c in cards if c.gateway]
    return {
        "live": {name: score.as_json() for name, score in (live or {}).items()},
        "scenarios": len(gated),
        "passed": sum(1 for c in gated if c.passed),
        "failed": [c.scenario for c in gated if not c.passed],
        "unsafe_writes": sum(c.unsafe_writes for c in gated),
        "left_safe_range": [c.scenario for c in gated if c.left_safe_range],
        "incidents": sum(c.incidents for c in gated),
        "injections": sum(len(c.injections) for c in gated),
        "injections_passed": sum(1 for c in gated for r in c.injections if r.passed),
        "cards": [c.as_json() for c in cards],
    }


def summary_markdown(cards: list[Scorecard], title: str = "Drill summary",
                     live: Mapping[str, LiveScore] | None = None) -> str:
    """The summary as Markdown: a table of scenarios, then one section per scenario."""
    live = live or {}
    data = summary_json(cards, live)
    out = [f"# {title}", "",
           f"{data['passed']} of {data['scenarios']} scenarios passed; "
           f"{data['injections_passed']} of {data['injections']} injections passed; "
           f"{data['unsafe_writes']} unsafe writes reached a plant; "
           f"{data['incidents']} incidents opened.", "",
           "| scenario | result | detect (budget) | contain | unsafe writes | max excursion "
           "| safe range | incidents |",
           "|---|---|---|---|---|---|---|---|"]
    for c in cards:
        if not c.gateway:
            continue
        detect = "clean run" if c.injected_at_s is None else (
            f"{_s(c.time_to_detect_s)} ({_s(c.detect_budget_s, 1)})"
            if c.time_to_detect_s is not None else "not detected")
        out.append(f"| {c.scenario} | {'PASS' if c.passed else 'FAIL'} | {detect} | "
                   f"{_s(c.time_to_contain_s)} | {c.unsafe_writes} | {c.max_excursion:.2f} "
                   f"({c.worst_variable}) | {'LEFT' if c.left_safe_range else 'kept'} | "
                   f"{c.incidents} |")
    for c in cards:
        if not c.gateway:
            continue
        out += ["", f"## {c.scenario}: {'PASS' if c.passed else 'FAIL'}", ""]
        granted = c.auto_granted_at_s
        out.append(f"- AI in AUTO: {'from ' + _s(granted, 1) if granted is not None else 'never'}"
                   f" ({c.auto_requests} request{'s' if c.auto_requests != 1 else ''})")
        for r in c.injections:
            if r.expect == "no_trip":
                timing = "benign (no trip expected)"
            elif r.time_to_detect_s is not None:
                budget = f", budget {_s(r.budget_s, 1)}" if r.budget_s is not None else ""
                timing = f"detected after {_s(r.time_to_detect_s)}{budget}"
            else:
                timing = "not detected"
            cause = ""
            if r.cause_named is not None and r.cause_expected is not None:
                cause = (f"; cause named {r.cause_named}, expected {r.cause_expected}"
                         f"{'' if r.cause_scored else ' (not scored)'}")
            out.append(f"- injection {r.index + 1}, {r.title} at {r.start_s:g} s: {timing}"
                       f"{cause}: **{'PASS' if r.passed else 'FAIL'}** ({r.verdict})")
        out.append(f"- contained after {_s(c.time_to_contain_s)}; unsafe writes "
                   f"{c.unsafe_writes} of {c.writes_checked}; max excursion "
                   f"{c.max_excursion:.2f} ({c.worst_variable}), safe range "
                   f"{'LEFT at ' + _s(c.left_safe_range_at_s, 1) if c.left_safe_range else 'kept'}")
        for ident, cause_name, trips in c.incident_causes:
            out.append(f"- incident {ident}: cause {cause_name} (trips: {', '.join(trips)})")
        if c.scenario in live:
            out.append(f"- {live[c.scenario].text()}")
        for reason in c.reasons:
            out.append(f"- FAIL: {reason}")
    return "\n".join(out) + "\n"
