"""Initial tables: environments, access keys, tokens.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("name", sa.String(80), primary_key=True),
        sa.Column("arn", sa.String(1224), nullable=False, unique=True),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("applied", sa.JSON, nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("last_update", sa.JSON, nullable=True),
        sa.Column("webserver_url", sa.String(256), nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
    )
    op.create_table(
        "access_keys",
        sa.Column("access_key_id", sa.String(32), primary_key=True),
        sa.Column("secret_access_key", sa.String(64), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False, index=True),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("environment", sa.String(80), nullable=False, index=True),
        sa.Column("airflow_role", sa.String(16), nullable=False),
        sa.Column("iam_identity", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tokens")
    op.drop_table("access_keys")
    op.drop_table("environments")
