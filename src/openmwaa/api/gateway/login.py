"""Web login: redeem a web login token for the session cookie of its Airflow role.

Served at ``POST /aws_mwaa/aws-console-sso`` (the login page's form, answered with
a redirect into the UI) and at MwaaHook's fallback paths (answered with the cookie).

A login POST from another site is refused (login CSRF: a page elsewhere could
otherwise sign a victim's browser into the attacker's session). Browsers say where a
POST comes from in ``Sec-Fetch-Site`` and ``Origin``; only the endpoint's own origin
may post. Other environments' endpoints are other origins (another port), though
the same site. Requests carrying neither header (MwaaHook's ``requests``, curl)
are not cross-site requests of a browser, and are served.
"""

from __future__ import annotations

import logging
import urllib.parse

from anyio import to_thread

from openmwaa.api import console_sso
from openmwaa.api.asgi import BodyTooLarge, Receive, Scope, read_body
from openmwaa.api.gateway.common import Domain, Reply, header, html_reply, json_reply
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.service.errors import ServiceError

log = logging.getLogger(__name__)

MAX_FORM = 64 * 1024
_OWN_ORIGIN = ("same-origin", "none")
"""Sec-Fetch-Site values of a POST from the endpoint's own page (or typed by the user)."""


async def read_small_body(receive: Receive, limit: int = MAX_FORM) -> bytes:
    try:
        return await read_body(receive, limit)
    except BodyTooLarge:
        raise json_reply(
            413, {"message": f"The request body is larger than {limit} bytes."}
        ) from None


def cross_site(scope: Scope) -> bool:
    """Whether a browser sent this request from a page of another origin."""
    site = header(scope, b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in _OWN_ORIGIN
    origin = header(scope, b"origin")
    if origin is None:
        return False
    host = (header(scope, b"host") or "").strip().lower()
    netloc = urllib.parse.urlsplit(origin.strip()).netloc.lower()
    return not host or netloc != host  # "null" (an opaque origin) is never ours


async def web_login(
    domain: Domain, name: str, cookie: str, scope: Scope, receive: Receive, *, redirect: bool
) -> None:
    """Answer the login POST (always by raising Reply)."""
    if cross_site(scope):
        log.info("endpoint of %s: cross-site web login refused", name)
        raise html_reply(
            403,
            console_sso.error_page(
                "Sign-in refused",
                "This sign-in request came from another web site, so it was refused. "
                "Open the web login URL itself in your browser.",
                name,
            ),
        )
    body = await read_small_body(receive)
    form = urllib.parse.parse_qs(body.decode("latin-1"), max_num_fields=10)
    token = (form.get("token") or [""])[0].strip()
    try:
        if not token:
            raise html_reply(
                400,
                console_sso.error_page(
                    "No login token", "The request carries no login token.", name
                ),
            )
        session = await to_thread.run_sync(domain.web_session, name, token)
    except (ServiceError, RuntimeFailure) as e:
        status = getattr(e, "status", 503)
        message = e.message if isinstance(e, ServiceError) else str(e)
        log.info("endpoint of %s: web login refused (%s)", name, type(e).__name__)
        raise html_reply(
            403 if status == 403 else 400 if status < 500 else 503,
            console_sso.error_page("Sign-in failed", message, name),
        ) from None
    secure = header(scope, b"x-forwarded-proto") == "https"
    dialect = session.dialect
    cookies = [
        (
            "set-cookie",
            dialect.cookie_header(session.jwt, secure=secure).replace(
                dialect.session_cookie + "=", cookie + "=", 1
            ),
        )
    ]
    log.info("endpoint of %s: web login as %s", name, session.role)
    if redirect:
        raise Reply(303, b"", "text/plain", [*cookies, ("location", dialect.landing_path)])
    # MwaaHook reads the JWT from the cookie Airflow itself would set.
    cookies.append(("set-cookie", dialect.cookie_header(session.jwt, secure=secure)))
    raise html_reply(200, console_sso.logged_in_page(name), cookies)
