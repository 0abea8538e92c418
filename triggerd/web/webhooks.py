"""Webhook routes: provider deliveries in, durable Builds (or a stated reason) out.

Two kinds of route feed the same flow (read capped body → verify → :mod:`triggerd.intake`
parse → :mod:`triggerd.matching` verdicts → :meth:`triggerd.engine.Engine.start_builds`):
OpenShift's per-BuildConfig URLs (``…/buildconfigs/{name}/webhooks/{secret}/{provider}``,
the URL secret picks the trigger) and org-wide ``/hooks/{provider}`` URLs, which route a
push to every BuildConfig building that repository whose own trigger secret verifies the
delivery. A 201 is sent only after the store committed the builds together with the delivery
id, so a redelivery, even after a restart, answers with the original builds and starts
nothing. Every other outcome is said out loud: a 200 with the reason nothing started, or a
Kubernetes Status error. This module must never let a secret (URL, trigger, bearer) reach a
log line, a response, an error message or a metric label: the request path is never
logged, only its route template, and every verification failure answers the same 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from triggerd import errors, intake, jsoncodec, matching, metrics
from triggerd.engine import Engine, StartRequest
from triggerd.events import Event, GenericTrigger, GitPush, Ping, Provider
from triggerd.intake import bitbucket, signatures
from triggerd.model.buildconfigs import BuildConfig, TriggerType, WebHookTrigger
from triggerd.model.builds import Build
from triggerd.store.base import Delivery
from triggerd.web import ENGINE, SELF_LOGGED, SETTINGS, auth
from triggerd.web import errors as web_errors
from triggerd.web.openapi import Endpoint, Reply

log = logging.getLogger(__name__)
T = TypeVar("T")

GROUPS: Final = ("build.openshift.io", "triggerd.dev")
#: The one message every failed verification gets, whatever failed: unknown BuildConfig,
#: no trigger of the type, wrong URL secret, missing or wrong signature, SHA-1 only.
UNAUTHORIZED: Final = "webhook verification failed"
#: Bitbucket Cloud signs nothing: on the org route its deliveries carry ``?secret=``.
SECRET_QUERY: Final = "secret"  # noqa: S105 - a parameter name, not a secret
#: Bodies above this are parsed and hashed off the event loop, which must keep serving.
_OFFLOAD_BYTES: Final = 1024 * 1024
_READ_CHUNK: Final = 64 * 1024
#: What orjson refuses (a lone surrogate a payload carried, an int over 64 bits) json
#: writes: escaped to ASCII, since an answer's text is sent as UTF-8, which has no form
#: for a lone surrogate.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), default=str)
#: Request-scoped storage key of the lowered headers (see _headers).
_LOWERED_HEADERS: Final = web.RequestKey[Mapping[str, str]]("triggerd.lowered_headers")
_SHOWN_ID_CHARS: Final = 80
#: How many per-config refusals one log line lists (an org ping may try every config).
_LOGGED_REFUSALS: Final = 5

# Metric result labels: a small fixed set, never anything the caller sent.
TRIGGERED: Final = "triggered"
SKIPPED: Final = "skipped"
DUPLICATE: Final = "duplicate"
PING: Final = "ping"
UNAUTHORIZED_RESULT: Final = "unauthorized"
MALFORMED: Final = "malformed"
UNSUPPORTED_EVENT: Final = "unsupported_event"
UNSUPPORTED_MEDIA: Final = "unsupported_media_type"
TOO_LARGE: Final = "too_large"
QUEUE_FULL: Final = "queue_full"
UNAVAILABLE: Final = "unavailable"
FAILED: Final = "error"


class _Refused(errors.BadSignature):
    """A failed verification; ``detail`` is for the server log, the caller sees UNAUTHORIZED."""

    def __init__(self, detail: str) -> None:
        super().__init__(UNAUTHORIZED)
        self.detail = detail


@dataclass(slots=True)
class _Plan:
    """What one delivery asks for, after verification and matching; nothing stored yet."""

    #: the BuildConfigs the delivery proved itself to (their builds may be shown to it)
    allowed: dict[tuple[str, str], BuildConfig] = field(default_factory=dict)
    starts: list[StartRequest] = field(default_factory=list)
    #: per-config reasons nothing started, in the order the configs were looked at
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: Generic options the trigger does not allow, reported back to the caller
    ignored: list[str] = field(default_factory=list)
    pinged: list[BuildConfig] = field(default_factory=list)
    ping: bool = False


# Reading and verifying -----------------------------------------------------------------------
def _headers(request: web.Request) -> Mapping[str, str]:
    """The delivery's headers with lowercased names, made once per request: the parsers
    and verifiers each look headers up lowercased and take these as they are."""
    lowered: Mapping[str, str] | None = request.get(_LOWERED_HEADERS)
    if lowered is None:
        lowered = request[_LOWERED_HEADERS] = intake.lower_keys(request.headers)
    return lowered


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused past ``limit``: on the declared length before reading anything,
    and while reading for chunked bodies, so an endless stream costs at most ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise errors.PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except (HttpProcessingError, ClientPayloadError) as e:
        # A body cut short or with broken chunked framing is the sender's fault, not ours.
        raise errors.MalformedPayload("the request body could not be read completely") from e
    return b"".join(chunks)


async def _maybe_offload(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size > _OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _verify_org(
    provider: Provider,
    body: bytes,
    headers: Mapping[str, str],
    query_secret: str | None,
    secret: str | None,
) -> str | None:
    """None when ``secret`` verifies the delivery on the org route, else why not (for logs).

    ``headers`` have lowercased names (see _headers)."""
    if not secret:
        return "the trigger's secret is not configured"
    try:
        if provider is Provider.GITHUB:
            # Required here: without a signature anyone who knows the repo could post.
            signatures.verify_github_headers(body, headers, secret)
        elif provider is Provider.GITLAB:
            token = headers.get(signatures.GITLAB_TOKEN_HEADER.lower())
            signatures.verify_token(token, secret)
        elif provider is Provider.BITBUCKET:
            signature = headers.get(signatures.BITBUCKET_SERVER_HEADER.lower())
            if signature is not None:
                signatures.verify_bitbucket_server(body, signature, secret)
            elif headers.get(bitbucket.EVENT_HEADER.lower(), "").strip() == bitbucket.CLOUD_PUSH:
                signatures.verify_token(query_secret, secret, name="the secret query parameter")
            else:
                raise errors.BadSignature(f"{signatures.BITBUCKET_SERVER_HEADER} is missing")
        else:
            return "generic deliveries have no org-wide route"
    except errors.BadSignature as e:
        return str(e)
    return None


def _verify_config_route(
    engine: Engine,
    request: web.Request,
    provider: Provider,
    body: bytes,
    hook: WebHookTrigger,
    secret: str,
) -> None:
    """What the per-BuildConfig route checks beyond the URL secret; raises _Refused."""
    headers = request.headers
    try:
        if provider is Provider.GITHUB:
            signed = any(
                headers.get(name) is not None
                for name in (signatures.GITHUB_HEADER, *signatures.GITEA_HEADERS)
            )
            # OpenShift's URL-secret-only deliveries stay valid; a signature sent is checked.
            if signed:
                signatures.verify_github_headers(body, headers, secret)
        elif provider is Provider.GITLAB:
            token = headers.get(signatures.GITLAB_TOKEN_HEADER)
            if token is not None:
                signatures.verify_token(token, secret)
        elif provider is Provider.BITBUCKET:
            signature = headers.get(signatures.BITBUCKET_SERVER_HEADER)
            if signature is not None:
                signatures.verify_bitbucket_server(body, signature, secret)
        else:
            _verify_generic(engine, request, body, hook, secret)
    except errors.BadSignature as e:
        raise _Refused(str(e)) from e


def _verify_generic(
    engine: Engine, request: web.Request, body: bytes, hook: WebHookTrigger, secret: str
) -> None:
    if hook.hmac_header:
        value = request.headers.get(hook.hmac_header, "").strip()
        algorithm, sep, digest = value.partition("=")
        if sep:
            if algorithm.strip().lower() != "sha256":
                raise errors.BadSignature(f"{hook.hmac_header} must be sha256=<hex> or <hex>")
            value = digest
        signatures.verify_gitea(body, value or None, secret, name=hook.hmac_header)
    if hook.bearer_secret_reference:
        expected = engine.named_secret(hook.bearer_secret_reference)
        if not expected:
            # Fail closed: a configured but unresolvable bearer secret must not mean "none".
            raise errors.BadSignature(
                f"bearer secret {hook.bearer_secret_reference!r} is not configured"
            )
        signatures.verify_token(
            auth.presented_token(request), expected, name="the Authorization bearer token"
        )


def _hook_for_url_secret(
    engine: Engine, config: BuildConfig | None, trigger_type: TriggerType, given: str
) -> tuple[WebHookTrigger, str] | None:
    """The trigger whose secret equals the URL's, with that secret; every trigger of the
    type is compared (no early exit) so timing says nothing about which one matched."""
    found: tuple[WebHookTrigger, str] | None = None
    triggers = matching.webhook_triggers(config, trigger_type) if config is not None else []
    if not triggers:
        # Same work as a wrong secret, so an unknown BuildConfig does not answer faster.
        signatures.tokens_equal(given, "x" * max(1, len(given)))
    for trigger in triggers:
        hook = trigger.webhook
        if hook is None:
            continue
        secret = engine.webhook_secret(hook)
        if secret is not None and signatures.tokens_equal(given, secret) and found is None:
            found = (hook, secret)
    return found


# Routing ------------------------------------------------------------------------------------
async def _candidates(
    engine: Engine, provider: Provider, events: Sequence[Event]
) -> list[BuildConfig]:
    """The BuildConfigs whose git uri names the delivery's repository, by key."""
    urls = [
        url
        for event in events
        if not isinstance(event, GenericTrigger)
        for url in event.repository_urls
    ]
    found: dict[tuple[str, str], BuildConfig] = {}
    for config in await engine.configs_for_repository(urls):
        found[(config.namespace, config.name)] = config
    paths = bitbucket.path_candidates(urls)
    org_ping = not urls and any(isinstance(e, Ping) for e in events)
    if paths or org_ping:
        # Host-less Data Center paths and org-level pings name no URL the index knows; scan.
        # (Both are rare; an index of path suffixes would belong in matching.RepoIndex.)
        trigger_type = matching.PROVIDER_TRIGGERS[provider]
        for config in await engine.store.list_buildconfigs():
            if not matching.webhook_triggers(config, trigger_type):
                continue
            git = config.spec.source.git
            normalized = matching.normalize_repo_url(git.uri) if git else None
            if org_ping or (
                normalized and any(bitbucket.path_matches(p, normalized) for p in paths)
            ):
                found.setdefault((config.namespace, config.name), config)
    return list(found.values())


