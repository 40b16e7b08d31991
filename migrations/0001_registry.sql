-- Control-plane registry. See docs/registry.md for which facts live here and why.

CREATE TABLE clusters (
    name          text PRIMARY KEY,
    host          text NOT NULL,
    port          integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    -- Shared database holding the pool tables and the schema-tier schemas.
    shared_database text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id             uuid PRIMARY KEY,
    slug           text NOT NULL CHECK (slug ~ '^[a-z][a-z0-9-]{2,62}$'),
    display_name   text NOT NULL,
    plan           text NOT NULL,
    labels         jsonb NOT NULL DEFAULT '{}'::jsonb,
    tier           text NOT NULL CHECK (tier IN ('pool', 'schema', 'database')),
    state          text NOT NULL CHECK (state IN ('provisioning', 'active', 'failed')),
    cluster        text NOT NULL REFERENCES clusters (name),
    database_name  text,
    schema_name    text,
    role_name      text,
    schema_version integer NOT NULL DEFAULT 0,
    routing_epoch  bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A slug names at most one live tenant; a failed provisioning frees it.
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE state <> 'failed';
CREATE INDEX tenants_listing ON tenants (created_at, id);

-- Data-plane credentials, only ever stored sealed by the key provider.
CREATE TABLE tenant_credentials (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    role_name  text NOT NULL,
    key_id     text NOT NULL,
    sealed     bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, role_name)
);

CREATE TABLE operations (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    request_id       text,
    request_hash     bytea,
    state            text NOT NULL CHECK (state IN
                       ('pending', 'running', 'compensating', 'succeeded', 'failed', 'cancelled')),
    -- Versioned serde envelope of the workflow's own state (see workflow::Envelope).
    data             jsonb NOT NULL,
    next_step        integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    error_code       integer,
    error_message    text,
    error_step       text,
    -- Lease: a worker owns the operation until lease_expires_at; every write checks the token.
    lease_token      uuid,
    lease_owner      text,
    lease_expires_at timestamptz,
    -- Retry back-off: not runnable before this instant.
    run_after        timestamptz NOT NULL DEFAULT now(),
    failures         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

-- At most one active lifecycle operation per tenant, enforced by the database.
CREATE UNIQUE INDEX operations_one_active_per_tenant ON operations (tenant_id)
    WHERE state IN ('pending', 'running', 'compensating');
-- AIP-155: a request id names one operation per kind.
CREATE UNIQUE INDEX operations_request_id ON operations (kind, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX operations_runnable ON operations (run_after)
    WHERE state IN ('pending', 'running', 'compensating');
CREATE INDEX operations_listing ON operations (created_at, id);
CREATE INDEX operations_by_tenant ON operations (tenant_id, created_at);

CREATE TABLE operation_steps (
    operation_id   uuid NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    idx            integer NOT NULL,
    name           text NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts       integer NOT NULL DEFAULT 0,
    started_at     timestamptz,
    finished_at    timestamptz,
    progress_done  bigint NOT NULL DEFAULT 0,
    progress_total bigint NOT NULL DEFAULT 0,
    last_error     text,
    PRIMARY KEY (operation_id, idx)
);
