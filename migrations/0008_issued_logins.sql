-- Logins issued to applications (IssueCredentials): one row per login role tenantd created
-- on a data-plane cluster, so that the reaper, RevokeCredentials, a tier change's cleanup
-- and a deletion can find and drop them. The password is never stored: only the role's
-- name, where it lives and until when. The audit log keeps who was issued what; a row is
-- removed once its role is dropped.
CREATE TABLE issued_logins (
    username      text PRIMARY KEY CHECK (username ~ '^tl_[0-9a-f]{32}_[0-9a-z]+$'),
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    cluster       text NOT NULL,
    -- The tenant's routing epoch when the login was issued: a tier change drops the logins
    -- issued before its switch (they name the old placement).
    routing_epoch bigint NOT NULL,
    issued_by     text NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    -- Set by RevokeCredentials, a tier change or a deletion: the reaper drops it now.
    revoked_at    timestamptz
);

CREATE INDEX issued_logins_tenant ON issued_logins (tenant_id);
CREATE INDEX issued_logins_due ON issued_logins (least(expires_at, revoked_at));