def _skip(config: BuildConfig, reason: str, event: Event | None = None) -> dict[str, str]:
    entry = {"namespace": config.namespace, "buildConfig": config.name, "reason": reason}
    if isinstance(event, GitPush):
        entry["ref"] = event.ref
    return entry


def _plan_push(
    plan: _Plan,
    config: BuildConfig,
    hooks: Sequence[WebHookTrigger],
    push: GitPush,
    trigger_type: TriggerType,
) -> None:
    reasons = []
    for hook in hooks:
        verdict = matching.evaluate_push(config, hook, push)
        if verdict.accepted:
            plan.starts.append(
                StartRequest(
                    namespace=config.namespace,
                    config_name=config.name,
                    request=matching.push_request(push, trigger_type),
                    config=config,
                )
            )
            return
        reasons.append(verdict.reason)
    plan.skipped.append(_skip(config, reasons[0] if reasons else "no trigger matched", push))


def _plan_events(
    plan: _Plan,
    events: Sequence[Event],
    verified: Sequence[tuple[BuildConfig, Sequence[WebHookTrigger]]],
    trigger_type: TriggerType,
) -> None:
    for event in events:
        for config, hooks in verified:
            if isinstance(event, Ping):
                plan.ping = True
                if all(c is not config for c in plan.pinged):
                    plan.pinged.append(config)
            elif isinstance(event, GitPush):
                _plan_push(plan, config, hooks, event, trigger_type)
            else:
                _plan_generic(plan, config, hooks[0], event)


