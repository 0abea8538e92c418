"""Registry push notifications in, neutral :class:`~triggerd.image_events.ImagePush` out.

One parser per dialect posted to ``/hooks/registry/{kind}``: the CNCF distribution envelope
(``{"events": [...]}``), Harbor (Default and CloudEvents formats), Docker Hub, Quay
``repo_push`` and GitHub ``package`` / ``registry_package`` deliveries. Only pushes of a
tag become events: pulls, blob uploads, deletions and untagged child manifests of a
multi-arch index are counted as ignored. Authentication happens before (web layer, with
:mod:`triggerd.intake.signatures`). Pure: never I/O, never anything but
:mod:`triggerd.errors` types for bad input, whatever the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeGuard

from triggerd.errors import MalformedPayload, UnsupportedMediaType
from triggerd.image_events import ImagePush, Notification, RegistryKind
from triggerd.images import references
from triggerd.intake._payload import decode_json, header, lower_keys, media_type, shown

DISTRIBUTION_TYPES = (
    "application/vnd.docker.distribution.events.v2+json",
    "application/vnd.docker.distribution.events.v1+json",
    "application/json",
)
JSON_TYPES = ("application/json",)
GITHUB_EVENT_HEADER = "X-GitHub-Event"
GITHUB_DELIVERY_HEADER = "X-GitHub-Delivery"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$")
#: Manifest media types a tag can point at; blob and config pushes carry other types.
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
_HARBOR_PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})
_GITHUB_EVENTS = frozenset({"package", "registry_package"})
_GITHUB_ACTIONS = frozenset({"published", "updated"})
_GITHUB_CONTAINER_TYPES = frozenset({"container", "docker"})
_DOCKER_HUB = references.DOCKER_HUB


def parse(
    kind: RegistryKind, headers: Mapping[str, str], body: bytes, content_type: str
) -> Notification:
    """Parse one delivery of dialect ``kind``; MalformedPayload / UnsupportedMediaType."""
    parser = PARSERS.get(kind)
    if parser is None:
        raise MalformedPayload(f"no registry notification parser for {shown(str(kind))}")
    return parser(lower_keys(headers), body, content_type)


def is_digest(value: object) -> TypeGuard[str]:
    """True for a canonical ``sha256:<64 hex>`` (or sha512) content digest."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


def _accept(content_type: str, accepted: tuple[str, ...], who: str) -> None:
    kind = media_type(content_type)
    if kind and kind not in accepted and not kind.endswith("+json"):
        raise UnsupportedMediaType(
            f"{who} notifications must be sent as {' or '.join(accepted)}, not {shown(kind)}"
        )


def _object(body: bytes, who: str) -> Mapping[str, object]:
    value = decode_json(body, what=f"{who} notification body")
    if not isinstance(value, Mapping):
        raise MalformedPayload(f"{who} notification body must be a JSON object")
    return value


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _push(
    source: RegistryKind,
    delivery: str | None,
    image: str,
    tag: str,
    digest: object,
    media: str | None = None,
) -> ImagePush | None:
    """An ImagePush for ``image`` (``host/repo``, tag separate), or None if unusable."""
    if not tag or tag.startswith("sha256:"):
        return None
    try:
        ref = references.parse(f"{image}:{tag}")
    except ValueError:
        return None
    return ImagePush(
        source=source,
        delivery_id=delivery,
        registry=ref.registry,
        repository=ref.repository,
        tag=tag,
        digest=digest if is_digest(digest) else None,
        media_type=media,
    )


def _dedupe(source: RegistryKind, pushes: list[ImagePush], ignored: int) -> Notification:
    # One envelope may repeat an event (registry retries batch them): keep the first.
    seen: dict[tuple[str, str | None], ImagePush] = {}
    for push in pushes:
        seen.setdefault((push.key, push.digest), push)
    dropped = len(pushes) - len(seen)
    return Notification(source=source, pushes=tuple(seen.values()), ignored=ignored + dropped)


# CNCF distribution ----------------------------------------------------------------------
def parse_distribution(headers: Mapping[str, str], body: bytes, content_type: str) -> Notification:
    """``{"events": [...]}``: manifest pushes with a tag count; the rest is ignored."""
    _accept(content_type, DISTRIBUTION_TYPES, "distribution")
    doc = _object(body, "distribution")
    events = doc.get("events")
    if not isinstance(events, list):
        raise MalformedPayload("distribution notification body has no events array")
    pushes: list[ImagePush] = []
    ignored = 0
    for event in events:
        push = _distribution_event(_mapping(event))
        if push is None:
            ignored += 1
        else:
            pushes.append(push)
    return _dedupe(RegistryKind.DISTRIBUTION, pushes, ignored)


