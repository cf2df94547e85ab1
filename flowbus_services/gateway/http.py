"""The gateway's HTTP surface: GraphQL at /graphql (and at / for Prefect's default endpoint), health.

POST /graphql takes ``{"query", "variables", "operationName"}`` as JSON;
``variables`` may also be a JSON-encoded string (the Prefect 1.x client sends
one). Every request but health needs ``Authorization: Bearer <key>``. The
answers:

- 200 with ``data`` (and ``errors`` only when there are some) once the
  operation ran: a refusal carries flowbus's stable code in
  ``errors[].extensions.code``; ``FORBIDDEN`` (a root field the key's role may
  not use) runs nothing;
- 400 with ``errors`` (``VALIDATION_ERROR``) for a request that is not
  GraphQL: not JSON, no ``query``, a syntax error, a query that does not
  validate against the schema or nests too deep (variables of the wrong
  type are found as the operation starts: 200, ``data`` null, the error's
  code ``VALIDATION_ERROR``);
- 401 with ``UNAUTHENTICATED`` for a missing, malformed or unknown key;
- 413 for a body over ``gateway.max_body_bytes``.

A query text is parsed and validated once and then kept (an LRU cache of
``DOCUMENT_CACHE_SIZE`` texts; the schema never changes while the process
lives), then executed by graphql-core against ariadne's executable schema.

GET /graphql serves GraphiQL; a WebSocket on /graphql carries subscriptions;
GET / and the other page paths serve the web UI (webui.py).
GET /healthz answers while the process lives, GET /readyz while NATS and the
database answer. Reads and writes nothing on NATS itself: resolvers do.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ariadne.explorer import ExplorerGraphiQL
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    specified_rules,
    validate,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus_services.gateway.auth import AUTH_OFF, Principal, forbidden_fields
from flowbus_services.gateway.context import Gateway, RequestContext
from flowbus_services.gateway.errors import Code, error, format_error
from flowbus_services.gateway.validation import depth_limit
from flowbus_services.gateway.websocket import build_websocket_app
from flowbus_services.gateway.webui import ui_routes

log = logging.getLogger(__name__)
# Where GraphQL is POSTed: its own path, and the root (Prefect's default endpoint).
GRAPHQL_PATHS = frozenset({"/graphql", "/"})
# Most tokens a query may have: bounds the parser's work whatever the body holds.
MAX_QUERY_TOKENS = 20_000
# Parsed and validated documents kept, by query text: clients send the same few again and again.
DOCUMENT_CACHE_SIZE = 512


@dataclass(frozen=True)
class Prepared:
    """A query parsed and validated once: its document, or the errors that refuse it."""

    document: DocumentNode | None  # None: the text does not parse
    errors: list[dict[str, Any]]  # why it does not parse or validate


class BadRequest(Exception):
    """A request that is not GraphQL: answered 400 (or ``status``) with one error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _errors(status: int, message: str, code: Code) -> JSONResponse:
    return JSONResponse({"errors": [error(message, code)]}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"The request body is over {limit} bytes.", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"The request body is over {limit} bytes.", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def graphql_request(body: bytes, limits: PayloadLimits) -> dict[str, Any]:
    """The body as ``{"query", "variables", "operationName"}``, or BadRequest."""
    try:
        data = limits.loads(body)
    except PayloadRefused as exc:
        raise BadRequest(f"The body's JSON is refused: {exc.message}.") from None
    except ValueError:
        raise BadRequest("The body is not JSON.") from None
    if not isinstance(data, dict) or not isinstance(data.get("query"), str):
        raise BadRequest('Not a GraphQL request: send a JSON object with a "query" string.')
    variables = data.get("variables")
    if isinstance(variables, str):  # the Prefect 1.x client sends them JSON-encoded
        try:
            variables = limits.loads(variables)
        except (ValueError, PayloadRefused):
            raise BadRequest('"variables" is a string but not JSON (or nested too deeply).') from None
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest('"variables" must be a JSON object.')
    operation = data.get("operationName")
    if operation is not None and not isinstance(operation, str):
        raise BadRequest('"operationName" must be a string.')
    return {"query": data["query"], "variables": variables, "operationName": operation}


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(gateway: Gateway, headers: Any) -> Principal | None:
    """The request's principal: from its key, or admin when auth is off; None when refused."""
    if gateway.settings.gateway.auth == "off":
        return AUTH_OFF
    token = bearer_token(headers)
    if token is None or gateway.keys is None:
        return None
    principal: Principal | None = await gateway.keys.verify(token)
    return principal


class GraphQLEndpoint:
    """POST runs a GraphQL request; GET shows GraphiQL."""

    def __init__(self, gateway: Gateway, schema: GraphQLSchema) -> None:
        self.gateway = gateway
        self.schema = schema
        self.rules = [*specified_rules, depth_limit(gateway.settings.gateway.max_query_depth)]
        self.explorer = ExplorerGraphiQL(title="flowbus GraphQL")
        self.documents: OrderedDict[str, Prepared] = OrderedDict()

    def prepare(self, query: str) -> Prepared:
        """Parse and validate ``query`` (against the schema, which never changes), or take it from the cache."""
        prepared = self.documents.get(query)
        if prepared is not None:
            self.documents.move_to_end(query)
            return prepared
        try:
            document = parse(query, max_tokens=MAX_QUERY_TOKENS)
        except GraphQLError as exc:
            prepared = Prepared(None, [format_error(exc)])
        else:
            prepared = Prepared(document, [format_error(e) for e in validate(self.schema, document, self.rules)])
        self.documents[query] = prepared
        if len(self.documents) > DOCUMENT_CACHE_SIZE:
            self.documents.popitem(last=False)
        return prepared

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            html = self.explorer.html(request)
            return HTMLResponse(html if isinstance(html, str) else "")
        try:
            settings = self.gateway.settings
            raw = await read_body(request, settings.gateway.max_body_bytes)
            data = graphql_request(raw, PayloadLimits.of(settings, settings.gateway.max_body_bytes))
        except BadRequest as exc:
            return _errors(exc.status, exc.message, Code.VALIDATION_ERROR)
        principal = await authenticate(self.gateway, request.headers)
        if principal is None:
            return _errors(401, "A valid API key is needed: send Authorization: Bearer <key>.", Code.UNAUTHENTICATED)
        prepared = self.prepare(data["query"])
        document, operation_name = prepared.document, data["operationName"]
        if document is None:
            return JSONResponse({"errors": prepared.errors}, status_code=400)
        # Permissions first: a key learns nothing about fields its role may not use.
        denied = forbidden_fields(document, operation_name, principal)
        if denied:
            message = f"The key's role ({principal.role.value}) may not use: {', '.join(denied)}."
            return _errors(200, message, Code.FORBIDDEN)
        if prepared.errors:
            return JSONResponse({"errors": prepared.errors}, status_code=400)
        if _is_subscription(document, operation_name):
            message = "A subscription needs a WebSocket (graphql-transport-ws) on /graphql."
            return _errors(400, message, Code.VALIDATION_ERROR)
        context = RequestContext(self.gateway, principal, request.headers)
        result = execute(
            self.schema,
            document,
            context_value=context,
            variable_values=data["variables"],
            operation_name=operation_name,
        )
        if inspect.isawaitable(result):
            result = await result
        body: dict[str, Any] = {"data": result.data}
        if result.errors:  # absent, never empty, on success: Prefect's client fails on "errors": []
            body["errors"] = [format_error(e) for e in result.errors]
        # Variables of the wrong type are refused here too, with 200: the request was GraphQL.
        return JSONResponse(body)


def _is_subscription(document: DocumentNode, operation_name: str | None) -> bool:
    return any(
        isinstance(d, OperationDefinitionNode)
        and d.operation is OperationType.SUBSCRIPTION
        and (operation_name is None or (d.name is not None and d.name.value == operation_name))
        for d in document.definitions
    )


def build_http_app(
    gateway: Gateway,
    schema: GraphQLSchema,
    *,
    readiness: Callable[[], Awaitable[list[str]]],
    extra_routes: list[BaseRoute] | None = None,
) -> ASGIApp:
    endpoint = GraphQLEndpoint(gateway, schema)
    subscriptions = build_websocket_app(gateway, schema, authenticate=authenticate, max_query_tokens=MAX_QUERY_TOKENS)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        problems = await readiness()
        body = {"status": "ok" if not problems else "unavailable", "failing": problems}
        return JSONResponse(body, status_code=200 if not problems else 503)

    routes: list[BaseRoute] = [
        Route("/graphql", endpoint.handle, methods=["GET", "POST"]),
        # graphql-transport-ws (flowbus_services.gateway.websocket): subscriptions.
        WebSocketRoute("/graphql", subscriptions),
        # Prefect's default endpoint is the server's root: POST / is GraphQL too.
        Route("/", endpoint.handle, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *(extra_routes or []),
    ]
    if gateway.settings.gateway.ui:
        routes.extend(ui_routes())  # GET / and the page paths; POST / stays GraphQL
    middleware = []
    origins = gateway.settings.gateway.cors_origins
    if origins:
        middleware.append(
            Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
        )
    app = Starlette(routes=routes, middleware=middleware)
    if origins:
        return app

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        # The hot path: a GraphQL POST goes straight to its endpoint, past the
        # router and the error middlewares (which cost a tenth of a request's
        # CPU); handle() answers every outcome itself, so nothing is lost.
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GRAPHQL_PATHS:
            response = await endpoint.handle(Request(scope, receive))
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return serve
