"""``openmwaa ...``: serve the control plane, print credentials, manage access keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Column, Table

from openmwaa import settings as defaults
from openmwaa.settings import Settings

if TYPE_CHECKING:
    from openmwaa.runtime.tenancy.cgroups import Cgroups
    from openmwaa.runtime.tenancy.users import EnvUser

console = Console(stderr=True)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where state lives (default: $OPENMWAA_DATA_DIR or ~/.openmwaa)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("OPENMWAA_DATABASE_URL"),
        help="the control plane's store (default: SQLite in the data dir); e.g. "
        "postgresql://user@host:5432/openmwaa",
    )


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """The command's settings; its data dir made (again) the owner's only."""
    data_dir = (args.data_dir or defaults.default_data_dir()).expanduser().resolve()
    defaults.secure_data_dir(data_dir)
    return Settings(data_dir=data_dir, database_url=args.database_url, **extra)


def _serve(args: argparse.Namespace) -> int:
    from openmwaa.core.files import StateFileError
    from openmwaa.instance import AlreadyRunning
    from openmwaa.runtime.base import RuntimeFailure
    from openmwaa.server import serve

    logging.basicConfig(
        level=logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        serve(
            _settings(
                args,
                host=args.host,
                port=args.port,
                region=args.region,
                account_id=args.account_id,
                backend=args.backend,
                bucket_store=args.bucket_store,
                public_host=args.public_host,
                airflow_database_url=args.airflow_database_url,
                broker_url=args.broker_url,
                rabbitmq_management_url=args.rabbitmq_management_url,
                isolate=args.isolation == "users",
                scale_in_cooldown=args.scale_in_cooldown,
            )
        )
    except RuntimeFailure as e:
        console.print(f"[red]Cannot start[/] ({e.code}): {e}")
        return 2
    except AlreadyRunning as e:
        console.print(f"[red]Cannot start[/]: {escape(str(e))}", soft_wrap=True)
        return 3
    except StateFileError as e:
        console.print(f"[red]Cannot start[/]: {escape(str(e))}", soft_wrap=True)
        return 2
    return 0


def _credentials(args: argparse.Namespace) -> int:
    from openmwaa.server import ADMIN_KEY_FILE, SERVER_FILE

    settings = _settings(args)
    key_file = settings.data_dir / ADMIN_KEY_FILE
    if not key_file.exists():
        console.print(
            f"[red]No admin key in {settings.data_dir}[/]: start the server once "
            f"(openmwaa serve --data-dir {settings.data_dir}) to create it."
        )
        return 1
    key = json.loads(key_file.read_text())
    server_file = settings.data_dir / SERVER_FILE
    server = json.loads(server_file.read_text()) if server_file.exists() else {}
    lines = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": server.get("region", settings.region),
        "AWS_ENDPOINT_URL_MWAA": server.get("endpoint_url", settings.endpoint_url),
        "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
    }
    for name, value in lines.items():
        print(f"export {name}={value}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from openmwaa.server import open_store
    from openmwaa.service.identity import Identities
    from openmwaa.service.policies import PolicyError

    settings = _settings(args)
    identities = Identities(open_store(settings), settings.account_id)
    if args.keys_command == "create":
        policy: Any = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "airflow:*", "Resource": "*"}],
        }
        if args.policy:
            text = args.policy
            if not text.lstrip().startswith("{"):
                text = Path(text).read_text()
            policy = text
        try:
            key_id, secret = identities.create_key(args.user, policy)
        except (ValueError, PolicyError) as e:
            console.print(f"[red]Cannot create the key:[/] {e}")
            return 2
        print(json.dumps({"AccessKeyId": key_id, "SecretAccessKey": secret, "UserName": args.user}))
        console.print("[yellow]The secret is shown only now: keep it safe.[/]")
    elif args.keys_command == "list":
        keys = identities.list_keys()
        if args.json:
            print(json.dumps(keys, indent=2))
        else:
            table = Table("AccessKeyId", "UserName", "CreatedAt")
            for key in keys:
                table.add_row(key["AccessKeyId"], key["UserName"], key["CreatedAt"])
            Console().print(table)
    elif args.keys_command == "delete":
        if not identities.delete_key(args.access_key_id):
            console.print(f"[red]No access key {args.access_key_id}.[/]")
            return 1
        console.print(f"Deleted {args.access_key_id}.")
    return 0


def _status(args: argparse.Namespace) -> int:
    """What the reconciler is doing with each environment, from the store; and who each
    environment runs as and what it uses now."""
    from openmwaa.runtime import exposure
    from openmwaa.runtime.tenancy.cgroups import Cgroups
    from openmwaa.runtime.tenancy.users import instance_id, lookup_user
    from openmwaa.server import open_store

    settings = _settings(args)
    rows = open_store(settings).environments()
    instance = instance_id(settings.data_dir)
    cgroups = Cgroups(instance)
    # What the server found at start (on stderr with --json): admin accounts that leave
    # environments open, and environments not isolated (no root, no cgroups, turned off).
    warnings = Console(stderr=args.json)
    for finding in exposure.load(settings.data_dir):
        warnings.print(f"[bold red]Warning:[/] {escape(finding)}", soft_wrap=True)
    tenants = {
        row.name: _tenant_of(row.name, lookup_user(instance, row.name), cgroups) for row in rows
    }
    if args.json:
        print(
            json.dumps(
                [
                    {"Name": r.name, "Status": r.status, "Detail": r.detail, **tenants[r.name]}
                    for r in rows
                ]
            )
        )
        return 0
    # User and usage columns only when some environment has them (isolated environments).
    isolated = any(t["User"] or t["Usage"] for t in tenants.values())
    extra: list[Column | str] = [Column("User", overflow="fold"), "Usage"] if isolated else []
    table = Table("Name", "Status", "Airflow", "Workers", *extra, "Detail")
    for row in rows:
        detail = row.detail or {}
        text = detail.get("progress") or detail.get("detail") or ""
        components = detail.get("components") or {}
        if components and not text:
            text = ", ".join(f"{c} {state}" for c, state in components.items())
        scaling = detail.get("workers")
        remote = scaling.get("remote_workers") if scaling else 0
        workers = (
            f"{scaling['workers']}{f' ({remote} on other hosts)' if remote else ''} "
            f"({scaling['reason']}: queued {scaling['queued']}, "
            f"running {scaling['running']}, min {scaling['min_workers']}, "
            f"max {scaling['max_workers']})"
            if scaling
            else ""
        )
        tenant = tenants[row.name]
        cells = [row.name, row.status, row.spec.get("AirflowVersion", ""), workers]
        if isolated:
            cells += [tenant["User"] or "(the server's)", _usage_text(tenant["Usage"])]
        table.add_row(*cells, text)
    Console().print(table)
    return 0


def _tenant_of(name: str, user: EnvUser | None, cgroups: Cgroups) -> dict[str, Any]:
    """The environment's OS user (None: it runs as the server's) and its cgroup's usage."""
    import dataclasses

    try:
        usage = cgroups.usage(name) if cgroups.available else None
    except (OSError, ValueError):
        usage = None
    return {
        "User": user.name if user else None,
        "Usage": dataclasses.asdict(usage) if usage else None,
    }


