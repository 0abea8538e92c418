"""ImageStream: parse, validate and serialise the small image stream triggerd keeps (pure).

OpenShift's shape: ``spec.tags[]`` name a tag, optionally ``from`` a DockerImage to import
(``importPolicy.scheduled`` polls it), and ``status.tags[].items[]`` is the tag's history,
newest first (``dockerImageReference`` pinned by digest, ``image`` the digest, ``created``).
Builds whose output is an ImageStreamTag and imports both add items with :func:`record`.
No I/O, no clock: callers pass the time.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from triggerd.errors import FieldError, Invalid
from triggerd.images import references
from triggerd.model import meta as metas
from triggerd.model.fields import Fields
from triggerd.model.specs import ObjectReference, ReferenceKind, parse_reference
from triggerd.settings import parse_duration

KIND = "ImageStream"
API_VERSION = "image.openshift.io/v1"
#: How many items of a tag's history are kept (OpenShift keeps more; builds need one).
HISTORY_LIMIT = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class TagSpec:
    name: str
    from_ref: ObjectReference | None = None
    scheduled: bool = False
    #: ``importPolicy.pollInterval`` (a triggerd extension), seconds; None: the default
    interval: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TagEvent:
    """One item of a tag's history."""

    docker_image_reference: str
    image: str
    created: datetime
    generation: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": metas.format_time(self.created),
            "dockerImageReference": self.docker_image_reference,
            "image": self.image,
            "generation": self.generation,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageStream:
    meta: metas.ObjectMeta
    tags: tuple[TagSpec, ...] = ()
    #: tag name → history, newest first
    history: Mapping[str, tuple[TagEvent, ...]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    def latest(self, tag: str) -> TagEvent | None:
        items = self.history.get(tag, ())
        return items[0] if items else None

    def to_dict(self, registry: str | None = None) -> dict[str, Any]:
        doc = copy.deepcopy(dict(self.raw))
        doc["apiVersion"] = API_VERSION
        doc["kind"] = KIND
        metadata = dict(doc.get("metadata") or {})
        metadata.update(self.meta.to_dict())
        doc["metadata"] = metadata
        status: dict[str, Any] = {
            "tags": [
                {"tag": tag, "items": [item.to_dict() for item in items]}
                for tag, items in sorted(self.history.items())
            ]
        }
        if registry:
            status["dockerImageRepository"] = repository(registry, self.namespace, self.name)
        doc["status"] = status
        return doc


def repository(registry: str, namespace: str, name: str) -> str:
    """Where builds push a stream's images: ``<imageStreamRegistry>/<ns>/<name>``."""
    return f"{registry}/{namespace}/{name}"


def parse(doc: Any, *, default_namespace: str = metas.DEFAULT_NAMESPACE) -> ImageStream:
    """Parse and validate an ImageStream; raise Invalid naming every bad field."""
    if not isinstance(doc, Mapping):
        raise Invalid(KIND, "", [FieldError("<root>", "an ImageStream must be an object")])
    fields = Fields()
    api_version = doc.get("apiVersion")
    if api_version is not None and api_version != API_VERSION:
        fields.error("apiVersion", f"unsupported value {api_version!r}: expected {API_VERSION}")
    if doc.get("kind") is not None and doc.get("kind") != KIND:
        fields.error("kind", f"must be {KIND!r}, not {doc.get('kind')!r}")
    meta = metas.parse_meta(doc, fields, default_namespace=default_namespace)
    spec = fields.mapping(doc, "spec", "spec")
    tags: list[TagSpec] = []
    names: set[str] = set()
    for i, item in enumerate(fields.items(spec, "tags", "spec.tags")):
        path = f"spec.tags[{i}]"
        if not isinstance(item, Mapping):
            fields.error(path, "must be an object")
            continue
        name = fields.string(item, "name", f"{path}.name", required=True)
        if name:
            try:
                references.parse(f"x:{name}")
            except ValueError:
                fields.error(f"{path}.name", f"{name!r} is not a valid tag")
            if name in names:
                fields.error(f"{path}.name", f"duplicate tag {name!r}")
            names.add(name)
        from_doc = fields.mapping(item, "from", f"{path}.from")
        ref = parse_reference(from_doc, fields, f"{path}.from") if from_doc else None
        if ref is not None and ref.kind is not ReferenceKind.DOCKER_IMAGE:
            fields.error(f"{path}.from.kind", "only DockerImage can be imported")
            ref = None
        policy = fields.mapping(item, "importPolicy", f"{path}.importPolicy")
        scheduled = fields.boolean(policy, "scheduled", f"{path}.importPolicy.scheduled")
        if scheduled and ref is None:
            fields.error(f"{path}.importPolicy.scheduled", "needs from (a DockerImage to poll)")
        interval: float | None = None
        if policy.get("pollInterval") is not None:
            try:
                interval = parse_duration(policy["pollInterval"])
            except ValueError as e:
                fields.error(f"{path}.importPolicy.pollInterval", str(e))
        tags.append(TagSpec(name=name, from_ref=ref, scheduled=scheduled, interval=interval))
    history = _parse_history(fields.mapping(doc, "status", "status"), fields)
    if fields.errors:
        raise Invalid(KIND, meta.name, fields.errors)
    raw = copy.deepcopy(dict(doc))
    raw.pop("status", None)
    metadata = dict(raw.get("metadata") or {})
    for key in ("managedFields", "resourceVersion", "generation", "selfLink"):
        metadata.pop(key, None)
    raw["metadata"] = metadata
    return ImageStream(meta=meta, tags=tuple(tags), history=history, raw=raw)


def _parse_history(status: Mapping[str, Any], fields: Fields) -> dict[str, tuple[TagEvent, ...]]:
    history: dict[str, tuple[TagEvent, ...]] = {}
    for i, tag_doc in enumerate(fields.items(status, "tags", "status.tags")):
        path = f"status.tags[{i}]"
        if not isinstance(tag_doc, Mapping):
            fields.error(path, "must be an object")
            continue
        tag = fields.string(tag_doc, "tag", f"{path}.tag", required=True)
        items: list[TagEvent] = []
        for j, item in enumerate(fields.items(tag_doc, "items", f"{path}.items")):
            ipath = f"{path}.items[{j}]"
            if not isinstance(item, Mapping):
                fields.error(ipath, "must be an object")
                continue
            ref = fields.string(item, "dockerImageReference", f"{ipath}.dockerImageReference")
            image = fields.string(item, "image", f"{ipath}.image", required=True)
            created_text = fields.string(item, "created", f"{ipath}.created")
            created = metas.parse_time(created_text) if created_text else None
            if created is None:
                fields.error(f"{ipath}.created", "must be an RFC 3339 time")
                continue
            generation = item.get("generation", 0)
            items.append(
                TagEvent(
                    docker_image_reference=ref,
                    image=image,
                    created=created,
                    generation=generation if isinstance(generation, int) else 0,
                )
            )
        if tag:
            history[tag] = tuple(items)
    return history


def with_history_of(new: ImageStream, old: ImageStream) -> ImageStream:
    """``new`` (a user's replacement) keeping the server-owned history of ``old``."""
    return replace(new, history=old.history)


def record(stream: ImageStream, tag: str, event: TagEvent) -> tuple[ImageStream, bool]:
    """Add ``event`` as the newest item of ``tag``; False when it already is the newest."""
    items = stream.history.get(tag, ())
    if items and items[0].image == event.image:
        return stream, False
    generation = (items[0].generation + 1) if items else 1
    new_items = (replace(event, generation=generation), *items)[:HISTORY_LIMIT]
    return replace(stream, history={**stream.history, tag: new_items}), True
