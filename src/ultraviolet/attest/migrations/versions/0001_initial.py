"""Initial schema: nodes, approved EKs, enrolments, nonces, evidence, releases, alerts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ultraviolet.attest.store import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("ek_public", sa.LargeBinary, nullable=False),
        sa.Column("ek_fingerprint", sa.String(64), nullable=False, index=True),
        sa.Column("ak_public", sa.LargeBinary, nullable=False),
        sa.Column("ak_name", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("release", sa.String(256)),
        sa.Column("enrolled_at", UtcDateTime, nullable=False),
        sa.Column("state_changed_at", UtcDateTime, nullable=False),
        sa.Column("last_evidence_at", UtcDateTime),
        sa.Column("last_evidence_id", sa.Integer),
    )
    op.create_table(
        "approved_eks",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("approved_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "enrolments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(128), nullable=False, index=True),
        sa.Column("ek_public", sa.LargeBinary, nullable=False),
        sa.Column("ek_certificate", sa.LargeBinary),
        sa.Column("ek_fingerprint", sa.String(64), nullable=False),
        sa.Column("ak_public", sa.LargeBinary, nullable=False),
        sa.Column("ak_name", sa.LargeBinary, nullable=False),
        sa.Column("secret_sha256", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "nonces",
        sa.Column("value", sa.LargeBinary(32), primary_key=True),
        sa.Column("node_id", sa.String(128), nullable=False, index=True),
        sa.Column("issued_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
        sa.Column("used_at", UtcDateTime),
    )
    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(128), sa.ForeignKey("nodes.id"), nullable=False, index=True),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("release", sa.String(256)),
        sa.Column("findings", sa.Text, nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("document", sa.LargeBinary, nullable=False),
        sa.Column("uploaded_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "alert_state",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(128), nullable=False, index=True),
        sa.Column("check", sa.String(64), nullable=False),
        sa.Column("firing", sa.Boolean, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("starts_at", UtcDateTime, nullable=False),
        sa.Column("changed_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, index=True),
        sa.Column("sink", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UtcDateTime, nullable=False, index=True),
        sa.Column("lease_until", UtcDateTime),
        sa.Column("delivered_at", UtcDateTime, index=True),
        sa.Column("last_error", sa.Text),
    )


def downgrade() -> None:
    for table in (
        "alert_outbox",
        "alert_state",
        "releases",
        "evidence",
        "nonces",
        "enrolments",
        "approved_eks",
        "nodes",
    ):
        op.drop_table(table)