def _distribution_event(event: Mapping[str, object]) -> ImagePush | None:
    if _text(event.get("action")) != "push":
        return None
    target = _mapping(event.get("target"))
    media = _text(target.get("mediaType"))
    if media and media not in MANIFEST_TYPES:
        return None  # a layer or config blob
    tag = _text(target.get("tag"))
    repository = _text(target.get("repository"))
    if not tag or not repository:
        return None  # a child manifest of an index, pushed by digest
    request = _mapping(event.get("request"))
    # request.host is the name the pushing client used, which is what BuildConfigs name.
    host = _text(request.get("host")) or _url_host(_text(target.get("url")))
    if not host:
        return None
    event_id = _text(event.get("id")) or None
    return _push(
        RegistryKind.DISTRIBUTION,
        event_id,
        f"{host}/{repository}",
        tag,
        target.get("digest"),
        media,
    )


def _url_host(url: str) -> str:
    _, sep, rest = url.partition("://")
    return rest.split("/", 1)[0] if sep else ""


# Harbor ---------------------------------------------------------------------------------
def parse_harbor(headers: Mapping[str, str], body: bytes, content_type: str) -> Notification:
    """Harbor Default (``type: PUSH_ARTIFACT``) or CloudEvents (``harbor.artifact.pushed``)."""
    _accept(content_type, (*JSON_TYPES, "application/cloudevents+json"), "Harbor")
    doc = _object(body, "Harbor")
    event_type = _text(doc.get("type")) or _text(header(headers, "ce-type"))
    data = _mapping(doc.get("event_data") if "event_data" in doc else doc.get("data"))
    if not data:
        raise MalformedPayload("Harbor notification body has neither event_data nor data")
    resources = data.get("resources")
    if not isinstance(resources, list):
        raise MalformedPayload("Harbor notification event_data.resources must be an array")
    if event_type not in _HARBOR_PUSH_TYPES:
        return Notification(source=RegistryKind.HARBOR, pushes=(), ignored=len(resources) or 1)
    repo = _mapping(data.get("repository"))
    full_name = _text(repo.get("repo_full_name"))
    delivery = _text(doc.get("id")) or _text(header(headers, "ce-id")) or None
    pushes: list[ImagePush] = []
    ignored = 0
    for item in resources:
        resource = _mapping(item)
        tag = _text(resource.get("tag"))
        image = _harbor_image(_text(resource.get("resource_url")), full_name)
        push = (
            _push(RegistryKind.HARBOR, delivery, image, tag, resource.get("digest"))
            if image
            else None
        )
        if push is None:
            ignored += 1
        else:
            pushes.append(push)
    return _dedupe(RegistryKind.HARBOR, pushes, ignored)


def _harbor_image(resource_url: str, full_name: str) -> str:
    """``host/project/repo`` from ``host/project/repo:tag`` or ``...@sha256:...``."""
    base = resource_url.split("@", 1)[0]
    slash = base.rfind("/")
    colon = base.rfind(":")
    if colon > slash:
        base = base[:colon]
    if "/" not in base and full_name:
        return f"{base}/{full_name}" if base else ""
    return base


# Docker Hub -----------------------------------------------------------------------------
def parse_dockerhub(headers: Mapping[str, str], body: bytes, content_type: str) -> Notification:
    """Docker Hub names the tag but not the digest: the push must be confirmed with HEAD."""
    _accept(content_type, JSON_TYPES, "Docker Hub")
    doc = _object(body, "Docker Hub")
    push_data = _mapping(doc.get("push_data"))
    repo = _mapping(doc.get("repository"))
    repo_name = _text(repo.get("repo_name"))
    if not repo_name:
        namespace, name = _text(repo.get("namespace")), _text(repo.get("name"))
        repo_name = f"{namespace}/{name}" if namespace and name else name
    if not push_data or not repo_name:
        raise MalformedPayload("Docker Hub notification needs push_data and repository.repo_name")
    tag = _text(push_data.get("tag")) or "latest"
    push = _push(RegistryKind.DOCKERHUB, None, f"{_DOCKER_HUB}/{repo_name}", tag, None)
    if push is None:
        return Notification(source=RegistryKind.DOCKERHUB, pushes=(), ignored=1)
    return Notification(source=RegistryKind.DOCKERHUB, pushes=(push,))


