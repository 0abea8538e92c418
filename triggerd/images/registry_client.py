"""A small registry v2 client: the digest a tag points at now, with registry auth.

Used by the tag watcher and to confirm registry notifications that carry no trusted
digest. ``head_digest`` sends ``HEAD /v2/<repo>/manifests/<tag>`` with an Accept header
listing all four manifest types (so the registry answers with the digest of what was
pushed, index or manifest) and reads ``Docker-Content-Digest``; only when a registry omits
it does it GET the manifest and hash the body. A registry set ``insecure`` is tried over
HTTPS without certificate verification first and, when TLS fails, over plain HTTP (as
containers/image does); the scheme that worked is kept. Auth: anonymous, Basic from a docker config
JSON (``auths``), or the Bearer token flow (401 challenge → token from realm with
service and ``repository:<repo>:pull`` scope), tokens cached per (realm, service, scope)
until shortly before they expire and refreshed on a 401. Failures are typed:
:class:`TemporaryError` (429/5xx/unreachable, with Retry-After), :class:`RegistryAuthError`,
:class:`TagNotFound`. Never logs or reports a credential or token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp

from triggerd.errors import PermanentError, TemporaryError
from triggerd.images import references
from triggerd.images import watch_metrics as metrics

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
#: Docker Hub's API host; image references say docker.io.
DOCKER_HUB_API = "registry-1.docker.io"
#: Used when a token response has no expires_in (the distribution token spec's default).
DEFAULT_TOKEN_SECONDS = 60.0
#: A token is renewed this long before it expires (or at half its life, if shorter).
TOKEN_MARGIN_SECONDS = 10.0
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


class RegistryAuthError(PermanentError):
    """The registry refused our credentials or their scope; the message says which."""


class TagNotFound(PermanentError):
    """The repository or tag does not exist (yet)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    realm: str = ""
    service: str = ""
    error: str = ""


def parse_challenge(value: str) -> Challenge | None:
    """``Bearer realm="…",service="…",scope="…"`` → Challenge (None when unusable)."""
    scheme, _, rest = value.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    kind = scheme.lower()
    if kind not in ("bearer", "basic"):
        return None
    return Challenge(
        scheme=kind,
        realm=params.get("realm", ""),
        service=params.get("service", ""),
        error=params.get("error", ""),
    )


def load_docker_config(path: str | Path) -> dict[str, Credentials]:
    """Registry host → credentials from a docker config JSON's ``auths``.

    Raises PermanentError naming the file (never its content) when it cannot be used;
    ``credHelpers`` / ``credsStore`` entries are refused by name: triggerd does not run
    credential helpers.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PermanentError(f"registry auth file {path} could not be read as JSON") from e
    if not isinstance(doc, Mapping):
        raise PermanentError(f"registry auth file {path} must hold a JSON object")
    result: dict[str, Credentials] = {}
    auths = doc.get("auths") or {}
    if not isinstance(auths, Mapping):
        raise PermanentError(f"registry auth file {path}: auths must be an object")
    for host, entry in auths.items():
        if not isinstance(entry, Mapping):
            continue
        creds = _entry_credentials(entry)
        if creds is not None:
            result[_host_of(str(host))] = creds
    helpers = doc.get("credHelpers")
    if isinstance(helpers, Mapping):
        for host in helpers:
            result.setdefault(_host_of(str(host)), _HELPER)
    if doc.get("credsStore") and not result:
        raise PermanentError(
            f"registry auth file {path} uses credsStore, which triggerd does not support; "
            "put the credentials under auths"
        )
    return result


#: Marks a host whose credentials live in a credential helper (unsupported).
_HELPER = Credentials(username="\x00helper", password="")


def _entry_credentials(entry: Mapping[str, object]) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return Credentials(username=user, password=password) if sep else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str):
        return Credentials(username=name, password=secret)
    return None


def _host_of(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``host:5000`` unchanged."""
    return references.canonical_registry(key.split("://", 1)[-1].split("/", 1)[0])


@dataclass(slots=True)
class _Token:
    value: str
    renew_at: float


