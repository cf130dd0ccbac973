"""The catalog of one cluster: a Postgres database managed by Alembic migrations."""
