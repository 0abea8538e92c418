"""The REST API: BuildConfigs, Builds, instantiate and logs, as build.openshift.io/v1 serves them.

Routes live under ``/apis/build.openshift.io/v1/namespaces/{namespace}/`` and, identically,
``/apis/triggerd.dev/v1/namespaces/{namespace}/``; the table at the bottom registers both and
feeds ``/openapi.json``. Handlers decode the body (JSON or YAML, capped in size), call the
:class:`triggerd.engine.Engine` or its store, and answer with Kubernetes objects; every 2xx
for a write is sent only after the store returned, so it is durable. Handlers never choose
an HTTP status for an error themselves: they raise :mod:`triggerd.errors` exceptions and
:mod:`triggerd.web.errors` answers. They never run builds or decide phases either.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import yaml
from aiohttp import web

from triggerd import errors, selectors
from triggerd.engine import Engine
from triggerd.model import buildconfigs, builds, requests
from triggerd.model.builds import Build
from triggerd.planning import archives
from triggerd.store.base import BuildQuery
from triggerd.web import ENGINE, LIFECYCLE, LOGS, SETTINGS, LogReader
from triggerd.web import errors as web_errors
from triggerd.web.openapi import Endpoint, Param, Reply

log = logging.getLogger(__name__)

GROUPS = ("build.openshift.io", "triggerd.dev")
JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
BODY_TYPES = JSON_TYPES | YAML_TYPES
PATCH_TYPES = frozenset(
    {"application/merge-patch+json", "application/strategic-merge-patch+json", "application/json"}
)
#: How long a log follower waits for news before looking at the build again; a safety net
#: only, since engine.wait_for_change wakes it on every build change.
FOLLOW_POLL_SECONDS = 2.0
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TRUE = frozenset({"1", "t", "true", "True", "TRUE"})
_FALSE = frozenset({"0", "f", "false", "False", "FALSE"})


# Request helpers ----------------------------------------------------------------------------
def namespace_of(request: web.Request) -> str:
    namespace = request.match_info["namespace"]
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise errors.BadRequest(
            f"namespace {namespace!r} is not a valid RFC 1123 label "
            "(lowercase letters, digits and '-', at most 63 characters)"
        )
    return namespace


def group_of(request: web.Request) -> str:
    """The API group the request was addressed to (``/apis/<group>/v1/...``)."""
    parts = request.path.split("/")
    return parts[2] if len(parts) > 2 and parts[2] in GROUPS else GROUPS[0]


async def read_body(request: web.Request) -> bytes:
    """The request body, refusing more than ``maxBodyBytes`` before reading it all."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    # Chunked bodies carry no length: count while reading and stop at the first byte over.
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: a few hundred bytes of nested aliases expand to gigabytes
    when the document is copied or serialised (the "billion laughs" attack)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def decode(body: bytes, content_type: str) -> Any:
    """One JSON or YAML document; MalformedPayload names what is wrong with it."""
    if content_type not in BODY_TYPES:
        raise errors.UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; use one of "
            + ", ".join(sorted(BODY_TYPES))
        )
    if content_type in JSON_TYPES:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.MalformedPayload(f"request body is not valid JSON: {e}") from e
    try:
        text = body.decode("utf-8")
        docs = list(yaml.load_all(text, Loader=_NoAliasLoader))
    except UnicodeDecodeError as e:
        raise errors.MalformedPayload(f"request body is not UTF-8: {e}") from e
    except yaml.YAMLError as e:
        raise errors.MalformedPayload(f"request body is not valid YAML: {e}") from e
    docs = [d for d in docs if d is not None]
    if len(docs) > 1:
        raise errors.MalformedPayload(
            f"request body holds {len(docs)} YAML documents; send one object per request"
        )
    return docs[0] if docs else None


def parse_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.BadRequest(f"query parameter {name}={value!r} must be true or false")


