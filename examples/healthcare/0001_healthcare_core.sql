-- Tenant data schema, version 1: the default healthcare application schema.
--
-- Applied unqualified with search_path set to the tenant's container (the pool schema, a
-- tenant schema, or the schema inside a tenant database), so the same file serves every tier.
-- Every table carries tenant_id, every key and index leads with it, and every foreign key
-- includes it, so a row can never reference another tenant's row. Row-level security is
-- enabled and forced on every table in every tier (in the schema and database tiers as
-- defence in depth); the policy uses the InitPlan form so the setting is read once per query.

CREATE TABLE patients (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    mrn           text NOT NULL,
    given_name    text NOT NULL,
    family_name   text NOT NULL,
    birth_date    date NOT NULL,
    sex           text CHECK (sex IN ('female', 'male', 'other', 'unknown')),
    phone         text,
    email         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, mrn)
);
CREATE INDEX patients_name ON patients (tenant_id, family_name, given_name);

CREATE TABLE appointment_types (
    tenant_id        uuid NOT NULL,
    code             text NOT NULL,
    name             text NOT NULL,
    duration_minutes integer NOT NULL CHECK (duration_minutes > 0),
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE encounters (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    patient_id   uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('ambulatory', 'emergency', 'inpatient', 'virtual')),
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    reason       text,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, patient_id) REFERENCES patients (tenant_id, id)
);
CREATE INDEX encounters_patient ON encounters (tenant_id, patient_id, started_at);

CREATE TABLE observations (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    patient_id    uuid NOT NULL,
    encounter_id  uuid,
    code          text NOT NULL,
    value_numeric numeric,
    value_text    text,
    unit          text,
    observed_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, patient_id) REFERENCES patients (tenant_id, id),
    FOREIGN KEY (tenant_id, encounter_id) REFERENCES encounters (tenant_id, id)
);
CREATE INDEX observations_patient ON observations (tenant_id, patient_id, observed_at);

CREATE TABLE clinical_notes (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    patient_id   uuid NOT NULL,
    encounter_id uuid,
    author       text NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, patient_id) REFERENCES patients (tenant_id, id),
    FOREIGN KEY (tenant_id, encounter_id) REFERENCES encounters (tenant_id, id)
);
CREATE INDEX clinical_notes_patient ON clinical_notes (tenant_id, patient_id, created_at);

CREATE TABLE appointments (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    patient_id   uuid NOT NULL,
    type_code    text NOT NULL,
    starts_at    timestamptz NOT NULL,
    status       text NOT NULL DEFAULT 'booked'
                 CHECK (status IN ('booked', 'arrived', 'fulfilled', 'cancelled', 'noshow')),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, patient_id) REFERENCES patients (tenant_id, id),
    FOREIGN KEY (tenant_id, type_code) REFERENCES appointment_types (tenant_id, code)
);
CREATE INDEX appointments_start ON appointments (tenant_id, starts_at);

-- Application-level audit trail of access to this tenant's records.
CREATE TABLE audit_events (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    entity      text NOT NULL,
    entity_id   uuid,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX audit_events_time ON audit_events (tenant_id, occurred_at);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['patients', 'appointment_types', 'encounters', 'observations',
                             'clinical_notes', 'appointments', 'audit_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I FOR ALL '
            'USING (tenant_id = (SELECT current_setting(''app.tenant_id'', true)::uuid)) '
            'WITH CHECK (tenant_id = (SELECT current_setting(''app.tenant_id'', true)::uuid))',
            t);
    END LOOP;
END
$$;
