-- Every new container starts with its main lab. Repeatable: a retried provisioning runs it
-- again.
INSERT INTO labs (tenant_id, name)
SELECT current_setting('app.tenant_id')::uuid, 'Main lab'
WHERE NOT EXISTS (SELECT 1 FROM labs WHERE tenant_id = current_setting('app.tenant_id')::uuid
                                        AND name = 'Main lab');
