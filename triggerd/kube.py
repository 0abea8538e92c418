"""Kubernetes plumbing shared by the Job executor, the custom-resource store and the leader.

Settings of Kubernetes mode (:class:`KubernetesSettings`), client construction from a
kubeconfig or the in-cluster service account (:func:`connect`), and :class:`Kube`, a thin
JSON-in/JSON-out layer over kubernetes_asyncio's ``ApiClient`` that maps API Status errors to
:class:`KubeError`, sends merge patches with the right content type and reads
newline-delimited watch streams. The stores kept in custom resources share their start-up
check (:class:`CustomResources`) and their precondition status writes
(:func:`update_status`) from here. It sits at the I/O edge: it knows nothing about builds, and
it must never log a request body (Secrets and tokens pass through it). kubernetes_asyncio
is imported only when a client is made, so :mod:`triggerd.settings` and the CLI can use
:func:`parse_settings` without loading it.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import quote

from triggerd import errors

MERGE_PATCH: Final = "application/merge-patch+json"
#: How long a single non-streaming call may take before it counts as a temporary failure.
CALL_TIMEOUT_SECONDS: Final = 30.0
#: Server-side length of one watch request; the client reconnects (resuming) afterwards.
WATCH_TIMEOUT_SECONDS: Final = 240


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    """Everything Kubernetes mode needs that the BuildConfig does not say (settings key
    ``kubernetes``; see docs/kubernetes.md for the YAML names)."""

    #: where BuildConfig/Build CRs, Jobs, build Secrets and the Lease live
    namespace: str = "triggerd"
    kubeconfig: str | None = None  # None: in-cluster when available, else ~/.kube/config
    context: str | None = None
    #: the image of build pods: triggerd itself plus git and buildah
    image: str = "ghcr.io/triggerd/triggerd:latest"
    image_pull_policy: str = "IfNotPresent"
    #: localhost seccomp profile (relative to the kubelet's seccomp dir) allowing unshare
    seccomp_profile: str = "profiles/triggerd-buildah.json"
    apparmor_unconfined: bool = False
    #: a BuildConfig may ask for a privileged build pod only when this is true
    allow_privileged: bool = False
    storage_size_limit: str = "20Gi"
    ttl_seconds_after_finished: int = 3600
    requests: Mapping[str, str] = field(
        default_factory=lambda: {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"}
    )
    limits: Mapping[str, str] = field(default_factory=lambda: {"memory": "4Gi"})
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: uid the init container fetches the source as: the image's own user (Dockerfile), so
    #: OpenSSH finds it in /etc/passwd ("No user exists for uid ..." otherwise)
    fetch_uid: int = 10001
    insecure_registries: frozenset[str] = frozenset()
    lease_name: str = "triggerd-leader"
    lease_duration_seconds: int = 15
    renew_interval_seconds: float = 5.0
    secret_cache_seconds: float = 30.0


class KubeError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code, ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: AlreadyExists on create, Conflict on a stale resourceVersion."""
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def transient(self) -> bool:
        """No answer, or one that says to try again (throttled, server trouble)."""
        return self.status in TRANSIENT_STATUSES


#: Statuses worth retrying: 0 is "no answer" (connection refused, dropped, timed out).
TRANSIENT_STATUSES: Final = frozenset({0, 429, 500, 502, 503, 504})


class WatchExpired(Exception):
    """The resourceVersion a watch resumed from is too old (410 Gone): relist."""


def to_domain_error(e: KubeError, kind: str, name: str) -> Exception:
    """The triggerd error for an API failure (the web layer turns those into Status)."""
    if e.status == 404:
        return errors.NotFound(kind, name)
    if e.status == 409 and e.reason == "AlreadyExists":
        return errors.AlreadyExists(kind, name)
    if e.status == 409:
        return errors.Conflict(
            f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified'
        )
    if e.transient:
        return errors.TemporaryError(f"Kubernetes API unavailable ({e.status})", 2.0)
    return errors.PermanentError(f"Kubernetes API refused the {kind} {name!r}: {e.message}")


