"""/schema shows the API reference from assets the service serves itself: it works offline, with no CDN."""

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from tests.live import Live, live_service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def referenced_urls(html: str) -> list[str]:
    """Every src and href of the page."""
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)


async def test_the_schema_page_references_no_other_host_and_its_assets_are_served(client: httpx.AsyncClient) -> None:
    """GET /schema names only the service's own paths (or data: URLs), and each of them answers 200 with content."""
    page = await client.get("/schema")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = referenced_urls(page.text)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        if url.startswith("data:"):
            continue
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"/schema loads {url} from another host"
        asset = await client.get(urljoin("/schema", url))
        assert asset.status_code == 200, url
        assert len(asset.content) > 100_000 or not url.endswith(".js"), f"{url} is not the viewer's bundle"
    assert "cdn." not in page.text and "fonts.googleapis" not in page.text
    assert (await client.get("/schema/openapi.json")).json()["info"]["title"] == "Number masking"


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    async with live_service(dsn) as service:
        yield service


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
async def test_the_schema_page_renders_the_api_in_a_browser_that_reaches_no_other_host(live: Live) -> None:
    """In Chromium with every request off loopback refused, /schema shows the title and the sessions routes."""
    outside: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            page = await browser.new_page()

            async def only_loopback(route):  # type: ignore[no-untyped-def]
                host = urlsplit(route.request.url).hostname
                if route.request.url.startswith("data:") or host == "127.0.0.1":
                    await route.continue_()
                else:
                    outside.append(route.request.url)
                    await route.abort()

            await page.route("**/*", only_loopback)
            await page.goto(live.url + "/schema")
            await expect(page.locator("h1").first).to_contain_text("Number masking", timeout=20_000)
            await expect(page.get_by_text("/v1/sessions").first).to_be_attached()
        finally:
            await browser.close()
    assert outside == [], f"/schema asked other hosts for {outside}"
