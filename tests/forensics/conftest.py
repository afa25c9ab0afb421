"""One real drill shared by the forensic-loop tests: the default scenario (a backdoored model
on the water tank, the trigger at 60 s), cut to 91 s, its incident exported as an evidence
bundle, and the drill's working folder (its model files) deleted afterwards, as the drill
command deletes its own: the bundle must stand alone."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site


@dataclass(frozen=True)
class DrillBundle:
    bundle: Path
    audit_db: Path
    incident: str
    drill_site: Site


@pytest.fixture(scope="session")
def drill_bundle(tmp_path_factory: pytest.TempPathFactory) -> DrillBundle:
    from gateway.incident.export import export_incident
    from simulators.drill.cli import drills_dir
    from simulators.drill.runner import run_drill
    from simulators.drill.scenario import load_scenario

    scenario = load_scenario(drills_dir() / "backdoor_water_tank.yaml")
    # The trip at 60.1 s, the window's 30 s after it complete at 90.1 s.
    scenario = dataclasses.replace(scenario, duration_s=91.0)
    root = tmp_path_factory.mktemp("forensic-drill")
    work = root / "drill-work"
    work.mkdir()
    audit_db = root / "audit.db"
    run = asyncio.run(run_drill(scenario, work, audit_db=audit_db))
    assert run.drill_site is not None
    assert len(run.incidents) == 1, run.incidents
    bundle = export_incident(audit_db, run.incidents[0], root / "bundles")
    shutil.rmtree(work)  # the model files the gateway loaded are gone, as after `drill`
    return DrillBundle(bundle, audit_db, run.incidents[0], run.drill_site)
