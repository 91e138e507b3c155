"""A broker account per environment: one adapter per broker (kopf's "one adapter package
per external system").

Every environment shares the server's broker, but none of them gets the server's (admin)
URL: each has its own account, named after its queue, that reaches only its own messages.
Redis: an ACL user confined to the environment's key prefix and channels
(``redis_acl.py``); RabbitMQ: a virtual host and a user of its own, made through the
management HTTP API (``rabbitmq.py``). The admin URL stays in the server, which makes,
re-applies and removes the accounts.
"""

from __future__ import annotations

import logging
from typing import Protocol

from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure

log = logging.getLogger(__name__)


class BrokerAccounts(Protocol):
    """Makes and removes environments' broker accounts with the server's admin access.

    ``account`` is the environment's queue name: unique, never reused, and already its
    Redis key prefix (``<queue>:``) and RabbitMQ virtual host.
    """

    def url_for(self, account: str, password: str) -> str:
        """The broker URL the environment's processes use (no network)."""
        ...

    def ensure(self, account: str, password: str) -> None:
        """Create the account or set it again as it must be (idempotent)."""
        ...

    def remove(self, account: str) -> None:
        """Remove the account (and a RabbitMQ virtual host with its queues); absent is fine."""
        ...


def accounts_for(broker_url: str | None, management_url: str | None) -> BrokerAccounts | None:
    """The adapter for the server's broker, its admin access checked; None when
    environments must share the admin URL (no broker, or RabbitMQ without a management
    URL: that exposure is logged)."""
    if not broker_url:
        if management_url:
            raise RuntimeFailure(
                "CONFIGURATION", "--rabbitmq-management-url needs an amqp:// --broker-url"
            )
        return None
    scheme = celery.broker_address(broker_url)[0]
    if scheme.startswith("redis"):
        if management_url:
            raise RuntimeFailure(
                "CONFIGURATION", "--rabbitmq-management-url is for an amqp:// --broker-url"
            )
        from openmwaa.runtime.brokers.redis_acl import RedisAcl

        redis = RedisAcl(broker_url)
        redis.check()
        return redis
    if management_url is None:
        log.warning(
            "RabbitMQ broker without --rabbitmq-management-url: every environment's "
            "processes use the broker URL's own account, so a task of one environment can "
            "read and delete the Celery messages of every other; give the server the "
            "management API's URL to make a virtual host and user per environment"
        )
        return None
    from openmwaa.runtime.brokers.rabbitmq import RabbitAccounts

    rabbit = RabbitAccounts(broker_url, management_url)
    rabbit.check()
    return rabbit
