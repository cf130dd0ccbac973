"""schema versions: every schema a table has had, and the one it has now

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'tables', sa.Column('schema_version', sa.Integer(), nullable=False, server_default='1')
    )
    op.create_table(
        'schema_versions',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column(
            'table_id', sa.Integer(), sa.ForeignKey('tables.id', ondelete='CASCADE'),
            nullable=False,
        ),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('columns', JSONB(), nullable=False),
        sa.Column('schema_hash', sa.BigInteger(), nullable=False),
        sa.Column('change', sa.Text(), nullable=False),
        # The change as data (app.evolve.spec_of): what a sync replays on its target.
        sa.Column('spec', JSONB(), nullable=True),
        sa.Column(
            'created_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint('table_id', 'version'),
    )
    # Every table so far has had one schema: its version 1.
    op.execute(
        "INSERT INTO schema_versions (table_id, version, columns, schema_hash, change) "
        "SELECT id, 1, columns, schema_hash, 'created' FROM tables"
    )


def downgrade() -> None:
    op.drop_table('schema_versions')
    op.drop_column('tables', 'schema_version')
