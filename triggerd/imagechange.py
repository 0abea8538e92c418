"""Image change triggers: which BuildConfigs a new image digest starts, and how (pure).

Given a BuildConfig, the state of its ImageChange triggers (``lastTriggeredImageID`` per
trigger) and the images those triggers currently resolve to, :func:`decide` says whether
ONE build starts, with one cause per trigger that fired, the strategy's ``from`` pinned to
``repo@sha256:…`` when the trigger watching it fired, and the new trigger states to store
with the build. Every build of a config records, in the annotation
:data:`IMAGE_TRIGGERS_ANNOTATION`, the image each ImageChange trigger resolved to when it
was created, so the trigger states can always be recovered from the builds themselves
(:func:`states_from_builds`, :func:`reconcile`): after a crash between creating a build and
writing the state, or on a new leader whose local state is stale. :func:`find_cycle`
refuses build chains that would rebuild themselves forever. Sits between the tag watcher /
registry hooks and the engine; it must never do I/O, read the clock or start anything.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from triggerd.errors import FieldError
from triggerd.image_events import tag_key
from triggerd.images import references
from triggerd.model import buildconfigs, builds, requests
from triggerd.model import meta as metas
from triggerd.model.fields import Fields
from triggerd.model.specs import ObjectReference, ReferenceKind, parse_reference
from triggerd.settings import parse_duration

IMAGE_CHANGE_CAUSE = "Image change"
#: The prefix of watch keys that name an ImageStreamTag rather than a registry tag.
ISTAG_PREFIX = "istag:"
#: On every Build of a config with ImageChange triggers: JSON ``{watch key: image id}``,
#: the image each trigger had resolved to when the build was created ("" for a registry
#: tag whose digest was not known yet: the build used whatever the tag pointed at).
IMAGE_TRIGGERS_ANNOTATION = "triggerd.dev/image-triggers"
#: The strategy options key whose ``from`` an empty ``imageChange.from`` watches.
_STRATEGY_FIELDS = {
    "docker": "spec.strategy.dockerStrategy.from",
    "source": "spec.strategy.sourceStrategy.from",
    "custom": "spec.strategy.customStrategy.from",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchedImage:
    """One ImageChange trigger, resolved to the image it watches."""

    index: int
    #: ``registry/repo:tag`` for DockerImage, ``istag:<ns>/<stream>:<tag>`` for streams
    key: str
    from_ref: ObjectReference
    #: this trigger watches the strategy's own ``from`` (its digest gets pinned)
    is_strategy_from: bool
    paused: bool
    #: ``imageChange.pollInterval`` (a triggerd extension), seconds; None: the default
    interval: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerState:
    """What ``status.imageChangeTriggers[i]`` records for trigger ``index``."""

    index: int
    last_triggered_image_id: str = ""
    last_trigger_time: datetime | None = None
    message: str = ""
    #: a build already used this registry tag before its digest was known (a ConfigChange
    #: or manual build): the first digest seen is recorded without building again
    await_first: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome for one BuildConfig: a build to start (or not) and states to store."""

    #: None: no build; the states may still change (first sighting without initial build)
    request: requests.BuildRequest | None
    fired: tuple[int, ...]
    states: tuple[TriggerState, ...]


def watch_key(ref: ObjectReference, default_namespace: str) -> str:
    """The key a reference is watched under (ValueError for an unusable DockerImage)."""
    if ref.kind is ReferenceKind.IMAGE_STREAM_TAG:
        return f"{ISTAG_PREFIX}{ref.namespace or default_namespace}/{ref.name}"
    return tag_key(references.parse(ref.name))


def istag_key(namespace: str, stream: str, tag: str) -> str:
    return f"{ISTAG_PREFIX}{namespace}/{stream}:{tag}"


def watched_images(config: buildconfigs.BuildConfig) -> tuple[WatchedImage, ...]:
    """Every ImageChange trigger of ``config`` with the image it watches.

    Triggers that cannot be resolved are skipped here; :func:`check_triggers` reports them.
    """
    watched, _ = _resolve(config)
    return watched


def check_triggers(config: buildconfigs.BuildConfig) -> list[FieldError]:
    """Apply-time problems with the ImageChange triggers, each with its field path."""
    _, errors = _resolve(config)
    return errors


