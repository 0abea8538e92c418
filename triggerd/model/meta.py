"""Object metadata and timestamps shared by every API object (pure).

Kubernetes-style ``metadata`` (name, namespace, uid, resourceVersion, creationTimestamp,
labels, annotations) and the RFC 3339 timestamp form the API uses on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from triggerd.model.fields import Doc, Fields

DEFAULT_NAMESPACE = "default"
API_GROUP = "build.openshift.io"
API_VERSION = f"{API_GROUP}/v1"
ACCEPTED_API_VERSIONS = (API_VERSION, "triggerd.dev/v1")


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectMeta:
    """The metadata triggerd reads and owns; other metadata fields ride along untouched."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.uid:
            out["uid"] = self.uid
        if self.resource_version:
            out["resourceVersion"] = self.resource_version
        if self.creation_timestamp is not None:
            out["creationTimestamp"] = format_time(self.creation_timestamp)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def parse_meta(
    doc: Doc, fields: Fields, *, default_namespace: str = DEFAULT_NAMESPACE
) -> ObjectMeta:
    meta = fields.mapping(doc, "metadata", "metadata")
    name = fields.string(meta, "name", "metadata.name", required=True)
    if name:
        fields.dns_subdomain(name, "metadata.name")
    namespace = fields.string(meta, "namespace", "metadata.namespace") or default_namespace
    fields.dns_label(namespace, "metadata.namespace")
    created = meta.get("creationTimestamp")
    return ObjectMeta(
        name=name,
        namespace=namespace,
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        creation_timestamp=parse_time(created) if isinstance(created, str) else None,
        labels=fields.string_map(meta, "labels", "metadata.labels"),
        annotations=fields.string_map(meta, "annotations", "metadata.annotations"),
    )


def check_type_meta(doc: Doc, fields: Fields, kind: str) -> None:
    api_version = doc.get("apiVersion")
    if api_version is not None and api_version not in ACCEPTED_API_VERSIONS:
        fields.error(
            "apiVersion",
            f"unsupported value {api_version!r}: expected one of "
            + ", ".join(ACCEPTED_API_VERSIONS),
        )
    if doc.get("kind") is not None and doc.get("kind") != kind:
        fields.error("kind", f"must be {kind!r}, not {doc.get('kind')!r}")


def now() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(nanoseconds: int) -> str:
    """A build duration (nanoseconds, as OpenShift stores it) the way Go's time.Duration
    prints one, to whole seconds: ``45s``, ``3m20s``, ``1h2m0s``."""
    seconds = max(0, nanoseconds) // 1_000_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
