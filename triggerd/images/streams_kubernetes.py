"""Image streams and image trigger states on the Kubernetes API, shared by every replica.

Implements :class:`~triggerd.images.streams_base.ImageStreamStore` for ``store: kubernetes``.
An ImageStream is an ``imagestreams.triggerd.dev/v1`` custom resource in OpenShift's shape:
``spec`` as the user wrote it, ``status.tags[].items[]`` (the history, newest first) and
``status.tags[].conditions[]`` (a failed import) behind the status subresource, so a user's
replace never touches the history. A BuildConfig's trigger states go where OpenShift keeps
them, ``status.imageChangeTriggers[]`` of the BuildConfig resource (lastTriggeredImageID,
lastTriggerTime, and triggerd's ``message``), one entry per ImageChange trigger in the
order of the triggers.

Every status write is read-modify-write: a JSON merge patch carrying the resourceVersion
it was computed from, made again on 409 (another replica's import, a build's lastVersion
bump) after a short random pause, and skipped when it would change nothing; so two
replicas recording tags at once both land, and nothing is overwritten blindly. Within one
process the writes to one object queue on a lock, so only other replicas' writes conflict.
What is not written: ``await_first`` (a build used a registry tag before its digest was
known) has no field in OpenShift's shape; the runtime derives it from that build's
image-triggers annotation on every read. Only the leader acts on images; every replica
serves the API from here and follows changes with
:meth:`KubernetesStreamsStore.watch_streams`. Never writes without a precondition.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from triggerd import errors, imagechange
from triggerd.images.streams_base import IMPORT_SUCCESS, ImportFailure
from triggerd.kube import (
    CustomResources,
    Kube,
    KubeError,
    WatchExpired,
    path_for,
    to_domain_error,
    update_status,
)
from triggerd.model import buildconfigs, imagestreams
from triggerd.model import meta as metas
from triggerd.model.specs import ObjectReference, ReferenceKind
from triggerd.store.kubernetes import (
    BUILDCONFIGS,
    GROUP_VERSION,
    MAX_ATTEMPTS,
    config_from_resource,
)

log = logging.getLogger(__name__)

IMAGESTREAMS: Final = "imagestreams"
#: Server-owned metadata a create must not send.
_SERVER_FIELDS: Final = ("uid", "resourceVersion", "creationTimestamp", "generation")
#: After the n-th write lost to another replica's: a random pause of up to this times 2**n
#: seconds (capped), so that writers of several replicas do not keep colliding in step.
CONFLICT_BACKOFF_SECONDS: Final = 0.005
CONFLICT_BACKOFF_MAX_SECONDS: Final = 0.2

Status = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """An ImageStream appeared, changed or went away; ``stream`` is None for DELETED and
    for a stored object triggerd cannot read (``kubectl`` skips triggerd's checks)."""

    type: str  # "ADDED", "MODIFIED", "DELETED"
    namespace: str
    name: str
    stream: imagestreams.ImageStream | None = None


class KubernetesStreamsStore(CustomResources):
    """ImageStream custom resources and BuildConfig trigger states, through ``kube``."""

    CRD_GROUP_VERSION = GROUP_VERSION
    CRD_PLURALS = (IMAGESTREAMS,)

    def __init__(self, kube: Kube, namespace: str, *, registry: str | None = None) -> None:
        self.kube = kube
        #: where lists without a namespace look (the RBAC shipped grants this one only)
        self.namespace = namespace
        #: ``imageStreamRegistry``: written as ``status.dockerImageRepository`` (kubectl shows it)
        self.registry = registry
        #: one read-modify-write per object at a time in this process: its own concurrent
        #: writers (builds ending together) queue here instead of conflicting at the API
        #: server, where only other replicas' writes remain to lose to
        self._writing: dict[tuple[str, str, str], asyncio.Lock] = {}

    def _path(self, namespace: str | None, name: str | None = None) -> str:
        return path_for(GROUP_VERSION, IMAGESTREAMS, namespace or self.namespace, name)

    # ImageStreams -------------------------------------------------------------------------
    async def list_streams(self, namespace: str | None = None) -> list[imagestreams.ImageStream]:
        doc = await self._call("", lambda: self.kube.list(self._path(namespace)))
        streams = [s for s in map(_stream_or_none, doc.get("items") or []) if s is not None]
        return sorted(streams, key=lambda s: (s.namespace, s.name))

    async def get_stream(self, namespace: str, name: str) -> imagestreams.ImageStream:
        return stream_from_resource(await self._get(namespace, name))

    async def create_stream(
        self, stream: imagestreams.ImageStream, *, now: datetime
    ) -> imagestreams.ImageStream:
        """Create it (the API server sets uid and creationTimestamp, so ``now`` is unused);
        history the document brings along is written through /status, which a create
        drops."""
        body = stream_to_resource(stream)
        body.pop("status", None)
        for key in _SERVER_FIELDS:
            body["metadata"].pop(key, None)
        path = self._path(stream.namespace)
        created = await self._call(stream.name, lambda: self.kube.create(path, body))
        if stream.history:
            created = await self._update_status(
                stream.namespace,
                stream.name,
                lambda doc: {"tags": _status_tags(stream.history, _conditions(doc))},
            )
        return stream_from_resource(created)

    async def replace_stream(
        self, stream: imagestreams.ImageStream, *, expected_resource_version: str | None = None
    ) -> imagestreams.ImageStream:
        """Replace the spec; the status (history, conditions) is the subresource's and
        stays. Without ``expected_resource_version`` a status write racing this one (an
        import) is read again and the user's spec still wins."""
        path = self._path(stream.namespace, stream.name)
        for _ in range(MAX_ATTEMPTS):
            current = await self._get(stream.namespace, stream.name)
            meta = current.get("metadata") or {}
            body = stream_to_resource(stream)
            body.pop("status", None)
            body["metadata"].update(
                uid=meta.get("uid"),
                creationTimestamp=meta.get("creationTimestamp"),
                resourceVersion=expected_resource_version or meta.get("resourceVersion"),
            )
            body["metadata"].pop("generation", None)
            try:
                replaced = await self.kube.replace(path, body)
            except KubeError as e:
                if e.conflict and expected_resource_version is None:
                    continue
                raise to_domain_error(e, imagestreams.KIND, stream.name) from e
            return stream_from_resource(replaced)
        raise errors.TemporaryError(f"ImageStream {stream.name!r} keeps changing; retry", 1.0)

    async def delete_stream(self, namespace: str, name: str) -> None:
        await self._call(name, lambda: self.kube.delete(self._path(namespace, name)))

    async def record_tag(
        self, namespace: str, name: str, tag: str, event: imagestreams.TagEvent
    ) -> tuple[imagestreams.ImageStream, bool]:
        """Add ``event`` as the newest item of ``tag``, computed on the stream as stored
        and written with its resourceVersion (again on 409): concurrent records of two
        replicas both end up in the history, newest first."""
        recorded: list[bool] = []

        def add(doc: Mapping[str, Any]) -> Status | None:
            updated, changed = imagestreams.record(stream_from_resource(doc), tag, event)
            recorded[:] = [changed]
            if not changed:
                return None
            return {"tags": _status_tags(updated.history, _conditions(doc))}

        doc = await self._update_status(namespace, name, add)
        return stream_from_resource(doc), recorded[0]

    async def set_import_failure(
        self, namespace: str, stream: str, tag: str, failure: ImportFailure | None
    ) -> None:
        """Put (or clear) the tag's ``ImportSuccess: False`` condition; the same failure
        again writes nothing (its lastTransitionTime stays the first one's, as in OpenShift).
        A stream that is gone has nothing to record."""

        def put(doc: Mapping[str, Any]) -> Status | None:
            conditions = _conditions(doc)
            mine = conditions.get(tag, [])
            current = next((c for c in mine if c.get("type") == IMPORT_SUCCESS), None)
            others = [c for c in mine if c.get("type") != IMPORT_SUCCESS]
            if failure is None:
                if current is None:
                    return None
                conditions[tag] = others
            else:
                wanted = failure.to_condition()
                if current is not None and all(
                    current.get(k) == wanted[k] for k in ("status", "reason", "message")
                ):
                    return None
                conditions[tag] = [*others, wanted]
            history = stream_from_resource(doc).history
            return {"tags": _status_tags(history, conditions)}

        try:
            await self._update_status(namespace, stream, put)
        except errors.NotFound:
            log.info("image stream %s/%s is gone; import state of %s not kept", namespace,
                     stream, tag)  # fmt: skip

    async def import_failures(self, namespace: str, stream: str) -> dict[str, ImportFailure]:
        try:
            doc = await self._get(namespace, stream)
        except errors.NotFound:
            return {}
        failures: dict[str, ImportFailure] = {}
        for tag, conditions in _conditions(doc).items():
            for condition in conditions:
                failure = ImportFailure.from_condition(tag, condition)
                if failure is not None:
                    failures[tag] = failure
        return failures

    async def watch_streams(self, *, timeout_seconds: int = 240) -> AsyncIterator[StreamEvent]:
        """Every ImageStream change in the home namespace, forever: an ADDED per existing
        stream, then changes; after 410 Gone the list is read again and the differences
        reported, so ``kubectl apply``/``delete`` and other replicas' writes always arrive."""
        known: dict[tuple[str, str], str] = {}  # key -> the resourceVersion last reported
        resource_version = ""
        path = self._path(None)
        while True:
            try:
                if not resource_version:
                    listed = await self.kube.list(path)
                    resource_version = str(listed["metadata"].get("resourceVersion", ""))
                    seen: set[tuple[str, str]] = set()
                    for item in listed.get("items") or []:
                        key, version = _identity(item)
                        seen.add(key)
                        if known.get(key) != version:
                            kind = "ADDED" if key not in known else "MODIFIED"
                            known[key] = version
                            yield _event(kind, item)
                    for key in sorted(set(known) - seen):
                        del known[key]
                        yield StreamEvent(type="DELETED", namespace=key[0], name=key[1])
                async for kind, obj in self.kube.watch(
                    path, resource_version=resource_version, timeout_seconds=timeout_seconds
                ):
                    key, version = _identity(obj)
                    resource_version = version or resource_version
                    if kind not in ("ADDED", "MODIFIED", "DELETED"):
                        continue  # BOOKMARK
                    if kind == "DELETED":
                        known.pop(key, None)
                    else:
                        known[key] = version
                    yield _event(kind, obj)
            except WatchExpired:
                resource_version = ""
            except KubeError as e:
                if not e.transient:
                    raise
                await asyncio.sleep(1.0)

    # Trigger states -----------------------------------------------------------------------
    async def trigger_states(
        self, namespace: str, config: str
    ) -> dict[int, imagechange.TriggerState]:
        found = await self._config(namespace, config)
        if found is None:
            return {}
        parsed, doc = found
        return decode_states(parsed, _trigger_entries(doc))

    async def put_trigger_states(
        self, namespace: str, config: str, states: Iterable[imagechange.TriggerState]
    ) -> None:
        """Merge ``states`` into the BuildConfig's ``status.imageChangeTriggers``, with the
        resourceVersion they were merged into (again on 409: a build's lastVersion bump,
        another replica). A config that is gone (or that triggerd cannot read) keeps
        nothing; a write that would change nothing is not made."""
        wanted = {state.index: state for state in states}

        def merge(doc: Mapping[str, Any]) -> Status | None:
            parsed = _config_of(doc)
            if parsed is None:
                return None
            stored = _trigger_entries(doc)
            merged = {**decode_states(parsed, stored), **wanted}
            entries = imagechange.status_entries(parsed, merged)
            if entries == stored:
                return None
            return {"imageChangeTriggers": entries or None}

        async with self._lock(BUILDCONFIGS, namespace, config):
            await update_status(
                self.kube,
                path_for(GROUP_VERSION, BUILDCONFIGS, namespace, config),
                merge,
                kind=buildconfigs.KIND,
                name=config,
                attempts=MAX_ATTEMPTS,
                after_conflict=_back_off,
            )

    async def delete_trigger_states(self, namespace: str, config: str) -> None:
        """Nothing to do: the states are in the config's own status and went with it (a
        config of the same name made since has states of its own, which must stay)."""

    # Helpers ------------------------------------------------------------------------------
    async def _config(
        self, namespace: str, name: str
    ) -> tuple[buildconfigs.BuildConfig, dict[str, Any]] | None:
        path = path_for(GROUP_VERSION, BUILDCONFIGS, namespace, name)
        try:
            doc = await self.kube.get(path)
        except KubeError as e:
            if e.not_found:
                return None
            raise to_domain_error(e, buildconfigs.KIND, name) from e
        parsed = _config_of(doc)
        return None if parsed is None else (parsed, doc)

    async def _get(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(name, lambda: self.kube.get(self._path(namespace, name)))

    async def _call(self, name: str, call: Callable[[], Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await call()
        except KubeError as e:
            raise to_domain_error(e, imagestreams.KIND, name) from e
        return result

    async def _update_status(
        self,
        namespace: str,
        name: str,
        change: Callable[[Mapping[str, Any]], Status | None],
    ) -> dict[str, Any]:
        """Read the stream, ask ``change`` for the new status (None: nothing to write) and
        write it with the resourceVersion read; a 409 reads and asks again."""
        async with self._lock(IMAGESTREAMS, namespace, name):
            for attempt in range(MAX_ATTEMPTS):
                doc = await self._get(namespace, name)
                status = change(doc)
                if status is None:
                    return doc
                try:
                    return await self._patch_status(doc, status)
                except errors.Conflict:
                    await _back_off(attempt)
        raise errors.TemporaryError(f"ImageStream {name!r} keeps changing; retry", 1.0)

    def _lock(self, plural: str, namespace: str, name: str) -> asyncio.Lock:
        return self._writing.setdefault((plural, namespace, name), asyncio.Lock())

    async def _patch_status(self, doc: Mapping[str, Any], status: Status) -> dict[str, Any]:
        meta = doc.get("metadata") or {}
        name = str(meta.get("name") or "")
        if self.registry:
            status = {
                **status,
                "dockerImageRepository": imagestreams.repository(
                    self.registry, str(meta.get("namespace") or self.namespace), name
                ),
            }
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": status}
        path = self._path(str(meta.get("namespace") or self.namespace), name) + "/status"
        return await self._call(name, lambda: self.kube.merge_patch(path, patch))


async def _back_off(attempt: int) -> None:
    limit = min(CONFLICT_BACKOFF_SECONDS * 2**attempt, CONFLICT_BACKOFF_MAX_SECONDS)
    await asyncio.sleep(random.uniform(0, limit))  # noqa: S311 - spreading retries, no secret


# Conversions ---------------------------------------------------------------------------------


def _config_of(doc: Mapping[str, Any]) -> buildconfigs.BuildConfig | None:
    """The BuildConfig a resource holds, or None when triggerd cannot read it (reported on
    the config by the engine; it has no usable triggers)."""
    try:
        return config_from_resource(doc)
    except errors.Invalid:
        return None


def stream_to_resource(stream: imagestreams.ImageStream) -> dict[str, Any]:
    """The custom resource of ``stream`` (its status: the history, without conditions)."""
    doc = stream.to_dict()
    doc["apiVersion"] = GROUP_VERSION
    doc.setdefault("spec", {})  # OpenShift always writes one, if empty
    doc["status"] = {"tags": _status_tags(stream.history, {})}
    return doc


def stream_from_resource(doc: Mapping[str, Any]) -> imagestreams.ImageStream:
    """The stream a custom resource holds (Invalid when ``kubectl`` stored a bad one)."""
    body = dict(doc)
    body["apiVersion"] = imagestreams.API_VERSION
    metadata = dict(body.get("metadata") or {})
    metadata.pop("ownerReferences", None)
    body["metadata"] = metadata
    return imagestreams.parse(body)


def _stream_or_none(doc: Mapping[str, Any]) -> imagestreams.ImageStream | None:
    try:
        return stream_from_resource(doc)
    except errors.Invalid as e:
        # kubectl apply of a bad object: the CRD schema is looser than triggerd's checks
        name = (doc.get("metadata") or {}).get("name")
        log.warning("ignoring invalid ImageStream %s: %s", name, e)
        return None


def _identity(doc: Mapping[str, Any]) -> tuple[tuple[str, str], str]:
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    return key, str(meta.get("resourceVersion") or "")


def _event(kind: str, doc: Mapping[str, Any]) -> StreamEvent:
    (namespace, name), _ = _identity(doc)
    stream = None if kind == "DELETED" else _stream_or_none(doc)
    return StreamEvent(type=kind, namespace=namespace, name=name, stream=stream)


def _conditions(doc: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``status.tags[].conditions`` by tag, as stored."""
    status = doc.get("status")
    tags = status.get("tags") if isinstance(status, Mapping) else None
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in tags if isinstance(tags, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("tag"), str):
            continue
        conditions = entry.get("conditions")
        if isinstance(conditions, list) and conditions:
            found[entry["tag"]] = [dict(c) for c in conditions if isinstance(c, Mapping)]
    return found


def _status_tags(
    history: Mapping[str, tuple[imagestreams.TagEvent, ...]],
    conditions: Mapping[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """``status.tags`` (OpenShift's NamedTagEventList): a tag's items newest first, and
    its conditions; a tag whose import only ever failed has conditions and no items."""
    entries: list[dict[str, Any]] = []
    for tag in sorted(set(history) | {t for t, c in conditions.items() if c}):
        entry: dict[str, Any] = {
            "tag": tag,
            "items": [item.to_dict() for item in history.get(tag, ())],
        }
        if conditions.get(tag):
            entry["conditions"] = conditions[tag]
        entries.append(entry)
    return entries


def _trigger_entries(doc: Mapping[str, Any]) -> list[Any]:
    status = doc.get("status")
    entries = status.get("imageChangeTriggers") if isinstance(status, Mapping) else None
    return list(entries) if isinstance(entries, list) else []


def decode_states(
    config: buildconfigs.BuildConfig, entries: Iterable[Any]
) -> dict[int, imagechange.TriggerState]:
    """Trigger states from ``status.imageChangeTriggers`` entries (as
    :func:`triggerd.imagechange.status_entries` writes them: one per ImageChange trigger,
    in order). An entry belongs to the trigger at its position when that one watches the
    image it names, else to the first trigger still free that does (the triggers changed
    since); an entry no trigger watches is dropped."""
    watched = list(imagechange.watched_images(config))
    free = list(watched)
    states: dict[int, imagechange.TriggerState] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        key = _entry_key(entry, config.namespace)
        if key is None:
            continue
        at = watched[position] if position < len(watched) else None
        match = at if at is not None and at in free and at.key == key else None
        if match is None:
            match = next((w for w in free if w.key == key), None)
        if match is None:
            continue
        free.remove(match)
        last = entry.get("lastTriggeredImageID")
        when = entry.get("lastTriggerTime")
        message = entry.get("message")
        states[match.index] = imagechange.TriggerState(
            index=match.index,
            last_triggered_image_id=last if isinstance(last, str) else "",
            last_trigger_time=metas.parse_time(when) if isinstance(when, str) else None,
            message=message if isinstance(message, str) else "",
        )
    return states


def _entry_key(entry: Mapping[str, Any], namespace: str) -> str | None:
    """The watch key an entry's ``from`` names: with a namespace an ImageStreamTag (as
    OpenShift and :func:`triggerd.imagechange.status_entries` write them), else a registry
    tag."""
    ref = entry.get("from")
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
        return None
    stream_namespace = ref.get("namespace")
    if isinstance(stream_namespace, str) and stream_namespace:
        kind, where = ReferenceKind.IMAGE_STREAM_TAG, stream_namespace
    else:
        kind, where = ReferenceKind.DOCKER_IMAGE, None
    try:
        return imagechange.watch_key(
            ObjectReference(kind=kind, name=ref["name"], namespace=where), namespace
        )
    except ValueError:
        return None
