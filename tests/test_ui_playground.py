"""`/ui/playground`: the server-rendered page (auth, CSP, the routes offered, prefilling).

The page's script is exercised by a real browser in tests/test_ui_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.proxy.routes import presented_secret
from ponder.strategies.registry import default_registry
from tests.conftest import MODEL, asgi_client, scripted


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def get(settings: Settings, url: str, **headers: str) -> httpx.Response:
    app = create_app(settings, backend=scripted(["x"]))
    async with asgi_client(app) as client:
        return await client.get(url, headers=headers)


def checkbox(page: str, slug: str) -> str:
    found = re.search(rf'<input type="checkbox" name="route" value="{re.escape(slug)}"[^>]*>', page)
    assert found, slug
    return found.group(0)


async def test_the_page_offers_every_route_and_the_models() -> None:
    response = await get(Settings(), "/ui/playground")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    registry = default_registry()
    strategies = page.split('id="strategies"')[1].split("</fieldset>")[0]
    plugins = page.split('id="plugins"')[1].split("</fieldset>")[0]
    for slug in registry.slugs:
        assert f'value="{slug}"' in (plugins if registry.is_plugin(slug) else strategies), slug
    assert 'value="sc"' in strategies and 'value="spl"' in plugins
    assert "checked" in checkbox(page, "none")  # the plain model is ticked by default
    assert "checked" not in checkbox(page, "sc")
    assert f'<option value="{MODEL}">{MODEL}</option>' in page
    assert '<b id="tenant">default</b>' in page
    assert 'data-key=""' in page  # an open server: the script sends no key
    assert 'data-ask="0"' in page
    assert '<button type="submit" id="ask">Ask</button>' in page


async def test_the_csp_allows_only_the_pages_own_script() -> None:
    response = await get(Settings(), "/ui/playground")
    csp = response.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == f"'sha256-{digest}'"
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert response.headers["cache-control"] == "no-store"  # the page carries the key
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = (await get(Settings(), "/ui/playground")).text
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", page)
    assert "<link" not in page and "src=" not in page  # no stylesheets, no external scripts
    assert "@import" not in page


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nope", basic("a", "nope"), basic("a", ""), "Basic %%%", "Token key-a"],
)
async def test_the_page_needs_a_key_when_keys_are_set(authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    response = await get(Settings(api_keys=["a:key-a"]), "/ui/playground", **headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="ponder"'
    assert "key-a" not in response.text
    assert "<script" not in response.text


async def test_the_page_hands_its_key_to_the_script() -> None:
    settings = Settings(api_keys=["a:key-a", "b:key-b"])
    by_basic = await get(settings, "/ui/playground", authorization=basic("anyone", "key-a"))
    assert by_basic.status_code == 200
    assert '<b id="tenant">a</b>' in by_basic.text
    assert 'data-key="key-a"' in by_basic.text
    by_bearer = await get(settings, "/ui/playground", authorization="Bearer key-b")
    assert '<b id="tenant">b</b>' in by_bearer.text
    assert 'data-key="key-b"' in by_bearer.text


async def test_query_parameters_prefill_the_form() -> None:
    url = (
        "/ui/playground?q=%3Cb%3E6%2A7%3F&route=sc&route=spl%26moa&route=tot"
        f"&route=readurls%26sc&model={MODEL}&ask=1"
    )
    page = (await get(Settings(), url)).text
    assert "checked" in checkbox(page, "sc") and "checked" in checkbox(page, "tot")
    assert "checked" not in checkbox(page, "none")
    assert 'value="spl&amp;moa readurls&amp;sc"' in page  # unknown routes go to the free field
    assert ">&lt;b&gt;6*7?</textarea>" in page  # escaped
    assert f'<option value="{MODEL}" selected>' in page
    assert 'data-ask="1"' in page


def test_the_key_comes_from_bearer_or_basic_auths_password() -> None:
    assert presented_secret("Bearer k1") == "k1"
    assert presented_secret("bearer  k2 ", basic=True) == "k2"
    assert presented_secret(basic("user", "pa:ss"), basic=True) == "pa:ss"
    assert presented_secret(basic("user", "pa:ss")) is None  # the API takes Bearer only
    assert presented_secret("Basic %%%", basic=True) is None
    assert presented_secret("Basic " + base64.b64encode(b"\xff\xfe").decode(), basic=True) is None
    assert presented_secret("Basic " + base64.b64encode(b"no-colon").decode(), basic=True) is None
    assert presented_secret("") is None