def _plan_generic(
    plan: _Plan, config: BuildConfig, hook: WebHookTrigger, event: GenericTrigger
) -> None:
    plan.ignored.extend(matching.ignored_generic_options(event, hook))
    verdict = matching.evaluate_generic(config, hook, event)
    if not verdict.accepted:
        plan.skipped.append(_skip(config, verdict.reason))
        return
    plan.starts.append(
        StartRequest(
            namespace=config.namespace,
            config_name=config.name,
            request=matching.generic_request(event, hook, verdict.revision),
            config=config,
        )
    )


# The two flows ------------------------------------------------------------------------------
async def _config_delivery(
    request: web.Request, provider: Provider, body: bytes, content_type: str
) -> _Plan:
    """OpenShift's per-BuildConfig URL: the URL secret picks the trigger, then extra checks."""
    engine = request.app[ENGINE]
    namespace = request.match_info["namespace"]
    name = request.match_info["name"]
    trigger_type = matching.PROVIDER_TRIGGERS[provider]
    config: BuildConfig | None
    try:
        config = await engine.store.get_buildconfig(namespace, name)
    except errors.NotFound:
        config = None
    match = _hook_for_url_secret(engine, config, trigger_type, request.match_info["secret"])
    if config is None:
        raise _Refused(f"no buildconfig {namespace}/{name}")
    if match is None:
        raise _Refused(f"no {trigger_type.value} trigger of {namespace}/{name} has that secret")
    hook, secret = match
    _verify_config_route(engine, request, provider, body, hook, secret)
    events = await _maybe_offload(
        len(body), intake.parse_all, provider, _headers(request), body, content_type
    )
    plan = _Plan(allowed={(config.namespace, config.name): config})
    _plan_events(plan, events, [(config, [hook])], trigger_type)
    return plan


