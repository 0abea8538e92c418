"""A protocol-level fake Kubernetes API server for the Kubernetes-mode tests (aiohttp).

It speaks the parts of the API that triggerd uses, over real HTTP on 127.0.0.1, so the code
under test goes through kubernetes_asyncio unchanged: namespaced collections under
``/api/v1`` and ``/apis/<group>/<version>`` (plus all-namespace lists), a global
resourceVersion, 201/404/409/410/415/422 answers as ``Status`` objects, label selectors,
``watch=1``/``watch=true`` streams of newline-delimited events honouring
``resourceVersion``, ``timeoutSeconds`` and compaction (410 Gone), ``/status``
subresources, JSON merge patch (other patch types are refused with 415, as the fake cannot
check them), resourceVersion preconditions on PUT and PATCH, DELETE with ``preconditions``
and ``propagationPolicy`` (Background: dependents collected right after; Foreground: before;
Orphan: left without their owner reference — and, as in the real API, the default for
batch/v1 Jobs is Orphan, so their pods stay), owner-reference garbage collection, and pod
logs with ``follow``. Tests can cut every open stream (:meth:`FakeApiServer.drop_streams`)
as a lost connection or a restarting API server would. Requests must carry the bearer token
the server was made with (401 otherwise). It speaks plain HTTP unless given a directory for
TLS files: then it serves HTTPS with a certificate for 127.0.0.1 signed by a throwaway CA
(``ca.crt`` in that directory), as a real API server does for in-cluster clients. It is no
scheduler: tests drive pods through :class:`tests.kubernetes.cluster.Cluster`, which edits
the store directly.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import ipaddress
import json
import re
import ssl
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Obj = dict[str, Any]
Key = tuple[str, str]  # (api version, plural)

#: Resources with a /status subresource: writes to the main resource keep status as is.
STATUS_SUBRESOURCE = frozenset(
    {
        ("batch/v1", "jobs"),
        ("v1", "pods"),
        ("triggerd.dev/v1", "builds"),
        ("triggerd.dev/v1", "buildconfigs"),
        ("triggerd.dev/v1", "imagestreams"),
    }
)
KINDS: Mapping[Key, str] = {
    ("v1", "pods"): "Pod",
    ("v1", "secrets"): "Secret",
    ("v1", "configmaps"): "ConfigMap",
    ("v1", "namespaces"): "Namespace",
    ("batch/v1", "jobs"): "Job",
    ("coordination.k8s.io/v1", "leases"): "Lease",
    ("triggerd.dev/v1", "builds"): "Build",
    ("triggerd.dev/v1", "buildconfigs"): "BuildConfig",
    ("triggerd.dev/v1", "deliveries"): "Delivery",
    ("triggerd.dev/v1", "imagestreams"): "ImageStream",
}
#: the bearer token the fake accepts unless told another one
DEFAULT_TOKEN = "fake-token"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }
    return web.json_response(body, status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


def parse_selector(text: str) -> list[Requirement]:
    parts: list[str] = []
    depth, current = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    reqs: list[Requirement] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", part)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(Requirement(k.strip(), "!=", frozenset({v.strip()})))
        elif "=" in part:
            k, v = re.split(r"==?", part, maxsplit=1)
            reqs.append(Requirement(k.strip(), "=", frozenset({v.strip()})))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:].strip(), "!exists"))
        else:
            reqs.append(Requirement(part, "exists"))
    return reqs


def selects(reqs: Iterable[Requirement], obj: Obj) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(slots=True)
class Event:
    rv: int
    type: str
    key: Key
    namespace: str
    obj: Obj


@dataclass(slots=True)
class Calls:
    """What clients asked for, for assertions (``creates[("batch/v1","jobs")]``)."""

    creates: dict[Key, list[str]] = field(default_factory=dict)
    #: creates refused with 409 AlreadyExists
    create_conflicts: dict[Key, list[str]] = field(default_factory=dict)
    patch_content_types: list[str] = field(default_factory=list)
    watches: int = 0
    gone: int = 0
    #: (key, name, propagationPolicy as sent or "") of every DELETE
    deletes: list[tuple[Key, str, str]] = field(default_factory=list)
    #: paths of every GET of one object (not lists, watches or logs)
    gets: list[str] = field(default_factory=list)
    #: log requests (namespace, pod, container, follow)
    log_requests: list[tuple[str, str, str, bool]] = field(default_factory=list)
    #: open streams the server cut (drop_streams)
    dropped: int = 0


class FakeApiServer:
    def __init__(self, *, token: str = DEFAULT_TOKEN, tls_dir: Path | None = None) -> None:
        """``token``: the only bearer token accepted. ``tls_dir``: serve HTTPS with a
        certificate written there (``ca.crt`` is what clients must trust)."""
        self.token = token
        self.tls_dir = tls_dir
        #: the CA certificate clients verify the server with (TLS mode only)
        self.ca_file: Path | None = None
        self.objects: dict[Key, dict[tuple[str, str], Obj]] = {}
        self.rv = 100
        self.history: list[Event] = []
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.changed = asyncio.Condition()
        self.logs: dict[tuple[str, str, str], bytearray] = {}
        self.log_done: set[tuple[str, str, str]] = set()
        self.calls = Calls()
        #: resources answered with 404 as if their CRD were not installed
        self.unserved: set[Key] = set()
        #: kinds this client's RBAC does not allow: every request answers 403 Forbidden
        self.forbidden: set[Key] = set()
        #: hooks run on create (e.g. the Job controller making a pod); may edit the store
        self.on_create: list[Callable[[Key, Obj], None]] = []
        #: the next N writes to these keys fail with 500 (flaky API)
        self.fail_next: dict[Key, int] = {}
        #: the next N GETs (of objects and lists, not watches) of these keys fail with 500
        self.fail_reads: dict[Key, int] = {}
        #: the next N requests to these keys get their connection closed, no answer at all
        self.abort_next: dict[Key, int] = {}
        #: streaming responses (watches, followed logs) now open
        self._streams: dict[int, web.Request] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/api/v1/{rest:.*}", self._core)
        self.app.router.add_route("*", "/apis/{group}/{version}/{rest:.*}", self._grouped)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    # Lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, shutdown_timeout=0.5)
        await self.runner.setup()
        context: ssl.SSLContext | None = None
        if self.tls_dir is not None:
            self.ca_file, cert_file, key_file = write_tls_files(self.tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert_file, key_file)
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.port = int(port)
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        async with self.changed:
            self.changed.notify_all()
        if self.runner is not None:
            await self.runner.cleanup()

    def write_kubeconfig(self, path: str, namespace: str = "triggerd") -> None:
        cluster: dict[str, str] = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority"] = str(self.ca_file)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)

    # Direct store access (for the cluster simulator and assertions) ------------------------
    def get(self, key: Key, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get(key, {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, key: Key, namespace: str | None = None, selector: str = "") -> list[Obj]:
        reqs = parse_selector(selector)
        return [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self.objects.get(key, {}).items())
            if (namespace is None or ns == namespace) and selects(reqs, o)
        ]

    def put(self, key: Key, obj: Obj) -> Obj:
        """Create or overwrite (no preconditions), recording the event."""
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "")
        bucket = self.objects.setdefault(key, {})
        event = "MODIFIED" if (ns, meta["name"]) in bucket else "ADDED"
        if event == "ADDED":
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        api_version, _ = key
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", KINDS.get(key, ""))
        self._record(event, key, obj)
        bucket[(ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def remove(
        self, key: Key, namespace: str, name: str, *, propagation: str = "Background"
    ) -> Obj | None:
        """Delete now. Dependents: Background (collected right after, as the garbage
        collector does), Foreground (deleted first), Orphan (kept, owner reference gone)."""
        bucket = self.objects.get(key, {})
        obj = bucket.get((namespace, name))
        if obj is None:
            return None
        uid = obj["metadata"].get("uid", "")
        if propagation == "Foreground":
            self._collect_garbage(uid)
        elif propagation == "Orphan":
            self._orphan(uid)
        bucket.pop((namespace, name), None)
        self._record("DELETED", key, obj)
        if propagation == "Background" and uid:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._collect_garbage, uid)
            if not _loop_running():
                self._collect_garbage(uid)
        return obj

    def _orphan(self, uid: str) -> None:
        for key, bucket in list(self.objects.items()):
            for obj in list(bucket.values()):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    obj["metadata"]["ownerReferences"] = [o for o in owners if o.get("uid") != uid]
                    self.put(key, obj)

    def append_log(self, namespace: str, pod: str, container: str, data: bytes) -> None:
        self.logs.setdefault((namespace, pod, container), bytearray()).extend(data)
        self._wake()

    def end_log(self, namespace: str, pod: str, container: str) -> None:
        self.log_done.add((namespace, pod, container))
        self._wake()

    def drop_streams(self) -> int:
        """Cut every open watch and log stream mid-way (no clean end): what a client sees
        when its connection to the API server drops. Returns how many were cut."""
        cut = 0
        for request in list(self._streams.values()):
            if request.transport is not None and not request.transport.is_closing():
                request.transport.abort()
                cut += 1
        self._streams.clear()
        self.calls.dropped += cut
        return cut

    @property
    def open_streams(self) -> int:
        return sum(
            1
            for r in self._streams.values()
            if r.transport is not None and not r.transport.is_closing()
        )

    def compact(self) -> None:
        """Forget history: every watch resuming from an older resourceVersion gets 410."""
        self.compacted = self.rv + 1
        self.history.clear()

    def _record(self, type_: str, key: Key, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        ns = obj["metadata"].get("namespace", "")
        self.history.append(Event(self.rv, type_, key, ns, copy.deepcopy(obj)))
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(notify())

    def _collect_garbage(self, uid: str) -> None:
        if not uid:
            return
        for key, bucket in list(self.objects.items()):
            for (ns, name), obj in list(bucket.items()):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    self.remove(key, ns, name)

    # HTTP ---------------------------------------------------------------------------------
    async def _core(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, "v1", request.match_info["rest"])

    async def _grouped(self, request: web.Request) -> web.StreamResponse:
        api_version = f"{request.match_info['group']}/{request.match_info['version']}"
        return await self._dispatch(request, api_version, request.match_info["rest"])

    async def _dispatch(
        self, request: web.Request, api_version: str, rest: str
    ) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        parts = [p for p in rest.split("/") if p]
        namespace: str | None = None
        if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) > 2:
            namespace, parts = parts[1], parts[2:]
        if not parts:
            return status(404, "NotFound", "the server could not find the requested resource")
        plural, name, sub = parts[0], (parts[1] if len(parts) > 1 else None), parts[2:]
        key = (api_version, plural)
        if key not in KINDS or key in self.unserved:
            return status(404, "NotFound", f"the server could not find {api_version}/{plural}")
        if key in self.forbidden:
            return status(
                403, "Forbidden", f"{plural} is forbidden: User cannot {request.method} {plural}"
            )
        if self.abort_next.get(key):
            self.abort_next[key] -= 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if self.fail_next.get(key) and request.method != "GET":
            self.fail_next[key] -= 1
            return status(500, "InternalError", "injected failure")
        watching = request.query.get("watch") in ("1", "true", "True")
        if self.fail_reads.get(key) and request.method == "GET" and not watching:
            self.fail_reads[key] -= 1
            return status(500, "InternalError", "injected failure")
        method = request.method
        if name is None:
            if method == "GET":
                if request.query.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, key, namespace)
                return self._list(request, key, namespace)
            if method == "POST" and namespace is not None:
                return await self._create(request, key, namespace)
            return status(405, "MethodNotAllowed", f"{method} not allowed on a collection")
        if namespace is None:
            return status(404, "NotFound", "cluster-scoped access is not faked")
        if sub == ["log"] and key == ("v1", "pods") and method == "GET":
            return await self._log(request, namespace, name)
        if sub and sub != ["status"]:
            return status(404, "NotFound", f"no subresource {'/'.join(sub)}")
        subresource = bool(sub)
        if subresource and key not in STATUS_SUBRESOURCE:
            return status(404, "NotFound", f"{plural} has no status subresource")
        if method == "GET":
            self.calls.gets.append(request.path)
            obj = self.get(key, namespace, name)
            if obj is None:
                return self._not_found(key, name)
            return web.json_response(obj)
        if method == "PUT":
            return await self._replace(request, key, namespace, name, subresource)
        if method == "PATCH":
            return await self._patch(request, key, namespace, name, subresource)
        if method == "DELETE":
            return await self._delete(request, key, namespace, name)
        return status(405, "MethodNotAllowed", f"{method} not allowed")

    async def _delete(
        self, request: web.Request, key: Key, namespace: str, name: str
    ) -> web.Response:
        options: Obj = {}
        if request.can_read_body:
            body = await self._body(request)
            if isinstance(body, web.Response):
                return body
            options = body
        sent = str(options.get("propagationPolicy") or "")
        self.calls.deletes.append((key, name, sent))
        if sent not in ("", "Background", "Foreground", "Orphan"):
            return status(400, "BadRequest", f"unknown propagationPolicy {sent!r}")
        # The REST API's default for Jobs is still Orphan (kubectl asks for Background).
        propagation = sent or ("Orphan" if key == ("batch/v1", "jobs") else "Background")
        current = self.get(key, namespace, name)
        if current is None:
            return self._not_found(key, name)
        preconditions = options.get("preconditions") or {}
        wanted_rv = preconditions.get("resourceVersion")
        wanted_uid = preconditions.get("uid")
        if (wanted_rv and str(wanted_rv) != current["metadata"]["resourceVersion"]) or (
            wanted_uid and wanted_uid != current["metadata"].get("uid")
        ):
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[1]} "{name}": the precondition failed',
                name=name,
                kind=key[1],
            )
        obj = self.remove(key, namespace, name, propagation=propagation)
        return web.json_response(obj)

    def _not_found(self, key: Key, name: str) -> web.Response:
        return status(404, "NotFound", f'{key[1]} "{name}" not found', name=name, kind=key[1])

    def _list(self, request: web.Request, key: Key, namespace: str | None) -> web.Response:
        items = self.list(key, namespace, request.query.get("labelSelector", ""))
        return web.json_response(
            {
                "apiVersion": key[0],
                "kind": KINDS[key] + "List",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _body(self, request: web.Request) -> Obj | web.Response:
        try:
            doc = await request.json()
        except ValueError:
            return status(400, "BadRequest", "body is not JSON")
        if not isinstance(doc, dict):
            return status(400, "BadRequest", "body must be an object")
        return doc

    def _invalid(self, key: Key, obj: Obj) -> web.Response | None:
        name = (obj.get("metadata") or {}).get("name", "")
        if not isinstance(name, str) or not _NAME.match(name):
            return status(
                422,
                "Invalid",
                f'{KINDS[key]} "{name}" is invalid: metadata.name: Invalid value',
                name=name,
                kind=KINDS[key],
                causes=[{"field": "metadata.name", "reason": "FieldValueInvalid"}],
            )
        if key == ("batch/v1", "jobs") and len(name) > 63:
            return status(422, "Invalid", "metadata.name: must be no more than 63 characters")
        return None

    async def _create(self, request: web.Request, key: Key, namespace: str) -> web.Response:
        doc = await self._body(request)
        if isinstance(doc, web.Response):
            return doc
        meta = doc.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        if meta["namespace"] != namespace:
            return status(400, "BadRequest", "the namespace of the object does not match")
        invalid = self._invalid(key, doc)
        if invalid is not None:
            return invalid
        name = meta["name"]
        if (namespace, name) in self.objects.get(key, {}):
            self.calls.create_conflicts.setdefault(key, []).append(name)
            return status(
                409,
                "AlreadyExists",
                f'{key[1]} "{name}" already exists',
                name=name,
                kind=key[1],
            )
        meta.pop("resourceVersion", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if key in STATUS_SUBRESOURCE:
            doc.pop("status", None)  # as the API server does when /status is separate
        self.calls.creates.setdefault(key, []).append(name)
        created = self.put(key, doc)
        for hook in list(self.on_create):
            hook(key, copy.deepcopy(created))
        return web.json_response(created, status=201)

    def _precondition(self, key: Key, current: Obj, wanted: Any, name: str) -> web.Response | None:
        if wanted and str(wanted) != current["metadata"]["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[1]} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=name,
                kind=key[1],
            )
        return None

    def _apply(self, key: Key, current: Obj, new: Obj, subresource: bool) -> Obj:
        merged = copy.deepcopy(new)
        if key in STATUS_SUBRESOURCE:
            if subresource:
                # /status changes status only
                merged = copy.deepcopy(current)
                if "status" in new:
                    merged["status"] = new["status"]
                else:
                    merged.pop("status", None)
            elif "status" in current:
                merged["status"] = copy.deepcopy(current["status"])
            else:
                merged.pop("status", None)
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in current["metadata"]:
                merged.setdefault("metadata", {})[fixed] = current["metadata"][fixed]
        merged["apiVersion"], merged["kind"] = current["apiVersion"], current["kind"]
        return merged

    async def _replace(
        self, request: web.Request, key: Key, namespace: str, name: str, subresource: bool
    ) -> web.Response:
        doc = await self._body(request)
        if isinstance(doc, web.Response):
            return doc
        current = self.get(key, namespace, name)
        if current is None:
            return self._not_found(key, name)
        if (doc.get("metadata") or {}).get("name") != name:
            return status(400, "BadRequest", "the name of the object does not match the URL")
        conflict = self._precondition(
            key, current, (doc.get("metadata") or {}).get("resourceVersion"), name
        )
        if conflict is not None:
            return conflict
        return web.json_response(self.put(key, self._apply(key, current, doc, subresource)))

    async def _patch(
        self, request: web.Request, key: Key, namespace: str, name: str, subresource: bool
    ) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        self.calls.patch_content_types.append(content_type)
        if content_type.split(";")[0].strip() != "application/merge-patch+json":
            return status(
                415,
                "UnsupportedMediaType",
                f"the fake API server accepts merge patches only, not {content_type!r}",
            )
        doc = await self._body(request)
        if isinstance(doc, web.Response):
            return doc
        current = self.get(key, namespace, name)
        if current is None:
            return self._not_found(key, name)
        conflict = self._precondition(
            key, current, (doc.get("metadata") or {}).get("resourceVersion"), name
        )
        if conflict is not None:
            return conflict
        patched = merge_patch(current, doc)
        return web.json_response(self.put(key, self._apply(key, current, patched, subresource)))

    async def _watch(
        self, request: web.Request, key: Key, namespace: str | None
    ) -> web.StreamResponse:
        self.calls.watches += 1
        reqs = parse_selector(request.query.get("labelSelector", ""))
        since_text = request.query.get("resourceVersion", "") or "0"
        since = int(since_text)
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        if since and since < self.compacted:
            self.calls.gone += 1
            return status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._streams[id(request)] = request
        # ConnectionResetError: the client went away (a test ended, a watch was abandoned)
        try:
            with contextlib.suppress(ConnectionResetError):
                await self._stream_events(request, response, key, namespace, reqs, since, timeout)
        finally:
            self._streams.pop(id(request), None)
        return response

    async def _stream_events(
        self,
        request: web.Request,
        response: web.StreamResponse,
        key: Key,
        namespace: str | None,
        reqs: builtins.list[Requirement],
        since: int,
        timeout: float,  # noqa: ASYNC109 - the watch's timeoutSeconds
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if since == 0:
            for obj in self.list(key, namespace):
                if selects(reqs, obj):
                    await _send(response, "ADDED", obj)
            since = self.rv
        while True:
            if since < self.compacted:
                # compacted while watching: tell the client as an ERROR event, as etcd does
                await _send(
                    response,
                    "ERROR",
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "Expired", "code": 410, "message": "too old resource version"},
                )  # fmt: skip
                self.calls.gone += 1
                break
            events = [
                e
                for e in self.history
                if e.rv > since and e.key == key and (namespace is None or e.namespace == namespace)
            ]
            for event in events:
                since = event.rv
                if selects(reqs, event.obj):
                    await _send(response, event.type, event.obj)
            remaining = deadline - loop.time()
            if remaining <= 0 or request.transport is None or request.transport.is_closing():
                break
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
        await response.write_eof()

    async def _log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        pod = self.get(("v1", "pods"), namespace, name)
        if pod is None:
            return self._not_found(("v1", "pods"), name)
        container = request.query.get("container", "")
        if not container:
            return status(400, "BadRequest", "a container name must be specified")
        log_key = (namespace, name, container)
        if log_key not in self.logs and log_key not in self.log_done:
            return status(
                400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start'
            )
        follow = request.query.get("follow") in ("true", "1")
        self.calls.log_requests.append((namespace, name, container, follow))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        self._streams[id(request)] = request
        try:
            with contextlib.suppress(ConnectionResetError):
                await self._stream_log(request, response, log_key, follow)
        finally:
            self._streams.pop(id(request), None)
        return response

    async def _stream_log(
        self,
        request: web.Request,
        response: web.StreamResponse,
        log_key: tuple[str, str, str],
        follow: bool,
    ) -> None:
        namespace, name, _ = log_key
        sent = 0
        while True:
            data = bytes(self.logs.get(log_key, b""))
            if len(data) > sent:
                await response.write(data[sent:])
                sent = len(data)
            if not follow or log_key in self.log_done:
                break
            if self.get(("v1", "pods"), namespace, name) is None:
                break
            if request.transport is None or request.transport.is_closing():
                return
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 1.0)
        await response.write_eof()


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it, written to
    ``directory`` as ``ca.crt``, ``server.crt`` and ``server.key``; returns those paths.
    (A CA apart from the server certificate, as a cluster has: clients verify the chain,
    and no client needs to accept a self-signed leaf.)"""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-apiserver-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


async def _send(response: web.StreamResponse, type_: str, obj: Obj) -> None:
    await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
