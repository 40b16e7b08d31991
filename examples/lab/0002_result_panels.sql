-- Version 2: results belong to panels, and "value" says what it is.
CREATE TABLE panels (
    tenant_id uuid NOT NULL,
    code      text NOT NULL,
    title     text NOT NULL,
    PRIMARY KEY (tenant_id, code)
);

ALTER TABLE results RENAME COLUMN value TO measured_value;
ALTER TABLE results ADD COLUMN panel_code text;
ALTER TABLE results ADD FOREIGN KEY (tenant_id, panel_code) REFERENCES panels (tenant_id, code);
