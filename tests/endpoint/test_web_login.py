"""Web login tokens in a real browser (Debian's chromium, headless, driven by Playwright).

This file runs last in the folder: its final tests use tokens minted when the
environment came up, once they are more than 60 s old.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from endpoint_support import available, curl_cli

ENV = "ep"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("OPENMWAA_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "artifacts"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


def login_url(token: dict[str, Any]) -> str:
    return (
        f"http://{token['WebServerHostname']}/aws_mwaa/aws-console-sso?login=true"
        f"#{token['WebToken']}"
    )


def session_cookie(context: Any, endpoint: str) -> dict[str, Any]:
    port = endpoint.rsplit(":", 1)[1]
    cookies = {c["name"]: c for c in context.cookies(endpoint)}
    assert f"_token_{port}" in cookies, cookies.keys()
    return dict(cookies[f"_token_{port}"])


def test_web_login_lands_in_the_airflow_ui(
    browser: Any, admin: Any, environment: dict[str, Any], endpoint: str
) -> None:
    available(admin)
    token = admin.create_web_login_token(Name=ENV)
    assert token["AirflowIdentity"] and token["IamIdentity"].endswith(":user/admin")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(login_url(token))
    page.wait_for_url(f"{endpoint}/", timeout=30_000)
    assert "#" not in page.url
    cookie = session_cookie(context, endpoint)
    assert cookie["httpOnly"]
    claims = jwt_claims(cookie["value"])
    assert (claims["sub"], claims["role"]) == ("admin", "admin")
    page.goto(f"{endpoint}/dags")
    page.get_by_text("hello", exact=True).first.wait_for(timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-login-airflow-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # The UI's own API calls go through the endpoint with the session cookie.
    answer = page.evaluate("() => fetch('/api/v2/dags').then(r => r.status)")
    assert answer == 200
    context.close()


def test_viewer_logs_in_as_viewer(browser: Any, viewer: Any, endpoint: str) -> None:
    available(viewer)
    token = viewer.create_web_login_token(Name=ENV)
    context = browser.new_context()
    page = context.new_page()
    page.goto(login_url(token))
    page.wait_for_url(f"{endpoint}/", timeout=30_000)
    claims = jwt_claims(session_cookie(context, endpoint)["value"])
    assert (claims["sub"], claims["role"]) == ("viewer", "viewer")
    status = page.evaluate(
        """() => fetch('/api/v2/dags/hello', {method: 'PATCH',
             headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({is_paused: true})}).then(r => r.status)"""
    )
    assert status == 403
    context.close()


def test_the_ui_without_a_session_asks_for_a_web_login_token(browser: Any, endpoint: str) -> None:
    """Airflow's base_url is the endpoint: the UI's redirect to its login lands here."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{endpoint}/dags")
    page.get_by_text("Your Airflow session has ended").wait_for(timeout=30_000)
    assert page.url.startswith(f"{endpoint}/auth/login")
    context.close()


def test_reused_and_forged_tokens_get_an_error_page(
    browser: Any, admin: Any, environment: dict[str, Any], endpoint: str
) -> None:
    available(admin)
    token = admin.create_web_login_token(Name=ENV)
    context = browser.new_context()
    page = context.new_page()
    page.goto(login_url(token))
    page.wait_for_url(f"{endpoint}/", timeout=30_000)
    context.close()
    for url in (login_url(token), login_url({**token, "WebToken": "forged" + "x" * 40})):
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.get_by_text("Sign-in failed").wait_for(timeout=15_000)
        assert "invalid, expired or already used" in page.content()
        assert not [c for c in context.cookies(endpoint) if c["name"].startswith("_token")]
        context.close()


def test_a_login_form_on_another_site_is_refused(
    browser: Any, admin: Any, environment: dict[str, Any], endpoint: str
) -> None:
    """Login CSRF: a page elsewhere that posts a token signs no one in, and leaves it
    unused (the browser says where the POST came from: Sec-Fetch-Site, Origin)."""
    available(admin)
    token = admin.create_web_login_token(Name=ENV)
    context = browser.new_context()
    page = context.new_page()
    page.set_content(
        f'<form id=f method=post action="{endpoint}/aws_mwaa/aws-console-sso">'
        f'<input name=token value="{token["WebToken"]}"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    page.get_by_text("Sign-in refused").wait_for(timeout=15_000)
    assert not [c for c in context.cookies(endpoint) if c["name"].startswith("_token")]
    page.goto(login_url(token))
    page.wait_for_url(f"{endpoint}/", timeout=30_000)
    session_cookie(context, endpoint)
    context.close()


def test_mwaa_hook_login_path_answers_with_the_session_cookie(
    admin: Any, environment: dict[str, Any], endpoint: str
) -> None:
    """What MwaaHook's fallback does (over plain HTTP here): POST the token, read ``_token``."""
    available(admin)
    token = admin.create_web_login_token(Name=ENV)
    with httpx.Client(base_url=endpoint, timeout=30) as session:
        login = session.post("/pluginsv2/aws_mwaa/login", data={"token": token["WebToken"]})
        assert login.status_code == 200, login.text
        jwt = login.cookies["_token"]
        # AirflowIdentity is the user Airflow records for the session.
        assert jwt_claims(jwt)["sub"] == token["AirflowIdentity"] == "admin"
        dags = session.get("/api/v2/dags", headers={"Authorization": f"Bearer {jwt}"})
        assert dags.status_code == 200
        assert "hello" in {d["dag_id"] for d in dags.json()["dags"]}
        again = session.post("/pluginsv2/aws_mwaa/login", data={"token": token["WebToken"]})
        assert again.status_code == 403


def test_airflow_password_logins_and_execution_api_are_not_exposed(endpoint: str) -> None:
    assert httpx.post(f"{endpoint}/auth/token", json={"username": "admin"}).status_code == 404
    assert httpx.get(f"{endpoint}/execution/health").status_code == 404
    login = httpx.get(f"{endpoint}/auth/login")
    assert login.status_code == 401 and "web login token" in login.text
    assert httpx.get(f"{endpoint}/api/v2/dags").status_code == 401


def test_tokens_expire_after_60_seconds(early_tokens: dict[str, Any], endpoint: str) -> None:
    wait = 61 - (time.monotonic() - early_tokens["at"])
    if wait > 0:
        time.sleep(wait)
    cli = early_tokens["cli"]
    status, answer = curl_cli(cli["WebServerHostname"], cli["CliToken"], "version")
    assert status == 403 and "expired" in answer["message"]
    web = early_tokens["web"]
    page = httpx.post(f"{endpoint}/aws_mwaa/aws-console-sso", data={"token": web["WebToken"]})
    assert page.status_code == 403 and "Sign-in failed" in page.text
