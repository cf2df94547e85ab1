"""The gateway's HTTP surface: health, GraphiQL, request formats and the errors of bad requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.gateway import GraphQL


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: HTTP handling never reaches the database (the suite's
    PostgreSQL time goes where the database matters)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'flowbus.db'}"


async def test_health_and_graphiql(gql: GraphQL) -> None:
    base = gql.url.removesuffix("/graphql")
    assert (await gql.http.get(f"{base}/healthz")).json() == {"status": "ok"}
    ready = await gql.http.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "failing": []}
    page = await gql.http.get(gql.url)
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    # /metrics on the gateway's own port, as on every service's; no API key needed, like health.
    metrics = await gql.http.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert 'flowbus_service_nats_connected{service="gateway"} 1.0' in metrics.text
    wrong = await gql.http.post(f"{base}/metrics")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_variables_as_an_object_or_a_json_string_and_no_errors_key(gql: GraphQL) -> None:
    variants: list[object] = [None, "null", {}, "{}"]
    for variables in variants:
        body = await gql.execute("{ hello api { backend } }", variables)
        assert body == {"data": {"hello": "👋", "api": {"backend": "flowbus"}}}
    # Prefect's default endpoint is the root path.
    root = gql.url.removesuffix("/graphql") + "/"
    response = await gql.http.post(root, json={"query": "{ hello }", "variables": "null"})
    assert response.json() == {"data": {"hello": "👋"}}


@pytest.mark.parametrize(
    ("body", "content"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "GraphQL request"),
        (b'{"query": 42}', "GraphQL request"),
        (b'{"query": "{ hello }", "variables": "{bad"}', "not JSON"),
        (b'{"query": "{ hello }", "variables": [1]}', "JSON object"),
        (b'{"query": "{ hello "}', "Syntax Error"),
        (b'{"query": "{ no_such_field }"}', "no_such_field"),
        (b'{"query": "{ hello(x: 1) }"}', "Unknown argument"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "JSON", id="nested-100000-deep"),
    ],
)
async def test_a_request_that_is_not_graphql_gets_400_and_validation_error(
    gql: GraphQL, body: bytes, content: str
) -> None:
    response = await gql.http.post(gql.url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["VALIDATION_ERROR"] * len(errors)
    assert content in json.dumps(errors)
    # The gateway keeps serving.
    assert (await gql.data("{ hello }")) == {"hello": "👋"}


async def test_oversize_body_and_deep_nesting_are_refused(gql: GraphQL) -> None:
    huge = json.dumps({"query": "{ hello }", "variables": {"x": "a" * (2 * 1024 * 1024)}})
    response = await gql.http.post(gql.url, content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR"

    deep = "{ " + "api { " * 100 + "backend" + " }" * 100 + " }"
    response = await gql.post(deep)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {e["extensions"]["code"] for e in errors} == {"VALIDATION_ERROR"}
    assert any("levels deep" in e["message"] for e in errors)
    assert (await gql.data("{ hello }")) == {"hello": "👋"}
