"""Broker accounts per environment, without a broker: the URLs the environment's processes
get, the ACL rules, and what a worker on another host receives in its bundle."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from runtime_support import make_spec

from openmwaa.buckets import open_store
from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.brokers import accounts_for
from openmwaa.runtime.brokers.rabbitmq import RabbitAccounts
from openmwaa.runtime.brokers.redis_acl import RedisAcl, acl_rules
from openmwaa.runtime.bundles import portable_env
from openmwaa.runtime.config import Ports
from openmwaa.runtime.local.components import Prepared, component_env, queue_of
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.state import load_broker_password, load_secrets
from openmwaa.runtime.ports import PortRegistry
from openmwaa.runtime.supervisor import Supervisor
from openmwaa.runtime.workers import WorkerPool

ADMIN_BROKER = "redis://:broker-admin-pw@10.0.0.5:6380/2"
ADMIN_DB = "postgresql://postgres:db-admin-pw@10.0.0.6:5432/postgres"


def _context(tmp_path: Path, broker: str = ADMIN_BROKER) -> Context:
    supervisor = Supervisor()
    return Context(
        data_dir=tmp_path,
        store=open_store("local", tmp_path),
        airflow_database_url=ADMIN_DB,
        broker_url=broker,
        brokers=RedisAcl(broker),
        ports=PortRegistry(tmp_path),
        http=httpx.Client(),
        supervisor=supervisor,
        workers=WorkerPool(supervisor),
    )


def test_worker_bundle_carries_only_the_environments_own_credentials(tmp_path: Path) -> None:
    """A worker host gets the environment's broker account and database role, never the
    server's admin URLs (which would open every other environment)."""
    ctx = _context(tmp_path)
    spec = make_spec("teamA", celery_queue="airflow-celery-1234")
    layout = ctx.layout(spec.name)
    layout.create()
    secrets = load_secrets(layout)
    own_db = f"postgresql+psycopg2://teamA-role:{secrets.db_password}@10.0.0.6:5432/teamA"
    prepared = Prepared(
        spec, tmp_path / "install", None, None, None, secrets, Ports(1, 2, 3), own_db
    )
    env = portable_env(component_env(ctx, prepared))
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.username, broker.password) == (
        "airflow-celery-1234",
        load_broker_password(layout),
    )
    assert (broker.hostname, broker.port, broker.path) == ("10.0.0.5", 6380, "/2")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + own_db
    for value in env.values():
        assert "broker-admin-pw" not in value and "db-admin-pw" not in value
    assert load_broker_password(layout) == load_broker_password(layout), "made once"


def test_acl_rules_confine_the_user_to_its_prefix_and_start_from_reset() -> None:
    rules = acl_rules("q*1", "pw", db=2)
    assert rules[0] == "reset", "applying again leaves exactly these rules"
    assert r"~q\*1:*" in rules and r"&q\*1:*" in rules, "glob characters are literal"
    assert "&q*1:/2.celery.pidbox" in rules, "the worker's PSUBSCRIBE pattern, as it sends it"
    assert RedisAcl("redis://h").db == 0
    assert "pw" not in " ".join(rules), "only the password's hash is sent"
    assert rules.index("+@all") < rules.index("-@admin") < rules.index("-scan")
    assert celery.redis_key_prefix("q*1") == "q*1:"


def test_a_user_on_another_database_may_subscribe_to_its_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kombu's pub/sub topics name the database of the broker URL (``/<db>.``)."""
    sent: list[tuple[str, ...]] = []
    acl = RedisAcl("redis://:x@h:1/3")
    monkeypatch.setattr(acl, "_admin", lambda what, command, save=False: sent.append(command))
    acl.ensure("q", "pw")
    assert sent[0][:3] == ("ACL", "SETUSER", "q") and "&q:/3.celery.pidbox" in sent[0]


def test_rabbitmq_url_names_the_environments_vhost() -> None:
    accounts = RabbitAccounts("amqp://admin:x@rabbit:5672//", "http://admin:x@rabbit:15672")
    url = urlsplit(accounts.url_for("airflow-celery-9", "p/w"))
    assert (url.username, url.password, url.path) == (
        "airflow-celery-9",
        "p%2Fw",
        "/airflow-celery-9",
    )
    assert accounts.base == "http://rabbit:15672/api" and accounts.auth == ("admin", "x")


def test_rabbitmq_without_management_url_shares_the_account_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert accounts_for("amqp://guest:guest@127.0.0.1:5672//", None) is None
    assert "--rabbitmq-management-url" in caplog.text
    with pytest.raises(RuntimeFailure, match="amqp://"):
        accounts_for("redis://127.0.0.1:6379/0", "http://guest:guest@127.0.0.1:15672")
    with pytest.raises(RuntimeFailure, match="amqp://"):
        accounts_for(None, "http://guest:guest@127.0.0.1:15672")


def test_without_accounts_the_environment_uses_the_broker_url(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "amqp://guest:guest@127.0.0.1:5672//")
    ctx.brokers = None
    spec = make_spec("shared")
    layout = ctx.layout(spec.name)
    layout.create()
    prepared = Prepared(
        spec, tmp_path, None, None, None, load_secrets(layout), Ports(1, 2, 3), "postgresql://x"
    )
    env = component_env(ctx, prepared)
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "amqp://guest:guest@127.0.0.1:5672//"
    assert queue_of(spec) == "openmwaa-shared"
