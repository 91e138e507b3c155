"""Tables of the control plane's own state (never Airflow's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class EnvironmentRow(Base):
    """One environment: what the user asked for, and where the reconciler is with it."""

    __tablename__ = "environments"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1224), unique=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The configuration as GetEnvironment shows it (defaults applied)."""
    applied: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The configuration the backend runs now: what a failed update rolls back to."""
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    last_update: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    webserver_url: Mapped[str | None] = mapped_column(String(256), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What the reconciler last observed (progress line, component health)."""
    generation: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped on every accepted change, so the reconciler never overwrites a newer one."""


class AccessKeyRow(Base):
    """An access key for SigV4 and the IAM-style policy of the user who holds it."""

    __tablename__ = "access_keys"

    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_access_key: Mapped[str] = mapped_column(String(64))
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TokenRow(Base):
    """A short-lived CLI or web login token, kept only as its SHA-256 digest."""

    __tablename__ = "tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    environment: Mapped[str] = mapped_column(String(80), index=True)
    airflow_role: Mapped[str] = mapped_column(String(16))
    iam_identity: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used: Mapped[int] = mapped_column(Integer, default=0)
