-- Tenant data schema, version 2: the write fence used while a tenant's data moves between
-- containers (tier changes, restores).
--
-- A fence is a row in tenant_write_fences. While a tenant is fenced in this container, any
-- INSERT, UPDATE or DELETE on a tenant table by an application session for that tenant fails
-- with SQLSTATE TF001 ("tenant ... is fenced for maintenance"), which applications treat as
-- retryable: resolve the tenant's route again, then retry the transaction. Reads go on.
--
-- The check is a statement-level trigger (once per statement, not per row): an application
-- session can only write rows of the tenant in app.tenant_id (forced RLS WITH CHECK and
-- USING), so that setting names the tenant a statement writes. Sessions of the tables' owner
-- (tenantd's maintenance sessions: copy, cleanup) are not fenced.
--
-- Waiting out writers that passed the check before the fence committed is tenantd's job
-- (dataplane::fence), not this file's.

CREATE TABLE tenant_write_fences (
    tenant_id    uuid PRIMARY KEY,
    operation_id uuid NOT NULL,
    fenced_at    timestamptz NOT NULL DEFAULT now()
);

-- Application roles may read their own tenant's fence (the trigger runs as them); they are
-- granted SELECT with the tenant tables, never write access.
ALTER TABLE tenant_write_fences ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_write_fences FOR SELECT
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)::uuid));

-- Resolve names in this container whatever the caller's search_path; pg_temp last so a
-- session cannot shadow the fence table with a temporary one.
SELECT set_config('search_path', current_setting('search_path') || ', pg_temp', true);

CREATE FUNCTION tenant_write_fence() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    tenant uuid := nullif(current_setting('app.tenant_id', true), '')::uuid;
BEGIN
    IF tenant IS NOT NULL
       AND EXISTS (SELECT 1 FROM tenant_write_fences f WHERE f.tenant_id = tenant)
       AND NOT pg_has_role(current_user,
                           (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID),
                           'MEMBER')
    THEN
        RAISE EXCEPTION 'tenant % is fenced for maintenance; retry the transaction', tenant
            USING ERRCODE = 'TF001',
                  HINT = 'Its data is moving. Resolve the tenant''s route again, then retry.';
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['patients', 'appointment_types', 'encounters', 'observations',
                             'clinical_notes', 'appointments', 'audit_events']
    LOOP
        EXECUTE format(
            'CREATE TRIGGER tenant_write_fence BEFORE INSERT OR UPDATE OR DELETE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION tenant_write_fence()', t);
    END LOOP;
END
$$;
