"""job_tasks: an index to find a tablet's tasks of a kind

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:45:00

"Which taken snapshots have no apply yet" compares a job's snapshot rows with its apply rows by
target tablet (applies.snapshots_ready): the applied tablets are read from this index alone.
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'job_tasks_job_kind_tablet', 'job_tasks', ['job_id', 'kind', 'dst_tablet_id'], unique=False
    )


def downgrade() -> None:
    op.drop_index('job_tasks_job_kind_tablet', table_name='job_tasks')
