"""The small HTML pages of the environment endpoint: web login and its errors.

MWAA's web login URL carries the token in the fragment
(``/aws_mwaa/aws-console-sso?login=true#TOKEN``), which browsers never send;
the page's script reads it, removes it from the address bar and history, and
POSTs it to the same path, whose answer sets the session cookie and redirects
into the Airflow UI. Its referrer policy is ``same-origin``, not ``no-referrer``:
with the latter a browser sends ``Origin: null`` on the form's POST, which the
gateway's login-CSRF check could not tell from a post by another site.
"""

from __future__ import annotations

import html

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:42rem;margin:4rem auto;padding:0 1rem;"
    "color:#1a1a1a}h1{font-size:1.4rem}code{background:#f2f2f2;padding:.1rem .3rem}"
)


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=referrer content=same-origin><meta name=robots content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    ).encode()


def login_page(environment: str, path: str) -> bytes:
    """The page at the web login URL: reads the token from the fragment and posts it."""
    env = html.escape(environment)
    action = html.escape(path, quote=True)
    return _page(
        f"Signing in to {environment}",
        f"<h1>Signing in to the Airflow UI of {env}&hellip;</h1>"
        f'<form id=login method=post action="{action}">'
        "<input type=hidden name=token id=token></form>"
        "<p id=missing hidden>This address has no login token. Create one with "
        f"<code>aws mwaa create-web-login-token --name {env}</code> and open "
        "<code>http://WebServerHostname/aws_mwaa/aws-console-sso?login=true#WebToken</code>."
        "</p><noscript>JavaScript is needed to sign in.</noscript>"
        "<script>(function(){var t=location.hash.slice(1);"
        "history.replaceState(null,'',location.pathname+location.search);"
        "if(!t){document.getElementById('missing').hidden=false;return;}"
        "document.getElementById('token').value=decodeURIComponent(t);"
        "document.getElementById('login').submit();})();</script>",
    )


def error_page(title: str, message: str, environment: str) -> bytes:
    env = html.escape(environment)
    return _page(
        title,
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        "<p>Web login tokens are single-use and expire 60 seconds after they are created. "
        f"Create a new one with <code>aws mwaa create-web-login-token --name {env}</code>.</p>",
    )


def logged_in_page(environment: str) -> bytes:
    """The answer to a programmatic login (MwaaHook): the cookie is set, the UI is at /."""
    env = html.escape(environment)
    return _page(
        f"Signed in to {environment}",
        f'<h1>Signed in to {env}</h1><p><a href="/">Open the Airflow UI</a></p>',
    )


def session_ended_page(environment: str) -> bytes:
    return error_page(
        "Your Airflow session has ended",
        f"Sign in to {environment} again with a new web login token.",
        environment,
    )