def strategy_from(config: buildconfigs.BuildConfig) -> tuple[ObjectReference | None, str]:
    """The strategy's ``from`` (Docker, Source or Custom) and its field path."""
    strategy = config.spec.strategy
    for attr, path in _STRATEGY_FIELDS.items():
        options = getattr(strategy, attr)
        if options is not None:
            ref: ObjectReference | None = options.from_image
            return ref, path
    return None, _STRATEGY_FIELDS["docker"]


def _resolve(config: buildconfigs.BuildConfig) -> tuple[tuple[WatchedImage, ...], list[FieldError]]:
    fields = Fields()
    result: list[WatchedImage] = []
    strategy_ref, strategy_path = strategy_from(config)
    for i, trigger in enumerate(config.triggers):
        if trigger.type is not buildconfigs.TriggerType.IMAGE_CHANGE:
            continue
        path = f"spec.triggers[{i}].imageChange"
        doc = fields.mapping(trigger.raw, "imageChange", path)
        from_doc = fields.mapping(doc, "from", f"{path}.from")
        ref = parse_reference(from_doc, fields, f"{path}.from") if from_doc else strategy_ref
        paused = fields.boolean(doc, "paused", f"{path}.paused")
        interval = _interval(doc, fields, f"{path}.pollInterval")
        if ref is None:
            if not from_doc:
                fields.error(f"{path}.from", f"is required when {strategy_path} is not set")
            continue
        try:
            key = watch_key(ref, config.namespace)
        except ValueError as e:
            fields.error(f"{path}.from.name", str(e))
            continue
        if ref.kind is ReferenceKind.DOCKER_IMAGE and references.parse(ref.name).digest:
            fields.error(f"{path}.from.name", "a digest never moves: watch a tag")
            continue
        is_from = strategy_ref is not None and _same(strategy_ref, ref, config.namespace)
        result.append(
            WatchedImage(
                index=i,
                key=key,
                from_ref=ref,
                is_strategy_from=is_from,
                paused=paused,
                interval=interval,
            )
        )
    return tuple(result), fields.errors


def _interval(doc: Mapping[str, Any], fields: Fields, path: str) -> float | None:
    value = doc.get("pollInterval")
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        fields.error(path, str(e))
        return None
    if seconds < 1:
        fields.error(path, "must be at least 1s")
        return None
    return seconds


def _same(a: ObjectReference, b: ObjectReference, namespace: str) -> bool:
    try:
        return a.kind is b.kind and watch_key(a, namespace) == watch_key(b, namespace)
    except ValueError:
        return False


def read_states(config: buildconfigs.BuildConfig) -> dict[int, TriggerState]:
    """Trigger states an exported config carries (spec ``lastTriggeredImageID``, status).

    The runtime's own store wins over these; they seed a config loaded from OpenShift so
    its first sighting of an already-built image does not rebuild it.
    """
    states: dict[int, TriggerState] = {}
    for watched in watched_images(config):
        raw = config.triggers[watched.index].raw.get("imageChange")
        last = raw.get("lastTriggeredImageID") if isinstance(raw, Mapping) else None
        if isinstance(last, str) and last:
            states[watched.index] = TriggerState(index=watched.index, last_triggered_image_id=last)
    status = config.raw.get("status")
    entries = status.get("imageChangeTriggers") if isinstance(status, Mapping) else None
    if isinstance(entries, list):
        by_key = {w.key: w.index for w in watched_images(config)}
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            index = _status_index(entry, by_key, config.namespace)
            last = entry.get("lastTriggeredImageID")
            if index is None or not isinstance(last, str) or not last:
                continue
            when = entry.get("lastTriggerTime")
            states[index] = TriggerState(
                index=index,
                last_triggered_image_id=last,
                last_trigger_time=metas.parse_time(when) if isinstance(when, str) else None,
            )
    return states


