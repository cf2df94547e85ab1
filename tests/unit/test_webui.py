"""The web UI's files as the gateway serves them: the shell at every page path,
the assets, the security headers, and nothing outside the asset folder."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.applications import Starlette

from flowbus_services.gateway.webui import ASSETS, SECURITY_HEADERS, ui_routes


@pytest.fixture
async def http() -> httpx.AsyncClient:
    app = Starlette(routes=ui_routes())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui.test")


PAGES = [
    "/",
    "/login",
    "/agents",
    "/api-keys",
    "/flow/01a2514c-c0ad-70f3-8afe-f30c34bfc6e2",
    "/flow-run/01a2514c-c0ad-70f3-8afe-f30c34bfc6e2",
    # The links the Prefect 1.x client prints carry the tenant's slug first.
    "/default/flow/01a2514c-c0ad-70f3-8afe-f30c34bfc6e2",
    "/default/flow-run/01a2514c-c0ad-70f3-8afe-f30c34bfc6e2",
]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_path_answers_the_shell_with_its_security_headers(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == (ASSETS / "index.html").read_text()
    assert response.headers["cache-control"] == "no-cache"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]


async def test_the_shell_loads_only_files_that_exist(http: httpx.AsyncClient) -> None:
    shell = (await http.get("/")).text
    assets = re.findall(r'(?:src|href)="(/ui/[^"]+)"', shell)
    assert len(assets) >= 5  # the stylesheet, the icon, two vendored libraries, the app
    for path in assets:
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == SECURITY_HEADERS["content-security-policy"]
    # The app's modules import one another by relative path: each one is served.
    for module in (ASSETS / "js").glob("*.js"):
        for imported in re.findall(r'from "\./([^"]+)"', module.read_text()):
            assert (await http.get(f"/ui/js/{imported}")).status_code == 200, (module.name, imported)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../webui.py",
        "/ui/%2e%2e/webui.py",
        "/ui/js/../../webui.py",
        "/ui/nope.js",
        "/flow",
        "/flow/a/b",
        "/a/b/flow/c",
        "/graphqlx",
    ],
)
async def test_nothing_outside_the_assets_and_no_unknown_page_is_served(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 404, (path, response.text[:200])
    assert "from __future__" not in response.text


async def test_pages_answer_get_and_head_only(http: httpx.AsyncClient) -> None:
    assert (await http.head("/")).status_code == 200
    assert (await http.post("/flow/x")).status_code == 405
    assert (await http.delete("/")).status_code == 405
