-- Tenant data schema, version 4: a patient's preferred language (a BCP 47 tag such as 'es'
-- or 'zh-Hant'), for interpreter scheduling and patient communications.
--
-- Nullable, without a default and without a CHECK, so ADD COLUMN changes only the catalog:
-- it holds an ACCESS EXCLUSIVE lock for a moment and neither rewrites nor scans the rows,
-- whatever the tenant's size. (A CHECK would scan the table under that lock.)

ALTER TABLE patients ADD COLUMN preferred_language text;
