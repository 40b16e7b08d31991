-- Reference data every tenant starts with; tenants may change their own copy.
-- tenantd runs a seed once per new container, with search_path set to the container's schema
-- and app.tenant_id to the tenant's id; ON CONFLICT makes a repeated run insert nothing.
INSERT INTO appointment_types (tenant_id, code, name, duration_minutes)
SELECT current_setting('app.tenant_id')::uuid, code, name, minutes
FROM (VALUES
    ('new-patient', 'New patient visit', 30),
    ('follow-up', 'Follow-up visit', 15),
    ('telehealth', 'Telehealth visit', 20),
    ('annual-physical', 'Annual physical', 45)
) AS v (code, name, minutes)
ON CONFLICT DO NOTHING;
