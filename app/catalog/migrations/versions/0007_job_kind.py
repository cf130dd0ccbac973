"""jobs: a kind, REPLICATION or BACKUP

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:10:00

A backup is a job of the cluster it backs up, moved by the same coordinator through the same
states and task rows as a replication (app/backup/). Every job before this one replicated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'jobs', sa.Column('kind', sa.Text(), nullable=False, server_default='REPLICATION')
    )


def downgrade() -> None:
    op.drop_column('jobs', 'kind')
