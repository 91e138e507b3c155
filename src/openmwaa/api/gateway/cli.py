"""``POST /aws_mwaa/cli``: run one allowed Airflow CLI command with a CLI token.

The command runs directly (no shell) from the backend's ``AirflowCli`` (argv prefix,
environment, folder), with arguments checked against that Airflow install's own CLI
definition. Each run is an Airflow process of a few hundred MB, so at most
``MAX_CLI_RUNS`` run at once per environment; more get HTTP 429 before their token is
used, so the same token may be sent again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from anyio import to_thread

from openmwaa.api.asgi import Receive, Scope
from openmwaa.api.gateway.common import Domain, header, json_reply
from openmwaa.api.gateway.login import read_small_body
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.service.cli_commands import CommandRefused, parse_command
from openmwaa.service.errors import ServiceError

log = logging.getLogger(__name__)

CLI_TIMEOUT = 120.0
MAX_CLI_OUTPUT = 8 * 1024 * 1024
MAX_CLI_RUNS = 4
"""Airflow CLI commands running at once per environment."""
RETRY_AFTER = 5


def cli_output(stdout: bytes, stderr: bytes) -> dict[str, str]:
    return {
        "stdout": base64.b64encode(stdout).decode(),
        "stderr": base64.b64encode(stderr).decode(),
    }


class CliRunner:
    """The CLI of one environment's endpoint, with its limit of runs at once."""

    def __init__(self, domain: Domain, name: str, limit: int = MAX_CLI_RUNS) -> None:
        self._domain = domain
        self._name = name
        self._limit = limit
        self.running = 0

    async def handle(self, scope: Scope, receive: Receive) -> None:
        """Answer the CLI POST (always by raising Reply)."""
        auth = header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise json_reply(401, {"message": "Authorization: Bearer <CliToken> is required."})
        if self.running >= self._limit:
            raise json_reply(
                429,
                {
                    "message": f"{self._limit} Airflow CLI commands are already running on "
                    f"{self._name}, the most at once: retry in a few seconds (the token "
                    "was not used)."
                },
                retry_after=str(RETRY_AFTER),
            )
        self.running += 1
        try:
            await self._run(token.strip(), receive)
        finally:
            self.running -= 1

    async def _run(self, token: str, receive: Receive) -> None:
        body = await read_small_body(receive)
        try:
            cli = await to_thread.run_sync(self._domain.cli, self._name, token)
        except ServiceError as e:
            raise json_reply(e.status, {"message": e.message}) from None
        except RuntimeFailure as e:
            raise json_reply(503, {"message": str(e)}) from None
        try:
            args = parse_command(body.decode("utf-8", errors="replace"), cli.definition)
        except CommandRefused as e:
            raise json_reply(400, {"message": str(e), **cli_output(b"", str(e).encode())}) from None
        log.info("endpoint of %s: CLI airflow %s", self._name, " ".join(args[:2]))
        stdout, stderr = await run_command([*cli.argv, *args], dict(cli.env), cli.cwd)
        raise json_reply(200, cli_output(stdout, stderr))


async def run_command(
    argv: Sequence[str], env: dict[str, str], cwd: Path | None
) -> tuple[bytes, bytes]:
    """Run the command directly (no shell) in its own session; killed after CLI_TIMEOUT."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # umask 077 comes from the server (uvloop's subprocess takes no umask argument)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError) as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        return b"", f"The command did not finish in {CLI_TIMEOUT:.0f} s and was stopped.".encode()
    return stdout[-MAX_CLI_OUTPUT:], stderr[-MAX_CLI_OUTPUT:]
