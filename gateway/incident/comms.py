"""Communications: drafts for customers, regulators, the board and the internal report,
rendered from the incident's facts into Markdown.

Templates are Markdown files with ``$name`` placeholders (:class:`string.Template`: nothing in
them is evaluated), one per :class:`Audience`, in ``configs/playbooks/templates/`` unless a
folder of the same file names is given. A template naming a placeholder that does not exist is
refused (:class:`TemplateError`, with the file and the known names), so a typo never goes out
as literal text. :data:`PLACEHOLDERS` lists what a template may use.

Drafts are drafts: every rendered text starts with a line saying it is a draft and how to
approve it. ``incidents approve-draft`` records who approved which text (its sha256 and the
text itself) in the incident; :func:`bundle_drafts` gives the evidence bundle the drafts as
they render now, and every approved text.
"""

from __future__ import annotations

import hashlib
import string
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.incident.causes import CAUSE_WORDS
from gateway.incident.model import Phase, evidence_text, utc_text

if TYPE_CHECKING:
    from gateway.incident.model import Incident

__all__ = [
    "DEFAULT_TEMPLATES",
    "PLACEHOLDERS",
    "Audience",
    "TemplateError",
    "bundle_drafts",
    "facts",
    "render_draft",
    "text_sha256",
]

DEFAULT_TEMPLATES: Final = Path(__file__).resolve().parents[2] / "configs" / "playbooks" / \
    "templates"
DRAFT_MARK: Final = "> DRAFT, not sent. Approve with: safety-gateway incidents approve-draft"


class Audience(StrEnum):
    REGULATOR = "regulator"
    CUSTOMERS = "customers"
    BOARD = "board"
    INTERNAL = "internal"


class TemplateError(ValueError):
    """A template is missing, unreadable or names an unknown placeholder."""


PLACEHOLDERS: Final = {
    "incident": "the incident's id",
    "site": "the site's name",
    "severity": "its current severity (low, medium, high, critical)",
    "status": "where it stands: detected, contained, investigating, resolved",
    "opened_utc": "when the gateway detected it (UTC)",
    "contained_utc": "when the AI's output stopped reaching the equipment (UTC), or 'not yet'",
    "acknowledged_utc": "when a person first acknowledged it (UTC), or 'not yet'",
    "resolved_utc": "when it was resolved (UTC), or 'not yet'",
    "now_utc": "when the draft was rendered (UTC)",
    "what_happened": "the trigger in words: detector, reason and evidence, and the cause "
                     "it names",
    "cause": "the cause the trip names: ai_behaviour, sensing, device, ai_unavailable or "
             "other, with what it means",
    "trips": "how many trips the incident holds",
    "ai_in_control": "whether the AI controlled the plant at the trip, in words",
    "process_impact": "what the process did: mode after the trip, closest approach to a "
                      "danger limit",
    "containment": "the containment steps and their outcome, one line each",
    "model": "the model's file and sha256",
    "deadlines": "the reporting deadlines and their state, one line each",
    "next_update": "when the next update will be given",
    "summary": "the resolution's summary, or 'under investigation'",
    "plant_safety": "how the gateway's actions relate to the plant's safety instrumented "
                    "system (the playbook's statement)",
}