async def connect(settings: KubernetesSettings) -> Any:
    """A kubernetes_asyncio ApiClient from the kubeconfig named in settings, else in-cluster,
    else the default kubeconfig. (Imported here: settings and the CLI import this module
    and must not pay for the client library.)"""
    from kubernetes_asyncio import client as k8s_client
    from kubernetes_asyncio import config as k8s_config

    configuration = k8s_client.Configuration()
    if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        await k8s_config.load_kube_config(
            config_file=settings.kubeconfig,
            context=settings.context,
            client_configuration=configuration,
        )
    return k8s_client.ApiClient(configuration=configuration)


def path_for(api_version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection or object (``/api/v1/...`` or ``/apis/g/v/...``)."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    return base


class Kube:
    """JSON calls against the API server through kubernetes_asyncio (auth, TLS, proxies)."""

    def __init__(self, api: Any = None, *, settings: KubernetesSettings | None = None) -> None:
        """Wrap a kubernetes_asyncio ``ApiClient``, or (``api`` None) connect with
        ``settings`` on the first call, so a composition root that is not async can make
        one."""
        import aiohttp
        from kubernetes_asyncio.client import ApiException

        if api is None and settings is None:
            raise ValueError("Kube needs an ApiClient or the settings to make one")
        self.api = api  # kubernetes_asyncio.client.ApiClient
        self._settings = settings
        self._api_exception: type[Exception] = ApiException
        #: aiohttp's errors (a dropped connection, a cut chunked body, a bad answer) are
        #: no OSError; each of them becomes a KubeError with status 0, so callers that
        #: retry on transient errors see them all
        self._client_error: type[Exception] = aiohttp.ClientError

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()

    async def _client(self) -> Any:
        if self.api is None:
            assert self._settings is not None
            self.api = await connect(self._settings)
        return self.api

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = CALL_TIMEOUT_SECONDS,  # noqa: ASYNC109 - passed to aiohttp
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        api = await self._client()
        try:
            response = await api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except self._api_exception as e:
            status, reason = getattr(e, "status", 0), getattr(e, "reason", "")
            raise KubeError(int(status or 0), str(reason or ""), "request failed") from e
        except (OSError, TimeoutError, self._client_error) as e:
            raise KubeError(0, "Unreachable", type(e).__name__) from e
        return response

    def _broken(self, e: Exception) -> KubeError:
        """The KubeError for a connection that failed while its answer was being read."""
        return KubeError(0, "ConnectionLost", type(e).__name__)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = CALL_TIMEOUT_SECONDS,  # noqa: ASYNC109 - passed to aiohttp
    ) -> dict[str, Any]:
        response = await self._call(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            async with response:
                data = await response.read()
        except (OSError, TimeoutError, self._client_error) as e:
            raise self._broken(e) from e
        await _raise_for_status(response.status, data)
        try:
            doc = json.loads(data) if data else {}
        except ValueError as e:
            raise KubeError(0, "BadResponse", "the answer is not JSON") from e
        return doc if isinstance(doc, dict) else {}

    async def get(
        self,
        path: str,
        *,
        timeout: float | None = CALL_TIMEOUT_SECONDS,  # noqa: ASYNC109 - passed to aiohttp
    ) -> dict[str, Any]:
        return await self.request("GET", path, timeout=timeout)

    async def list(self, path: str, *, label_selector: str = "") -> dict[str, Any]:
        query = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", path, query=query)

    async def create(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout: float | None = CALL_TIMEOUT_SECONDS,  # noqa: ASYNC109 - passed to aiohttp
    ) -> dict[str, Any]:
        return await self.request("POST", path, body=dict(body), timeout=timeout)

    async def replace(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout: float | None = CALL_TIMEOUT_SECONDS,  # noqa: ASYNC109 - passed to aiohttp
    ) -> dict[str, Any]:
        return await self.request("PUT", path, body=dict(body), timeout=timeout)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)

    async def delete(
        self, path: str, *, propagation: str = "Background", resource_version: str = ""
    ) -> dict[str, Any]:
        """Delete with ``propagation`` (the API's default for Jobs is Orphan: their pods
        would stay); with ``resource_version``, only that version of the object (409 when it
        changed since)."""
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation,
        }
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        return await self.request("DELETE", path, body=body)

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str = "",
        timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (type, object) events after ``resource_version`` until the server ends the
        request; raise :class:`WatchExpired` on 410 (as a status code or an ERROR event)."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        response = await self._call("GET", path, query=query, timeout=None)
        async with response:
            if response.status == 410:
                raise WatchExpired(path)
            if not 200 <= response.status <= 299:
                await _raise_for_status(response.status, await self._read_all(response))
            async for line in self._lines(response):
                try:
                    event = json.loads(line)
                except ValueError as e:
                    raise KubeError(0, "BadResponse", "a watch event is not JSON") from e
                if not isinstance(event, dict):
                    raise KubeError(0, "BadResponse", "a watch event is not an object")
                kind = str(event.get("type", ""))
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(path)
                    raise KubeError(
                        int(obj.get("code") or 500),
                        str(obj.get("reason", "")),
                        str(obj.get("message", "")),
                    )
                yield kind, obj

    async def stream(self, path: str, query: Mapping[str, str]) -> AsyncIterator[bytes]:
        """Yield raw chunks of a streaming GET (pod logs with follow)."""
        response = await self._call("GET", path, query=query, timeout=None)
        async with response:
            if not 200 <= response.status <= 299:
                await _raise_for_status(response.status, await self._read_all(response))
            chunks = response.content.iter_any().__aiter__()
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except (OSError, TimeoutError, self._client_error) as e:
                    raise self._broken(e) from e
                yield chunk

    async def _read_all(self, response: Any) -> bytes:
        try:
            data: bytes = await response.read()
        except (OSError, TimeoutError, self._client_error) as e:
            raise self._broken(e) from e
        return data

    async def _lines(self, response: Any) -> AsyncIterator[bytes]:
        """The non-empty lines of a streamed answer; a connection lost in between is a
        KubeError (status 0), so a watcher resumes instead of dying."""
        lines = response.content.__aiter__()
        while True:
            try:
                raw = await lines.__anext__()
            except StopAsyncIteration:
                return
            except (OSError, TimeoutError, self._client_error) as e:
                raise self._broken(e) from e
            line = raw.strip()
            if line:
                yield line


