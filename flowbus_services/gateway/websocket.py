"""The GraphQL WebSocket on /graphql: the graphql-transport-ws protocol with the gateway's keys and limits.

A client opens a WebSocket with the subprotocol ``graphql-transport-ws`` and
sends ``connection_init``. Its key comes in that message's payload
(``{"Authorization": "Bearer <key>"}``, lower-case ``authorization``, or
either inside ``{"headers": {...}}``) or else in the upgrade request's
Authorization header; a missing or bad key closes the socket with 4403
(Forbidden), without ``connection_ack``. A key deleted while its socket is
open stops the socket's operations and closes it with 4403 at once (the
deletion's event), and each ``subscribe`` checks the key again. Each
operation is checked as an HTTP request is: each root field's permission for the key's role first (FORBIDDEN),
then syntax, schema and depth (VALIDATION_ERROR). A refusal is an ``error``
message whose entries carry the code (``NOT_FOUND`` too, from a
subscription's own checks); otherwise the operation runs: a subscription sends ``next``
messages until it ends (``complete``) or the client sends ``complete``; a
query or mutation sends one ``next``. A message that is not a JSON object of
the protocol closes the socket with 4400, one over ``gateway.max_body_bytes``
with 1009 (too big).

Reads: ``flowbus.evt.api_key.<id>.deleted`` (core NATS) for each open socket's
key. Writes nothing on NATS: the subscriptions' sources read the streams.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ariadne.asgi import GraphQL
from ariadne.asgi.handlers import GraphQLHTTPHandler, GraphQLTransportWSHandler
from ariadne.graphql import validate_data
from graphql import ASTValidationRule, DocumentNode, GraphQLError, GraphQLSchema, parse
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnected, WebSocketState

from flowbus import subjects
from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus_services.gateway.auth import Principal, forbidden_fields
from flowbus_services.gateway.context import Gateway, RequestContext
from flowbus_services.gateway.errors import Code, error, format_error
from flowbus_services.gateway.validation import depth_limit

log = logging.getLogger(__name__)
# ariadne logs every refused operation at ERROR; format_error already logs the
# internal errors with their tracebacks, so its own log stays quiet.
_ariadne_log = logging.getLogger(f"{__name__}.ariadne")
_ariadne_log.setLevel(logging.CRITICAL)

Authenticate = Callable[[Gateway, Mapping[str, str]], Awaitable[Principal | None]]

# Close codes of the protocol (and of RFC 6455 for a message too big).
CLOSE_BAD_MESSAGE = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_BIG = 1009
# The fact of flowbus.evt.api_key.<id>.<fact> that revokes a key.
KEY_DELETED = "deleted"
# What receive_json answers for a frame that is not a JSON object, or too big.
_INVALID = {"type": None}
_TOO_BIG = {"type": "__too_big__"}


class _ProtocolWebSocket(WebSocket):
    """A WebSocket whose messages are JSON objects: anything else becomes a message of no known type."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limits: PayloadLimits) -> None:
        super().__init__(scope, receive, send)
        self.limits = limits

    async def receive_json(self, mode: str = "text") -> Any:
        if self.application_state != WebSocketState.CONNECTED:
            raise WebSocketDisconnected("WebSocket is not connected.")
        message = await self.receive()
        self._raise_on_disconnect(message)
        text = message.get("text")
        if text is None:
            return _INVALID  # a binary frame
        if len(text) > self.limits.max_bytes:
            return _TOO_BIG
        try:
            data = self.limits.loads(text)
        except (ValueError, PayloadRefused):  # its size in UTF-8 past the limit, or nested too deeply
            return _INVALID
        return data if isinstance(data, dict) else _INVALID


def _credentials(websocket: WebSocket, payload: Any) -> dict[str, str]:
    """The Authorization value to check: from connection_init's payload, else the upgrade request's header."""
    found: dict[str, str] = {}
    header = websocket.headers.get("authorization")
    if header:
        found["authorization"] = header
    if isinstance(payload, dict):
        for source in (payload.get("headers"), payload):
            if isinstance(source, dict):
                for name, value in source.items():
                    if isinstance(name, str) and name.lower() == "authorization" and isinstance(value, str):
                        found["authorization"] = value
    return found


