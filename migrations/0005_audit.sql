-- The audit log (issue 7). See docs/security.md and src/audit.rs.

-- One entry per call that changes state or touches tenant data, and per refused call.
-- `tenant_id` is the nil uuid for entries about no tenant. Entries of one tenant form a hash
-- chain: `hash` covers every other field and `prev_hash`, the previous entry's `hash`.
CREATE TABLE audit_events (
    tenant_id  uuid        NOT NULL,
    seq        bigint      NOT NULL CHECK (seq > 0),
    at         timestamptz NOT NULL,
    principal  text        NOT NULL,
    role       text        NOT NULL,
    method     text        NOT NULL,
    target     text        NOT NULL,
    request_id text        NOT NULL,
    code       text        NOT NULL,
    detail     text        NOT NULL,
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- The head of each chain: its last entry's seq and hash. Appending locks the head row, so
-- appends to one chain are serialised and never fork it. Without the head, removing the last
-- entries of a chain would leave a shorter chain that still verifies.
CREATE TABLE audit_chains (
    tenant_id uuid   PRIMARY KEY,
    seq       bigint NOT NULL CHECK (seq >= 0),
    head      bytea  NOT NULL
);

-- Append-only, for the role tenantd runs as and everyone else who does not first disable the
-- triggers (the hash chain then shows what they did).
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- A chain head only moves forward, one entry at a time, and is never removed.
CREATE FUNCTION audit_chain_advance_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.tenant_id <> OLD.tenant_id OR NEW.seq <> OLD.seq + 1 THEN
        RAISE EXCEPTION 'audit chain heads only advance: % on audit_chains refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_chains_advance_only
    BEFORE UPDATE OR DELETE ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION audit_chain_advance_only();
CREATE TRIGGER audit_chains_no_truncate
    BEFORE TRUNCATE ON audit_chains
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_chains FROM PUBLIC;
