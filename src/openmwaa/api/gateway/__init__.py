"""The environment endpoint: one listener per environment, in the control plane.

Each environment is served at ``http://HOST:PORT`` (its WebServerHostname):

- ``GET /aws_mwaa/aws-console-sso`` the web login page; ``POST`` redeems the
  token and redirects into the UI with the role user's session cookie
  (``login.py``, which also serves MwaaHook's fallback paths
  ``/pluginsv2/aws_mwaa/login`` and ``/aws_mwaa/login``);
- ``POST /aws_mwaa/cli``: runs an allowed Airflow CLI command
  (``Authorization: Bearer <CliToken>``), answers base64 stdout/stderr (``cli.py``);
- everything else is streamed to the environment's Airflow API server (UI,
  ``/api/v2``, static files), which stays on loopback (``proxy.py``).

``app.py`` routes one environment's requests; ``listeners.py`` opens and closes
the listeners. Tokens, cookies and passwords are never logged.
"""

from openmwaa.api.gateway.app import GatewayApp
from openmwaa.api.gateway.listeners import GatewayManager

__all__ = ["GatewayApp", "GatewayManager"]