class TransportHandler(GraphQLTransportWSHandler):
    """ariadne's graphql-transport-ws handler, with keys checked at connection_init and bad messages refused."""

    def __init__(self, gateway: Gateway, authenticate: Authenticate, max_query_tokens: int) -> None:
        super().__init__()
        self.gateway = gateway
        self.authenticate = authenticate
        self.max_query_tokens = max_query_tokens

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.gateway.settings
        limits = PayloadLimits.of(settings, settings.gateway.max_body_bytes)
        websocket = _ProtocolWebSocket(scope, receive, send, limits)
        await self.handle_websocket(websocket)

    async def handle_websocket_message(
        self, websocket: WebSocket, message: dict[str, Any], client_context: Any
    ) -> None:
        if message is _TOO_BIG:
            await websocket.close(code=CLOSE_TOO_BIG)
            return
        await super().handle_websocket_message(websocket, message, client_context)

    async def _refuse(self, websocket: WebSocket) -> None:
        client = websocket.client.host if websocket.client else "?"
        log.warning("WebSocket from %s refused: no valid API key in connection_init or the upgrade request", client)
        await websocket.close(code=CLOSE_FORBIDDEN, reason="Forbidden: a valid API key is needed")

    async def handle_websocket_connection_init_message(
        self, websocket: WebSocket, message: dict[str, Any], client_context: Any
    ) -> None:
        if client_context.connection_init_received:
            await websocket.close(code=4429)  # too many initialisation requests
            return
        client_context.connection_init_received = True
        credentials = _credentials(websocket, message.get("payload"))
        principal = await self.authenticate(self.gateway, credentials)
        if principal is None:
            await self._refuse(websocket)
            return
        websocket.state.credentials = credentials
        websocket.state.principal = principal
        if principal.key_id is not None:
            websocket.state.revocation = await self._on_revocation(websocket, principal.key_id, client_context)
        await websocket.send_json({"type": self.GQL_CONNECTION_ACK})
        client_context.connection_acknowledged = True

    async def _on_revocation(self, websocket: WebSocket, key_id: str, client_context: Any) -> Subscription:
        """Stop every operation and close the socket (4403) as soon as the connection's key is deleted."""

        async def revoked(_msg: Msg) -> None:
            log.info("closing a WebSocket whose API key (id %s) was revoked", key_id)
            for operation_id in list(client_context.operations):
                await self.stop_websocket_operation(websocket, operation_id, client_context)
            if websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(RuntimeError):  # closed meanwhile by the client
                    await websocket.close(code=CLOSE_FORBIDDEN, reason="Forbidden: the API key was revoked")

        nc = await self.gateway.client.connect()
        return await nc.subscribe(subjects.api_key_event(key_id, KEY_DELETED), cb=revoked)

    async def handle_websocket(self, websocket: WebSocket) -> None:
        try:
            await super().handle_websocket(websocket)
        finally:
            revocation: Subscription | None = getattr(websocket.state, "revocation", None)
            if revocation is not None:
                with contextlib.suppress(NatsError):
                    await revocation.unsubscribe()

    async def handle_websocket_subscribe(
        self, websocket: WebSocket, data: Any, operation_id: str, client_context: Any
    ) -> None:
        if not isinstance(operation_id, str) or not operation_id:
            await websocket.close(code=CLOSE_BAD_MESSAGE)
            return
        if client_context.connection_acknowledged and operation_id not in client_context.operations:
            # The key again: one revoked since connection_init starts nothing more.
            principal = await self.authenticate(self.gateway, websocket.state.credentials)
            if principal is None:
                await self._refuse(websocket)
                return
            websocket.state.principal = principal
            refusal = self._refusal(data, principal)
            if refusal is not None:
                await websocket.send_json({"type": self.GQL_ERROR, "id": operation_id, "payload": [refusal]})
                return
        await super().handle_websocket_subscribe(websocket, data, operation_id, client_context)

    def _refusal(self, data: Any, principal: Principal) -> dict[str, Any] | None:
        """Why the operation may not run before it is validated (as over HTTP): not a GraphQL request,
        or a root field the key's role may not use; None when it may go on."""
        try:
            validate_data(data)  # ariadne would let a malformed payload end the connection
            document = parse(data["query"], max_tokens=self.max_query_tokens)
        except GraphQLError as exc:
            return format_error(exc)
        denied = forbidden_fields(document, data.get("operationName"), principal)
        if denied:
            return error(f"The key's role ({principal.role.value}) may not use: {', '.join(denied)}.", Code.FORBIDDEN)
        return None


def build_websocket_app(
    gateway: Gateway, schema: GraphQLSchema, *, authenticate: Authenticate, max_query_tokens: int
) -> GraphQL:
    """The ASGI app serving the graphql-transport-ws protocol (mount it as a WebSocket route)."""
    depth = depth_limit(gateway.settings.gateway.max_query_depth)

    def context_value(websocket: WebSocket, _data: Any) -> RequestContext:
        return RequestContext(gateway, websocket.state.principal, websocket.headers)

    def query_parser(_context: Any, data: dict[str, Any]) -> DocumentNode:
        return parse(data["query"], max_tokens=max_query_tokens)

    def validation_rules(_context: Any, _doc: DocumentNode, _data: dict[Any, Any]) -> list[type[ASTValidationRule]]:
        return [depth]

    return GraphQL(
        schema,
        context_value=context_value,
        query_parser=query_parser,
        validation_rules=validation_rules,
        error_formatter=format_error,
        logger=_ariadne_log,
        http_handler=GraphQLHTTPHandler(),
        websocket_handler=TransportHandler(gateway, authenticate, max_query_tokens),
    )