async def _org_delivery(
    request: web.Request, provider: Provider, body: bytes, content_type: str
) -> _Plan:
    """``/hooks/{provider}``: every BuildConfig of the repository whose secret verifies."""
    engine = request.app[ENGINE]
    trigger_type = matching.PROVIDER_TRIGGERS[provider]
    # The repository is only in the body, so parsing comes before verification here.
    events = await _maybe_offload(
        len(body), intake.parse_all, provider, _headers(request), body, content_type
    )
    candidates = await _candidates(engine, provider, events)
    query_secret = request.query.get(SECRET_QUERY)
    # One HMAC per distinct secret, however many configs share it (an org hook usually has one).
    outcome: dict[str, str | None] = {}
    verified: list[tuple[BuildConfig, list[WebHookTrigger]]] = []
    refusals: list[str] = []
    for config in candidates:
        hooks = []
        for trigger in matching.webhook_triggers(config, trigger_type):
            if trigger.webhook is None:
                continue
            secret = engine.webhook_secret(trigger.webhook)
            if secret is not None and secret in outcome:
                why = outcome[secret]
            else:
                why = await _maybe_offload(
                    len(body), _verify_org, provider, body, _headers(request), query_secret, secret
                )
                if secret is not None:
                    outcome[secret] = why
            if why is None:
                hooks.append(trigger.webhook)
            else:
                refusals.append(f"{config.namespace}/{config.name}: {why}")
        if hooks:
            verified.append((config, hooks))
    if not verified:
        detail = "; ".join(refusals[:_LOGGED_REFUSALS]) or "no buildconfig builds this repository"
        if len(refusals) > _LOGGED_REFUSALS:
            detail += f"; and {len(refusals) - _LOGGED_REFUSALS} more"
        raise _Refused(detail)
    plan = _Plan(allowed={(c.namespace, c.name): c for c, _ in verified})
    _plan_events(plan, events, verified, trigger_type)
    return plan