# Custom resources ----------------------------------------------------------------------


async def require_custom_resources(
    kube: Kube, group_version: str, plurals: Iterable[str], namespace: str
) -> None:
    """Check that each of ``plurals`` (of ``group_version``) can be listed in ``namespace``:
    a clear error naming the missing CRD (or RBAC grant) at start instead of 404s later."""
    group = group_version.split("/", 1)[0]
    for plural in plurals:
        try:
            await kube.list(path_for(group_version, plural, namespace))
        except KubeError as e:
            raise errors.PermanentError(
                f"cannot list {plural}.{group} in namespace {namespace!r} "
                f"({e.status} {e.reason}); are the CRDs and RBAC from manifests/ applied?"
            ) from e


class CustomResources:
    """``open``/``close`` of a store kept in custom resources: opening checks that its
    CRDs are installed; the Kube client belongs to the caller, which closes it."""

    #: the group/version and plurals :meth:`open` checks
    CRD_GROUP_VERSION: ClassVar[str]
    CRD_PLURALS: ClassVar[tuple[str, ...]]
    kube: Kube
    #: where lists without a namespace look (the RBAC shipped grants this one only)
    namespace: str

    async def open(self) -> None:
        """Check that the CRDs are installed (a clear error instead of 404s later)."""
        await require_custom_resources(
            self.kube, self.CRD_GROUP_VERSION, self.CRD_PLURALS, self.namespace
        )

    async def close(self) -> None:
        """The Kube client belongs to the caller, which closes it."""


