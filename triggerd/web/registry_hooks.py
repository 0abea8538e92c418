"""``POST /hooks/registry/{kind}``: registry push notifications into image change triggers.

Each delivery is authenticated first — distribution and Harbor by a configured
``Authorization`` header value, Docker Hub and Quay by a token in the URL (``?token=``),
GitHub by its ``X-Hub-Signature-256`` HMAC with the optional shared
``registryNotifications.github.secret`` or the secret of a GitHub trigger of a BuildConfig
that watches images (as GitHub's package webhooks are the same webhooks those triggers
receive) — all compared in constant time. A config's secret is its tenant's, so a delivery
it signs acts only for that config: images it does not watch are ignored, and its digest is
believed for it alone (other watchers act on what a HEAD confirms); only the shared secret
vouches for a delivery to every watcher. The body is then parsed by
:mod:`triggerd.intake.registries` and the pushes of tags something watches are handed to
the image change runtime, which confirms and acts in the background, so every parseable
envelope is answered 202 at once (a push of an image nothing watches says so); only
unauthenticated (401) or unparseable (400/415) ones are refused. With leader election, a
replica that does not lead answers 503 with Retry-After (registries retry; the next
attempt may reach the leader, and polling catches any move anyway). Never logs a token,
header value or signature.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from triggerd import errors
from triggerd.image_events import RegistryKind
from triggerd.imagechange_runtime import ConfigId, ImageChangeRuntime
from triggerd.images import watch_metrics as metrics
from triggerd.intake import registries, signatures
from triggerd.web import SETTINGS, auth
from triggerd.web.api import read_body
from triggerd.web.openapi import Endpoint, Reply

#: The application key under which server.py stores the image change runtime.
IMAGE_CHANGE: web.AppKey[ImageChangeRuntime] = web.AppKey("triggerd.imagechange")

HOOK_KINDS = tuple(k for k in RegistryKind if k is not RegistryKind.POLL)
_HEADER_KINDS = frozenset({RegistryKind.DISTRIBUTION, RegistryKind.HARBOR})
_TOKEN_KINDS = frozenset({RegistryKind.DOCKERHUB, RegistryKind.QUAY})
NOTHING_WATCHES = "nothing watches this image"
NOT_THE_SIGNERS = "the BuildConfig whose secret signed it does not watch this image"
#: headers a GitHub-style delivery is signed in (looked for before any secret is resolved)
_SIGNATURE_HEADERS = frozenset(
    h.lower()
    for h in (signatures.GITHUB_HEADER, signatures.GITHUB_SHA1_HEADER, *signatures.GITEA_HEADERS)
)


def _kind(request: web.Request) -> RegistryKind:
    text = request.match_info["kind"]
    try:
        kind = RegistryKind(text)
    except ValueError:
        kind = RegistryKind.POLL
    if kind is RegistryKind.POLL:
        raise errors.NotFound("registry notification kind", text[:40])
    return kind


def _configured(request: web.Request, kind: RegistryKind) -> dict[str, str]:
    return dict(request.app[SETTINGS].registry_notifications.get(kind.value, {}))


def _check_static(request: web.Request, kind: RegistryKind) -> None:
    config = _configured(request, kind)
    if kind in _HEADER_KINDS:
        expected = config.get("authorization", "")
        if not expected:
            raise errors.BadSignature(
                f"registryNotifications.{kind.value}.authorization is not configured; "
                "notifications of this kind are refused"
            )
        signatures.verify_token(
            request.headers.get("Authorization"), expected, name="Authorization header"
        )
    elif kind in _TOKEN_KINDS:
        expected = config.get("token", "")
        if not expected:
            raise errors.BadSignature(
                f"registryNotifications.{kind.value}.token is not configured; "
                "notifications of this kind are refused"
            )
        signatures.verify_token(request.query.get("token"), expected, name="token parameter")


def github_secrets(
    request: web.Request, runtime: ImageChangeRuntime
) -> list[tuple[str, frozenset[ConfigId] | None]]:
    """Every secret a GitHub delivery may be signed with, each once, with whom it speaks
    for: ``registryNotifications.github.secret`` (when set) first, for everyone (None);
    then each GitHub trigger secret (inline or a named secret) of the configs that watch
    images, for the configs that have that secret. Read from the runtime's index: a
    delivery costs no store read."""
    found: list[tuple[str, frozenset[ConfigId] | None]] = []
    shared = _configured(request, RegistryKind.GITHUB).get("secret", "")
    if shared:
        found.append((shared, None))
    owners: dict[str, set[ConfigId]] = {}
    for ident, hook in runtime.github_signers():
        value = runtime.engine.webhook_secret(hook)
        if value and value != shared:
            owners.setdefault(value, set()).add(ident)
    found.extend((value, frozenset(idents)) for value, idents in owners.items())
    return found


def _require_github_signature(request: web.Request) -> None:
    """Refuse an unsigned GitHub delivery before its body is read or a secret resolved."""
    if _SIGNATURE_HEADERS.isdisjoint(h.lower() for h in request.headers):
        raise errors.BadSignature(f"{signatures.GITHUB_HEADER} is missing")


def _check_github(
    request: web.Request, runtime: ImageChangeRuntime, body: bytes
) -> frozenset[ConfigId] | None:
    """Verify the HMAC before anything in the body is believed; returns whose secret
    signed it: None for the shared secret, else the configs it is the trigger secret of."""
    headers = dict(request.headers)
    candidates = github_secrets(request, runtime)
    if not candidates:
        raise errors.BadSignature(
            "no secret to verify this GitHub delivery: add a GitHub trigger with a secret "
            "to a BuildConfig that watches images (or set registryNotifications.github.secret)"
        )
    failure: errors.BadSignature | None = None
    for candidate, signers in candidates:
        try:
            signatures.verify_github_headers(body, headers, candidate)
            return signers
        except errors.BadSignature as e:
            failure = e
    assert failure is not None
    raise failure


@auth.public
async def receive(request: web.Request) -> web.Response:
    """Accept one registry push notification (authenticated per kind; see module doc)."""
    kind = _kind(request)
    runtime = request.app[IMAGE_CHANGE]
    signers: frozenset[ConfigId] | None = None
    try:
        if kind is RegistryKind.GITHUB:
            _require_github_signature(request)
        else:
            _check_static(request, kind)
        body = await read_body(request)
        if kind is RegistryKind.GITHUB:
            signers = _check_github(request, runtime, body)
        note = registries.parse(kind, dict(request.headers), body, request.content_type)
    except errors.BadSignature:
        metrics.NOTIFICATIONS.labels(kind.value, "unauthorized").inc()
        raise
    except (errors.MalformedPayload, errors.UnsupportedMediaType):
        metrics.NOTIFICATIONS.labels(kind.value, "malformed").inc()
        raise
    if not runtime.is_leader:
        metrics.NOTIFICATIONS.labels(kind.value, "not_leader").inc()
        raise errors.TemporaryError(
            "this replica does not lead; image change triggers act on the leader: retry",
            delay=1.0,
        )
    watched = tuple(p for p in note.pushes if runtime.watches(p.key, signers))
    # Distribution and Harbor are the registry itself, authenticated: their digest is the
    # pushed manifest's; so is GitHub's, for whom the secret speaks (see the module doc).
    # Others name no digest, or one we cannot vouch for: confirm by HEAD.
    trusted = kind in _HEADER_KINDS or kind is RegistryKind.GITHUB
    accepted = runtime.submit(replace(note, pushes=watched), trusted=trusted, signers=signers)
    metrics.NOTIFICATIONS.labels(kind.value, "accepted" if accepted else "ignored").inc()
    message = f"{accepted} tag push(es) accepted, {note.ignored} event(s) ignored"
    if note.pushes and not watched:
        # A config's secret learns nothing about other tenants' watches: whether anyone
        # else watches the image is not said.
        message += f"; {NOTHING_WATCHES if signers is None else NOT_THE_SIGNERS}"
    body_out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Success",
        "message": message,
        "code": 202,
    }
    return web.json_response(body_out, status=202)


ROUTES: list[Endpoint] = [
    Endpoint(
        method="POST",
        path="/hooks/registry/{kind}",
        handler=receive,
        operation_id="receiveRegistryNotification",
        summary="Receive a registry push notification (distribution, harbor, dockerhub, "
        "quay, github).",
        tag="webhooks",
        body_types=(
            "application/json",
            "application/vnd.docker.distribution.events.v1+json",
            "application/vnd.docker.distribution.events.v2+json",
        ),
        body_required=True,
        responses={
            202: Reply(description="Accepted; tag pushes are acted on in the background."),
            400: Reply(description="The body could not be parsed."),
            401: Reply(description="The notification is not authenticated."),
            404: Reply(description="Unknown notification kind."),
            415: Reply(description="Unsupported Content-Type."),
            503: Reply(description="This replica does not lead; retry (Retry-After)."),
        },
    )
]