def _status_index(entry: Mapping[str, Any], by_key: Mapping[str, int], ns: str) -> int | None:
    ref_doc = entry.get("from")
    if not isinstance(ref_doc, Mapping) or not isinstance(ref_doc.get("name"), str):
        return None
    name = ref_doc["name"]
    namespace = ref_doc.get("namespace") if isinstance(ref_doc.get("namespace"), str) else ns
    kind = ReferenceKind.IMAGE_STREAM_TAG if ":" in name and "/" not in name else None
    candidates = []
    if kind is ReferenceKind.IMAGE_STREAM_TAG:
        candidates.append(f"{ISTAG_PREFIX}{namespace}/{name}")
    with contextlib.suppress(ValueError):
        candidates.append(tag_key(references.parse(name)))
    for key in candidates:
        if key in by_key:
            return by_key[key]
    return None


def pinned_from(image_id: str) -> ObjectReference:
    """The DockerImage reference a triggered build's strategy ``from`` is pinned to."""
    return ObjectReference(kind=ReferenceKind.DOCKER_IMAGE, name=image_id)


def cause(watched: WatchedImage, image_id: str, namespace: str) -> dict[str, Any]:
    """One ``spec.triggeredBy`` entry, as OpenShift writes it for an image change."""
    from_ref: dict[str, Any] = {"kind": watched.from_ref.kind.value, "name": watched.from_ref.name}
    if watched.from_ref.kind is ReferenceKind.IMAGE_STREAM_TAG:
        from_ref["namespace"] = watched.from_ref.namespace or namespace
    return {
        "message": IMAGE_CHANGE_CAUSE,
        "imageChangeBuild": {"imageID": image_id, "fromRef": from_ref},
    }


def decide(
    config: buildconfigs.BuildConfig,
    states: Mapping[int, TriggerState],
    resolved: Mapping[str, str],
    *,
    now: datetime,
    initial_build: bool = True,
) -> Decision:
    """What the images in ``resolved`` (watch key → pinned image id) mean for ``config``.

    Every unpaused trigger whose image id differs from its ``lastTriggeredImageID`` fires
    (so a tag moved back to an earlier digest, A → B → A, builds again, as in OpenShift);
    all that fire together make ONE build. A trigger that has never fired records its first
    image without building when ``initial_build`` is off or when a build already used the
    tag before its digest was known (``await_first``). A paused config or trigger (and an
    image id already recorded) fires nothing and changes no state; nor does a config with
    binary source, whose builds need an upload no image change brings.
    """
    if config.paused or requests.has_binary_source(config.spec.source):
        return Decision(request=None, fired=(), states=())
    fired: list[tuple[WatchedImage, str]] = []
    seen_only: list[TriggerState] = []
    for watched in watched_images(config):
        image_id = resolved.get(watched.key)
        if watched.paused or not image_id:
            continue
        state = states.get(watched.index)
        last = state.last_triggered_image_id if state else ""
        if last == image_id:
            continue
        if not last and (not initial_build or (state is not None and state.await_first)):
            seen_only.append(
                TriggerState(
                    index=watched.index,
                    last_triggered_image_id=image_id,
                    last_trigger_time=state.last_trigger_time if state else None,
                    message=state.message if state else "",
                )
            )
            continue
        fired.append((watched, image_id))
    if not fired:
        return Decision(request=None, fired=(), states=tuple(seen_only))
    pin = next((image_id for w, image_id in fired if w.is_strategy_from), None)
    new_states = tuple(
        TriggerState(index=w.index, last_triggered_image_id=image_id, last_trigger_time=now)
        for w, image_id in fired
    )
    after = {**states, **{s.index: s for s in (*seen_only, *new_states)}}
    recorded = {
        w.key: after[w.index].last_triggered_image_id
        for w in watched_images(config)
        if w.index in after and after[w.index].last_triggered_image_id
    }
    request = requests.BuildRequest(
        from_image=pinned_from(pin) if pin else None,
        triggered_by=tuple(cause(w, image_id, config.namespace) for w, image_id in fired),
        annotations={IMAGE_TRIGGERS_ANNOTATION: encode_images(recorded)},
    )
    return Decision(
        request=request,
        fired=tuple(w.index for w, _ in fired),
        states=new_states + tuple(seen_only),
    )