def status_patch(doc: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch writing ``status`` into the object ``doc`` was read as: it carries
    ``doc``'s resourceVersion, so it fails with 409 if the object changed since."""
    return {
        "metadata": {"resourceVersion": doc["metadata"]["resourceVersion"]},
        "status": dict(status),
    }


async def update_status(
    kube: Kube,
    path: str,
    change: Callable[[Mapping[str, Any]], Mapping[str, Any] | None],
    *,
    kind: str,
    name: str,
    attempts: int,
    after_conflict: Callable[[int], Awaitable[None]] | None = None,
) -> bool:
    """Read the object at ``path``, ask ``change`` for the status fields to merge into it
    (None: it is as wanted, nothing is written) and write them through ``/status`` with
    :func:`status_patch`. A 409 (written meanwhile) reads and asks again, after
    ``after_conflict(attempt)`` when given. Returns whether it wrote: False also when the
    object is gone. Other API errors become :func:`to_domain_error`'s for ``kind``/``name``;
    after ``attempts`` lost races, a TemporaryError."""
    for attempt in range(attempts):
        try:
            doc = await kube.get(path)
        except KubeError as e:
            if e.not_found:
                return False
            raise to_domain_error(e, kind, name) from e
        status = change(doc)
        if status is None:
            return False
        try:
            await kube.merge_patch(path + "/status", status_patch(doc, status))
        except KubeError as e:
            if e.conflict:
                if after_conflict is not None:
                    await after_conflict(attempt)
                continue
            if e.not_found:
                return False
            raise to_domain_error(e, kind, name) from e
        return True
    raise errors.TemporaryError(f"{kind} {name!r} keeps changing; retry", 1.0)


async def _raise_for_status(status: int, data: bytes) -> None:
    if 200 <= status <= 299:
        return
    reason, message = "", ""
    try:
        doc = json.loads(data)
        reason = str(doc.get("reason", ""))
        message = str(doc.get("message", ""))
    except (ValueError, AttributeError):
        message = data[:200].decode("utf-8", "replace")
    raise KubeError(status, reason, message)


# Settings --------------------------------------------------------------------------------

_SETTING_NAMES: Final[Mapping[str, tuple[str, type]]] = {
    "namespace": ("namespace", str),
    "kubeconfig": ("kubeconfig", str),
    "context": ("context", str),
    "image": ("image", str),
    "imagePullPolicy": ("image_pull_policy", str),
    "seccompProfile": ("seccomp_profile", str),
    "apparmorUnconfined": ("apparmor_unconfined", bool),
    "allowPrivileged": ("allow_privileged", bool),
    "storageSizeLimit": ("storage_size_limit", str),
    "ttlSecondsAfterFinished": ("ttl_seconds_after_finished", int),
    "requests": ("requests", dict),
    "limits": ("limits", dict),
    "nodeSelector": ("node_selector", dict),
    "fetchUid": ("fetch_uid", int),
    "insecureRegistries": ("insecure_registries", list),
    "leaseName": ("lease_name", str),
    "leaseDurationSeconds": ("lease_duration_seconds", int),
    "renewIntervalSeconds": ("renew_interval_seconds", float),
    "secretCacheSeconds": ("secret_cache_seconds", float),
}


def parse_settings(doc: Any, path: str = "kubernetes") -> KubernetesSettings:
    """The ``kubernetes`` settings block (camelCase keys); Invalid names each bad field."""
    if doc is None:
        return KubernetesSettings()
    problems: list[errors.FieldError] = []
    if not isinstance(doc, Mapping):
        raise errors.Invalid("Settings", path, [errors.FieldError(path, "must be a mapping")])
    values: dict[str, Any] = {}
    for key, value in doc.items():
        spec = _SETTING_NAMES.get(str(key))
        if spec is None:
            problems.append(
                errors.FieldError(
                    f"{path}.{key}", f"unknown setting; known: {', '.join(_SETTING_NAMES)}"
                )
            )
            continue
        attr, kind = spec
        where = f"{path}.{key}"
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(errors.FieldError(where, "must be a non-negative integer"))
        elif kind is float and (not isinstance(value, float) or value <= 0):
            problems.append(errors.FieldError(where, "must be a positive number"))
        elif kind is dict:
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                problems.append(errors.FieldError(where, "must map strings to strings"))
            else:
                values[attr] = dict(value)
            continue
        elif kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(errors.FieldError(where, "must be a list of strings"))
            else:
                values[attr] = frozenset(value)
            continue
        elif kind in (str, bool) and not isinstance(value, kind):
            problems.append(errors.FieldError(where, f"must be a {kind.__name__}"))
        values[attr] = value
    if problems:
        raise errors.Invalid("Settings", path, problems)
    settings = KubernetesSettings(**values)
    if settings.renew_interval_seconds >= settings.lease_duration_seconds:
        raise errors.Invalid(
            "Settings",
            path,
            [
                errors.FieldError(
                    f"{path}.renewIntervalSeconds", "must be below leaseDurationSeconds"
                )
            ],
        )
    return settings
