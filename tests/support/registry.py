"""A real CNCF distribution registry (``docker-registry``, v2) on 127.0.0.1 for tests.

``Registry`` writes a YAML config (filesystem storage in a temp dir, optional htpasswd users,
push notification endpoints, or token auth), starts ``docker-registry serve`` on a free port,
and waits until ``GET /v2/`` answers. ``restart()`` keeps the port and the stored images.
Small synchronous helpers (urllib) read what a test pushed: ``head_digest`` sends an Accept
header listing all four manifest media types, because distribution answers a HEAD for an OCI
manifest or index with 404 unless the client says it accepts that type, and only then does
``Docker-Content-Digest`` carry the digest of what was actually pushed.
"""

from __future__ import annotations

import base64
import enum
import json
import secrets
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import yaml

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess, ProcessDied, wait_for

REGISTRY_BINARY = "docker-registry"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

INSTANCE_HEADER = "X-Triggerd-Test-Registry"
START_TIMEOUT = 20.0
# How often start() picks a new port when the registry could not bind the one it was given
# (another program took it between free_port() and the bind).
BIND_RETRIES = 5


class RegistryError(RuntimeError):
    """The registry answered a helper request with an unexpected status."""


class _Default(enum.Enum):
    AUTH = "default"


DEFAULT_AUTH: Literal[_Default.AUTH] = _Default.AUTH
Auth = tuple[str, str] | None | Literal[_Default.AUTH]


@dataclass(frozen=True)
class NotificationEndpoint:
    """One ``notifications.endpoints`` entry: where the registry POSTs push/pull events.

    Durations are Go duration strings ("500ms", "2s"). A small ``backoff`` makes the
    registry retry a failing test endpoint quickly.
    """

    name: str
    url: str
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    timeout: str = "2s"
    threshold: int = 3
    backoff: str = "250ms"
    ignored_media_types: Sequence[str] = ()
    ignore_actions: Sequence[str] = ()

    def to_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "headers": {key: list(values) for key, values in self.headers.items()},
            "timeout": self.timeout,
            "threshold": self.threshold,
            "backoff": self.backoff,
        }
        if self.ignored_media_types or self.ignore_actions:
            entry["ignore"] = {
                "mediatypes": list(self.ignored_media_types),
                "actions": list(self.ignore_actions),
            }
        return entry


