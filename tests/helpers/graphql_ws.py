"""A small client of the graphql-transport-ws protocol for tests, over the ``websockets`` package.

``GraphQLWS.connect(url, payload=...)`` opens the socket, sends
``connection_init`` and waits for ``connection_ack``; ``subscribe()`` starts
an operation whose messages (``next``, ``error``, ``complete``) are read by
id. ``refusal(url, ...)`` connects and returns the close code of a server
that refuses the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

PROTOCOL = Subprotocol("graphql-transport-ws")
# Longest a test waits for one message it expects.
MESSAGE_TIMEOUT = 30.0


class OperationEnded(AssertionError):
    """The operation sent something else than the ``next`` a test expected."""

    def __init__(self, message: dict[str, Any] | None) -> None:
        super().__init__(json.dumps(message))
        self.message = message


class Operation:
    """One subscription (or query) on a connection: its messages in order."""

    def __init__(self, client: GraphQLWS, operation_id: str) -> None:
        self.client = client
        self.id = operation_id
        self.messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # None: the socket closed

    async def message(self) -> dict[str, Any] | None:
        return await asyncio.wait_for(self.messages.get(), MESSAGE_TIMEOUT)

    async def next(self) -> dict[str, Any]:
        """The payload of the next ``next`` message, which must carry data and no errors."""
        message = await self.message()
        if message is None or message["type"] != "next" or "errors" in message["payload"]:
            raise OperationEnded(message)
        payload: dict[str, Any] = message["payload"]["data"]
        return payload

    async def take(self, count: int) -> list[dict[str, Any]]:
        return [await self.next() for _ in range(count)]

    async def until_complete(self) -> list[dict[str, Any]]:
        """Every data payload up to the server's ``complete``."""
        items: list[dict[str, Any]] = []
        while True:
            message = await self.message()
            if message is not None and message["type"] == "complete":
                return items
            if message is None or message["type"] != "next" or "errors" in message["payload"]:
                raise OperationEnded(message)
            items.append(message["payload"]["data"])

    async def error_codes(self) -> list[str]:
        """The codes of the ``error`` message the operation must get next."""
        message = await self.message()
        if message is None or message["type"] != "error":
            raise OperationEnded(message)
        return [e["extensions"]["code"] for e in message["payload"]]

    async def complete(self) -> None:
        """Tell the server to stop the operation."""
        await self.client.send({"id": self.id, "type": "complete"})


class GraphQLWS:
    """One acknowledged graphql-transport-ws connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.operations: dict[str, Operation] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, *, payload: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> AsyncIterator[GraphQLWS]:
        async with connect(url, subprotocols=[PROTOCOL], additional_headers=headers) as ws:
            assert ws.subprotocol == PROTOCOL
            await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
            assert ack["type"] == "connection_ack", ack
            client = cls(ws)
            client._reader = asyncio.create_task(client._read())
            try:
                yield client
            finally:
                client._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._reader

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> Operation:
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        return await self.send_subscribe(payload)

    async def send_subscribe(self, payload: Any) -> Operation:
        """A ``subscribe`` message with any payload, even one that is not a GraphQL request."""
        operation = Operation(self, str(next(self._ids)))
        self.operations[operation.id] = operation
        await self.send({"id": operation.id, "type": "subscribe", "payload": payload})
        return operation

    async def close(self) -> None:
        await self.ws.close()

    async def closed(self) -> int | None:
        """Wait for the server to close the socket; its close code."""
        await asyncio.wait_for(self.ws.wait_closed(), MESSAGE_TIMEOUT)
        return self.ws.close_code

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message.get("type") == "ping":
                    await self.send({"type": "pong"})
                elif message.get("id") in self.operations:
                    self.operations[message["id"]].messages.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            for operation in self.operations.values():
                operation.messages.put_nowait(None)


async def refusal(url: str, *, payload: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> int:
    """The close code of a connection the server refuses at ``connection_init`` (fails if it acknowledges)."""
    async with connect(url, subprotocols=[PROTOCOL], additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
        try:
            reply = await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT)
        except ConnectionClosed:
            code = ws.close_code
        else:
            raise AssertionError(f"the server answered {reply!r} instead of closing")
        assert code is not None
        return code
