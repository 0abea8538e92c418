"""Domain errors → Kubernetes ``Status`` responses; the only place that picks HTTP codes.

Every handler (REST API, health, webhooks) raises :mod:`triggerd.errors` exceptions and the
middleware here answers with a ``Status`` object the way the Kubernetes API server does
(``reason``, ``code``, ``details.causes`` with field paths), so ``oc``/``kubectl``-style
clients and scripts can read it. aiohttp's own HTTP errors (unknown route, wrong method,
body over ``client_max_size``) get the same treatment. It must never send a traceback or an
exception's internals for an unexpected error: those become a 500 "internal error" and go to
the log only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from triggerd import errors
from triggerd.web import metrics as web_metrics

log = logging.getLogger(__name__)

STATUS_API_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class _Mapping:
    code: int
    reason: str


# Most specific first: AlreadyExists is a Conflict, so it must be looked at before it.
_MAPPINGS: tuple[tuple[type[errors.TriggerdError], _Mapping], ...] = (
    (errors.Invalid, _Mapping(422, "Invalid")),
    (errors.NotFound, _Mapping(404, "NotFound")),
    (errors.AlreadyExists, _Mapping(409, "AlreadyExists")),
    (errors.Conflict, _Mapping(409, "Conflict")),
    (errors.MalformedPayload, _Mapping(400, "BadRequest")),
    (errors.BadRequest, _Mapping(400, "BadRequest")),
    (errors.UnsupportedEvent, _Mapping(400, "BadRequest")),
    (errors.Unauthorized, _Mapping(401, "Unauthorized")),
    (errors.BadSignature, _Mapping(401, "Unauthorized")),
    (errors.PayloadTooLarge, _Mapping(413, "RequestEntityTooLarge")),
    (errors.UnsupportedMediaType, _Mapping(415, "UnsupportedMediaType")),
    (errors.QueueFull, _Mapping(429, "TooManyRequests")),
    (errors.TemporaryError, _Mapping(503, "ServiceUnavailable")),
    (errors.PermanentError, _Mapping(500, "InternalError")),
)

# aiohttp raises these itself (routing, client_max_size); Kubernetes names them so.
_HTTP_REASONS: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(
    *,
    code: int,
    reason: str,
    message: str,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A failure ``Status`` document."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": STATUS_API_VERSION,
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


def success(*, name: str, kind: str, group: str, uid: str = "") -> web.Response:
    """The ``Status`` Kubernetes answers a DELETE with."""
    details: dict[str, Any] = {"name": name, "group": group, "kind": kind}
    if uid:
        details["uid"] = uid
    body = {
        "kind": "Status",
        "apiVersion": STATUS_API_VERSION,
        "metadata": {},
        "status": "Success",
        "details": details,
    }
    return web.json_response(body, status=200)


def error_response(error: errors.TriggerdError) -> web.Response:
    """The Status response for a domain error."""
    mapping = next((m for cls, m in _MAPPINGS if isinstance(error, cls)), None)
    if mapping is None:
        # A domain error nobody mapped is a bug in triggerd, not the caller's fault.
        log.error("unmapped domain error %s: %s", type(error).__name__, error)
        return internal_error()
    details: dict[str, Any] = {}
    if isinstance(error, errors.NotFound | errors.AlreadyExists | errors.Invalid):
        details = {"name": error.name, "kind": error.kind}
    if isinstance(error, errors.Invalid):
        details["causes"] = [
            {"field": cause.path, "message": cause.message, "reason": "FieldValueInvalid"}
            for cause in error.causes
        ]
    headers: dict[str, str] = {}
    if isinstance(error, errors.TemporaryError):
        details["retryAfterSeconds"] = _retry_after(error.delay)
        headers["Retry-After"] = str(_retry_after(error.delay))
    if isinstance(error, errors.Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="triggerd"'
    body = status_body(
        code=mapping.code, reason=mapping.reason, message=str(error), details=details
    )
    return web.json_response(body, status=mapping.code, headers=headers)


def http_error_response(error: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx as a Status (keeping headers such as ``Allow``)."""
    code = error.status
    reason = _HTTP_REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    message = error.reason
    if code == 404:
        message = "the server could not find the requested resource"
    elif code == 405:
        message = f"method not allowed; allowed: {error.headers.get('Allow', '')}"
    elif code == 413:
        message = error.text or "request body too large"
    headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "retry-after")}
    body = status_body(code=code, reason=reason, message=message)
    return web.json_response(body, status=code, headers=headers)


def internal_error() -> web.Response:
    body = status_body(code=500, reason="InternalError", message="internal error")
    return web.json_response(body, status=500)


def _retry_after(delay: float) -> int:
    return max(1, math.ceil(delay))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.TriggerdError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects and the like pass through unchanged
        return http_error_response(e)
    except Exception:
        # (Streaming handlers catch their own errors once headers are sent: a status
        # cannot be changed then.)
        # The route template, never the path: webhook paths carry their secret.
        log.exception(
            "unexpected error serving %s %s", request.method, web_metrics.route_label(request)
        )
        return internal_error()