def is_image_change(request: requests.BuildRequest) -> bool:
    """Whether ``request`` was made by :func:`decide` (it records its own trigger states)."""
    return IMAGE_TRIGGERS_ANNOTATION in request.annotations and any(
        "imageChangeBuild" in cause for cause in request.triggered_by
    )


def resolved_images(config: buildconfigs.BuildConfig, known: Mapping[str, str]) -> dict[str, str]:
    """What a build made now (by hand, a webhook or a ConfigChange) uses, per watch key.

    OpenShift records every ImageChange trigger's resolved image as its
    ``lastTriggeredImageID`` whenever it instantiates a build, so the image a build
    already used never starts another one. A registry tag whose digest is not known yet is
    recorded as "" (the build pulls whatever the tag points at; the first digest seen
    later is taken as that one); an ImageStreamTag without an image is left out.
    """
    images: dict[str, str] = {}
    for watched in watched_images(config):
        image_id = known.get(watched.key)
        if image_id:
            images[watched.key] = image_id
        elif watched.from_ref.kind is ReferenceKind.DOCKER_IMAGE:
            images.setdefault(watched.key, "")
    return images


def encode_images(images: Mapping[str, str]) -> str:
    """The :data:`IMAGE_TRIGGERS_ANNOTATION` value for ``images`` (watch key → image id)."""
    return json.dumps(dict(sorted(images.items())), separators=(",", ":"))