# Answers ------------------------------------------------------------------------------------
def _entry(build: Build) -> dict[str, Any]:
    revision = build.spec.revision
    return {
        "namespace": build.namespace,
        "name": build.name,
        "buildConfig": build.config_name,
        "revision": (revision.commit or None) if revision is not None else None,
    }


def _reason(plan: _Plan) -> str:
    if not plan.skipped:
        return "the delivery asked for no build"
    if len(plan.skipped) == 1:
        return plan.skipped[0]["reason"]
    return "; ".join(
        f"{s['namespace']}/{s['buildConfig']}"
        + (f" ({s['ref']})" if "ref" in s else "")
        + f": {s['reason']}"
        for s in plan.skipped
    )


def _delivery_key(
    provider: Provider, delivery_id: str | None, request: web.Request, *, org: bool
) -> str | None:
    if not delivery_id:
        return None  # nothing to recognise a redelivery by: never deduplicated
    if provider is Provider.GENERIC and not org:
        # Generic ids are chosen by each caller, not by a provider that keeps them unique:
        # scope them to the BuildConfig so two callers' "build-1" never collide.
        scope = f"{request.match_info['namespace']}/{request.match_info['name']}"
        return f"{provider.value}:{scope}:{delivery_id}"
    return f"{provider.value}:{delivery_id}"


async def _answer(
    engine: Engine, plan: _Plan, key: str | None, delivery_id: str | None
) -> tuple[web.Response, str]:
    base: dict[str, Any] = {"delivery": delivery_id}
    if plan.ignored:
        base["ignored"] = sorted(set(plan.ignored))
    if plan.ping and not plan.starts:
        configs = [{"namespace": c.namespace, "name": c.name} for c in plan.pinged]
        names = ", ".join(f"{c.namespace}/{c.name}" for c in plan.pinged)
        body = {
            **base,
            "triggered": [],
            "ping": True,
            "buildConfigs": configs,
            "reason": f"ping: pushes would be routed to {names}",
        }
        return _json(body, 200), PING
    if not plan.starts:
        return await _skipped(engine, plan, key, delivery_id, base)
    received = engine.clock()
    delivery = Delivery(key=key, received=received) if key is not None else None
    # Returns only after the commit: the 201 below is a promise the builds exist. A config
    # the engine refuses (binary source: its builds need an upload) is skipped, not failed.
    result = await engine.start_builds(plan.starts, delivery=delivery, skip_refused=True)
    for refused in result.skipped:
        start = refused.start
        config = start.config or plan.allowed.get((start.namespace, start.config_name))
        entry = _skip(config, refused.reason) if config is not None else None
        if entry is not None and entry not in plan.skipped:  # one per config, not per push
            plan.skipped.append(entry)
    if not result.builds and not result.duplicate:
        return await _skipped(engine, plan, key, delivery_id, base)
    if result.duplicate:
        return _duplicate(plan, result.builds, delivery_id, base), DUPLICATE
    body = {**base, "triggered": [_entry(b) for b in result.builds]}
    if plan.skipped:
        body["skipped"] = plan.skipped
    return _json(body, 201), TRIGGERED


