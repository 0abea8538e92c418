"""The ImageStream API under ``/apis/image.openshift.io/v1/namespaces/{namespace}/imagestreams``.

Create, read, list, replace and delete the small ImageStream resource triggerd keeps
(:mod:`triggerd.model.imagestreams`). Writes go to the stream store and then tell the image
change runtime, which imports new spec tags once and (re)starts the scheduled imports the
stream asks for. With the Kubernetes store every replica serves this API from the shared
ImageStream resources, and the leader imports (it sees the write through its watch). The
status (tag history, and an ``ImportSuccess`` False condition on a tag whose last import
failed, as OpenShift shows it) is server-owned: a replace keeps it. Errors are raised as
:mod:`triggerd.errors` and answered by the shared error middleware.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from triggerd import errors
from triggerd.model import imagestreams
from triggerd.settings import MIN_POLL_INTERVAL_SECONDS
from triggerd.web import errors as web_errors
from triggerd.web.api import decode, namespace_of, read_body
from triggerd.web.openapi import Endpoint, Reply
from triggerd.web.registry_hooks import IMAGE_CHANGE

GROUP = "image.openshift.io"
BASE = f"/apis/{GROUP}/v1/namespaces/{{namespace}}/imagestreams"
_BODY_TYPES = ("application/json", "application/yaml")


async def _doc(request: web.Request, stream: imagestreams.ImageStream) -> dict[str, Any]:
    runtime = request.app[IMAGE_CHANGE]
    doc = stream.to_dict(runtime.stream_registry)
    failures = await runtime.streams.import_failures(stream.namespace, stream.name)
    if failures:
        tags: list[dict[str, Any]] = doc["status"]["tags"]
        by_tag = {entry["tag"]: entry for entry in tags}
        for tag, failure in sorted(failures.items()):
            entry = by_tag.get(tag)
            if entry is None:
                entry = by_tag[tag] = {"tag": tag, "items": []}
                tags.append(entry)
            entry["conditions"] = [failure.to_condition()]
        tags.sort(key=lambda entry: str(entry["tag"]))
    return doc


def _identity(doc: Any, namespace: str, name: str | None) -> Any:
    if not isinstance(doc, dict):
        raise errors.MalformedPayload("request body must be an ImageStream object")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise errors.MalformedPayload("metadata must be an object")
    if metadata.get("namespace") not in (None, "", namespace):
        raise errors.BadRequest(
            f"metadata.namespace {metadata.get('namespace')!r} does not match the URL {namespace!r}"
        )
    if name is not None and metadata.get("name") not in (None, "", name):
        raise errors.BadRequest(
            f"metadata.name {metadata.get('name')!r} does not match the URL {name!r}"
        )
    if name is not None:
        doc = {**doc, "metadata": {**metadata, "name": name}}
    return doc


def _parse(doc: Any, namespace: str) -> imagestreams.ImageStream:
    stream = imagestreams.parse(doc, default_namespace=namespace)
    too_short = [
        errors.FieldError(
            f"spec.tags[{i}].importPolicy.pollInterval",
            f"must be at least {MIN_POLL_INTERVAL_SECONDS:g}s",
        )
        for i, tag in enumerate(stream.tags)
        if tag.interval is not None and tag.interval < MIN_POLL_INTERVAL_SECONDS
    ]
    if too_short:
        raise errors.Invalid(imagestreams.KIND, stream.name, too_short)
    return stream


async def list_streams(request: web.Request) -> web.Response:
    """List ImageStreams."""
    namespace = namespace_of(request)
    streams = await request.app[IMAGE_CHANGE].streams.list_streams(namespace)
    versions = [int(s.meta.resource_version or 0) for s in streams]
    return web.json_response(
        {
            "kind": "ImageStreamList",
            "apiVersion": f"{GROUP}/v1",
            "metadata": {"resourceVersion": str(max(versions, default=0))},
            "items": [await _doc(request, s) for s in streams],
        }
    )


async def create_stream(request: web.Request) -> web.Response:
    """Create an ImageStream (JSON or YAML)."""
    namespace = namespace_of(request)
    runtime = request.app[IMAGE_CHANGE]
    doc = _identity(decode(await read_body(request), request.content_type), namespace, None)
    stream = _parse(doc, namespace)
    created = await runtime.streams.create_stream(stream, now=runtime.engine.clock())
    await runtime.stream_changed(created)
    return web.json_response(await _doc(request, created), status=201)


async def get_stream(request: web.Request) -> web.Response:
    """Read one ImageStream with its tag history."""
    namespace = namespace_of(request)
    runtime = request.app[IMAGE_CHANGE]
    stream = await runtime.streams.get_stream(namespace, request.match_info["name"])
    return web.json_response(await _doc(request, stream))


async def replace_stream(request: web.Request) -> web.Response:
    """Replace an ImageStream's spec (its history is kept)."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    runtime = request.app[IMAGE_CHANGE]
    doc = _identity(decode(await read_body(request), request.content_type), namespace, name)
    stream = _parse(doc, namespace)
    previous = await runtime.streams.get_stream(namespace, name)
    replaced = await runtime.streams.replace_stream(
        stream, expected_resource_version=stream.meta.resource_version or None
    )
    await runtime.stream_changed(replaced, previous)
    return web.json_response(await _doc(request, replaced))


