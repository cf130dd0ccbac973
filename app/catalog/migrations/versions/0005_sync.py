"""continuous sync: policies, and the tables each follows with their state and lag

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sync_policies',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.Text(), nullable=False, unique=True),
        sa.Column('src_cluster', sa.Text(), nullable=False),
        sa.Column('src_db', sa.Text(), nullable=False),
        sa.Column('dst_db', sa.Text(), nullable=False),
        sa.Column('include', JSONB(), nullable=False),
        sa.Column('exclude', JSONB(), nullable=False),
        sa.Column('renames', JSONB(), nullable=False),
        sa.Column('state', sa.Text(), nullable=False),
        sa.Column('drop_tables', sa.Boolean(), nullable=False, server_default=sa.text('false')),
        sa.Column('last_tick_at', sa.DateTime(timezone=True)),
        # A failback policy (made by a promotion): the target's partitions as they were when
        # it stopped being written, {table: {partition: [version, epoch]}}. Those partitions
        # may be overwritten; any other write found on the target stops the table.
        sa.Column('baseline', JSONB(), nullable=True),
        sa.Column(
            'created_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        'sync_tables',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column(
            'policy_id', sa.Integer(), sa.ForeignKey('sync_policies.id', ondelete='CASCADE'),
            nullable=False,
        ),
        sa.Column('src_table', sa.Text(), nullable=False),
        sa.Column('dst_table', sa.Text(), nullable=False),
        sa.Column('state', sa.Text(), nullable=False),
        sa.Column('reason', sa.Text()),
        sa.Column('job_id', sa.BigInteger()),
        sa.Column('versions_behind', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('behind_since', sa.DateTime(timezone=True)),
        sa.Column('pending', JSONB(), nullable=False, server_default='{}'),
        sa.Column('synced_at', sa.DateTime(timezone=True)),
        # Verification after each commit (app/sync/verify.py): the newest job checked, how many
        # checks found damage, and what the last one found.
        sa.Column('verified_job_id', sa.BigInteger()),
        sa.Column('mismatches', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('last_check', sa.Text()),
        sa.Column(
            'created_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint('policy_id', 'src_table'),
    )


    # A target backend's check of the files of one synced table after one job.
    op.create_table(
        'sync_checks',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column(
            'policy_id', sa.Integer(), sa.ForeignKey('sync_policies.id', ondelete='CASCADE'),
            nullable=False,
        ),
        sa.Column('src_table', sa.Text(), nullable=False),
        sa.Column('job_id', sa.BigInteger(), nullable=False),
        sa.Column('backend', sa.Text(), nullable=False),
        sa.Column('files', sa.Integer(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('bad', JSONB(), nullable=False),  # {partition: [file path, ...]}
        sa.Column(
            'created_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint('policy_id', 'src_table', 'job_id', 'backend'),
    )


def downgrade() -> None:
    op.drop_table('sync_checks')
    op.drop_table('sync_tables')
    op.drop_table('sync_policies')