async def _skipped(
    engine: Engine, plan: _Plan, key: str | None, delivery_id: str | None, base: dict[str, Any]
) -> tuple[web.Response, str]:
    """The answer when this delivery starts nothing now. A redelivery whose first delivery
    started builds still answers with those (the config may have changed since, so that
    today's evaluation skips): one read by delivery id, only here, never on the path that
    creates builds (there the store's instantiate finds the duplicate in its transaction).
    A delivery that starts nothing is not recorded, deliberately: a write per skipped
    delivery would cost every unmatched push a commit, and a redelivery of it is just
    evaluated again (starting builds if the config now accepts it)."""
    if key is not None:
        recorded = await engine.store.delivered(key)
        if recorded is not None:
            return _duplicate(plan, recorded, delivery_id, base), DUPLICATE
    body = {**base, "triggered": [], "reason": _reason(plan), "skipped": plan.skipped}
    return _json(body, 200), SKIPPED


def _duplicate(
    plan: _Plan, recorded: Sequence[Build], delivery_id: str | None, base: dict[str, Any]
) -> web.Response:
    # Only builds of configs this delivery proved itself to: a colliding id from another
    # tenant must not reveal someone else's builds.
    shown = [b for b in recorded if (b.namespace, b.config_name) in plan.allowed]
    body = {
        **base,
        "triggered": [_entry(b) for b in shown],
        "duplicate": True,
        "reason": f"delivery {delivery_id} was already received; nothing new started",
    }
    return _json(body, 200)


def _json(body: Mapping[str, Any], status: int) -> web.Response:
    # orjson (with json as the fallback for what it refuses): an answer per delivery.
    text = jsoncodec.dumps(body, default=str, fallback=_ENCODER)
    return web.Response(text=text, status=status, content_type="application/json")


def _result_of(error: Exception) -> str:
    if isinstance(error, errors.BadSignature):
        return UNAUTHORIZED_RESULT
    if isinstance(error, errors.UnsupportedEvent):
        return UNSUPPORTED_EVENT
    if isinstance(error, errors.MalformedPayload | errors.BadRequest):
        return MALFORMED
    if isinstance(error, errors.UnsupportedMediaType):
        return UNSUPPORTED_MEDIA
    if isinstance(error, errors.PayloadTooLarge):
        return TOO_LARGE
    if isinstance(error, errors.QueueFull):
        return QUEUE_FULL
    if isinstance(error, errors.TemporaryError):
        return UNAVAILABLE
    return FAILED