async def delete_stream(request: web.Request) -> web.Response:
    """Delete an ImageStream (images already pushed stay in the registry)."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    runtime = request.app[IMAGE_CHANGE]
    stream = await runtime.streams.get_stream(namespace, name)
    await runtime.streams.delete_stream(namespace, name)
    await runtime.stream_deleted(namespace, name)
    return web_errors.success(name=name, kind="imagestreams", group=GROUP, uid=stream.meta.uid)


_STREAM = Reply(description="The ImageStream.", schema=None)
_WRITE_ERRORS = {
    400: Reply(description="Malformed body."),
    413: Reply(description="Body too large."),
    415: Reply(description="Unsupported Content-Type."),
    422: Reply(description="Invalid ImageStream; causes name each field."),
}

ROUTES: list[Endpoint] = [
    Endpoint(
        method="GET",
        path=BASE,
        handler=list_streams,
        operation_id="listImageStreams",
        summary="List ImageStreams.",
        tag="imagestreams",
        responses={200: Reply(description="The ImageStreams.", schema=None)},
    ),
    Endpoint(
        method="POST",
        path=BASE,
        handler=create_stream,
        operation_id="createImageStream",
        summary="Create an ImageStream.",
        tag="imagestreams",
        body_types=_BODY_TYPES,
        body_required=True,
        responses={201: _STREAM, 409: Reply(description="Name taken."), **_WRITE_ERRORS},
    ),
    Endpoint(
        method="GET",
        path=BASE + "/{name}",
        handler=get_stream,
        operation_id="readImageStream",
        summary="Read an ImageStream.",
        tag="imagestreams",
        responses={200: _STREAM, 404: Reply(description="No such ImageStream.")},
    ),
    Endpoint(
        method="PUT",
        path=BASE + "/{name}",
        handler=replace_stream,
        operation_id="replaceImageStream",
        summary="Replace an ImageStream's spec.",
        tag="imagestreams",
        body_types=_BODY_TYPES,
        body_required=True,
        responses={
            200: _STREAM,
            404: Reply(description="No such ImageStream."),
            409: Reply(description="Stale resourceVersion."),
            **_WRITE_ERRORS,
        },
    ),
    Endpoint(
        method="DELETE",
        path=BASE + "/{name}",
        handler=delete_stream,
        operation_id="deleteImageStream",
        summary="Delete an ImageStream.",
        tag="imagestreams",
        responses={200: Reply(description="Deleted."), 404: Reply(description="No such one.")},
    ),
]
