"""deploy/Containerfile and deploy/compose.yaml, read as files (no container engine runs here):
the recipe is multi-stage with a non-root runtime user, a health check and volumes; every file
it copies exists; every command it, the compose file and the health check give to
``safety-gateway`` parses with the real command line; the compose file brings up the simulator,
the gateway and Prometheus, and Prometheus scrapes /metrics."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser
from tests.deploy.test_healthcheck import load_healthcheck

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Containerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)  # SystemExit(2) on anything it does not know
    assert callable(args.func)


def test_multi_stage_non_root_with_healthcheck_and_volumes():
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS builder") and stages[1].endswith(
        "AS runtime"), stages
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1]:]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users == ["safety-gateway"]
    # The compiler stays in the builder.
    assert not any("gcc" in rest for word, rest in runtime if word == "RUN")
    volumes = json.loads(next(rest for word, rest in runtime if word == "VOLUME"))
    assert {"/var/lib/safety-gateway/audit", "/var/lib/safety-gateway/pki",
            "/var/lib/safety-gateway/registry"} <= set(volumes)
    assert any(word == "HEALTHCHECK" for word, _ in runtime)


def test_every_copied_path_exists():
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), source


def test_the_image_commands_parse():
    steps = dict(instructions())
    entry = json.loads(steps["ENTRYPOINT"])
    assert entry == ["safety-gateway"]
    parses(json.loads(steps["CMD"]))
    health = steps["HEALTHCHECK"]
    check = json.loads(health[health.index("CMD ") + 4:])
    assert check[:2] == ["python", "/opt/safety-gateway/deploy/healthcheck.py"]
    # The script is copied to that path, and takes these arguments.
    assert ("COPY", "deploy/healthcheck.py deploy/") in instructions()
    load_healthcheck().build_parser().parse_args(check[2:])


def test_compose_brings_up_simulator_gateway_and_prometheus():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"simulator", "gateway", "prometheus"}
    assert services["simulator"]["build"]["dockerfile"] == "deploy/Containerfile"
    for name in ("simulator", "gateway"):
        parses(services[name]["command"])
        assert services[name]["read_only"] is True
    site = services["gateway"]["command"][1]
    assert site.startswith("/opt/safety-gateway/configs/")
    assert (ROOT / "configs" / Path(site).name).exists()
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"


@pytest.mark.parametrize("volume", ["audit:/opt/safety-gateway/reports"])
def test_the_example_sites_audit_database_is_in_a_volume(volume):
    """configs/water_tank.yaml keeps its audit database in ../reports: with a read-only root
    file system that folder must be a volume, or the gateway refuses to start (exit 3)."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert volume in compose["services"]["gateway"]["volumes"]
    site = yaml.safe_load((ROOT / "configs" / "water_tank.yaml").read_text())
    assert Path(site["audit"]["path"]).parent == Path("../reports")
