"""The centre's side of a model rollout: approved versions in the object store, per-site
assignments in the key-value bucket, and a record of every step.

- :func:`publish` takes an approved, signed version from the central registry (checked with
  :meth:`Registry.load_verified`, so a tampered, unapproved or revoked version is never
  published) and puts its files in the object store :data:`MODELS_BUCKET` under
  ``<name>/<version>/<file>``: the model, its canary, its signature, the registry's signed
  index (the approval records the sites check), and ``manifest.json`` (:class:`Manifest`).
- :func:`assign` starts a rollout of one published version to sites, in order: the first
  ``stage`` of them get an assignment (key = site id in :data:`ASSIGNMENTS_BUCKET`) now, the
  rest wait in the rollout's plan until :func:`advance`. :func:`stop` halts a rollout: no
  pending site is assigned any more and every assignment of it still in the bucket is
  withdrawn (deleted); a site that already loaded the version keeps it in SHADOW, where only
  its own operators decide.
- Every step is a message on ``sg.rollout.<rollout id>`` in the stream :data:`ROLLOUT_STREAM`
  (and the assignments bucket keeps its own history); plans live in :data:`ROLLOUTS_BUCKET`.

A site's own steps go to ``sg.site.<id>.event.rollout`` (``gateway.fleet.rollout``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from gateway.fleet.subjects import ASSIGNMENTS_BUCKET, MODELS_BUCKET, check_site_id
from gateway.registry.registry import CANARY_FILE, INDEX_FILE, MODEL_FILE, SIGNATURE_FILE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue
    from nats.js.object_store import ObjectStore

    from gateway.registry.registry import Registry

__all__ = [
    "MANIFEST_FILE",
    "ROLLOUTS_BUCKET",
    "ROLLOUT_STREAM",
    "Assignment",
    "Manifest",
    "Plan",
    "RolloutError",
    "RolloutInputError",
    "advance",
    "assign",
    "object_name",
    "publish",
    "show",
    "stop",
]

MANIFEST_FILE: Final = "manifest.json"
MANIFEST_FORMAT: Final = 1
ASSIGNMENT_FORMAT: Final = 1
ROLLOUT_STREAM: Final = "SG_ROLLOUT"
ROLLOUT_SUBJECTS: Final = "sg.rollout.>"
ROLLOUTS_BUCKET: Final = "sg_rollouts"
PUBLISHED_FILES: Final = (MODEL_FILE, CANARY_FILE, SIGNATURE_FILE, INDEX_FILE)
MAX_OBJECT_BYTES: Final = 256 * 1024 * 1024
"""The largest object a site fetches (a model bigger than this is refused unread)."""

_ROLLOUT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RolloutError(Exception):
    """A rollout step the centre refuses (not published, stopped rollout, nothing left);
    the message says why."""


class RolloutInputError(RolloutError):
    """Bad input to a rollout step: a bad or repeated site id, stage or rollout id."""


def object_name(name: str, version: int, file: str) -> str:
    """The object holding ``file`` of ``name`` ``version``."""
    return f"{name}/{version}/{file}"


@dataclass(frozen=True)
class Manifest:
    """What the centre says about a published version: its identity and hashes as signed,
    and its approval as the registry's signed records establish it (the site checks the
    records themselves; these fields are for people and the fleet view)."""

    name: str
    version: int
    sha256: str
    canary_sha256: str
    signature: str
    key_id: str
    approved_by: str | None
    approved_at: str | None
    published_at: str
    published_by: str

    def to_bytes(self) -> bytes:
        return json.dumps({"format": MANIFEST_FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """Parse a manifest; :class:`RolloutError` naming what is wrong."""
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.pop("format", None) != MANIFEST_FORMAT:
                raise ValueError(f"not a format-{MANIFEST_FORMAT} manifest")
            manifest = cls(**document)
            if not isinstance(manifest.version, int) or not isinstance(manifest.sha256, str):
                raise ValueError("bad version or sha256")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise RolloutError(f"malformed manifest ({exc})") from None
        return manifest


@dataclass(frozen=True)
class Assignment:
    """One site's assignment: run ``name`` ``version`` (``sha256``) in SHADOW."""

    rollout: str
    name: str
    version: int
    sha256: str
    assigned_at: str
    by: str

    def to_bytes(self) -> bytes:
        return json.dumps({"format": ASSIGNMENT_FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Assignment:
        """Parse an assignment; :class:`RolloutError` naming what is wrong."""
        try:
            document = json.loads(raw)
            if (not isinstance(document, dict)
                    or document.pop("format", None) != ASSIGNMENT_FORMAT):
                raise ValueError(f"not a format-{ASSIGNMENT_FORMAT} assignment")
            assignment = cls(**document)
            if (isinstance(assignment.version, bool) or not isinstance(assignment.version, int)
                    or not all(isinstance(getattr(assignment, k), str)
                               for k in ("rollout", "name", "sha256", "assigned_at", "by"))):
                raise ValueError("wrong field types")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise RolloutError(f"malformed assignment ({exc})") from None
        return assignment


@dataclass
class Plan:
    """A rollout: the version, the sites in order, which were assigned, and its state
    (``running`` or ``stopped``)."""

    rollout: str
    name: str
    version: int
    sha256: str
    sites: list[str]
    assigned: list[str] = field(default_factory=list)
    state: str = "running"

    @property
    def pending(self) -> list[str]:
        return [s for s in self.sites if s not in self.assigned]

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Plan:
        """Parse a plan; :class:`RolloutError` naming what is wrong."""
        try:
            plan = cls(**json.loads(raw))
            if not (isinstance(plan.sites, list) and isinstance(plan.assigned, list)):
                raise ValueError("sites and assigned must be lists")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise RolloutError(f"malformed rollout plan ({exc})") from None
        return plan


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


async def ensure_buckets(js: JetStreamContext) -> tuple[ObjectStore, KeyValue, KeyValue]:
    """The object store, the assignments bucket (with history) and the plans bucket, and the
    record stream: created if missing."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        models = await js.object_store(MODELS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        models = await js.create_object_store(MODELS_BUCKET)
    buckets = []
    for bucket in (ASSIGNMENTS_BUCKET, ROLLOUTS_BUCKET):
        try:
            buckets.append(await js.key_value(bucket))
        except (BucketNotFoundError, NotFoundError):
            # Direct gets: a site reads its own key by subject, which its permissions name.
            buckets.append(await js.create_key_value(bucket=bucket, history=16, direct=True))
    try:
        await js.stream_info(ROLLOUT_STREAM)
    except NotFoundError:
        await js.add_stream(name=ROLLOUT_STREAM, subjects=[ROLLOUT_SUBJECTS])
    return models, buckets[0], buckets[1]


async def record(js: JetStreamContext, rollout: str, step: str, **details: Any) -> None:
    """One step on the central record (``sg.rollout.<rollout>``), acknowledged by the
    stream."""
    body = {"rollout": rollout, "step": step, "at": _now(), **details}
    await js.publish(f"sg.rollout.{rollout}", json.dumps(body, sort_keys=True).encode())


async def publish(js: JetStreamContext, registry: Registry, name: str, version: int,
                  by: str) -> Manifest:
    """Publish ``name`` ``version`` from ``registry`` (approved, verified: else the
    registry's :class:`~gateway.registry.ModelRefused` subclass is raised and nothing is
    published) to the object store, and record it."""
    verified = registry.load_verified(name, version, require_approval=True)
    entry = verified.version
    folder = registry.path / "models" / name / str(version)
    files = {MODEL_FILE: verified.data,
             CANARY_FILE: (folder / CANARY_FILE).read_bytes(),
             SIGNATURE_FILE: (folder / SIGNATURE_FILE).read_bytes(),
             INDEX_FILE: (registry.path / INDEX_FILE).read_bytes()}
    if hashlib.sha256(files[CANARY_FILE]).hexdigest() != entry.canary_sha256:
        raise RolloutError(f"{entry.label}: the canary file changed while it was published")
    manifest = Manifest(name=name, version=version, sha256=verified.sha256,
                        canary_sha256=entry.canary_sha256, signature=entry.signature,
                        key_id=entry.key_id, approved_by=entry.approved_by,
                        approved_at=entry.approved_at, published_at=_now(), published_by=by)
    models, _, _ = await ensure_buckets(js)
    for file, data in files.items():
        await models.put(object_name(name, version, file), data)
    # Last: a manifest in the store means every file of the version is there.
    await models.put(object_name(name, version, MANIFEST_FILE), manifest.to_bytes())
    await record(js, f"publish-{name}-v{version}", "published", name=name, version=version,
                 sha256=manifest.sha256, by=by)
    return manifest


async def published(js: JetStreamContext, name: str, version: int) -> Manifest:
    """The manifest of a published version; :class:`RolloutError` if there is none."""
    from nats.js.errors import NotFoundError, ObjectNotFoundError

    models, _, _ = await ensure_buckets(js)
    try:
        result = await models.get(object_name(name, version, MANIFEST_FILE))
    except (ObjectNotFoundError, NotFoundError):
        raise RolloutError(f"{name} v{version} is not published (fleet model publish)") from None
    return Manifest.parse(result.data or b"")


def check_sites(sites: Sequence[str]) -> list[str]:
    """The site ids in order, each once; :class:`RolloutError` for a bad or repeated one."""
    seen: list[str] = []
    for site in sites:
        try:
            check_site_id(site)
        except ValueError as exc:
            raise RolloutInputError(str(exc)) from None
        if site in seen:
            raise RolloutInputError(f"site {site!r} is listed twice")
        seen.append(site)
    if not seen:
        raise RolloutInputError("no sites given")
    return seen


async def assign(js: JetStreamContext, sites: Sequence[str], name: str, version: int, by: str,
                 *, stage: int | None = None, rollout: str | None = None) -> Plan:
    """Start a rollout of published ``name`` ``version`` to ``sites``, assigning the first
    ``stage`` of them now (all if None); the rest wait for :func:`advance`."""
    order = check_sites(sites)
    if stage is not None and stage < 1:
        raise RolloutInputError(f"stage must be >= 1, not {stage}")
    rollout = rollout or f"{name}-v{version}-{uuid.uuid4().hex[:8]}"
    if _ROLLOUT_ID.fullmatch(rollout) is None:
        raise RolloutInputError(f"{rollout!r} is not a rollout id (1 to 64 letters, digits, "
                                "'_', '-')")
    manifest = await published(js, name, version)
    _, _, plans = await ensure_buckets(js)
    plan = Plan(rollout, name, version, manifest.sha256, order)
    await plans.create(rollout, plan.to_bytes())
    await record(js, rollout, "planned", name=name, version=version, sha256=manifest.sha256,
                 sites=order, stage=stage, by=by)
    return await _assign_next(js, plan, stage, by)


async def advance(js: JetStreamContext, rollout: str, by: str, *, stage: int | None = None
                  ) -> Plan:
    """Assign the next ``stage`` pending sites of a running rollout (all if None)."""
    plan, revision = await _plan(js, rollout)
    if plan.state != "running":
        raise RolloutError(f"rollout {rollout} is {plan.state}; it assigns no more sites")
    if not plan.pending:
        raise RolloutError(f"rollout {rollout} has no site left to assign")
    return await _assign_next(js, plan, stage, by, revision)


async def stop(js: JetStreamContext, rollout: str, by: str, reason: str) -> tuple[Plan, list[str]]:
    """Stop a rollout: no pending site will be assigned, and the assignments of it still in
    the bucket are withdrawn. Returns the plan and the sites withdrawn."""
    from nats.js.errors import KeyNotFoundError

    plan, revision = await _plan(js, rollout)
    _, assignments, plans = await ensure_buckets(js)
    plan.state = "stopped"
    await plans.update(rollout, plan.to_bytes(), last=revision)
    withdrawn = []
    for site in plan.assigned:
        try:
            entry = await assignments.get(site)
        except KeyNotFoundError:
            continue
        if entry.value and Assignment.parse(entry.value).rollout == rollout:
            await assignments.delete(site, last=entry.revision)
            withdrawn.append(site)
    await record(js, rollout, "stopped", by=by, reason=reason, withdrawn=withdrawn,
                 never_assigned=plan.pending)
    return plan, withdrawn


async def show(js: JetStreamContext, rollout: str) -> Plan:
    """A rollout's plan; :class:`RolloutError` if there is none."""
    plan, _ = await _plan(js, rollout)
    return plan


async def _plan(js: JetStreamContext, rollout: str) -> tuple[Plan, int]:
    from nats.js.errors import KeyNotFoundError

    _, _, plans = await ensure_buckets(js)
    try:
        entry = await plans.get(rollout)
    except KeyNotFoundError:
        raise RolloutError(f"no rollout {rollout!r}") from None
    if entry.value is None or entry.revision is None:
        raise RolloutError(f"no rollout {rollout!r}")
    return Plan.parse(entry.value), entry.revision


async def _assign_next(js: JetStreamContext, plan: Plan, stage: int | None, by: str,
                       revision: int | None = None) -> Plan:
    _, assignments, plans = await ensure_buckets(js)
    batch = plan.pending[:stage] if stage is not None else plan.pending
    plan.assigned.extend(batch)
    # The plan first (a concurrent stop makes this update fail), then the assignments.
    if revision is None:
        _, revision = await _plan(js, plan.rollout)
    await plans.update(plan.rollout, plan.to_bytes(), last=revision)
    for site in batch:
        assignment = Assignment(plan.rollout, plan.name, plan.version, plan.sha256, _now(), by)
        await assignments.put(site, assignment.to_bytes())
    await record(js, plan.rollout, "assigned", sites=batch, pending=plan.pending, by=by)
    return plan
