"""transfer service: where other hosts reach a backend, and the job's download grant

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The address other hosts download this backend's files from (https://host:port).
    op.add_column('backends', sa.Column('transfer_url', sa.Text(), nullable=True))
    # A snapshot's download token, minted on the source side for the apply tasks; never shown,
    # cleared when the job ends.
    op.add_column('job_tasks', sa.Column('transfer_token', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('job_tasks', 'transfer_token')
    op.drop_column('backends', 'transfer_url')
