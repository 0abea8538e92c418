"""The route table type and ``/openapi.json``, generated from the routes actually served.

Each web module lists its routes as :class:`Endpoint` rows (method, path, handler, summary,
parameters, body types, responses) next to the handlers; :func:`add_endpoints` registers the
rows with the router and remembers them, and :func:`document` walks the application's
router, so a route cannot be served without appearing in the document. A route someone
registers without a row still appears, with a minimal description taken from its handler's
docstring. Pure description: it must never change what a route does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

import triggerd
from triggerd.web import auth

JSON = "application/json"
STATUS_REF = "#/components/schemas/Status"


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """A query parameter (path parameters are taken from the path template)."""

    name: str
    description: str
    type: str = "string"  # OpenAPI schema type: string, integer, boolean


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    description: str
    content_type: str = JSON
    #: a name in components.schemas; None: any JSON object, or text for other content types
    schema: str | None = "Status"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One row of a route table: what is served and how it is described."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    query: tuple[Param, ...] = ()
    #: content types accepted for the request body (empty: no body)
    body_types: tuple[str, ...] = ()
    body_schema: str | None = None
    body_required: bool = False
    responses: Mapping[int, Reply] = field(default_factory=dict)


ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("triggerd.endpoints")

#: Descriptions of the path parameters used anywhere in the API.
PATH_PARAMS: Mapping[str, str] = {
    "namespace": "Namespace (an RFC 1123 DNS label).",
    "name": "Object name.",
}

#: Error replies every authenticated route can give.
_COMMON_ERRORS: Mapping[int, Reply] = {
    401: Reply(description="Missing or invalid bearer token."),
    503: Reply(description="Temporarily unavailable; see Retry-After."),
}


def add_endpoints(app: web.Application, endpoints: Iterable[Endpoint]) -> None:
    """Register each row with the router and remember it for the document."""
    rows = app.setdefault(ENDPOINTS, [])
    for endpoint in endpoints:
        app.router.add_route(
            endpoint.method, endpoint.path, endpoint.handler, name=endpoint.operation_id
        )
        rows.append(endpoint)


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3 document of every route the application serves."""
    known = {(e.method, e.path): e for e in app.get(ENDPOINTS, [])}
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        path = route.resource.canonical
        endpoint = known.get((route.method, path))
        operation = (
            _operation(endpoint) if endpoint is not None else _undocumented(route.handler, path)
        )
        if auth.is_public(route.handler):
            operation["security"] = []
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "triggerd",
            "version": triggerd.__version__,
            "description": (
                "The OpenShift Build API (build.openshift.io/v1) for BuildConfigs and Builds, "
                "served by triggerd. Errors are Kubernetes Status objects."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
        "security": [{"bearer": []}],
    }


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS.get(name, name),
            "schema": {"type": "string"},
        }
        for name in re.findall(r"\{([^}:]+)", path)
    ]


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters = _path_parameters(endpoint.path) + [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "description": p.description,
            "schema": {"type": p.type},
        }
        for p in endpoint.query
    ]
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
    }
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body_types:
        schema = _schema_ref(endpoint.body_schema)
        operation["requestBody"] = {
            "required": endpoint.body_required,
            "content": {t: {"schema": schema} for t in endpoint.body_types},
        }
    replies = dict(endpoint.responses)
    if not auth.is_public(endpoint.handler):
        replies = {**_COMMON_ERRORS, **replies}
    operation["responses"] = {str(code): _reply(r) for code, r in sorted(replies.items())}
    return operation


def _undocumented(handler: Handler, path: str) -> dict[str, Any]:
    doc = (getattr(handler, "__doc__", None) or "").strip().splitlines()
    operation: dict[str, Any] = {
        "summary": doc[0] if doc else path,
        "responses": {"default": _reply(Reply(description="See the handler's documentation."))},
    }
    parameters = _path_parameters(path)
    if parameters:
        operation["parameters"] = parameters
    return operation


def _reply(reply: Reply) -> dict[str, Any]:
    if reply.schema:
        schema = _schema_ref(reply.schema)
    else:
        schema = {"type": "object" if reply.content_type == JSON else "string"}
    return {"description": reply.description, "content": {reply.content_type: {"schema": schema}}}


def _schema_ref(name: str | None) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"} if name else {"type": "object"}


def _object(description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": True,
    }


_META = {"$ref": "#/components/schemas/ObjectMeta"}
_SCHEMAS: dict[str, Any] = {
    "ObjectMeta": _object(
        "Kubernetes object metadata.",
        name={"type": "string"},
        namespace={"type": "string"},
        uid={"type": "string"},
        resourceVersion={"type": "string"},
        creationTimestamp={"type": "string", "format": "date-time"},
        labels={"type": "object", "additionalProperties": {"type": "string"}},
        annotations={"type": "object", "additionalProperties": {"type": "string"}},
    ),
    "ListMeta": _object(
        "List metadata.",
        resourceVersion={"type": "string"},
        **{"continue": {"type": "string"}},
    ),
    "BuildConfig": _object(
        "build.openshift.io/v1 BuildConfig.",
        apiVersion={"type": "string"},
        kind={"type": "string"},
        metadata=_META,
        spec={"type": "object"},
        status={"type": "object"},
    ),
    "BuildConfigList": _object(
        "A list of BuildConfigs.",
        apiVersion={"type": "string"},
        kind={"type": "string"},
        metadata={"$ref": "#/components/schemas/ListMeta"},
        items={"type": "array", "items": {"$ref": "#/components/schemas/BuildConfig"}},
    ),
    "Build": _object(
        "build.openshift.io/v1 Build.",
        apiVersion={"type": "string"},
        kind={"type": "string"},
        metadata=_META,
        spec={"type": "object"},
        status={"type": "object"},
    ),
    "BuildList": _object(
        "A list of Builds.",
        apiVersion={"type": "string"},
        kind={"type": "string"},
        metadata={"$ref": "#/components/schemas/ListMeta"},
        items={"type": "array", "items": {"$ref": "#/components/schemas/Build"}},
    ),
    "BuildRequest": _object(
        "build.openshift.io/v1 BuildRequest: overrides for one build.",
        revision={"type": "object"},
        env={"type": "array", "items": {"type": "object"}},
        dockerStrategyOptions={"type": "object"},
        triggeredBy={"type": "array", "items": {"type": "object"}},
    ),
    "BuildPatch": _object(
        'A merge patch; only {"status": {"cancelled": true}} is supported.',
        status=_object("", cancelled={"type": "boolean"}),
    ),
    "Status": _object(
        "Kubernetes Status: the result of a DELETE, or an error.",
        kind={"type": "string"},
        apiVersion={"type": "string"},
        status={"type": "string", "enum": ["Success", "Failure"]},
        message={"type": "string"},
        reason={"type": "string"},
        code={"type": "integer"},
        details=_object(
            "",
            name={"type": "string"},
            kind={"type": "string"},
            causes={
                "type": "array",
                "items": _object(
                    "",
                    field={"type": "string"},
                    message={"type": "string"},
                    reason={"type": "string"},
                ),
            },
        ),
    ),
}


@auth.public
async def serve_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3 document of this server."""
    return web.json_response(document(request.app))


ROUTES = (
    Endpoint(
        method="GET",
        path="/openapi.json",
        handler=serve_openapi,
        operation_id="getOpenAPI",
        summary="This document.",
        tag="meta",
        responses={200: Reply(description="The OpenAPI 3 document.", schema=None)},
    ),
)