def _usage_text(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    mib = 1024 * 1024
    memory = f"{usage['memory_bytes'] / mib:.0f}"
    if usage["memory_limit"] is not None:
        memory += f"/{usage['memory_limit'] / mib:.0f}"
    parts = [f"{memory} MiB", f"CPU {usage['cpu_seconds']:.1f} s", f"{usage['pids']} pids"]
    if usage["oom_kills"] is not None:
        parts.append(f"{usage['oom_kills']} OOM kills")
    return ", ".join(parts)


def _install(args: argparse.Namespace) -> int:
    from openmwaa.runtime.base import RuntimeFailure
    from openmwaa.runtime.installs import SUPPORTED_VERSIONS, ensure_install

    settings = _settings(args)
    version = args.airflow_version or SUPPORTED_VERSIONS[0]
    if version not in SUPPORTED_VERSIONS:
        console.print(
            f"[red]Airflow {version} is not supported[/]: {', '.join(SUPPORTED_VERSIONS)}"
        )
        return 2
    started = time.monotonic()
    with console.status(f"Airflow {version}: preparing") as status:
        try:
            path = ensure_install(
                settings.data_dir,
                version,
                None,
                lambda line: status.update(f"Airflow {version}: {line}"),
            )
        except RuntimeFailure as e:
            console.print(f"[red]Airflow {version} could not be installed[/] ({e.code}): {e}")
            return 1
    console.print(f"Airflow {version} ready in {path} ({time.monotonic() - started:.1f} s)")
    return 0


def _worker(args: argparse.Namespace) -> int:
    import signal
    import socket
    import threading

    from openmwaa.agent import ControlPlane, InsecureServer, WorkerAgent, check_server_url

    try:
        check_server_url(args.server, insecure=args.insecure)
    except InsecureServer as exc:
        console.print(f"[red]Not connecting[/]: {escape(str(exc))}")
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        console.print(
            "[red]No credentials[/]: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a key "
            "from `openmwaa keys create` allowed airflow:RunWorkers on the environment."
        )
        return 2
    host = args.name or socket.gethostname().split(".")[0]
    region = args.region or os.environ.get("AWS_DEFAULT_REGION") or defaults.DEFAULT_REGION
    settings = _settings(args)
    agent = WorkerAgent(
        ControlPlane(args.server, key_id, secret, region),
        args.environment,
        host,
        args.max_workers,
        settings.data_dir,
        lambda line: console.log(line),
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        if stop.is_set():
            agent.hurry.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    console.log(
        f"worker host {host}: up to {args.max_workers} workers of {args.environment} "
        f"for {args.server}"
    )
    agent.run(stop)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from openmwaa.demo import run_demo

    return run_demo(_settings(args, port=args.port), console)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="openmwaa", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MWAA API and the environments")
    _common(serve)
    serve.add_argument("--host", default=defaults.DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=defaults.DEFAULT_PORT)
    serve.add_argument(
        "--region", default=os.environ.get("OPENMWAA_REGION", defaults.DEFAULT_REGION)
    )
    serve.add_argument(
        "--account-id", default=os.environ.get("OPENMWAA_ACCOUNT_ID", defaults.DEFAULT_ACCOUNT_ID)
    )
    serve.add_argument("--backend", choices=("local", "test"), default="local")
    serve.add_argument("--bucket-store", choices=("local", "s3"), default="local")
    serve.add_argument("--public-host", default=None, help="address for PUBLIC_* web servers")
    serve.add_argument(
        "--airflow-database-url",
        default=os.environ.get("OPENMWAA_AIRFLOW_DATABASE_URL"),
        help="PostgreSQL admin URL: each environment gets its own database there",
    )
    serve.add_argument(
        "--broker-url",
        default=os.environ.get("OPENMWAA_BROKER_URL"),
        help="Redis or RabbitMQ URL (with --airflow-database-url): environments run "
        "CeleryExecutor with workers autoscaled between MinWorkers and MaxWorkers",
    )
    serve.add_argument(
        "--rabbitmq-management-url",
        default=os.environ.get("OPENMWAA_RABBITMQ_MANAGEMENT_URL"),
        help="with an amqp:// --broker-url: its management API, "
        "http://USER:PASSWORD@HOST:15672 (an administrator), where each environment gets "
        "a virtual host and user of its own; without it environments share the broker "
        "URL's account",
    )
    serve.add_argument(
        "--isolation",
        choices=("users", "off"),
        default=os.environ.get("OPENMWAA_ISOLATION", "users"),
        help="users (default): when run as root, each environment runs as an OS user of "
        "its own, in its class's CPU, memory and process limits; off: environments run as "
        "the server's user, for a single trusted team",
    )
    serve.add_argument(
        "--scale-in-cooldown",
        type=float,
        default=defaults.SCALE_IN_COOLDOWN,
        help="seconds of lower load before extra workers are stopped (default: %(default)s)",
    )
    serve.set_defaults(func=_serve)

    credentials = commands.add_parser("credentials", help="print export lines for the admin key")
    _common(credentials)
    credentials.set_defaults(func=_credentials)

    keys = commands.add_parser("keys", help="access keys of named users, with their policies")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create a key for a user")
    _common(create)
    create.add_argument("user")
    create.add_argument(
        "--policy", help="IAM-style policy: JSON text or a file (default: allow airflow:*)"
    )
    listing = keys_commands.add_parser("list", help="list keys (never their secrets)")
    _common(listing)
    listing.add_argument("--json", action="store_true")
    delete = keys_commands.add_parser("delete", help="delete a key")
    _common(delete)
    delete.add_argument("access_key_id")
    keys.set_defaults(func=_keys)

    status = commands.add_parser("status", help="environments and what is happening to them")
    _common(status)
    status.add_argument("--json", action="store_true", help="the full detail, as JSON")
    status.set_defaults(func=_status)

    install = commands.add_parser("install", help="build an Airflow install ahead of first use")
    _common(install)
    install.add_argument("--airflow-version", default=None, help="default: the newest supported")
    install.set_defaults(func=_install)

    worker = commands.add_parser(
        "worker", help="run Celery workers of an environment on this host (another machine)"
    )
    worker.add_argument(
        "--data-dir", type=Path, default=None, help="where installs and DAG copies live"
    )
    worker.set_defaults(database_url=None)
    worker.add_argument("--server", required=True, help="the control plane, e.g. https://h:8787")
    worker.add_argument("--environment", required=True, help="the environment's name")
    worker.add_argument(
        "--max-workers",
        type=_positive,
        default=os.cpu_count() or 1,
        help="most workers this host runs (default: its CPUs, %(default)s)",
    )
    worker.add_argument("--name", default=None, help="this host's name (default: its hostname)")
    worker.add_argument("--region", default=None, help="default: $AWS_DEFAULT_REGION or us-east-1")
    worker.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plain http:// server that is not on loopback (the bundle it sends "
        "carries credentials: use only on a network you trust)",
    )
    worker.set_defaults(func=_worker)

    demo = commands.add_parser("demo", help="start the server with a demo environment")
    _common(demo)
    demo.add_argument("--port", type=int, default=defaults.DEFAULT_PORT)
    demo.set_defaults(func=_demo)
    return root


def main(argv: list[str] | None = None) -> None:
    # First of all: nothing this process or its children create is readable by others.
    os.umask(defaults.PRIVATE_UMASK)
    args = parser().parse_args(argv)
    sys.exit(args.func(args))
