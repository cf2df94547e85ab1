"""Talking to the gateway over real HTTP in tests: one GraphQL request at a time."""

from __future__ import annotations

import json
from typing import Any

import httpx


class GraphQLError(AssertionError):
    """A response with ``errors`` where data was expected."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(json.dumps(response.get("errors")))
        self.response = response
        self.codes = [e.get("extensions", {}).get("code") for e in response.get("errors", [])]


class GraphQL:
    """A GraphQL endpoint and an HTTP client with connection reuse."""

    def __init__(self, url: str, http: httpx.AsyncClient, key: str | None = None) -> None:
        self.url = url
        self.http = http
        self.key = key

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key if key is not None else self.key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def post(self, query: str, variables: Any = None, *, key: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        return await self.http.post(self.url, json=body, headers=self.headers(key))

    async def execute(self, query: str, variables: Any = None, *, key: str | None = None) -> dict[str, Any]:
        """The whole response body (``data`` and/or ``errors``) of a request answered 200."""
        response = await self.post(query, variables, key=key)
        assert response.status_code == 200, (response.status_code, response.text)
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: Any = None, *, key: str | None = None) -> dict[str, Any]:
        """``data`` of a request that must succeed (no ``errors`` key at all)."""
        body = await self.execute(query, variables, key=key)
        if "errors" in body:
            raise GraphQLError(body)
        result: dict[str, Any] = body["data"]
        return result

    async def error_codes(self, query: str, variables: Any = None, *, key: str | None = None) -> list[str]:
        """The ``extensions.code`` of each error of a request that must fail."""
        body = await self.execute(query, variables, key=key)
        assert "errors" in body, body
        return [e["extensions"]["code"] for e in body["errors"]]
