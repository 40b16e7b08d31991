-- Fleet migrations of the tenant data schema (issue 9). See docs/rollouts.md.

-- The tenant-schema version the fleet is at: what provisioning and restores migrate new
-- containers to, and what MigrateFleet moves forward. One row, written at start-up (to the
-- highest version a tenant is at, or the build's latest on an empty registry) and by
-- MigrateFleet.
CREATE TABLE tenant_schema (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    integer NOT NULL CHECK (version > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A fleet operation (a rollout) belongs to no tenant.
ALTER TABLE operations ALTER COLUMN tenant_id DROP NOT NULL;
-- At most one active fleet operation of a kind, enforced by the database.
CREATE UNIQUE INDEX operations_one_active_fleet ON operations (kind)
    WHERE tenant_id IS NULL AND state IN ('pending', 'running', 'compensating');

-- A rollout's parameters and its approval (written by ResumeRollout, not by the worker).
CREATE TABLE rollouts (
    operation_id    uuid PRIMARY KEY REFERENCES operations (id),
    target_version  integer NOT NULL,
    approved_by     text,
    approved_at     timestamptz
);

-- One row per container a rollout migrates: the pool of a cluster (tenant_id NULL) or one
-- schema/database tenant. `target` is the key: 'pool:<cluster>' or the tenant id.
CREATE TABLE rollout_targets (
    operation_id  uuid NOT NULL REFERENCES rollouts (operation_id),
    target        text NOT NULL,
    seq           integer NOT NULL,
    tenant_id     uuid REFERENCES tenants (id),
    slug          text,
    tier          text NOT NULL,
    cluster_name  text NOT NULL,
    canary        boolean NOT NULL DEFAULT false,
    state         text NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    from_version  integer,
    to_version    integer,
    attempts      integer NOT NULL DEFAULT 0,
    error         text,
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (operation_id, target)
);
CREATE UNIQUE INDEX rollout_targets_order ON rollout_targets (operation_id, seq);
CREATE INDEX rollout_targets_by_state ON rollout_targets (operation_id, state, seq);