class RegistryClient:
    """HEAD digests of tags over one aiohttp session, with auth and a token cache."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        insecure: Callable[[str], bool] = lambda host: False,
        credentials: Callable[[str], Credentials | None] = lambda host: None,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 30.0,
    ) -> None:
        #: None: the client opens its own on first use and closes it in :meth:`close`
        self._given_session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._insecure = insecure
        self._credentials = credentials
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        #: what each host asked for the last time it said 401
        self._challenges: dict[str, Challenge] = {}
        self._probe_locks: dict[str, asyncio.Lock] = {}
        #: insecure registries: the scheme that answered ("https" unverified, or "http")
        self._schemes: dict[str, str] = {}
        self.token_requests = 0

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._given_session is not None:
            return self._given_session
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    async def close(self) -> None:
        """Close the session the client opened itself (a given session is the caller's)."""
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def base_url(self, registry: str) -> str:
        host = DOCKER_HUB_API if registry == references.DOCKER_HUB else registry
        return f"{self._schemes.get(registry, 'https')}://{host}"

    def _ssl(self, registry: str) -> bool:
        """False: TLS without certificate verification (an insecure registry)."""
        return not self._insecure(registry)

    async def head_digest(self, ref: references.ImageReference) -> str:
        """The digest ``ref``'s tag points at now (the index digest for multi-arch images)."""
        tag = ref.tag or "latest"
        path = f"/v2/{ref.repository}/manifests/{tag}"
        if ref.registry not in self._challenges:
            # The first request to a host learns how it authenticates (and, for an insecure
            # one, its scheme); the others wait so that 10,000 tags cost one 401, not 10,000.
            async with self._probe_locks.setdefault(ref.registry, asyncio.Lock()):
                return await self._head(ref, path, retried=False)
        return await self._head(ref, path, retried=False)

    async def _send_head(
        self, registry: str, url: str, headers: Mapping[str, str]
    ) -> tuple[int, str, str, str | None]:
        async with self._session.head(
            url,
            headers=headers,
            timeout=self._timeout,
            allow_redirects=True,
            ssl=self._ssl(registry),
        ) as resp:
            return (
                resp.status,
                resp.headers.get("Docker-Content-Digest", ""),
                resp.headers.get("WWW-Authenticate", ""),
                resp.headers.get("Retry-After"),
            )

    async def _head_somewhere(
        self, ref: references.ImageReference, path: str, headers: Mapping[str, str]
    ) -> tuple[str, tuple[int, str, str, str | None]]:
        """HEAD ``path`` at the registry; an insecure one falls back to plain HTTP."""
        registry = ref.registry
        url = self.base_url(registry) + path
        try:
            answer = await self._send_head(registry, url, headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            fallback = self._insecure(registry) and registry not in self._schemes
            if not fallback:
                raise TemporaryError(
                    f"registry {registry} is unreachable: {type(e).__name__}"
                ) from e
            url = "http://" + url.removeprefix("https://")
            try:
                answer = await self._send_head(registry, url, headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as e2:
                raise TemporaryError(
                    f"registry {registry} is unreachable over HTTPS ({type(e).__name__}) "
                    f"and HTTP ({type(e2).__name__})"
                ) from e2
            self._schemes[registry] = "http"
            return url, answer
        if self._insecure(registry):
            self._schemes.setdefault(registry, url.partition("://")[0])
        return url, answer

    async def _head(self, ref: references.ImageReference, path: str, *, retried: bool) -> str:
        headers = {"Accept": MANIFEST_ACCEPT}
        auth = await self._authorization(ref)
        if auth:
            headers["Authorization"] = auth
        url, (status, digest, challenge_header, retry_after) = await self._head_somewhere(
            ref, path, headers
        )
        if status == 200:
            self._challenges.setdefault(ref.registry, Challenge(scheme="none"))
            if digest:
                return digest
            return await self._get_digest(ref, url, headers)
        if status == 401:
            challenge = parse_challenge(challenge_header) if challenge_header else None
            if challenge is None:
                raise RegistryAuthError(
                    f"registry {ref.registry} answered 401 without a usable WWW-Authenticate"
                )
            known = self._challenges.get(ref.registry)
            self._challenges[ref.registry] = challenge
            if retried or (known == challenge and auth and challenge.scheme == "basic"):
                raise self._auth_error(ref, challenge, status)
            if challenge.scheme == "bearer":
                self._drop_token(ref, challenge)
            elif self._credentials(ref.registry) is None:
                raise self._auth_error(ref, challenge, status)
            return await self._head(ref, path, retried=True)
        if status == 403:
            raise self._auth_error(ref, self._challenges.get(ref.registry), status)
        if status == 404:
            raise TagNotFound(f"{ref} does not exist in the registry")
        if status == 429 or status >= 500:
            raise TemporaryError(
                f"registry {ref.registry} answered {status}", delay=_retry_after(retry_after)
            )
        raise PermanentError(f"registry {ref.registry} answered {status} for a manifest HEAD")

    async def _get_digest(
        self, ref: references.ImageReference, url: str, headers: Mapping[str, str]
    ) -> str:
        try:
            async with self._session.get(
                url, headers=headers, timeout=self._timeout, ssl=self._ssl(ref.registry)
            ) as resp:
                if resp.status != 200:
                    raise TemporaryError(f"registry {ref.registry} answered {resp.status} to GET")
                body = await resp.read()
                digest = resp.headers.get("Docker-Content-Digest", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TemporaryError(
                f"registry {ref.registry} is unreachable: {type(e).__name__}"
            ) from e
        return digest or "sha256:" + hashlib.sha256(body).hexdigest()

    def _auth_error(
        self, ref: references.ImageReference, challenge: Challenge | None, status: int
    ) -> RegistryAuthError:
        creds = self._credentials(ref.registry)
        if creds is _HELPER:
            return RegistryAuthError(
                f"credentials for {ref.registry} are in a credential helper (credHelpers), "
                "which triggerd does not run; put them under auths in the auth file"
            )
        if (challenge is not None and challenge.error == "insufficient_scope") or status == 403:
            return RegistryAuthError(
                f"registry {ref.registry} denied pull access to {ref.repository} "
                f"(insufficient scope for repository:{ref.repository}:pull)"
            )
        who = "anonymous access" if creds is None else f"user {creds.username!r}"
        return RegistryAuthError(f"registry {ref.registry} refused {who} to {ref.repository}")

    async def _authorization(self, ref: references.ImageReference) -> str | None:
        challenge = self._challenges.get(ref.registry)
        if challenge is None or challenge.scheme == "none":
            return None
        creds = self._credentials(ref.registry)
        if creds is _HELPER:
            return None
        if challenge.scheme == "basic":
            return creds.basic() if creds else None
        token = await self._token(ref, challenge, creds)
        return f"Bearer {token}" if token else None

    def _drop_token(self, ref: references.ImageReference, challenge: Challenge) -> None:
        self._tokens.pop(_token_key(ref, challenge), None)

    async def _token(
        self, ref: references.ImageReference, challenge: Challenge, creds: Credentials | None
    ) -> str:
        key = _token_key(ref, challenge)
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached.renew_at:
            return cached.value
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached is not None and self._clock() < cached.renew_at:
                return cached.value
            token, lifetime = await self._fetch_token(ref, challenge, creds)
            margin = min(TOKEN_MARGIN_SECONDS, lifetime / 2)
            self._tokens[key] = _Token(value=token, renew_at=self._clock() + lifetime - margin)
            return token

    async def _fetch_token(
        self, ref: references.ImageReference, challenge: Challenge, creds: Credentials | None
    ) -> tuple[str, float]:
        if not challenge.realm:
            raise RegistryAuthError(
                f"registry {ref.registry} sent a Bearer challenge without realm"
            )
        params = {"scope": f"repository:{ref.repository}:pull"}
        if challenge.service:
            params["service"] = challenge.service
        headers = {"Authorization": creds.basic()} if creds else {}
        self.token_requests += 1
        try:
            async with self._session.get(
                challenge.realm,
                params=params,
                headers=headers,
                timeout=self._timeout,
                # An insecure registry's token service is trusted as little as the registry.
                ssl=self._ssl(ref.registry),
            ) as resp:
                status = resp.status
                text = await resp.text() if status == 200 else ""
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            metrics.TOKEN_REQUESTS.labels("unreachable").inc()
            raise TemporaryError(
                f"token service for {ref.registry} is unreachable: {type(e).__name__}"
            ) from e
        if status in (401, 403):
            metrics.TOKEN_REQUESTS.labels("denied").inc()
            who = "anonymous access" if creds is None else f"user {creds.username!r}"
            raise RegistryAuthError(
                f"the token service of {ref.registry} refused {who} "
                f"(scope repository:{ref.repository}:pull)"
            )
        if status == 429 or status >= 500:
            metrics.TOKEN_REQUESTS.labels("temporary_error").inc()
            raise TemporaryError(f"token service for {ref.registry} answered {status}")
        if status != 200:
            metrics.TOKEN_REQUESTS.labels("error").inc()
            raise RegistryAuthError(f"token service for {ref.registry} answered {status}")
        try:
            doc = json.loads(text)
        except ValueError as e:
            metrics.TOKEN_REQUESTS.labels("error").inc()
            raise RegistryAuthError(f"token service for {ref.registry} sent no JSON") from e
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            metrics.TOKEN_REQUESTS.labels("error").inc()
            raise RegistryAuthError(f"token service for {ref.registry} sent no token")
        expires = doc.get("expires_in")
        lifetime = (
            float(expires)
            if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0
            else DEFAULT_TOKEN_SECONDS
        )
        metrics.TOKEN_REQUESTS.labels("ok").inc()
        return token, lifetime


def _token_key(ref: references.ImageReference, challenge: Challenge) -> tuple[str, str, str]:
    return (challenge.realm, challenge.service, f"repository:{ref.repository}:pull")


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())
