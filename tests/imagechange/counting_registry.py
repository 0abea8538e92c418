"""A small registry-shaped aiohttp server that counts requests (tests and the benchmark).

It answers ``HEAD``/``GET /v2/<repo>/manifests/<tag>`` from an in-memory tag → manifest
map, optionally behind Basic auth or the Bearer token flow (``GET /token`` issues opaque
tokens with a lifetime and scope), and can be told to fail with 429/503 or to omit
``Docker-Content-Digest``. It stands in for a registry only where the real one cannot do
what a test needs (count every request, expire tokens on demand, fail on command); the
real ``docker-registry`` is used by the e2e tests.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

ACCEPT_ALL = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


@dataclass
class CountingRegistry:
    auth: str = "none"  # none | basic | bearer
    users: dict[str, str] = field(default_factory=dict)
    token_lifetime: int | None = 300
    #: repositories each user may pull (bearer); None: everything
    allowed: dict[str, set[str]] | None = None
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    omit_digest: bool = False
    #: statuses to answer manifest requests with, consumed one per request
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    down: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    accept_seen: set[str] = field(default_factory=set)
    realm: str = ""
    _tokens: dict[str, tuple[float, str, set[str]]] = field(default_factory=dict)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("HEAD", r"/v2/{repo:.+}/manifests/{tag}", self.manifest)
        app.router.add_route("GET", r"/v2/{repo:.+}/manifests/{tag}", self.manifest)
        app.router.add_get("/token", self.token)
        return app

    def push(self, repo: str, tag: str) -> str:
        """Store a fresh manifest under repo:tag; returns its digest."""
        body = json.dumps(
            {"schemaVersion": 2, "n": next(self._serial), "repo": repo, "tag": tag}
        ).encode()
        self.manifests[(repo, tag)] = body
        return digest_of(body)

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def _user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == password else None

    async def token(self, request: web.Request) -> web.Response:
        self.counts[f"token {request.query.get('scope', '')}"] += 1
        self.counts["token"] += 1
        user = self._user(request)
        if request.headers.get("Authorization") and user is None:
            return web.Response(status=401)
        scope = request.query.get("scope", "")
        repo = scope.split(":")[1] if scope.count(":") == 2 else ""
        granted: set[str] = set()
        if self.allowed is None or (user is not None and repo in self.allowed.get(user, set())):
            granted.add(repo)
        value = secrets.token_hex(8)
        lifetime = self.token_lifetime or 60
        self._tokens[value] = (time.monotonic() + lifetime, user or "", granted)
        doc: dict[str, object] = {"token": value}
        if self.token_lifetime is not None:
            doc["expires_in"] = self.token_lifetime
        return web.json_response(doc)

    def _challenge(self, repo: str, error: str = "") -> web.Response:
        if self.auth == "basic":
            value = 'Basic realm="counting"'
        else:
            value = f'Bearer realm="{self.realm}",service="counting",scope="repository:{repo}:pull"'
            if error:
                value += f',error="{error}"'
        return web.Response(status=401, headers={"WWW-Authenticate": value})

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        repo, tag = request.match_info["repo"], request.match_info["tag"]
        self.counts[request.method] += 1
        self.counts[f"{request.method} {repo}:{tag}"] += 1
        self.accept_seen.add(request.headers.get("Accept", ""))
        if self.down:
            return web.Response(status=503)
        if self.failures:
            status, headers = self.failures.pop(0)
            return web.Response(status=status, headers=headers)
        if self.auth == "basic" and self._user(request) is None:
            return self._challenge(repo)
        if self.auth == "bearer":
            header = request.headers.get("Authorization", "")
            token = self._tokens.get(header[7:]) if header.startswith("Bearer ") else None
            if token is None or token[0] < time.monotonic():
                return self._challenge(repo)
            if repo not in token[2]:
                return self._challenge(repo, "insufficient_scope")
        body = self.manifests.get((repo, tag))
        if body is None:
            return web.Response(status=404)
        headers = {"Content-Type": ACCEPT_ALL[3]}
        if not self.omit_digest:
            headers["Docker-Content-Digest"] = digest_of(body)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=body, headers=headers)


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()
