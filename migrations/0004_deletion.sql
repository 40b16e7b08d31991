-- Verified tenant deletion (issue 6). See docs/deletion.md.

-- `deleting`: a deletion has fenced the tenant and may have removed some of its data; it is
-- never routed again, and only a deletion may run on it. `deleted`: the tombstone left once
-- a deletion certificate exists (id, slug, tier and key id only; no tenant data).
ALTER TABLE tenants DROP CONSTRAINT tenants_state_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_state_check
    CHECK (state IN ('provisioning', 'active', 'failed', 'deleting', 'deleted'));
ALTER TABLE tenants ADD COLUMN deleted_at timestamptz;

-- A deleted tenant's slug is free again, like a failed provisioning's.
DROP INDEX tenants_live_slug;
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE state NOT IN ('failed', 'deleted');

-- Exports of a deleted tenant: objects gone, key pending deletion.
ALTER TABLE exports DROP CONSTRAINT exports_state_check;
ALTER TABLE exports ADD CONSTRAINT exports_state_check
    CHECK (state IN ('running', 'complete', 'failed', 'deleted'));

-- A final export for handing a deleted tenant's data over (customer exit): stored under
-- `handover/<tenant>/`, its data key sealed by the service key, so it outlives the tenant, its
-- objects and its key. It is named in the deletion certificate as outside the deletion.
ALTER TABLE exports ADD COLUMN handover boolean NOT NULL DEFAULT false;

-- Signed deletion certificates, kept for as long as the registry lives. `document` is the
-- exact file handed to compliance staff (canonical JSON with its signature); it is never
-- rewritten.
CREATE TABLE deletion_certificates (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL UNIQUE REFERENCES tenants (id),
    operation_id uuid NOT NULL UNIQUE REFERENCES operations (id),
    tenant_slug  text NOT NULL,
    signing_key_id text NOT NULL,
    sha256       text NOT NULL,
    document     bytea NOT NULL,
    issued_at    timestamptz NOT NULL
);
CREATE INDEX deletion_certificates_listing ON deletion_certificates (issued_at, id);
