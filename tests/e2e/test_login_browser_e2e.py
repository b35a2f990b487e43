"""The whole user login in a real headless Chromium (Debian chromium + chromium-driver):
`fwproxy login --no-browser` prints the URL, the browser signs in and consents on the
tenant's forms, lands on fwproxy's callback page, and then curl through `fwproxy run`
acts as that user."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.sim import DEMO_PASSWORD, DEMO_USER, DEMO_WEB_CLIENT, DEMO_WEB_SECRET, TenantState
from fwproxy.store import TokenStore
from tests.conftest import merge, tenant_config

from .conftest import FwproxyProcess, clean_env, curl, launch_fwproxy, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                       reason="Debian chromium and chromium-driver are not installed"),
]


def chromium() -> Any:
    """A headless Chromium driven by chromedriver; nothing is downloaded (SE_OFFLINE)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options,
                            service=Service(executable_path=shutil.which("chromedriver")))


async def test_login_in_chromium_then_curl_acts_as_the_user(
    tenant: TestServer, tenant_state: TenantState, tmp_path: Path, unused_tcp_port: int
) -> None:
    redirect = f"http://127.0.0.1:{unused_tcp_port}/callback"
    tenant_state.apps[DEMO_WEB_CLIENT].redirect_uris = [redirect]
    config = merge(tenant_config(tenant), {"auth": {
        "grant_type": "authorization_code", "client_id": DEMO_WEB_CLIENT,
        "client_secret": DEMO_WEB_SECRET, "redirect_uri": redirect,
        "token_store": str(tmp_path / "state" / "tokens.json"),
    }})
    path = write_config(tmp_path / "c.yaml", config)
    login = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fwproxy", "login", "--no-browser", "--config", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )
    proxy: FwproxyProcess | None = None
    try:
        assert login.stdout is not None
        url = (await asyncio.wait_for(login.stdout.readline(), 30)).decode().strip()
        assert url.startswith(f"http://127.0.0.1:{tenant.port}/fotoweb/oauth2/authorize?")
        title, message, page = await asyncio.to_thread(sign_in, url)
        assert title == "Logged in", message
        assert "Alice Liddell" in message
        _, err = await asyncio.wait_for(login.communicate(), 30)
        assert login.returncode == 0, err
        stored = TokenStore(tmp_path / "state" / "tokens.json").load()
        assert stored is not None
        assert stored.refresh_token not in page  # the tokens never reach the browser
        assert (stored.access_token or "-") not in page

        proxy = await launch_fwproxy(path)
        result = await curl(proxy.url("/fotoweb/me"))
        assert f'"userName": "{DEMO_USER}"' in result.text
    finally:
        if login.returncode is None:
            login.kill()
            await login.wait()
        if proxy is not None:
            await proxy.stop()


def sign_in(url: str) -> tuple[str, str, str]:
    """As a person would: open the URL, fill in the form, sign in, allow."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(url)
        wait.until(ready.presence_of_element_located((By.ID, "username"))).send_keys(DEMO_USER)
        browser.find_element(By.ID, "password").send_keys(DEMO_PASSWORD)
        browser.find_element(By.ID, "signin").click()
        wait.until(ready.element_to_be_clickable((By.ID, "allow"))).click()
        title = wait.until(ready.presence_of_element_located((By.ID, "title"))).text
        message = browser.find_element(By.ID, "message").text
        return title, message, browser.page_source
    finally:
        browser.quit()