def text_sha256(text: str) -> str:
    """The sha256 of ``text`` as UTF-8 (what an approval records)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def facts(incident: Incident, now_wall_s: float, next_update: str | None = None
          ) -> dict[str, str]:
    """Every placeholder's value for ``incident`` at ``now_wall_s``. ``next_update`` defaults
    to the earliest reporting deadline not met, else "within 24 hours"."""
    contained = incident.phase_change(Phase.CONTAINED)
    acked = incident.acknowledged_at()
    trig = incident.trigger
    what = f"detector `{trig.detector}` tripped: {trig.reason}"
    if trig.evidence:
        what += f" ({evidence_text(trig.evidence)})"
    cause = f"{incident.cause}: {CAUSE_WORDS[incident.cause]}"
    what += f". Cause: {cause}."
    ai = ("yes: the AI controller's output was being applied when the gateway tripped"
          if incident.mode_at_trip == "auto" else
          f"no: the plant was in {incident.mode_at_trip} mode; the AI's output was not "
          "being applied")
    impact = [f"mode {incident.mode_at_trip} -> {incident.mode_after_trip} at the trip; the "
              "process kept running on the gateway's fallback control"
              if incident.mode_after_trip in ("manual", "shadow") else
              f"mode {incident.mode_at_trip} -> {incident.mode_after_trip} at the trip (the "
              "actuators were taken to their safe values)"]
    c = incident.consequence
    if c is not None and c.min_margin is not None:
        where = "beyond" if c.excursion else "from"
        impact.append(f"closest approach to a danger limit: {abs(c.min_margin):.1%} of the "
                      f"span {where} it ({c.sensor} = {c.value:g})")
    else:
        impact.append("closest approach to a danger limit: not assessed")
    containment = [f"- {r.step}: {r.status}" + (f" ({r.detail})" if r.detail else "")
                   for r in incident.containment] or ["- none recorded"]
    deadlines = incident.deadlines()
    lines = [f"- {d.obligation}: due {utc_text(d.due_wall_s)} ({d.status(now_wall_s)})"
             + (f": {d.description}" if d.description else "") for d in deadlines]
    if next_update is None:
        open_due = sorted(d.due_wall_s for d in deadlines if d.report is None)
        next_update = (f"by {utc_text(open_due[0])}" if open_due and incident.is_open
                       else "within 24 hours" if incident.is_open else "none planned")
    res = incident.resolution
    return {
        "incident": incident.id, "site": incident.site,
        "severity": str(incident.severity or "not classified"),
        "status": str(incident.phase),
        "opened_utc": utc_text(incident.opened_wall_s),
        "contained_utc": utc_text(contained.wall_s) if contained else "not yet",
        "acknowledged_utc": utc_text(acked) if acked is not None else "not yet",
        "resolved_utc": utc_text(res.wall_s) if res else "not yet",
        "now_utc": utc_text(now_wall_s),
        "what_happened": what, "cause": cause, "trips": str(len(incident.trips)),
        "ai_in_control": ai,
        "process_impact": "; ".join(impact), "containment": "\n".join(containment),
        "model": f"{incident.model.path or '-'} (sha256 {incident.model.sha256 or '-'})",
        "deadlines": "\n".join(lines) or "- no reporting clock runs for this incident",
        "next_update": next_update,
        "summary": res.summary if res else "under investigation",
        "plant_safety": incident.plant_safety or "not stated in the playbook",
    }


def load_template(audience: Audience | str, folder: Path | None = None) -> tuple[Path, str]:
    """The template's path and text. Raises :class:`TemplateError`."""
    audience = Audience(audience)
    path = (folder or DEFAULT_TEMPLATES) / f"{audience.value}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise TemplateError(f"{path}: cannot read the {audience} template: {exc}") from None
    template = string.Template(text)
    if not template.is_valid():
        raise TemplateError(f"{path}: a `$` not followed by a placeholder name (write $$ for "
                            "a dollar sign)")
    unknown = sorted(set(template.get_identifiers()) - set(PLACEHOLDERS))
    if unknown:
        raise TemplateError(f"{path}: unknown placeholder(s) {', '.join(unknown)}; known: "
                            + ", ".join(PLACEHOLDERS))
    return path, text


def render_draft(incident: Incident, audience: Audience | str, *,
                 now_wall_s: float | None = None, next_update: str | None = None,
                 templates: Path | None = None) -> str:
    """The draft for ``audience`` (Markdown), marked as a draft. Raises :class:`TemplateError`
    and ``ValueError`` for an unknown audience."""
    audience = Audience(audience)
    _, text = load_template(audience, templates)
    now = time.time() if now_wall_s is None else now_wall_s
    body = string.Template(text).substitute(facts(incident, now, next_update))
    return (f"{DRAFT_MARK} {incident.id} --for {audience} --by WHO\n\n{body.rstrip()}\n")


def bundle_drafts(incident: Incident, *, now_wall_s: float | None = None,
                  templates: Path | None = None) -> dict[str, str]:
    """For the evidence bundle: file name -> Markdown text. ``drafts/<audience>.md`` for each
    audience as it renders now (a template that cannot be used gives a file saying why), and
    ``drafts/<audience>.approved-<n>.md`` for each approved text, with who approved it and
    its sha256 on top."""
    out: dict[str, str] = {}
    for audience in Audience:
        try:
            out[f"drafts/{audience}.md"] = render_draft(incident, audience,
                                                        now_wall_s=now_wall_s,
                                                        templates=templates)
        except TemplateError as exc:
            out[f"drafts/{audience}.md"] = f"> no draft: {exc}\n"
    counts: dict[str, int] = {}
    for approval in incident.approvals:
        n = counts[approval.audience] = counts.get(approval.audience, 0) + 1
        out[f"drafts/{approval.audience}.approved-{n}.md"] = (
            f"> approved by {approval.who} at {utc_text(approval.wall_s)}; sha256 "
            f"{approval.sha256}\n\n{approval.text}")
    return out