def _route(request: web.Request) -> str:
    """The route template (``…/webhooks/{secret}/github``): the path itself holds a secret."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "webhook"


def _shown_id(delivery_id: str | None) -> str:
    if delivery_id is None:
        return "-"
    return repr(delivery_id[:_SHOWN_ID_CHARS])


async def _serve(request: web.Request, provider: Provider, *, org: bool) -> web.Response:
    started = time.perf_counter()
    engine = request.app[ENGINE]
    route = _route(request)
    delivery_id = intake.delivery_id(provider, _headers(request))
    try:
        body = await _read_body(request, request.app[SETTINGS].max_body_bytes)
        content_type = request.headers.get("Content-Type", "")
        flow = _org_delivery if org else _config_delivery
        plan = await flow(request, provider, body, content_type)
        key = _delivery_key(provider, delivery_id, request, org=org)
        response, result = await _answer(engine, plan, key, delivery_id)
    except errors.TriggerdError as e:
        result = _result_of(e)
        metrics.webhook_counter(provider.value, result).inc()
        detail = e.detail if isinstance(e, _Refused) else str(e)
        log.info(
            "%s delivery %s on %s refused (%s): %s",
            provider.value,
            _shown_id(delivery_id),
            route,
            result,
            detail,
        )
        if isinstance(e, errors.BadSignature) and not isinstance(e, _Refused):
            # Whatever raised it, the caller gets the one 401 body; the detail is logged.
            raise _Refused(detail) from e
        raise
    except (web.HTTPException, ConnectionError):
        raise
    except Exception:
        # Answered here rather than by the error middleware, which logs the request path:
        # on these routes the path carries the secret.
        metrics.webhook_counter(provider.value, FAILED).inc()
        log.exception("%s delivery %s on %s failed", provider.value, _shown_id(delivery_id), route)
        return web_errors.internal_error()
    metrics.webhook_counter(provider.value, result).inc()
    # One line per answered delivery (the access log's fields included): at a thousand
    # deliveries a second a second line is a measurable share of the work.
    log.info(
        "%s %s delivery %s on %s: %d %s (%d build(s)) %.3fs",
        request.remote,
        provider.value,
        _shown_id(delivery_id),
        route,
        response.status,
        result,
        len(plan.starts) if result == TRIGGERED else 0,
        time.perf_counter() - started,
    )
    request[SELF_LOGGED] = True
    return response


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _handler(provider: Provider, *, org: bool) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return await _serve(request, provider, org=org)

    where = "org-wide" if org else "per-BuildConfig"
    handle.__name__ = f"{provider.value}_{'org' if org else 'config'}_webhook"
    handle.__doc__ = f"{provider.value} webhook ({where})."
    # Each delivery authenticates itself (URL secret, signature, token), not with an API token.
    return auth.public(handle)


# Route table --------------------------------------------------------------------------------
_NAMES: Mapping[Provider, str] = {
    Provider.GITHUB: "GitHub",
    Provider.GITLAB: "GitLab",
    Provider.BITBUCKET: "Bitbucket",
    Provider.GENERIC: "Generic",
}
_BODY_TYPES: Mapping[Provider, tuple[str, ...]] = {
    Provider.GITHUB: ("application/json", "application/x-www-form-urlencoded"),
    Provider.GITLAB: ("application/json",),
    Provider.BITBUCKET: ("application/json",),
    Provider.GENERIC: (
        "application/json",
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/x-yaml",
    ),
}
_REPLIES: Mapping[int, Reply] = {
    200: Reply(
        description="Nothing started (with the reason), a ping, or a redelivery "
        '("duplicate": true, with the builds the first delivery started).',
        schema=None,
    ),
    201: Reply(description="Builds stored: {triggered: [...], delivery}.", schema=None),
    400: Reply(description="Malformed body, missing event header or unsupported event."),
    401: Reply(description="Verification failed (one message, whatever failed)."),
    413: Reply(description="Body over maxBodyBytes."),
    415: Reply(description="Unsupported Content-Type."),
    429: Reply(description="The build queue is full; see Retry-After."),
    503: Reply(description="Store temporarily unavailable; see Retry-After."),
}
ORG_PROVIDERS: Final = (Provider.GITHUB, Provider.GITLAB, Provider.BITBUCKET)


def _routes() -> Iterable[Endpoint]:
    for group in GROUPS:
        suffix = "" if group == GROUPS[0] else "_" + group.split(".")[0]
        for provider in Provider:
            name = _NAMES[provider]
            yield Endpoint(
                method="POST",
                path=f"/apis/{group}/v1/namespaces/{{namespace}}/buildconfigs/{{name}}"
                f"/webhooks/{{secret}}/{provider.value}",
                handler=_handler(provider, org=False),
                operation_id=f"webhook{name}{suffix}",
                summary=f"{name} webhook of one BuildConfig (OpenShift's URL; the secret in "
                "the path selects the trigger).",
                tag="webhooks",
                body_types=_BODY_TYPES[provider],
                responses=_REPLIES,
            )
    for provider in ORG_PROVIDERS:
        name = _NAMES[provider]
        yield Endpoint(
            method="POST",
            path=f"/hooks/{provider.value}",
            handler=_handler(provider, org=True),
            operation_id=f"orgWebhook{name}",
            summary=f"Org-wide {name} webhook: builds every BuildConfig of the pushed "
            "repository whose trigger secret verifies the delivery.",
            tag="webhooks",
            body_types=_BODY_TYPES[provider],
            responses=_REPLIES,
        )


ROUTES: list[Endpoint] = list(_routes())
