"""Bearer-token authentication of the management API, as an aiohttp middleware.

Every matched route needs ``Authorization: Bearer <token>`` with one of the configured API
tokens, unless its handler is marked with :func:`public`. Routes opt out declaratively: the
health, metrics and OpenAPI handlers are public because they reveal nothing, and webhook
handlers (``/hooks/…``, ``…/webhooks/…``) are public because they authenticate each delivery
themselves (secret in the URL, payload signature). Tokens are compared with
:func:`hmac.compare_digest` against every configured token so the timing does not reveal
which one, or how much of one, matched. It must never log or echo a presented token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from triggerd.errors import Unauthorized

_PUBLIC_ATTRIBUTE = "__triggerd_public__"
F = TypeVar("F", bound=Callable[..., Any])

MISSING = "a bearer token is required (Authorization: Bearer <token>)"
INVALID = "invalid token"


def public(handler: F) -> F:
    """Mark a handler as reachable without a bearer token (it checks the caller itself or
    serves nothing sensitive)."""
    setattr(handler, _PUBLIC_ATTRIBUTE, True)
    return handler


def is_public(handler: object) -> bool:
    return bool(getattr(handler, _PUBLIC_ATTRIBUTE, False))


def presented_token(request: web.Request) -> str | None:
    """The bearer token in the Authorization header, or None when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(token: str, tokens: Iterable[str]) -> bool:
    """Constant-time check of ``token`` against every configured token."""
    presented = token.encode("utf-8")
    matched = False
    for candidate in tokens:
        # No early exit: each comparison costs the same whether or not an earlier one matched.
        matched |= hmac.compare_digest(presented, candidate.encode("utf-8"))
    return matched


def middleware(tokens: Iterable[str]) -> Middleware:
    """The authentication middleware for a fixed set of tokens."""
    known = tuple(tokens)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        match_info = request.match_info
        # Unknown paths and wrong methods fall through to aiohttp's 404/405.
        if match_info.http_exception is not None or is_public(match_info.handler):
            return await handler(request)
        token = presented_token(request)
        if token is None:
            raise Unauthorized(MISSING)
        if not known or not token_matches(token, known):
            raise Unauthorized(INVALID)
        return await handler(request)

    return authenticate
