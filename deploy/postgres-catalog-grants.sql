-- Grants of one catalog to replicator_worker (deploy/postgres-roles.sql). Run in each catalog
-- database after `replicator cluster init C`, as its owner (replicator_admin):
--     psql -d olap_C -U replicator_admin -f deploy/postgres-catalog-grants.sql
-- Harmless twice. Tables that later migrations add get the same grants by default privileges.

DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO replicator_worker', current_database());
END
$$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO replicator_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO replicator_worker;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO replicator_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO replicator_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO replicator_worker;