def annotate(request: requests.BuildRequest, images: Mapping[str, str]) -> requests.BuildRequest:
    """``request`` carrying ``images`` in :data:`IMAGE_TRIGGERS_ANNOTATION`."""
    return replace(
        request,
        annotations={**request.annotations, IMAGE_TRIGGERS_ANNOTATION: encode_images(images)},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltImage:
    """What the newest build that names a watch key recorded for it."""

    image_id: str
    created: datetime | None
    #: the build was started by this image (its lastTriggerTime is the build's creation)
    triggered: bool


def states_from_builds(builds_of_config: Iterable[builds.Build]) -> dict[str, BuiltImage]:
    """Watch key → the image the newest build naming that key recorded.

    Reads :data:`IMAGE_TRIGGERS_ANNOTATION`, and for builds made before it existed the
    ``imageChangeBuild`` causes. Builds are the durable, shared record (the build store, or
    Build resources every replica sees), created in the same write as the build itself.
    """
    found: dict[str, BuiltImage] = {}
    for build in sorted(builds_of_config, key=lambda b: b.number, reverse=True):
        fired: set[str] = set()
        entries: dict[str, str] = {}
        for cause_doc in build.triggered_by:
            change = cause_doc.get("imageChangeBuild")
            key = _cause_key(change, build.namespace) if isinstance(change, Mapping) else None
            if key is not None and isinstance(change, Mapping):
                fired.add(key)
                entries[key] = str(change.get("imageID") or "")
        text = build.meta.annotations.get(IMAGE_TRIGGERS_ANNOTATION)
        if text:
            with contextlib.suppress(ValueError):
                doc = json.loads(text)
                if isinstance(doc, dict):
                    entries.update({str(k): str(v) for k, v in doc.items() if isinstance(v, str)})
        for key, image_id in entries.items():
            if key not in found:
                found[key] = BuiltImage(
                    image_id=image_id,
                    created=build.meta.creation_timestamp,
                    triggered=key in fired,
                )
    return found


def _cause_key(change: Mapping[str, Any], namespace: str) -> str | None:
    ref = change.get("fromRef")
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
        return None
    try:
        if ref.get("kind") == ReferenceKind.IMAGE_STREAM_TAG.value:
            return f"{ISTAG_PREFIX}{ref.get('namespace') or namespace}/{ref['name']}"
        return tag_key(references.parse(ref["name"]))
    except ValueError:
        return None


def reconcile(
    config: buildconfigs.BuildConfig,
    local: Mapping[int, TriggerState],
    built: Mapping[str, BuiltImage],
) -> dict[int, TriggerState]:
    """The trigger states: the locally stored ones, corrected by what the builds recorded.

    A build's image wins unless the local state is newer than that build (the trigger
    fired on another image since, e.g. after its ``from`` changed): the build record
    covers a crash between creating a build and storing the state, and a new leader whose
    local state is stale. Locally only a first sighting (no build) or an error message
    is newer information, and both are kept.
    """
    result: dict[int, TriggerState] = dict(local)
    for watched in watched_images(config):
        mine = local.get(watched.index)
        record = built.get(watched.key)
        if record is None:
            continue
        if record.image_id:
            if mine is not None and mine.last_triggered_image_id == record.image_id:
                continue
            if (
                mine is not None
                and mine.last_triggered_image_id
                and mine.last_trigger_time is not None
                and record.created is not None
                and mine.last_trigger_time > record.created
            ):
                continue
            result[watched.index] = TriggerState(
                index=watched.index,
                last_triggered_image_id=record.image_id,
                last_trigger_time=(
                    record.created
                    if record.triggered
                    else (mine.last_trigger_time if mine else None)
                ),
                message=mine.message if mine else "",
            )
        elif mine is None or not mine.last_triggered_image_id:
            result[watched.index] = TriggerState(
                index=watched.index,
                last_trigger_time=mine.last_trigger_time if mine else None,
                message=mine.message if mine else "",
                await_first=True,
            )
    return result


def status_entries(
    config: buildconfigs.BuildConfig, states: Mapping[int, TriggerState]
) -> list[dict[str, Any]]:
    """``status.imageChangeTriggers`` in OpenShift's shape, one entry per watched trigger."""
    entries: list[dict[str, Any]] = []
    for watched in watched_images(config):
        state = states.get(watched.index)
        ref: dict[str, Any] = {"name": watched.from_ref.name}
        if watched.from_ref.kind is ReferenceKind.IMAGE_STREAM_TAG:
            ref["namespace"] = watched.from_ref.namespace or config.namespace
        entry: dict[str, Any] = {"from": ref}
        if state and state.last_triggered_image_id:
            entry["lastTriggeredImageID"] = state.last_triggered_image_id
        if state and state.last_trigger_time:
            entry["lastTriggerTime"] = metas.format_time(state.last_trigger_time)
        if state and state.message:
            entry["message"] = state.message
        entries.append(entry)
    return entries


def output_key(config: buildconfigs.BuildConfig) -> str | None:
    """The watch key of what ``config`` pushes (None without an output or if unusable)."""
    to = config.spec.output.to
    if to is None:
        return None
    try:
        return watch_key(to, config.namespace)
    except ValueError:
        return None


def could_close_cycle(candidate: buildconfigs.BuildConfig) -> bool:
    """Whether ``candidate`` has both an edge in (an unpaused watched image) and an edge
    out (an output someone could watch): without both no cycle can pass through it, and
    the other configs need not be read at all (most configs have no ImageChange trigger)."""
    return output_key(candidate) is not None and any(
        not watched.paused for watched in watched_images(candidate)
    )


def find_cycle(
    configs: Iterable[buildconfigs.BuildConfig], candidate: buildconfigs.BuildConfig
) -> list[str] | None:
    """A chain ``ns/a → ns/b → … → ns/a`` that ``candidate`` would close, or None.

    An edge A → B means A's output is an image B's (unpaused) ImageChange trigger watches,
    so every build of A starts one of B. ``candidate`` replaces a stored config of its name.
    """
    if not could_close_cycle(candidate):
        return None
    ident = (candidate.namespace, candidate.name)
    graph_configs = {(c.namespace, c.name): c for c in configs}
    graph_configs[ident] = candidate
    watchers: dict[str, list[tuple[str, str]]] = {}
    for name, config in graph_configs.items():
        for watched in watched_images(config):
            if not watched.paused:
                watchers.setdefault(watched.key, []).append(name)

    def successors(name: tuple[str, str]) -> list[tuple[str, str]]:
        key = output_key(graph_configs[name])
        return watchers.get(key, []) if key else []

    # Any new cycle must pass through the candidate: search paths leaving it.
    stack: list[tuple[tuple[str, str], list[tuple[str, str]]]] = [(ident, [ident])]
    visited: set[tuple[str, str]] = set()
    while stack:
        node, path = stack.pop()
        for nxt in successors(node):
            if nxt == ident:
                return [f"{ns}/{n}" for ns, n in [*path, ident]]
            if nxt not in visited:
                visited.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None
