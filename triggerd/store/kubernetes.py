"""The custom-resource store: BuildConfigs, Builds and deliveries as triggerd.dev/v1 objects.

Implements :class:`triggerd.store.base.Store` on the Kubernetes API so several triggerd
replicas share one truth. Each object is written with a resourceVersion precondition (a
stale write is a Conflict, never a silent overwrite); status goes through the ``/status``
subresource; patches are JSON merge patches. Build numbers come from the BuildConfig's
``status.lastVersion``: a replica bumps it with a precondition (retrying on 409) and then
creates the Build ``<config>-<n>``; since only one bump can win each number, two replicas
never create the same number, and a 409 on the Build create (a number already taken by a
Build the counter did not know about) makes it bump again. A webhook delivery is claimed by
creating a ``Delivery`` object named after the delivery id — creation is atomic across
replicas — and then records the Builds it created.

Webhook secrets are read from Secrets (key ``WebHookSecretKey``) with a short cache;
BuildConfigs applied with ``kubectl`` reach the engine through :meth:`watch_buildconfigs`,
also those triggerd cannot accept (reported so the engine can say why in their status,
:meth:`report_buildconfig`). It never logs a Secret's value and never writes an object
without a precondition.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from triggerd import errors
from triggerd.kube import (
    CustomResources,
    Kube,
    KubeError,
    WatchExpired,
    path_for,
    to_domain_error,
    update_status,
)
from triggerd.model import buildconfigs, builds
from triggerd.model import meta as metas
from triggerd.model.buildconfigs import BuildConfig
from triggerd.model.builds import Build, Phase
from triggerd.store.base import (
    BuildQuery,
    Delivery,
    Instantiated,
    NewBuild,
    Page,
    QueueSummary,
)

log = logging.getLogger(__name__)

GROUP_VERSION: Final = "triggerd.dev/v1"
BUILDCONFIGS: Final = "buildconfigs"
BUILDS: Final = "builds"
DELIVERIES: Final = "deliveries"
#: How often a write may lose a race before the caller is told to retry later.
MAX_ATTEMPTS: Final = 20
#: How long a duplicate delivery waits for the replica that claimed it to finish.
CLAIM_WAIT_SECONDS: Final = 10.0
#: when the store created the Build, in nanoseconds (fairness order of the queue)
QUEUED_ANNOTATION: Final = "triggerd.dev/queued-at"
WEBHOOK_SECRET_KEY: Final = "WebHookSecretKey"  # noqa: S105 - a key name


#: status.conditions entry on a BuildConfig triggerd cannot accept (kubectl skips our checks)
VALID_CONDITION: Final = buildconfigs.VALID_CONDITION
#: how much of a problem's text goes into the condition's message
CONDITION_MESSAGE_MAX: Final = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigEvent:
    """A BuildConfig appeared, changed or went away (``config`` is the last known state).

    ``config`` is None for a stored object triggerd cannot parse; ``problem`` says why
    (and for a DELETED one that was never accepted)."""

    type: str  # "ADDED", "MODIFIED", "DELETED"
    namespace: str
    name: str
    config: BuildConfig | None = None
    problem: str = ""


class KubernetesStore(CustomResources):
    """Implements :class:`triggerd.store.base.Store` with custom resources."""

    CRD_GROUP_VERSION = GROUP_VERSION
    CRD_PLURALS = (BUILDCONFIGS, BUILDS, DELIVERIES)

    def __init__(self, kube: Kube, namespace: str, *, secret_cache_seconds: float = 30.0) -> None:
        self.kube = kube
        #: where lists without a namespace look (the RBAC shipped grants this one only)
        self.namespace = namespace
        self.secret_cache_seconds = secret_cache_seconds
        self._secrets: dict[tuple[str, str], tuple[float, Mapping[str, str] | None]] = {}

    def _path(self, plural: str, namespace: str | None, name: str | None = None) -> str:
        return path_for(GROUP_VERSION, plural, namespace or self.namespace, name)

    # BuildConfigs -----------------------------------------------------------------------
    async def list_buildconfigs(self, namespace: str | None = None) -> list[BuildConfig]:
        doc = await self._call("list", BUILDCONFIGS, "", self._path(BUILDCONFIGS, namespace))
        configs: list[BuildConfig] = []
        for item in doc.get("items") or []:
            config = _config_or_none(item)
            if config is not None:
                configs.append(config)
        return sorted(configs, key=lambda c: (c.namespace, c.name))

    async def get_buildconfig(self, namespace: str, name: str) -> BuildConfig:
        doc = await self._call("get", BUILDCONFIGS, name, self._path(BUILDCONFIGS, namespace, name))
        return config_from_resource(doc)

    async def create_buildconfig(self, config: BuildConfig) -> BuildConfig:
        body = config_to_resource(config)
        for key in ("uid", "resourceVersion", "creationTimestamp"):
            body["metadata"].pop(key, None)
        created = await self._call(
            "create", BUILDCONFIGS, config.name, self._path(BUILDCONFIGS, config.namespace), body
        )
        if config.last_version:
            # status is dropped on create (subresource): an exported config keeps its count
            created = await self._call(
                "merge_patch",
                BUILDCONFIGS,
                config.name,
                self._path(BUILDCONFIGS, config.namespace, config.name) + "/status",
                {
                    "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                    "status": {"lastVersion": config.last_version},
                },
            )
        return config_from_resource(created)

    async def replace_buildconfig(
        self, config: BuildConfig, *, expected_resource_version: str | None = None
    ) -> BuildConfig:
        path = self._path(BUILDCONFIGS, config.namespace, config.name)
        for _ in range(MAX_ATTEMPTS):
            current = await self._call("get", BUILDCONFIGS, config.name, path)
            version = expected_resource_version or current["metadata"]["resourceVersion"]
            body = config_to_resource(config)
            body["metadata"].update(
                uid=current["metadata"].get("uid"),
                creationTimestamp=current["metadata"].get("creationTimestamp"),
                resourceVersion=version,
            )
            body.pop("status", None)  # lastVersion stays as stored (status subresource)
            try:
                replaced = await self.kube.replace(path, body)
            except KubeError as e:
                if e.conflict and expected_resource_version is None:
                    continue  # a build bumped lastVersion meanwhile: the user's part still wins
                raise to_domain_error(e, buildconfigs.KIND, config.name) from e
            return config_from_resource(replaced)
        raise errors.TemporaryError(f"BuildConfig {config.name!r} keeps changing; retry", 1.0)

    async def delete_buildconfig(self, namespace: str, name: str) -> None:
        await self._call("delete", BUILDCONFIGS, name, self._path(BUILDCONFIGS, namespace, name))
        # Builds are owned by their config (the garbage collector would get them too), but
        # `oc delete bc` semantics are immediate.
        listed = await self.kube.list(
            self._path(BUILDS, namespace), label_selector=f"{builds.CONFIG_LABEL}={name}"
        )
        await self.delete_builds(
            namespace, [str(b["metadata"]["name"]) for b in listed.get("items") or []]
        )

    async def watch_buildconfigs(
        self, *, timeout_seconds: int = 240, include_invalid: bool = False
    ) -> AsyncIterator[ConfigEvent]:
        """Every BuildConfig change in the namespace, forever: first an ADDED per existing
        config, then changes; after 410 Gone the list is re-read and differences are
        reported (so ``kubectl apply``/``delete`` always reach the caller). A DELETED event
        carries the config as last reported.

        Objects triggerd cannot parse are skipped, or with ``include_invalid`` reported as
        events without a config, whose ``problem`` says what is wrong."""
        # key -> (the resourceVersion last seen, the config reported then or None)
        known: dict[tuple[str, str], tuple[str, BuildConfig | None]] = {}
        resource_version = ""

        def report(event: ConfigEvent, version: str) -> ConfigEvent | None:
            key = (event.namespace, event.name)
            if event.type == "DELETED":
                last = known.pop(key, ("", None))[1]
                event = dataclasses.replace(event, config=event.config or last)
                return event if event.config is not None or include_invalid else None
            known[key] = (version, event.config)
            return event if event.config is not None or include_invalid else None

        while True:
            try:
                if not resource_version:
                    listed = await self.kube.list(self._path(BUILDCONFIGS, None))
                    resource_version = str(listed["metadata"].get("resourceVersion", ""))
                    seen: set[tuple[str, str]] = set()
                    for item in listed.get("items") or []:
                        meta = item.get("metadata") or {}
                        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
                        seen.add(key)
                        version = str(meta.get("resourceVersion", ""))
                        old = known.get(key)
                        if old is None or old[0] != version:
                            kind = "ADDED" if old is None else "MODIFIED"
                            event = report(_config_event(kind, item), version)
                            if event is not None:
                                yield event
                    for key in set(known) - seen:
                        gone = ConfigEvent(type="DELETED", namespace=key[0], name=key[1])
                        event = report(gone, "")
                        if event is not None:
                            yield event
                async for kind, obj in self.kube.watch(
                    self._path(BUILDCONFIGS, None),
                    resource_version=resource_version,
                    timeout_seconds=timeout_seconds,
                ):
                    resource_version = str(
                        (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                    )
                    if kind not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    event = report(_config_event(kind, obj), resource_version)
                    if event is not None:
                        yield event
            except WatchExpired:
                resource_version = ""
            except KubeError as e:
                if not e.transient:
                    raise
                await asyncio.sleep(1.0)

    async def report_buildconfig(self, namespace: str, name: str, problem: str | None) -> bool:
        """Say in the config's ``status.conditions`` why triggerd does not accept it
        (``Valid`` False, with the problem as message), or clear that once it is right.
        Written through /status with a precondition, only when it changes; returns whether
        it wrote."""

        def change(doc: Mapping[str, Any]) -> dict[str, Any] | None:
            status = doc.get("status")
            items = status.get("conditions") if isinstance(status, Mapping) else None
            conditions = (
                [c for c in items if isinstance(c, Mapping)] if isinstance(items, list) else []
            )
            current = next((c for c in conditions if c.get("type") == VALID_CONDITION), None)
            others = [dict(c) for c in conditions if c.get("type") != VALID_CONDITION]
            wanted: dict[str, Any] | None = None
            if problem is not None:
                message = problem[:CONDITION_MESSAGE_MAX]
                if (
                    current is not None
                    and current.get("status") == "False"
                    and (current.get("message") == message)
                ):
                    return None
                wanted = {
                    "type": VALID_CONDITION,
                    "status": "False",
                    "reason": "InvalidBuildConfig",
                    "message": message,
                    "lastTransitionTime": metas.format_time(metas.now()),
                }
            elif current is None:
                return None
            new = [*others, wanted] if wanted is not None else others
            return {"conditions": new or None}

        # A 409 is mostly a lastVersion bump meanwhile: look again.
        return await update_status(
            self.kube,
            self._path(BUILDCONFIGS, namespace, name),
            change,
            kind=buildconfigs.KIND,
            name=name,
            attempts=MAX_ATTEMPTS,
        )

    # Builds -----------------------------------------------------------------------------
    async def instantiate(
        self,
        requests: Sequence[NewBuild],
        *,
        delivery: Delivery | None = None,
        queue_limit: int = 0,
    ) -> Instantiated:
        """Not atomic across requests (the API has no transactions): when request k fails,
        the builds of requests before it exist. The delivery claim is released then, so a
        redelivery starts the failed ones (and the earlier ones again). The queue limit is
        checked after the claim but, without transactions, not atomically with the create:
        replicas racing at the limit may each add their builds."""
        claim, claimed = "", ""
        if delivery is not None:
            claim = delivery_name(delivery.key)
            existing, claimed = await self._claim(claim, delivery)
            if existing is not None:
                return Instantiated(builds=tuple(existing), duplicate=True)
        created: list[Build] = []
        try:
            if queue_limit:
                queued = (await self.queue_summary()).total
                if queued + len(requests) > queue_limit:
                    raise errors.QueueFull(
                        f"the build queue is full ({queued} builds waiting, limit "
                        f"{queue_limit}); retry later",
                        delay=30.0,
                    )
            for request in requests:
                created.append(await self._instantiate_one(request))
        except BaseException:
            if claim:
                await self._release(claim, claimed)
            raise
        if claim:
            await self._complete_claim(claim, claimed, created)
        return Instantiated(builds=tuple(created))

    async def _complete_claim(self, claim: str, version: str, created: Sequence[Build]) -> None:
        """Record the builds on the claim this call made, and only on that one: with a
        precondition, so a claim pruned and taken again meanwhile is never overwritten."""
        try:
            await self.kube.merge_patch(
                self._path(DELIVERIES, None, claim),
                {"metadata": {"resourceVersion": version},
                 "spec": {"builds": [f"{b.namespace}/{b.name}" for b in created],
                          "complete": True}},
            )  # fmt: skip
        except KubeError as e:
            if not (e.conflict or e.not_found):
                raise to_domain_error(e, "Delivery", claim) from e
            # The claim is no longer ours (pruned, taken anew): the builds stand, and a
            # waiting duplicate of this delivery claims it again after its wait.
            log.warning("delivery claim %s changed under this replica; not completing it", claim)

    async def _instantiate_one(self, request: NewBuild) -> Build:
        path = self._path(BUILDCONFIGS, request.namespace, request.config_name)
        for _ in range(MAX_ATTEMPTS):
            doc = await self._call("get", BUILDCONFIGS, request.config_name, path)
            config = config_from_resource(doc)
            number = config.last_version + 1
            # Made before the number is taken: a factory that refuses (a first build that
            # exists already) leaves lastVersion as it was, as the SQLite transaction does.
            build = request.make(dataclasses.replace(config, last_version=number), number)
            try:
                bumped = await self.kube.merge_patch(
                    path + "/status",
                    {
                        "metadata": {"resourceVersion": config.meta.resource_version},
                        "status": {"lastVersion": number},
                    },
                )
            except KubeError as e:
                if e.conflict:
                    continue  # another replica took this number
                raise to_domain_error(e, buildconfigs.KIND, request.config_name) from e
            config = config_from_resource(bumped)
            body = build_to_resource(build)
            body["metadata"]["ownerReferences"] = [
                {"apiVersion": GROUP_VERSION, "kind": buildconfigs.KIND, "name": config.name,
                 "uid": config.meta.uid, "blockOwnerDeletion": False}
            ]  # fmt: skip
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                body["metadata"].pop(key, None)
            # creationTimestamp has whole seconds: the queue order needs finer
            body["metadata"].setdefault("annotations", {})[QUEUED_ANNOTATION] = (
                f"{time.time_ns():020d}"
            )
            try:
                created = await self.kube.create(self._path(BUILDS, build.namespace), body)
            except KubeError as e:
                if e.conflict:
                    log.info("build %s exists already; taking the next number", build.name)
                    continue
                raise to_domain_error(e, builds.KIND, build.name) from e
            return await self._write_status(build, created)
        raise errors.TemporaryError(
            f"could not number a build of {request.config_name!r} (too much contention)", 1.0
        )

    async def _write_status(self, build: Build, current: Mapping[str, Any]) -> Build:
        status = build_to_resource(build)["status"]
        patched = await self._call(
            "merge_patch",
            BUILDS,
            build.name,
            self._path(BUILDS, build.namespace, build.name) + "/status",
            {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
             "status": _replace_all(current.get("status") or {}, status)},
        )  # fmt: skip
        return build_from_resource(patched)

    async def _claim(self, claim: str, delivery: Delivery) -> tuple[list[Build] | None, str]:
        """(None, the claim's resourceVersion) when this call claimed the delivery; else
        (the builds it created before, "")."""
        body = {
            "apiVersion": GROUP_VERSION,
            "kind": "Delivery",
            "metadata": {"name": claim, "namespace": self.namespace},
            "spec": {
                "key": delivery.key,
                "received": metas.format_time(delivery.received),
                "builds": [],
                "complete": False,
            },
        }
        try:
            made = await self.kube.create(self._path(DELIVERIES, None), body)
            return None, str((made.get("metadata") or {}).get("resourceVersion", ""))
        except KubeError as e:
            if not e.conflict:
                raise to_domain_error(e, "Delivery", claim) from e
        # Seen before (or being handled by another replica right now): wait for its builds.
        found = await self._claimed_builds(claim)
        if found is None:  # the other attempt failed and let go: try to claim again
            return await self._claim(claim, delivery)
        return found, ""

    async def delivered(self, key: str) -> tuple[Build, ...] | None:
        found = await self._claimed_builds(delivery_name(key))
        return None if found is None else tuple(found)

    async def _claimed_builds(self, claim: str) -> list[Build] | None:
        """The builds recorded on ``claim`` once it is complete (waiting while another
        replica completes it); None when there is no such claim."""
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            try:
                doc = await self.kube.get(self._path(DELIVERIES, None, claim))
            except KubeError as e:
                if e.not_found:
                    return None
                raise to_domain_error(e, "Delivery", claim) from e
            spec = doc.get("spec") or {}
            if spec.get("complete"):
                found: list[Build] = []
                for ref in spec.get("builds") or []:
                    namespace, _, name = str(ref).partition("/")
                    try:
                        found.append(await self.get_build(namespace, name))
                    except errors.NotFound:
                        continue  # pruned since
                return found
            if time.monotonic() > deadline:
                raise errors.TemporaryError(
                    "the same delivery is being handled by another replica", 2.0
                )
            await asyncio.sleep(0.1)

    async def _release(self, claim: str, version: str = "") -> None:
        """Delete the claim (only the version this replica made, when given)."""
        try:
            await self.kube.delete(self._path(DELIVERIES, None, claim), resource_version=version)
        except KubeError as e:
            if e.not_found:
                return
            log.warning("could not release delivery claim %s: %s", claim, e.status)

    async def queue_summary(self) -> QueueSummary:
        """New builds by config, oldest first. Phase is status, not a label, so this reads
        every Build of the namespace (history is pruned, so that stays bounded)."""
        doc = await self._call("list", BUILDS, "", self._path(BUILDS, None))
        oldest: dict[tuple[str, str], tuple[str, str, int]] = {}
        total = 0
        for item in doc.get("items") or []:
            if (item.get("status") or {}).get("phase", Phase.NEW.value) != Phase.NEW.value:
                continue
            build = build_from_resource(item)
            total += 1
            key = (build.namespace, build.config_name)
            meta = item.get("metadata") or {}
            queued = str((meta.get("annotations") or {}).get(QUEUED_ANNOTATION, ""))
            mark = (str(meta.get("creationTimestamp", "")), queued, build.number)
            if key not in oldest or mark < oldest[key]:
                oldest[key] = mark
        order = sorted(oldest, key=lambda k: (oldest[k], k))
        return QueueSummary(total=total, configs=tuple(order))

    async def get_build(self, namespace: str, name: str) -> Build:
        doc = await self._call("get", BUILDS, name, self._path(BUILDS, namespace, name))
        return build_from_resource(doc)

    async def list_builds(self, query: BuildQuery) -> Page:
        doc = await self._call(
            "list", BUILDS, "", self._path(BUILDS, query.namespace), selector(query)
        )
        found = [build_from_resource(item) for item in doc.get("items") or []]
        if query.phases:
            found = [b for b in found if b.phase in query.phases]
        found.sort(key=lambda b: (b.namespace, b.config_name, b.number, b.name))
        start = int(query.continue_token or 0)
        end = len(found) if query.limit is None else start + query.limit
        token = str(end) if end < len(found) else None
        return Page(
            builds=tuple(found[start:end]),
            continue_token=token,
            resource_version=str(doc.get("metadata", {}).get("resourceVersion", "")),
        )

    async def update_build(
        self, build: Build, *, expected_resource_version: str | None = None
    ) -> Build:
        path = self._path(BUILDS, build.namespace, build.name)
        wanted = build_to_resource(build)
        for _ in range(MAX_ATTEMPTS):
            version = expected_resource_version
            if version is None:
                current = await self._call("get", BUILDS, build.name, path)
                version = str(current["metadata"]["resourceVersion"])
            else:
                current = None
            try:
                saved = await self.kube.replace(
                    path + "/status",
                    {**wanted, "metadata": {**wanted["metadata"], "resourceVersion": version}},
                )
                if _user_part(saved) != _user_part(wanted):
                    # spec.revision, labels or annotations changed as well
                    metadata = {
                        **wanted["metadata"],
                        "resourceVersion": saved["metadata"]["resourceVersion"],
                    }
                    if saved["metadata"].get("ownerReferences"):
                        metadata["ownerReferences"] = saved["metadata"]["ownerReferences"]
                    saved = await self.kube.replace(path, {**wanted, "metadata": metadata})
            except KubeError as e:
                if e.conflict and current is not None:
                    continue  # last writer wins when the caller did not ask for a version
                raise to_domain_error(e, builds.KIND, build.name) from e
            return build_from_resource(saved)
        raise errors.TemporaryError(f"Build {build.name!r} keeps changing; retry", 1.0)

    async def delete_builds(self, namespace: str, names: Sequence[str]) -> None:
        for name in names:
            try:
                await self.kube.delete(self._path(BUILDS, namespace, name))
            except KubeError as e:
                if not e.not_found:
                    raise to_domain_error(e, builds.KIND, name) from e

    async def prune_deliveries(self, older_than: datetime) -> int:
        listed = await self._call("list", DELIVERIES, "", self._path(DELIVERIES, None))
        pruned = 0
        for item in listed.get("items") or []:
            received = metas.parse_time(str((item.get("spec") or {}).get("received", "")))
            if received is not None and received < older_than:
                meta = item.get("metadata") or {}
                await self._release(str(meta["name"]), str(meta.get("resourceVersion", "")))
                pruned += 1
        return pruned

    async def binary_inputs_in_use(self, digests: Collection[str]) -> set[str]:
        """Reads every Build (annotations are not selectable); binary builds are refused
        with the Job executor, so this only runs when uploads were refused builds' inputs."""
        wanted = set(digests)
        if not wanted:
            return set()
        listed = await self._call("list", BUILDS, "", self._path(BUILDS, None))
        used: set[str] = set()
        for item in listed.get("items") or []:
            annotations = (item.get("metadata") or {}).get("annotations") or {}
            digest = annotations.get(builds.BINARY_INPUT_ANNOTATION)
            if digest in wanted:
                used.add(str(digest))
        return used

    # Secrets ----------------------------------------------------------------------------
    async def secret_value(
        self, namespace: str, name: str, key: str = WEBHOOK_SECRET_KEY
    ) -> str | None:
        """Key ``key`` of Secret ``name`` (None when either is missing), cached briefly so
        a burst of deliveries costs one read; rotation is seen within the cache time."""
        cache_key = (namespace, name)
        now = time.monotonic()
        cached = self._secrets.get(cache_key)
        if cached is None or now - cached[0] > self.secret_cache_seconds:
            try:
                doc = await self.kube.get(path_for("v1", "secrets", namespace, name))
                data = {
                    str(k): base64.b64decode(str(v)).decode("utf-8", "replace")
                    for k, v in (doc.get("data") or {}).items()
                }
                cached = (now, data)
            except KubeError as e:
                if not e.not_found:
                    raise to_domain_error(e, "Secret", name) from e
                cached = (now, None)
            self._secrets[cache_key] = cached
        values = cached[1]
        return None if values is None else values.get(key)

    def cached_secret(self, name: str, key: str = WEBHOOK_SECRET_KEY) -> str | None:
        """The last read value of ``key`` of Secret ``name`` in the home namespace, however
        old, for callers that cannot wait (the synchronous webhook path); None when never
        read or missing. :meth:`refresh_secrets` keeps it current."""
        cached = self._secrets.get((self.namespace, name))
        if cached is None or cached[1] is None:
            return None
        return cached[1].get(key)

    async def refresh_secrets(self, names: Iterable[str]) -> None:
        """Re-read these Secrets of the home namespace when their cache time is up."""
        for name in sorted(set(names)):
            try:
                await self.secret_value(self.namespace, name)
            except errors.TriggerdError as e:
                log.warning("could not read Secret %s: %s", name, type(e).__name__)

    # Helpers ----------------------------------------------------------------------------
    async def _call(
        self, method: str, plural: str, name: str, path: str, body: Any = None
    ) -> dict[str, Any]:
        kind = {BUILDCONFIGS: buildconfigs.KIND, BUILDS: builds.KIND}.get(plural, "Delivery")
        try:
            if method == "get":
                return await self.kube.get(path)
            if method == "list":
                return await self.kube.list(path, label_selector=body or "")
            if method == "create":
                return await self.kube.create(path, body)
            if method == "merge_patch":
                return await self.kube.merge_patch(path, body)
            if method == "delete":
                return await self.kube.delete(path)
        except KubeError as e:
            raise to_domain_error(e, kind, name) from e
        raise ValueError(method)


# Conversions (the CRs carry the OpenShift documents with triggerd.dev/v1 as apiVersion) -----


def config_to_resource(config: BuildConfig) -> dict[str, Any]:
    doc = config.to_dict()
    doc["apiVersion"] = GROUP_VERSION
    return doc


def config_from_resource(doc: Mapping[str, Any]) -> BuildConfig:
    body = dict(doc)
    body["apiVersion"] = metas.API_VERSION
    metadata = dict(body.get("metadata") or {})
    metadata.pop("ownerReferences", None)
    body["metadata"] = metadata
    return buildconfigs.parse(body)


def _config_event(kind: str, doc: Mapping[str, Any]) -> ConfigEvent:
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    try:
        config = config_from_resource(doc)
    except errors.Invalid as e:
        if kind == "DELETED":
            return ConfigEvent(type=kind, namespace=namespace, name=name)
        return ConfigEvent(type=kind, namespace=namespace, name=name, problem=str(e))
    return ConfigEvent(type=kind, namespace=namespace, name=name, config=config)


def _config_or_none(doc: Mapping[str, Any]) -> BuildConfig | None:
    try:
        return config_from_resource(doc)
    except errors.Invalid as e:
        # kubectl apply of a bad object: the CRD schema is looser than triggerd's checks
        log.warning(
            "ignoring invalid BuildConfig %s: %s", (doc.get("metadata") or {}).get("name"), e
        )
        return None


def build_to_resource(build: Build) -> dict[str, Any]:
    doc = build.to_dict()
    doc["apiVersion"] = GROUP_VERSION
    duration = build.status.duration_ns
    if duration is not None:
        # kubectl's printer columns cannot format status.duration (nanoseconds, as
        # OpenShift stores it): `kubectl get builds` shows this readable copy instead.
        # Reading a Build ignores it; every write computes it again.
        doc.setdefault("status", {})["durationText"] = metas.format_duration(duration)
    return doc


def build_from_resource(doc: Mapping[str, Any]) -> Build:
    return builds.from_dict(doc)


def delivery_name(key: str) -> str:
    """A DNS-safe, collision-resistant object name for a delivery id."""
    return "d-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:48]


def selector(query: BuildQuery) -> str:
    """The label selector for a build query (phases are filtered client-side)."""
    parts = [f"{k}={v}" for k, v in sorted(query.labels.items())]
    if query.config_name:
        parts.append(f"{builds.CONFIG_LABEL}={query.config_name}")
    parts += [f"!{k}" for k in sorted(query.label_absent)]
    parts += sorted(query.label_present)
    parts += [f"{k} in ({','.join(sorted(v))})" for k, v in sorted(query.label_in.items())]
    parts += [f"{k} notin ({','.join(sorted(v))})" for k, v in sorted(query.label_not_in.items())]
    return ",".join(parts)


def _user_part(doc: Mapping[str, Any]) -> Any:
    meta = doc.get("metadata") or {}
    return (doc.get("spec"), meta.get("labels") or {}, meta.get("annotations") or {})


def _replace_all(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into exactly ``new`` (removed keys become null)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    patch.update(new)
    return patch
