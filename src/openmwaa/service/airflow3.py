"""What the environment endpoint must know about the Airflow major version behind it.

Everything version-specific of the gateway and of InvokeRestApi lives in one
``AirflowDialect``; Airflow 3 is the only one today, Airflow 2 (``/api/v1``,
Flask session cookie, ``/aws_mwaa/login``) will be a second instance.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AirflowDialect:
    major: int
    rest_api_prefix: str
    """Prefix of the REST API that InvokeRestApi paths are relative to."""
    session_cookie: str
    """The cookie the UI authenticates with; it carries the role user's JWT."""
    login_paths: tuple[str, ...]
    """Where MwaaHook posts a web login token (form field ``token``) for a session cookie."""
    blocked_prefixes: tuple[str, ...]
    """Paths of the API server never proxied from outside: the task execution API and
    the password logins (users hold no passwords: they log in with MWAA tokens)."""
    ui_login_paths: tuple[str, ...]
    """Where the UI sends a user whose session ended; the gateway answers these itself."""
    landing_path: str = "/"

    def cookie_header(self, jwt: str, *, secure: bool) -> str:
        """``Set-Cookie`` value as Airflow's own login sets it (HttpOnly, Lax, path /)."""
        flags = "; Secure" if secure else ""
        return f"{self.session_cookie}={jwt}; Path=/; HttpOnly; SameSite=Lax{flags}"


AIRFLOW_3 = AirflowDialect(
    major=3,
    rest_api_prefix="/api/v2",
    session_cookie="_token",
    login_paths=("/pluginsv2/aws_mwaa/login", "/aws_mwaa/login"),
    blocked_prefixes=("/execution", "/auth/token"),
    ui_login_paths=("/auth/login",),
)


def dialect_for(airflow_version: str) -> AirflowDialect:
    major = airflow_version.split(".", 1)[0]
    if major == "3":
        return AIRFLOW_3
    raise ValueError(f"Airflow {airflow_version} has no endpoint support yet")
