"""A site's side of a model rollout, in the communications process.

:func:`run_rollout_watcher` watches the site's own key in :data:`ASSIGNMENTS_BUCKET`. For each
new assignment it fetches the version's files from :data:`MODELS_BUCKET`, checks that the
model's sha256 is the assigned one, stages them under the site's ``fleet.models_dir`` and checks
them as the core will (:func:`gateway.registry.staged.verify_staged`: signature against the
site's own ``fleet.trusted_keys``, approval state, hashes, settings, canary). Then it asks the
core (``loader``, the request channel) to load the version in SHADOW; the core checks it all
again and decides.

Every step goes to the core's audit chain (``loader.rollout("record", ...)``) and to the centre
(``sg.site.<id>.event.rollout``): ``assigned``, ``fetched``, ``verified``, ``refused`` with the
check that failed and why, ``loaded`` (in shadow), ``withdrawn`` (the centre withdrew an
assignment not yet loaded). A refused version is not loaded and its staged copy is removed.
Nothing here stops the safety core from running: a lost link only delays a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any, Final, Protocol

from gateway.fleet.models import (
    MANIFEST_FILE,
    MAX_OBJECT_BYTES,
    PUBLISHED_FILES,
    Assignment,
    Manifest,
    RolloutError,
    object_name,
)
from gateway.fleet.subjects import ASSIGNMENTS_BUCKET, MODELS_BUCKET, SiteSubjects
from gateway.registry.registry import MODEL_FILE

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client

    from gateway.adapters.base import WriteOutcome
    from gateway.config.schema import Site

__all__ = ["RolloutLoader", "run_rollout_watcher"]

log = logging.getLogger("gateway.fleet.rollout")

POLL_S: Final = 0.5
"""How often the watcher looks at ``stop`` while no assignment arrives."""
ASSIGNMENT_POLL_S: Final = 2.0
"""How often a site reads its own assignment: a new one is taken within this time (one small
direct get per site per period on the centre: 5,000 a second for 10,000 sites)."""
RETRY_S: Final = 2.0
"""Wait before watching again after the bucket or the link failed."""


class RolloutLoader(Protocol):
    """The core, as the watcher asks it (the request channel's client, or the gateway itself
    in tests): ``rollout("record", {...})`` and ``rollout("load_shadow", {...})``."""

    async def rollout(self, action: str, args: Mapping[str, str]) -> WriteOutcome: ...


async def run_rollout_watcher(client: Client, site: Site, loader: RolloutLoader,
                              stop: asyncio.Event) -> None:
    """Watch this site's assignment until ``stop`` is set, handling each new one as the
    module docstring says. Link and bucket failures are logged and retried; they never end
    the watcher."""
    from nats.errors import Error as NatsError
    from nats.js.errors import Error as JsError

    if site.fleet is None:
        raise ValueError("the site has no fleet: section")
    watcher = _Watcher(client, site, loader)
    last = ""
    while not stop.is_set():
        try:
            await watcher.watch(stop)
        except (TimeoutError, NatsError, JsError, OSError) as exc:
            # Once per kind of failure, then at debug while it persists (no bucket yet, link
            # down for hours).
            text = f"{type(exc).__name__}: {exc}"
            log.log(logging.DEBUG if text == last else logging.WARNING,
                    "rollout watcher: %s; watching again in %.0f s", text, RETRY_S)
            last = text
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)


class _Watcher:
    def __init__(self, client: Client, site: Site, loader: RolloutLoader) -> None:
        from gateway.runtime.model_swap import models_dir

        assert site.fleet is not None
        self.client = client
        self.site = site
        self.loader = loader
        self.names = SiteSubjects(site.fleet.site_id)
        folder = models_dir(site)
        assert folder is not None
        self.models_dir = folder
        # The assignment handled last (its rollout, name, version): the same one seen again
        # (a reconnect replays the last value) is not handled twice.
        self.done: tuple[str, str, int] | None = None
        self.revision: int | None = None  # the key's revision acted on last

    async def watch(self, stop: asyncio.Event) -> None:
        """Read this site's own key every :data:`ASSIGNMENT_POLL_S` and act on each new revision. A
        direct get of one key is what the site's permissions allow (``fleet nats-config``);
        a KV watch would need a consumer on the whole bucket, which would let a site read
        every other site's assignment."""
        from nats.js.errors import KeyNotFoundError

        js = self.client.jetstream()
        kv = await js.key_value(ASSIGNMENTS_BUCKET)
        while not stop.is_set():
            try:
                entry = await kv.get(self.names.site_id)
            except KeyNotFoundError as exc:
                # Withdrawn (a delete marker, with its revision), or never assigned (none).
                revision = getattr(exc.entry, "revision", None)
                if revision is not None and revision != self.revision:
                    self.revision = revision
                    await self.step("withdrawn", {"revision": str(revision)})
            else:
                if entry.revision != self.revision:
                    self.revision = entry.revision
                    if entry.value:
                        await self.handle(entry.value)
                    else:
                        await self.step("withdrawn", {"revision": str(entry.revision)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ASSIGNMENT_POLL_S)

    async def handle(self, raw: bytes) -> None:
        try:
            assignment = Assignment.parse(raw)
        except RolloutError as exc:
            await self.step("refused", {"check": "input", "reason": str(exc)})
            return
        key = (assignment.rollout, assignment.name, assignment.version)
        if key == self.done:
            return
        self.done = key
        base = {"rollout": assignment.rollout, "name": assignment.name,
                "version": str(assignment.version), "sha256": assignment.sha256}
        await self.step("assigned", base)
        try:
            files = await self.fetch(assignment)
        except RolloutError as exc:
            await self.step("refused", {**base, "check": "fetch", "reason": str(exc)})
            return
        await self.step("fetched", base)
        await self.verify_and_load(assignment, files, base)

    async def fetch(self, assignment: Assignment) -> dict[str, bytes]:
        """The version's files from the object store (the store checks each object's own
        digest); :class:`RolloutError` if one is missing, too large or unreadable."""
        from nats.js.errors import Error as JsError

        js = self.client.jetstream()
        try:
            store = await js.object_store(MODELS_BUCKET)
            files: dict[str, bytes] = {}
            for file in (MANIFEST_FILE, *PUBLISHED_FILES):
                name = object_name(assignment.name, assignment.version, file)
                info = await store.get_info(name)
                if info.size is not None and info.size > MAX_OBJECT_BYTES:
                    raise RolloutError(f"{name}: {info.size} bytes, more than "
                                       f"{MAX_OBJECT_BYTES}")
                files[file] = (await store.get(name)).data or b""
        except JsError as exc:
            raise RolloutError(f"{assignment.name} v{assignment.version}: cannot fetch "
                               f"({type(exc).__name__}: {exc})") from None
        return files

    async def verify_and_load(self, assignment: Assignment, files: dict[str, bytes],
                              base: dict[str, str]) -> None:
        from gateway.registry.staged import StagedRefused, discard, stage, verify_staged

        assert self.site.fleet is not None
        label = f"{assignment.name} v{assignment.version}"
        try:
            manifest = Manifest.parse(files[MANIFEST_FILE])
            actual = hashlib.sha256(files[MODEL_FILE]).hexdigest()
            # The assignment, the manifest and the bytes must name the same model.
            for what, sha in (("manifest", manifest.sha256), ("model file", actual)):
                if not hmac.compare_digest(sha, assignment.sha256):
                    raise StagedRefused("hash", f"{label}: the {what}'s sha256 {sha} is not "
                                                f"the assigned {assignment.sha256}")
            if (manifest.name, manifest.version) != (assignment.name, assignment.version):
                raise StagedRefused("input", f"{label}: the manifest names "
                                             f"{manifest.name} v{manifest.version}")
            folder = stage(self.models_dir, assignment.name, assignment.version,
                           {f: files[f] for f in PUBLISHED_FILES})
            try:
                # An ONNX session and the canary take time: off the loop, which also serves
                # the site's Modbus, OPC UA and dashboard clients.
                staged = await asyncio.to_thread(
                    verify_staged, folder, self.site.fleet.trusted_keys, assignment.name,
                    assignment.version, self.site)
            except StagedRefused:
                discard(folder)
                raise
            staged.policy.close()  # the core loads its own copy from the checked bytes
        except RolloutError as exc:
            await self.step("refused", {**base, "check": "input", "reason": str(exc)})
            return
        except StagedRefused as exc:
            await self.step("refused", {**base, "check": exc.kind, "reason": str(exc)})
            return
        except OSError as exc:
            await self.step("refused", {**base, "check": "disk", "reason": str(exc)})
            return
        await self.step("verified", base)
        outcome = await self.loader.rollout("load_shadow", base)
        if outcome.accepted:
            await self.report("loaded", {**base, "mode": "shadow", "result": outcome.reason})
        else:
            # The core recorded its own refusal; the centre hears it from here.
            await self.report("refused", {**base, "check": "core", "reason": outcome.reason})

    async def step(self, step: str, details: dict[str, str]) -> None:
        """Record ``step`` in the core's audit chain and report it to the centre."""
        outcome = await self.loader.rollout("record", {"step": step, **details})
        if not outcome.accepted:
            log.error("rollout step %s not recorded by the core: %s", step, outcome.reason)
        await self.report(step, details)

    async def report(self, step: str, details: Mapping[str, str]) -> None:
        body: dict[str, Any] = {"site": self.names.site_id, "step": step, **details}
        if step == "refused":
            log.error("rollout refused: %s", details.get("reason"))
        else:
            log.info("rollout %s: %s", step, details)
        await self.client.publish(self.names.event("rollout"),
                                  json.dumps(body, sort_keys=True).encode())
