-- Per-tenant keys and exports (issue 4). See docs/keys.md and docs/export.md.

-- The tenant's key in the key service (KMS key id or local key id). NULL only for tenants
-- provisioned before keys existed, until the key backfill gives them one.
ALTER TABLE tenants ADD COLUMN key_id text;

-- Keys of the local key service (the embedded default): material sealed by the master key
-- file, never stored in the clear. Destroying a key erases its material.
CREATE TABLE local_keys (
    key_id         text PRIMARY KEY,
    alias          text NOT NULL UNIQUE,
    spec           text NOT NULL CHECK (spec IN ('aes256', 'p256')),
    state          text NOT NULL CHECK (state IN ('enabled', 'pending_deletion', 'destroyed')),
    material       bytea,
    public_key     bytea,
    tenant_id      uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deletion_after timestamptz,
    CHECK ((state = 'destroyed') = (material IS NULL)),
    CHECK (state <> 'pending_deletion' OR deletion_after IS NOT NULL)
);

-- One row per export; the object and its signed manifest live in the object store.
CREATE TABLE exports (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    operation_id     uuid NOT NULL REFERENCES operations (id),
    state            text NOT NULL CHECK (state IN ('running', 'complete', 'failed')),
    tier             text NOT NULL,
    schema_version   integer,
    object_key       text NOT NULL,
    manifest_key     text NOT NULL,
    key_id           text,
    size_bytes       bigint,
    sha256           text,
    plaintext_sha256 text,
    table_rows       jsonb NOT NULL DEFAULT '[]'::jsonb,
    snapshot_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    CHECK (state <> 'complete' OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL
                                   AND completed_at IS NOT NULL))
);
CREATE INDEX exports_by_tenant ON exports (tenant_id, created_at, id);
