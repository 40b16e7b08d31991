-- Every version of the tenant schema, as its owner supplied it: the exact text and its
-- sha256, so every replica and every rollout applies the same bytes, and a replica whose
-- file disagrees for a version refuses to start. Rows are only ever added.
CREATE TABLE tenant_schema_versions (
    version     integer PRIMARY KEY CHECK (version > 0),
    name        text NOT NULL,
    sql         text NOT NULL,
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    seed        text,
    seed_sha256 text CHECK (seed_sha256 ~ '^[0-9a-f]{64}$'),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((seed IS NULL) = (seed_sha256 IS NULL))
);

CREATE FUNCTION tenant_schema_versions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tenant_schema_versions rows are never changed or removed: add a new version';
END $$;

CREATE TRIGGER tenant_schema_versions_append_only
    BEFORE UPDATE OR DELETE ON tenant_schema_versions
    FOR EACH ROW EXECUTE FUNCTION tenant_schema_versions_append_only();

CREATE TRIGGER tenant_schema_versions_no_truncate
    BEFORE TRUNCATE ON tenant_schema_versions
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_schema_versions_append_only();