def parse_count(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise errors.BadRequest(f"query parameter {name}={value!r} must be a non-negative integer")
    return number


def _check_identity(doc: Any, *, namespace: str, name: str | None, kind: str) -> Any:
    """Refuse a body addressed to another namespace (or, for updates, another name), as the
    Kubernetes API server does; fill in what the URL says when the body leaves it out."""
    if not isinstance(doc, dict):
        return doc  # the model's parser reports the shape with a field path
    metadata = doc.get("metadata")
    if metadata is None:
        metadata = doc["metadata"] = {}
    if not isinstance(metadata, dict):
        return doc
    body_namespace = metadata.get("namespace")
    if body_namespace not in (None, "") and body_namespace != namespace:
        raise errors.BadRequest(
            f"the namespace of the provided {kind} ({body_namespace}) does not match "
            f"the namespace sent on the request ({namespace})"
        )
    metadata["namespace"] = namespace
    if name is not None:
        body_name = metadata.get("name")
        if body_name not in (None, "") and body_name != name:
            raise errors.BadRequest(
                f"the name of the provided {kind} ({body_name}) does not match "
                f"the name sent on the request ({name})"
            )
        metadata["name"] = name
    return doc


def _with_group(doc: dict[str, Any], group: str) -> dict[str, Any]:
    """Objects are served in the version of the group the client asked."""
    doc["apiVersion"] = f"{group}/v1"
    return doc


def _object_response(doc: dict[str, Any], group: str, *, status: int = 200) -> web.Response:
    return web.json_response(_with_group(doc, group), status=status)


def _list_response(
    kind: str, items: Iterable[dict[str, Any]], group: str, resource_version: str, token: str | None
) -> web.Response:
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if token:
        metadata["continue"] = token
    body = {
        "kind": kind,
        "apiVersion": f"{group}/v1",
        "metadata": metadata,
        "items": [_with_group(item, group) for item in items],
    }
    return web.json_response(body)


def _newest_version(versions: Iterable[str]) -> str:
    numbers = [int(v) for v in versions if v.isdigit()]
    return str(max(numbers)) if numbers else "0"


# BuildConfigs -------------------------------------------------------------------------------
async def list_buildconfigs(request: web.Request) -> web.Response:
    """List BuildConfigs: labelSelector, limit and continue as in Kubernetes."""
    namespace = namespace_of(request)
    selector = selectors.parse(request.query.get("labelSelector"))
    limit = parse_count(request, "limit")
    after = _decode_name_token(request.query.get("continue"))
    configs = await request.app[ENGINE].store.list_buildconfigs(namespace)
    # Sorted by name; only the page is serialised, so a large list costs one page of JSON.
    chosen = [
        c for c in configs if (after is None or c.name > after) and selector.matches(c.meta.labels)
    ]
    page = chosen[:limit] if limit else chosen
    token = _encode_name_token(page[-1].name) if limit and len(chosen) > limit else None
    return _list_response(
        "BuildConfigList",
        # As GET of one config: the list shows status.imageChangeTriggers too (one read of
        # the config's builds for each listed config that has ImageChange triggers).
        [await _with_image_status(request, c) for c in page],
        group_of(request),
        _newest_version(c.meta.resource_version for c in configs),
        token,
    )


def _encode_name_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_name_token(token: str | None) -> str | None:
    """The name a BuildConfig page ended at; 400 when the token is not one of ours."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.BadRequest(f"continue token {token[:40]!r} is not valid") from e


async def create_buildconfig(request: web.Request) -> web.Response:
    """Create a BuildConfig from a JSON or YAML body."""
    namespace = namespace_of(request)
    doc = decode(await read_body(request), request.content_type)
    doc = _check_identity(doc, namespace=namespace, name=None, kind=buildconfigs.KIND)
    created = await request.app[ENGINE].create_buildconfig(doc, namespace=namespace)
    return _object_response(created.to_dict(), group_of(request), status=201)


async def get_buildconfig(request: web.Request) -> web.Response:
    """Read one BuildConfig."""
    namespace = namespace_of(request)
    config = await request.app[ENGINE].store.get_buildconfig(namespace, request.match_info["name"])
    return _object_response(await _with_image_status(request, config), group_of(request))


async def _with_image_status(request: web.Request, config: buildconfigs.BuildConfig) -> Any:
    """``to_dict`` plus ``status.imageChangeTriggers`` from the image change runtime."""
    doc = config.to_dict()
    engine = request.app[ENGINE]
    if engine.image_change is not None and any(
        t.type is buildconfigs.TriggerType.IMAGE_CHANGE for t in config.triggers
    ):
        doc["status"]["imageChangeTriggers"] = await engine.image_change.status_entries(config)
    return doc


async def replace_buildconfig(request: web.Request) -> web.Response:
    """Replace a BuildConfig; a stale metadata.resourceVersion is a Conflict."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    doc = decode(await read_body(request), request.content_type)
    doc = _check_identity(doc, namespace=namespace, name=name, kind=buildconfigs.KIND)
    replaced = await request.app[ENGINE].replace_buildconfig(doc, namespace=namespace, name=name)
    return _object_response(replaced.to_dict(), group_of(request))


async def delete_buildconfig(request: web.Request) -> web.Response:
    """Delete a BuildConfig and its builds (running ones are cancelled first)."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    engine = request.app[ENGINE]
    config = await engine.store.get_buildconfig(namespace, name)
    await engine.delete_buildconfig(namespace, name)
    return web_errors.success(
        name=name, kind="buildconfigs", group=group_of(request), uid=config.meta.uid
    )


async def instantiate(request: web.Request) -> web.Response:
    """Start a build of the BuildConfig (a BuildRequest body, or none).

    A BuildConfig with binary source is refused with 400, as OpenShift refuses it: its
    builds need the upload instantiatebinary takes (or, to re-run one, the clone of a
    build). The engine decides that, for every way a build starts.
    """
    namespace = namespace_of(request)
    name = request.match_info["name"]
    body = await read_body(request)
    doc = decode(body, request.content_type) if body.strip() else None
    build_request = requests.parse(doc, name)
    engine = request.app[ENGINE]
    try:
        build = await engine.instantiate(namespace, name, build_request)
    except requests.BinaryInputRequired as e:
        # The caller asked for what cannot be (a trigger hears it as a Conflict).
        raise errors.BadRequest(str(e)) from e
    return _object_response(build.to_dict(), group_of(request), status=201)


async def clone_build(request: web.Request) -> web.Response:
    """Start a new build exactly like an earlier one (``oc start-build --from-build``).

    The body is a BuildRequest naming the build (or none). The new build is a build of the
    same BuildConfig made from the earlier build's own spec — revision, source, strategy,
    output, env, build args, labels and annotations, a binary build's upload (kept for
    this) — whatever the BuildConfig says now, annotated ``openshift.io/build.clone-of``;
    the request may add env, build args and noCache. 404 when the BuildConfig is gone.
    """
    namespace = namespace_of(request)
    name = request.match_info["name"]
    body = await read_body(request)
    doc = decode(body, request.content_type) if body.strip() else None
    overrides = requests.parse(doc, name)
    engine = request.app[ENGINE]
    build = await engine.store.get_build(namespace, name)
    digest = build.meta.annotations.get(archives.INPUT_ANNOTATION)
    if build.spec.source.binary is not None and not await _upload_kept(request, digest):
        raise errors.Conflict(
            f'the input uploaded for build "{name}" is no longer stored; start a new binary '
            "build with instantiatebinary"
        )
    clone = await engine.clone(namespace, name, overrides)
    return _object_response(clone.to_dict(), group_of(request), status=201)


async def _upload_kept(request: web.Request, digest: str | None) -> bool:
    if not digest:
        return False
    try:
        path = archives.upload_path(request.app[SETTINGS].data_dir.resolve(), digest)
    except ValueError:
        return False
    return await asyncio.to_thread(path.is_file)


# Builds -------------------------------------------------------------------------------------
async def list_builds(request: web.Request) -> web.Response:
    """List Builds: labelSelector, limit and continue as in Kubernetes."""
    namespace = namespace_of(request)
    selector = selectors.parse(request.query.get("labelSelector"))
    limit = parse_count(request, "limit")
    query = BuildQuery(
        namespace=namespace,
        labels=selector.labels,
        label_present=selector.label_present,
        label_absent=selector.label_absent,
        label_in=selector.label_in,
        label_not_in=selector.label_not_in,
        limit=limit or None,  # limit=0 means "no limit" in Kubernetes
        continue_token=request.query.get("continue") or None,
    )
    page = await request.app[ENGINE].store.list_builds(query)
    return _list_response(
        "BuildList",
        (b.to_dict() for b in page.builds),
        group_of(request),
        page.resource_version,
        page.continue_token,
    )


async def get_build(request: web.Request) -> web.Response:
    """Read one Build."""
    namespace = namespace_of(request)
    build = await request.app[ENGINE].store.get_build(namespace, request.match_info["name"])
    return _object_response(build.to_dict(), group_of(request))


async def patch_build(request: web.Request) -> web.Response:
    """Patch a Build: only {"status":{"cancelled":true}} is supported (it cancels)."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    if request.content_type not in PATCH_TYPES:
        raise errors.UnsupportedMediaType(
            f"Content-Type {request.content_type!r} is not supported for PATCH; use one of "
            + ", ".join(sorted(PATCH_TYPES))
        )
    body = await read_body(request)
    try:
        patch = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.MalformedPayload(f"patch is not valid JSON: {e}") from e
    if not isinstance(patch, dict):
        raise errors.MalformedPayload("a merge patch must be a JSON object")
    engine = request.app[ENGINE]
    cancel = _cancel_requested(patch, name)
    if cancel:
        build = await engine.cancel_build(namespace, name)
    else:
        build = await engine.store.get_build(namespace, name)
    return _object_response(build.to_dict(), group_of(request))