# Quay -----------------------------------------------------------------------------------
def parse_quay(headers: Mapping[str, str], body: bytes, content_type: str) -> Notification:
    """Quay ``repo_push``: ``updated_tags`` as a list (today) or a tag → image map (older)."""
    _accept(content_type, JSON_TYPES, "Quay")
    doc = _object(body, "Quay")
    docker_url = _text(doc.get("docker_url"))
    if not docker_url:
        raise MalformedPayload("Quay notification has no docker_url")
    raw_tags = doc.get("updated_tags")
    if isinstance(raw_tags, Mapping):
        tags = [str(t) for t in raw_tags]
    elif isinstance(raw_tags, list):
        tags = [t for t in raw_tags if isinstance(t, str)]
    else:
        # Not a push (build queued, vulnerability found): acknowledged, nothing to do.
        return Notification(source=RegistryKind.QUAY, pushes=(), ignored=1)
    pushes: list[ImagePush] = []
    ignored = 0
    for tag in tags:
        # The legacy map's values are Quay image ids, not manifest digests: never trusted.
        push = _push(RegistryKind.QUAY, None, docker_url, tag.strip(), None)
        if push is None:
            ignored += 1
        else:
            pushes.append(push)
    return _dedupe(RegistryKind.QUAY, pushes, ignored)


# GitHub ---------------------------------------------------------------------------------
def parse_github(headers: Mapping[str, str], body: bytes, content_type: str) -> Notification:
    """GitHub ``package`` / ``registry_package`` deliveries for container packages."""
    _accept(content_type, JSON_TYPES, "GitHub")
    event = header(headers, GITHUB_EVENT_HEADER) or ""
    if event == "ping":
        return Notification(source=RegistryKind.GITHUB, pushes=(), ignored=1)
    if event not in _GITHUB_EVENTS:
        raise MalformedPayload(
            f"{GITHUB_EVENT_HEADER} must be package or registry_package, not {shown(event)}"
        )
    doc = _object(body, "GitHub")
    package = _mapping(doc.get(event))
    if not package:
        raise MalformedPayload(f"GitHub {event} delivery has no {event} object")
    delivery = header(headers, GITHUB_DELIVERY_HEADER)
    ignored = Notification(source=RegistryKind.GITHUB, pushes=(), ignored=1)
    if _text(doc.get("action")) not in _GITHUB_ACTIONS:
        return ignored
    package_type = _text(package.get("package_type")).lower()
    if package_type not in _GITHUB_CONTAINER_TYPES:
        return ignored
    version = _mapping(package.get("package_version"))
    tag_doc = _mapping(_mapping(version.get("container_metadata")).get("tag"))
    tag = _text(tag_doc.get("name"))
    if not tag:
        return ignored  # an untagged child manifest of a multi-arch push
    image = _github_image(package, version)
    if not image:
        raise MalformedPayload(f"GitHub {event} delivery names no package_url or owner/name")
    push = _push(RegistryKind.GITHUB, delivery, image, tag, tag_doc.get("digest"))
    return Notification(
        source=RegistryKind.GITHUB, pushes=(push,) if push else (), ignored=0 if push else 1
    )


def _github_image(package: Mapping[str, object], version: Mapping[str, object]) -> str:
    url = _text(version.get("package_url"))
    if url:
        base = url.split("@", 1)[0]
        slash, colon = base.rfind("/"), base.rfind(":")
        if colon > slash:
            base = base[:colon]
        return base.lower()
    owner = _text(_mapping(package.get("owner")).get("login"))
    name = _text(package.get("name"))
    return f"ghcr.io/{owner}/{name}".lower() if owner and name else ""


Parser = Callable[[Mapping[str, str], bytes, str], Notification]

PARSERS: Mapping[RegistryKind, Parser] = {
    RegistryKind.DISTRIBUTION: parse_distribution,
    RegistryKind.HARBOR: parse_harbor,
    RegistryKind.DOCKERHUB: parse_dockerhub,
    RegistryKind.QUAY: parse_quay,
    RegistryKind.GITHUB: parse_github,
}
