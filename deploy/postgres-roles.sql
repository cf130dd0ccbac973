-- Least-privilege roles for the catalogs (README "Broker and catalog security").
-- Run once per Postgres server, as a superuser:   psql -d postgres -f deploy/postgres-roles.sql
-- then give each role a password:                 \password replicator_admin (and _worker)
--
-- replicator_admin   runs `replicator cluster init C` (the migrate Job): creates the database
--                    olap_C (CREATEDB) and owns it and its tables (Alembic migrations are DDL).
--                    Nothing else runs as it.
-- replicator_worker  everything else: backend workers, transfer servers, coordinator, beat,
--                    Flower, the exporter, the CLI's day-to-day commands. Rows only (SELECT,
--                    INSERT, UPDATE, DELETE and sequences) in catalogs that exist; no CREATEDB,
--                    no DDL, not a superuser. It finds catalogs by reading pg_database through
--                    the `postgres` database, which PUBLIC may connect to by default.
-- After `cluster init C`, run deploy/postgres-catalog-grants.sql in olap_C as replicator_admin.

CREATE ROLE replicator_admin LOGIN CREATEDB NOSUPERUSER NOCREATEROLE;
CREATE ROLE replicator_worker LOGIN NOCREATEDB NOSUPERUSER NOCREATEROLE;
