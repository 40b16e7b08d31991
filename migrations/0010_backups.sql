-- Backups that run themselves (issue 23). See docs/backups.md.

-- A backup policy: for one tenant, or for every tenant of a plan (a tenant's own policy
-- wins). `schedule` is a 5-field cron expression in UTC; slots before `effective_from` never
-- fire, so a new or rescheduled policy starts with its next slot, not with a past one.
CREATE TABLE backup_policies (
    id             uuid PRIMARY KEY,
    tenant_id      uuid UNIQUE REFERENCES tenants (id),
    plan           text UNIQUE,
    schedule       text NOT NULL,
    keep_last      integer NOT NULL CHECK (keep_last >= 0),
    keep_days      integer NOT NULL CHECK (keep_days >= 0),
    keep_monthly   integer NOT NULL CHECK (keep_monthly >= 0),
    keep_yearly    integer NOT NULL CHECK (keep_yearly >= 0),
    -- Empty: no drills.
    drill          text NOT NULL DEFAULT '',
    effective_from timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((tenant_id IS NULL) <> (plan IS NULL))
);

-- Which policy covers which tenant: its own, else its plan's. The one definition the
-- scheduler and the metrics share.
CREATE VIEW backup_coverage AS
SELECT p.id AS policy_id, t.id AS tenant_id
FROM backup_policies p
JOIN tenants t ON t.id = p.tenant_id
     OR (p.plan IS NOT NULL AND t.plan = p.plan
         AND NOT EXISTS (SELECT 1 FROM backup_policies own WHERE own.tenant_id = t.id));

-- One row per (tenant, slot) the scheduler acted on: the operation it started, or, while
-- the tenant was busy with another operation, how many times it found it so. Any replica
-- may write it; the primary key and the operation's request id (derived from tenant and
-- slot) make two replicas, a restart or a retry start one operation per slot.
CREATE TABLE backup_runs (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    kind         text NOT NULL CHECK (kind IN ('backup', 'drill')),
    slot         timestamptz NOT NULL,
    -- No foreign key: a deleted policy leaves its history.
    policy_id    uuid NOT NULL,
    operation_id uuid REFERENCES operations (id),
    -- A drill: the export it restored (set by its first step).
    export_id    uuid REFERENCES exports (id),
    waits        integer NOT NULL DEFAULT 0,
    last_wait    text,
    due_at       timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    PRIMARY KEY (tenant_id, kind, slot)
);

-- Scheduled exports are ordinary exports that know their policy and slot. `removing` and
-- `removed`: DeleteExport or retention took the objects away; the row stays as a tombstone.
ALTER TABLE exports ADD COLUMN policy_id uuid;
ALTER TABLE exports ADD COLUMN slot timestamptz;
ALTER TABLE exports ADD COLUMN removed_at timestamptz;
ALTER TABLE exports ADD COLUMN removed_by text;
ALTER TABLE exports DROP CONSTRAINT exports_state_check;
ALTER TABLE exports ADD CONSTRAINT exports_state_check
    CHECK (state IN ('running', 'complete', 'failed', 'deleted', 'removing', 'removed'));

-- Legal holds: on a whole tenant (export_id NULL) or one export. A held export outlives
-- retention; DeleteExport of it and DeleteTenant of a tenant with any hold are refused.
-- Clearing keeps the row (who, when), so the history of a hold is never lost.
CREATE TABLE legal_holds (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    export_id  uuid REFERENCES exports (id),
    reason     text NOT NULL CHECK (reason <> ''),
    set_by     text NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now(),
    cleared_at timestamptz,
    cleared_by text
);
CREATE UNIQUE INDEX legal_holds_active
    ON legal_holds (tenant_id, coalesce(export_id, '00000000-0000-0000-0000-000000000000'))
    WHERE cleared_at IS NULL;

-- Exports now have a fifth step, `prune` (retention after a scheduled backup). Unfinished
-- operations stored with four steps get the fifth, pending, so a resumed one runs it (a
-- step's index is part of the stored format, docs/workflows.md); finished ones keep the
-- four steps they ran.
INSERT INTO operation_steps (operation_id, idx, name, state)
SELECT o.id, 4, 'prune', 'pending'
FROM operations o
WHERE o.kind = 'export' AND o.state IN ('pending', 'running', 'compensating')
  AND NOT EXISTS (SELECT 1 FROM operation_steps s WHERE s.operation_id = o.id AND s.idx = 4);
