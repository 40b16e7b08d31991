-- A small tenant schema of your own, as tenantd expects one: plain tables keyed by tenant.
--
-- No row-level security, policies, write fence or grants here: tenantd adds them to every
-- table (partitions included) of every container after each version
-- (docs/tenant-schema.md, "What tenantd adds to every table").
--
-- The conventions: every table has tenant_id uuid NOT NULL; every primary key and unique
-- constraint leads with tenant_id; every foreign key includes it. Unqualified names: the
-- same file builds the shared pool, a tenant's schema and a tenant's own database.

CREATE TYPE specimen_kind AS ENUM ('blood', 'urine', 'tissue', 'swab');

-- A LOINC code, e.g. 2345-7.
CREATE DOMAIN loinc_code AS text CHECK (VALUE ~ '^[0-9]{1,5}-[0-9]$');

-- Labs, networked: a lab may belong to a parent lab of the same tenant.
CREATE TABLE labs (
    tenant_id  uuid NOT NULL,
    id         bigint GENERATED ALWAYS AS IDENTITY,
    name       text NOT NULL,
    parent_id  bigint,
    address    inet,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, parent_id) REFERENCES labs (tenant_id, id)
);

CREATE TABLE specimens (
    tenant_id    uuid NOT NULL,
    id           bigserial,
    lab_id       bigint NOT NULL,
    kind         specimen_kind NOT NULL,
    code         loinc_code,
    tags         text[] NOT NULL DEFAULT '{}',
    attributes   jsonb NOT NULL DEFAULT '{}',
    label_png    bytea,
    volume_ml    numeric(8, 3),
    volume_l     numeric GENERATED ALWAYS AS (volume_ml / 1000) STORED,
    collected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, lab_id) REFERENCES labs (tenant_id, id)
);
CREATE INDEX specimens_lab ON specimens (tenant_id, lab_id);

-- Results by report date, one partition per year.
CREATE TABLE results (
    tenant_id    uuid NOT NULL,
    id           bigserial,
    specimen_id  bigint NOT NULL,
    reported_on  date NOT NULL,
    value        numeric,
    PRIMARY KEY (tenant_id, id, reported_on),
    FOREIGN KEY (tenant_id, specimen_id) REFERENCES specimens (tenant_id, id)
) PARTITION BY RANGE (reported_on);
CREATE TABLE results_2025 PARTITION OF results FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE results_2026 PARTITION OF results FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE results_other PARTITION OF results DEFAULT;