def _cancel_requested(patch: Mapping[str, Any], name: str) -> bool:
    """True for the cancel patch, False for an empty one; Invalid for anything else."""
    causes: list[errors.FieldError] = []
    cancel = False
    for path, value in _leaves(patch):
        if path == "status.cancelled":
            if value is True:
                cancel = True
            else:
                causes.append(
                    errors.FieldError(path, "only true is supported (a cancel cannot be undone)")
                )
        else:
            causes.append(
                errors.FieldError(
                    path, 'cannot be patched; only {"status":{"cancelled":true}} is supported'
                )
            )
    if causes:
        raise errors.Invalid(builds.KIND, name, causes)
    return cancel


def _leaves(doc: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


async def delete_build(request: web.Request) -> web.Response:
    """Delete a Build (an unfinished one is cancelled first) and its log."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    build = await request.app[ENGINE].delete_build(namespace, name)
    return web_errors.success(name=name, kind="builds", group=group_of(request), uid=build.meta.uid)


# Logs ---------------------------------------------------------------------------------------
class PodLogSource(Protocol):
    """Where a replica whose log store lacks a build's log reads it: the build pod's
    container logs through the API server (Kubernetes executor), while the pod exists."""

    async def read(self, namespace: str, name: str) -> bytes | None: ...

    def follow(self, namespace: str, name: str) -> AsyncIterator[bytes]: ...


#: Set by the composition root when builds run as Jobs; absent otherwise.
POD_LOGS: web.AppKey[PodLogSource] = web.AppKey("triggerd.pod_logs")


async def get_log(request: web.Request) -> web.StreamResponse:
    """The build's log as text; follow=true streams it until the build finishes."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    follow = parse_bool(request, "follow")
    tail_lines = parse_count(request, "tailLines")
    parse_bool(request, "previous")  # accepted: a build has exactly one attempt
    engine = request.app[ENGINE]
    logs = request.app[LOGS]
    pods = request.app.get(POD_LOGS)
    build = await engine.store.get_build(namespace, name)
    if not follow:
        try:
            data = logs.read(namespace, name, tail_lines)
        except errors.NotFound:
            # Not started yet (or ended before it wrote a line), or another replica ran it:
            # then its pod, while it exists, has the log.
            remote = await pods.read(namespace, name) if pods is not None else None
            data = _tail(remote or b"", tail_lines)
        return web.Response(body=data, content_type="text/plain", charset="utf-8")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    stopping = request.app[LIFECYCLE].stopping

    def ended() -> bool:
        # aiohttp does not cancel handlers of vanished clients; a follower waiting for a
        # queued build would otherwise linger until the build ends.
        transport = request.transport
        return stopping.is_set() or transport is None or transport.is_closing()

    try:
        await _stream_log(
            engine, logs, build, tail_lines, response.write, stopping, ended, pods=pods
        )
    except ConnectionResetError:
        return response  # the client left
    except errors.NotFound:
        pass  # the build (and its log) was deleted while followed: the stream just ends
    except Exception:
        # Headers are gone: the status cannot change, so end the stream and keep the reason.
        log.exception("following the log of %s/%s failed", namespace, name)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _stream_log(
    engine: Engine,
    logs: LogReader,
    build: Build,
    tail_lines: int | None,
    write: Callable[[bytes], Awaitable[None]],
    stopping: asyncio.Event,
    ended: Callable[[], bool],
    *,
    pods: PodLogSource | None = None,
) -> None:
    namespace, name = build.namespace, build.name
    # A queued build has no log yet: wait until it exists or the build ends without one.
    while not logs.exists(namespace, name):
        snapshot = await pods.read(namespace, name) if pods is not None else None
        if pods is not None and snapshot is not None:
            # Another replica runs (or ran) it: follow its pod instead.
            await _stream_pod_log(engine, pods, build, snapshot, tail_lines, write, stopping, ended)
            return
        if build.phase.terminal or ended():
            return
        await _wait_for_change(engine, stopping)
        build = await engine.store.get_build(namespace, name)

    async def read_all() -> bytes:
        return logs.read(namespace, name, None) if logs.exists(namespace, name) else b""

    # Take one snapshot so the tail and the followed remainder neither overlap nor leave a gap.
    await _follow_log(
        engine,
        build,
        logs.read(namespace, name, None),
        logs.follow(namespace, name),
        read_all,
        tail_lines,
        write,
        stopping,
        ended,
    )


async def _stream_pod_log(
    engine: Engine,
    pods: PodLogSource,
    build: Build,
    snapshot: bytes,
    tail_lines: int | None,
    write: Callable[[bytes], Awaitable[None]],
    stopping: asyncio.Event,
    ended: Callable[[], bool],
) -> None:
    """As the log-store follow, from the pod (its log restarts from the beginning on each
    follow, so the offset lines it up with the snapshot)."""

    async def read_all() -> bytes:
        return await pods.read(build.namespace, build.name) or b""

    await _follow_log(
        engine,
        build,
        snapshot,
        pods.follow(build.namespace, build.name),
        read_all,
        tail_lines,
        write,
        stopping,
        ended,
    )


async def _follow_log(
    engine: Engine,
    build: Build,
    snapshot: bytes,
    chunks: AsyncIterator[bytes],
    read_all: Callable[[], Awaitable[bytes]],
    tail_lines: int | None,
    write: Callable[[bytes], Awaitable[None]],
    stopping: asyncio.Event,
    ended: Callable[[], bool],
) -> None:
    """The snapshot's tail, then what ``chunks`` (a follow from the log's start) adds
    beyond it until the build finishes, then whatever the log gained meanwhile."""
    await write(_tail(snapshot, tail_lines))
    sent = len(snapshot)  # bytes of the log (counted from its start) already accounted for
    finished = asyncio.ensure_future(
        _until_finished(engine, build.namespace, build.name, stopping, ended)
    )
    try:
        sent = await _copy_new(chunks, sent, write, finished)
        # The executor closes the log a moment before the final phase is stored; a client
        # reading the build right after the stream ends must find it finished.
        await finished
    finally:
        finished.cancel()
        with contextlib.suppress(asyncio.CancelledError, errors.TriggerdError):
            await finished
    # The build is over (or the follow ended): whatever reached the log since is the end.
    rest = (await read_all())[sent:]
    if rest:
        await write(rest)


async def _copy_new(
    chunks: AsyncIterator[bytes],
    sent: int,
    write: Callable[[bytes], Awaitable[None]],
    finished: asyncio.Future[None],
) -> int:
    """Copy what ``chunks`` yields beyond the first ``sent`` bytes until it ends or
    ``finished`` resolves; return the log offset reached."""
    offset = 0  # position in the log of the next byte ``chunks`` yields
    iterator = aiter(chunks)
    try:
        while not finished.done():
            step: asyncio.Future[bytes] = asyncio.ensure_future(anext(iterator))
            waiting: set[asyncio.Future[Any]] = {step, finished}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                break
            try:
                chunk = step.result()
            except StopAsyncIteration:
                break
            new = chunk[max(0, sent - offset) :]
            offset += len(chunk)
            if new:
                await write(new)
                sent += len(new)
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
    return sent


async def _until_finished(
    engine: Engine, namespace: str, name: str, stopping: asyncio.Event, ended: Callable[[], bool]
) -> None:
    while not ended():
        try:
            build = await engine.store.get_build(namespace, name)
        except errors.NotFound:
            return  # deleted while followed
        if build.phase.terminal:
            return
        await _wait_for_change(engine, stopping)


async def _wait_for_change(engine: Engine, stopping: asyncio.Event) -> None:
    """Until some build changed, shutdown began, or the safety-net poll interval passed."""
    change = asyncio.ensure_future(engine.wait_for_change(FOLLOW_POLL_SECONDS))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({change, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (change, stop):
            task.cancel()
        for task in (change, stop):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _tail(data: bytes, lines: int | None) -> bytes:
    """The last ``lines`` lines of ``data`` (a final line without newline counts)."""
    if lines is None:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


# Route table --------------------------------------------------------------------------------
_LIST_QUERY = (
    Param(name="labelSelector", description="Kubernetes label selector (a=b,c!=d,e in (x,y))."),
    Param(name="limit", description="Page size (0: everything).", type="integer"),
    Param(name="continue", description="metadata.continue of the previous page."),
)
_LOG_QUERY = (
    Param(name="follow", description="Stream until the build finishes.", type="boolean"),
    Param(name="tailLines", description="Only the last N lines.", type="integer"),
    Param(name="previous", description="Accepted; a build has one attempt.", type="boolean"),
)
_BODY_TYPES = tuple(sorted(BODY_TYPES))
_NOT_FOUND = Reply(description="No such object.")
_BAD = Reply(description="Bad request (namespace, query parameter or body syntax).")
_INVALID = Reply(description="Invalid object; details.causes names each field.")
_TOO_LARGE = Reply(description="Body over maxBodyBytes.")
_MEDIA = Reply(description="Unsupported Content-Type.")


def _routes_for(group: str) -> list[Endpoint]:
    base = f"/apis/{group}/v1/namespaces/{{namespace}}"
    suffix = "" if group == GROUPS[0] else "_" + group.split(".")[0]
    tag = "buildconfigs"

    def row(
        method: str,
        path: str,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        operation: str,
        summary: str,
        responses: Mapping[int, Reply],
        **extra: Any,
    ) -> Endpoint:
        return Endpoint(
            method=method,
            path=base + path,
            handler=handler,
            operation_id=operation + suffix,
            summary=summary,
            tag=extra.pop("tag", tag),
            responses={400: _BAD, **responses},
            **extra,
        )

    bc = Reply(description="The BuildConfig.", schema="BuildConfig")
    build = Reply(description="The Build.", schema="Build")
    write_errors = {413: _TOO_LARGE, 415: _MEDIA, 422: _INVALID}
    return [
        row(
            "GET",
            "/buildconfigs",
            list_buildconfigs,
            "listBuildConfigs",
            "List BuildConfigs.",
            {200: Reply(description="The BuildConfigs.", schema="BuildConfigList")},
            query=_LIST_QUERY,
        ),
        row(
            "POST",
            "/buildconfigs",
            create_buildconfig,
            "createBuildConfig",
            "Create a BuildConfig (JSON or YAML).",
            {
                201: bc,
                409: Reply(description="A BuildConfig of that name exists."),
                **write_errors,
            },
            body_types=_BODY_TYPES,
            body_schema="BuildConfig",
            body_required=True,
        ),
        row(
            "GET",
            "/buildconfigs/{name}",
            get_buildconfig,
            "readBuildConfig",
            "Read a BuildConfig.",
            {200: bc, 404: _NOT_FOUND},
        ),
        row(
            "PUT",
            "/buildconfigs/{name}",
            replace_buildconfig,
            "replaceBuildConfig",
            "Replace a BuildConfig; metadata.resourceVersion, when given, must be current.",
            {
                200: bc,
                404: _NOT_FOUND,
                409: Reply(description="metadata.resourceVersion is stale."),
                **write_errors,
            },
            body_types=_BODY_TYPES,
            body_schema="BuildConfig",
            body_required=True,
        ),
        row(
            "DELETE",
            "/buildconfigs/{name}",
            delete_buildconfig,
            "deleteBuildConfig",
            "Delete a BuildConfig and its builds.",
            {200: Reply(description="Status Success."), 404: _NOT_FOUND},
        ),
        row(
            "POST",
            "/buildconfigs/{name}/instantiate",
            instantiate,
            "instantiateBuildConfig",
            "Start a build; the Build is stored before the answer.",
            {
                201: build,
                404: _NOT_FOUND,
                **write_errors,
                503: Reply(description="Queue full."),
            },
            body_types=_BODY_TYPES,
            body_schema="BuildRequest",
        ),
        row(
            "POST",
            "/builds/{name}/clone",
            clone_build,
            "cloneBuild",
            "Start a new build exactly like this one (oc start-build --from-build): its own "
            "spec, revision and labels, a binary build's upload reused; env, build args and "
            "noCache may be added.",
            {
                201: build,
                404: Reply(description="No such build, or its BuildConfig is gone."),
                409: Reply(description="A binary build whose upload is no longer stored."),
                **write_errors,
                503: Reply(description="Queue full."),
            },
            body_types=_BODY_TYPES,
            body_schema="BuildRequest",
            tag="builds",
        ),
        row(
            "GET",
            "/builds",
            list_builds,
            "listBuilds",
            "List Builds.",
            {200: Reply(description="The Builds.", schema="BuildList")},
            query=_LIST_QUERY,
            tag="builds",
        ),
        row(
            "GET",
            "/builds/{name}",
            get_build,
            "readBuild",
            "Read a Build.",
            {200: build, 404: _NOT_FOUND},
            tag="builds",
        ),
        row(
            "PATCH",
            "/builds/{name}",
            patch_build,
            "patchBuild",
            'Cancel a Build with {"status":{"cancelled":true}}.',
            {
                200: build,
                404: _NOT_FOUND,
                409: Reply(description="The build already finished."),
                415: _MEDIA,
                422: Reply(description="The patch changes something else."),
            },
            body_types=tuple(sorted(PATCH_TYPES)),
            body_schema="BuildPatch",
            body_required=True,
            tag="builds",
        ),
        row(
            "DELETE",
            "/builds/{name}",
            delete_build,
            "deleteBuild",
            "Delete a Build (cancelling it first if unfinished) and its log.",
            {200: Reply(description="Status Success."), 404: _NOT_FOUND},
            tag="builds",
        ),
        row(
            "GET",
            "/builds/{name}/log",
            get_log,
            "readBuildLog",
            "The build log; follow=true streams until the build finishes.",
            {
                200: Reply(description="The log.", content_type="text/plain", schema=None),
                404: _NOT_FOUND,
            },
            query=_LOG_QUERY,
            tag="builds",
        ),
    ]


ROUTES: tuple[Endpoint, ...] = tuple(e for group in GROUPS for e in _routes_for(group))