@dataclass(frozen=True)
class TokenAuth:
    """``auth.token``: the registry sends clients to ``realm`` for a JWT signed by a key whose
    certificate is in ``rootcertbundle`` (the file must exist before the registry starts)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.rootcertbundle),
            **self.extra,
        }


@dataclass(frozen=True)
class RegistryConfig:
    """What to put into the generated config beyond storage and the listen address.

    ``htpasswd`` maps user names to plain passwords (hashed with bcrypt when written);
    ``htpasswd`` and ``token`` are mutually exclusive. ``extra`` is merged last, key by key,
    into the generated YAML for anything not covered here.
    """

    htpasswd: Mapping[str, str] | None = None
    notifications: Sequence[NotificationEndpoint] = ()
    token: TokenAuth | None = None
    include_references: bool = True
    log_level: str = "info"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.htpasswd is not None and self.token is not None:
            raise ValueError("a registry takes either htpasswd or token auth, not both")


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def write_htpasswd(users: Mapping[str, str], path: Path) -> Path:
    """Write a bcrypt htpasswd file (the only hash distribution accepts) with ``htpasswd``."""
    lines = []
    for user, password in users.items():
        # -B bcrypt, -b password from argv, -n print instead of editing a file.
        out = subprocess.run(
            ["htpasswd", "-Bbn", user, password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        lines.append(out.strip())
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Registry:
    """One ``docker-registry serve`` process with its own config, storage and log."""

    def __init__(
        self,
        workdir: Path,
        config: RegistryConfig | None = None,
        *,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.workdir = workdir
        self.config = config or RegistryConfig()
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.htpasswd_path = workdir / "htpasswd"
        self.log_path = workdir / "registry.log"
        self.start_timeout = start_timeout
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        # The registry signs upload session state with this; fixed per instance so uploads
        # begun before a restart() are still accepted after it.
        self._http_secret = secrets.token_hex(16)
        self._instance = secrets.token_hex(8)
        self._process: ManagedProcess | None = None
        self.auth: tuple[str, str] | None = None
        if self.config.htpasswd:
            self.auth = next(iter(self.config.htpasswd.items()))

    # --- addresses -------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        """An image reference in this registry, e.g. ``127.0.0.1:PORT/team/app:latest``."""
        return f"{self.host}/{repo}:{tag}"

    # --- lifecycle -------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """The registry configuration as it will be written to ``config_path``."""
        cfg = self.config
        doc: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": cfg.log_level, "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # No background janitor walking the storage while a test inspects it.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # No http.debug section: distribution then opens no debug/metrics listener, so
            # there is no second port to collide with.
            "http": {
                "addr": self.host,
                "secret": self._http_secret,
                # Sent on every response: start() only trusts an answer carrying it, so a
                # different server that grabbed the port cannot pass for this registry.
                "headers": {INSTANCE_HEADER: [self._instance]},
            },
        }
        if cfg.htpasswd is not None:
            doc["auth"] = {"htpasswd": {"realm": "triggerd-tests", "path": str(self.htpasswd_path)}}
        if cfg.token is not None:
            doc["auth"] = {"token": cfg.token.to_config()}
        if cfg.notifications:
            doc["notifications"] = {
                "events": {"includereferences": cfg.include_references},
                "endpoints": [endpoint.to_config() for endpoint in cfg.notifications],
            }
        return _merge(doc, cfg.extra)

    def write_config(self) -> Path:
        """Write the YAML config (and htpasswd file) without starting anything."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.config.htpasswd is not None:
            write_htpasswd(self.config.htpasswd, self.htpasswd_path)
        self.config_path.write_text(yaml.safe_dump(self.config_dict(), sort_keys=False))
        return self.config_path

    def start(self) -> Self:
        """Start the registry and wait until it serves ``/v2/``."""
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError(
                f"{REGISTRY_BINARY} not found: run scripts/install-system-deps.sh as root"
            )
        for attempt in range(BIND_RETRIES):
            self.write_config()
            self._process = ManagedProcess(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                log_path=self.log_path,
                name=f"registry:{self.port}",
            ).start()
            try:
                wait_for(
                    self._answers,
                    timeout=self.start_timeout,
                    what=f"registry answering GET {self.url}/v2/",
                    process=self._process,
                )
                return self
            except ProcessDied:
                lost_port = "address already in use" in self._process.current_log()
                if self._fixed_port or not lost_port or attempt == BIND_RETRIES - 1:
                    raise
                self.port = free_port()
            except BaseException:
                self._process.stop()
                raise
        raise AssertionError("unreachable")

    def _answers(self) -> bool:
        """Whether *this* registry serves /v2/ (and not some other server on our port)."""
        try:
            # Short: a silent squatter on the port must not stall the liveness checks.
            resp = self.request("GET", "/v2/", auth=None, timeout=0.5)
        except (urllib.error.URLError, OSError):
            return False
        # 401 is "ready" too: with htpasswd or token auth /v2/ demands credentials.
        return resp.status in (200, 401) and resp.headers.get(INSTANCE_HEADER) == self._instance

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def restart(self) -> Self:
        """Stop and start again on the same port with the same storage (and config)."""
        self.stop()
        self._fixed_port = True
        return self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def process(self) -> ManagedProcess | None:
        return self._process

    def log_text(self) -> str:
        return self._process.log_text() if self._process is not None else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Registry {self.url} running={self.running}>"

    # --- HTTP helpers ----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        auth: Auth = DEFAULT_AUTH,
        timeout: float = 10.0,
    ) -> Response:
        """One HTTP request to the registry; 4xx/5xx are returned, not raised.

        ``auth`` defaults to the first htpasswd user of this registry (if any); pass None
        for an anonymous request or ``(user, password)`` for someone else.
        """
        credentials = self.auth if auth is DEFAULT_AUTH else auth
        all_headers = dict(headers or {})
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        # self.url is always http://127.0.0.1:PORT, so no other scheme can sneak in.
        req = urllib.request.Request(self.url + path, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Response(int(resp.status), dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Response(int(err.code), dict(err.headers.items()), err.read())

    def _expect(self, response: Response, what: str, *ok: int) -> None:
        if response.status not in ok:
            raise RegistryError(
                f"{what}: HTTP {response.status} from {self.url}: {response.body[:300]!r}"
            )

    def head_digest(self, repo: str, tag: str, *, auth: Auth = DEFAULT_AUTH) -> str | None:
        """The digest a tag points to (as pushed: OCI or Docker, image or index), or None."""
        resp = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            auth=auth,
        )
        if resp.status == 404:
            return None
        self._expect(resp, f"HEAD {repo}:{tag}", 200)
        return resp.headers.get("Docker-Content-Digest")

    def manifest(self, repo: str, reference: str, *, auth: Auth = DEFAULT_AUTH) -> Manifest | None:
        """The manifest (or index) behind a tag or digest, or None if there is none."""
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            auth=auth,
        )
        if resp.status == 404:
            return None
        self._expect(resp, f"GET manifest {repo}:{reference}", 200)
        return Manifest(
            digest=resp.headers.get("Docker-Content-Digest", ""),
            media_type=resp.headers.get("Content-Type", ""),
            body=resp.body,
        )

    def tags(self, repo: str, *, auth: Auth = DEFAULT_AUTH) -> list[str]:
        """The repository's tags ([] when the repository does not exist)."""
        resp = self.request("GET", f"/v2/{repo}/tags/list", auth=auth)
        if resp.status == 404:
            return []
        self._expect(resp, f"tags of {repo}", 200)
        return list(json.loads(resp.body).get("tags") or [])

    def catalog(self, *, auth: Auth = DEFAULT_AUTH) -> list[str]:
        """All repository names in the registry."""
        names: list[str] = []
        while True:
            # 1000 is distribution's default maximum page size (catalog.maxentries).
            last = f"&last={urllib.parse.quote(names[-1])}" if names else ""
            resp = self.request("GET", f"/v2/_catalog?n=1000{last}", auth=auth)
            self._expect(resp, "catalog", 200)
            page = list(json.loads(resp.body).get("repositories") or [])
            names.extend(page)
            if "Link" not in resp.headers or not page:
                return names

    def delete_manifest(self, repo: str, digest: str, *, auth: Auth = DEFAULT_AUTH) -> None:
        """Delete a manifest by digest (which also removes every tag pointing at it)."""
        resp = self.request("DELETE", f"/v2/{repo}/manifests/{digest}", auth=auth)
        self._expect(resp, f"DELETE {repo}@{digest}", 202)


class RegistryFactory:
    """Starts registries with their own config under ``base_dir``; ``stop_all`` ends them."""

    def __init__(
        self, base_dir: Path, *, on_start: Callable[[Registry], None] | None = None
    ) -> None:
        self.base_dir = base_dir
        self.on_start = on_start
        self.started: list[Registry] = []

    def __call__(
        self,
        *,
        htpasswd: Mapping[str, str] | None = None,
        notifications: Sequence[NotificationEndpoint] = (),
        token: TokenAuth | None = None,
        include_references: bool = True,
        log_level: str = "info",
        extra: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> Registry:
        """A new registry (started unless ``start=False``: then only its config is written)."""
        config = RegistryConfig(
            htpasswd=htpasswd,
            notifications=notifications,
            token=token,
            include_references=include_references,
            log_level=log_level,
            extra=extra or {},
        )
        registry = Registry(self.base_dir / f"registry-{len(self.started) + 1}", config)
        # Recorded before starting so stop_all() also covers a start that half failed.
        self.started.append(registry)
        if start:
            registry.start()
            if self.on_start is not None:
                self.on_start(registry)
        else:
            registry.write_config()
        return registry

    def stop_all(self) -> None:
        for registry in self.started:
            registry.stop()
