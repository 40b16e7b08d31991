-- Tenant data schema, version 3: an index behind every foreign key.
--
-- Version 1 indexed the foreign keys to patients but not those to encounters and
-- appointment_types. Deleting a referenced row then scans every row of the tenant in the
-- referencing table: removing a tenant from the pool (or deleting encounters in bulk) was
-- quadratic in the tenant's size.

CREATE INDEX observations_encounter ON observations (tenant_id, encounter_id);
CREATE INDEX clinical_notes_encounter ON clinical_notes (tenant_id, encounter_id);
CREATE INDEX appointments_type ON appointments (tenant_id, type_code);
