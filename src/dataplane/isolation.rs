//! What tenantd adds to every container, whatever the tenant schema says: the user's SQL
//! creates tables; tenantd then secures each one. On every tenant table of the container,
//! partitions included (a partition can be read or written directly, past its parent's
//! policies and statement triggers):
//! - row-level security enabled and forced, with the policy `tenant_isolation`
//!   ([`POLICY_USING`]: the tenant in `app.tenant_id` sees and writes only its own rows);
//! - the write fence ([`super::fence`]): in a container without one, the `tenantd_write_fences`
//!   table and the `tenantd_write_fence()` trigger function; then the fence's statement-level
//!   trigger on every table.
//!
//! The migrator runs [`ensure`] in the transaction that applies new versions, after them, so
//! a table, partition or column a later version adds is covered before any session sees it;
//! the tier change and the in-place restore run it again before they fence ([`secure`]), so
//! a trigger dropped or disabled by hand is back before a move relies on it. Only what is
//! missing is written: on a container that has it all, `ensure` is one catalog read (the
//! shared pool is secured once, not once per tenant). A schema that creates these itself is
//! left as it is: the example's early versions create RLS, the policies and a fence of their
//! own, and tenantd's step adds nothing to their containers but the fence's trigger on a
//! table a later version adds.

use sqlx::{PgConnection, PgPool};

use super::{Cluster, DataPlaneError, fence};
use crate::sql::{Ident, Statement};

/// The USING and WITH CHECK of tenantd's policy. The sub-select makes it one InitPlan per
/// statement, not a call per row.
pub const POLICY_USING: &str = "tenant_id = (SELECT current_setting('app.tenant_id', true)::uuid)";

/// The policy's name on every tenant table.
pub const POLICY: &str = "tenant_isolation";

/// The fence trigger function's body. An application session (one for a tenant, not a member
/// of the tables' owner) writing while its tenant has a fence row fails with SQLSTATE TF001;
/// tenantd's own sessions (the owner's) pass. Statement-level: once per statement.
pub(super) const FENCE_BODY: &str = "
DECLARE
    tenant uuid := nullif(current_setting('app.tenant_id', true), '')::uuid;
BEGIN
    IF tenant IS NOT NULL
       AND EXISTS (SELECT 1 FROM tenantd_write_fences f WHERE f.tenant_id = tenant)
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
";

/// One tenant table (or partition) and what it lacks.
#[derive(sqlx::FromRow)]
struct Lacking {
    name: String,
    rls_off: bool,
    not_forced: bool,
    no_policy: bool,
    no_trigger: bool,
    trigger_disabled: bool,
}

/// Adds whatever of the isolation machinery `schema` lacks (see the module doc), on `conn`,
/// which must be in a transaction holding the container's migration lock. Returns whether it
/// wrote anything.
pub async fn ensure(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
) -> Result<bool, DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut ddl: Vec<Statement> = Vec::new();
    let kind = match fence::in_use(cluster, &mut *conn, schema).await? {
        Some(kind) => kind,
        None => {
            let fences = Ident::from_static(fence::OWN.table);
            ddl.push(
                Statement::new("CREATE TABLE ")
                    .qualified(schema, &fences)
                    .push(
                        " (tenant_id uuid PRIMARY KEY, operation_id uuid NOT NULL, \
                         fenced_at timestamptz NOT NULL DEFAULT now())",
                    ),
            );
            // Application roles read their own tenant's fence (the trigger runs as them).
            ddl.push(
                Statement::new("ALTER TABLE ")
                    .qualified(schema, &fences)
                    .push(" ENABLE ROW LEVEL SECURITY"),
            );
            ddl.push(
                Statement::new("CREATE POLICY tenant_isolation ON ")
                    .qualified(schema, &fences)
                    .push(" FOR SELECT USING (")
                    .push(POLICY_USING)
                    .push(")"),
            );
            fence::OWN
        }
    };
    // tenantd's function is kept as tenantd writes it; the example's is the schema's own.
    let function_ok: bool = kind != fence::OWN
        || sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                            WHERE n.nspname = $1 AND p.proname = $2 AND p.pronargs = 0
                              AND p.prosrc = $3 AND NOT p.prosecdef
                              AND p.proconfig IS NOT NULL)",
        )
        .bind(schema.as_str())
        .bind(fence::OWN.function)
        .bind(FENCE_BODY)
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    if !function_ok {
        // The path is pinned to the container (and pg_temp last, so a session cannot shadow
        // the fence table with a temporary one); a rename of the schema carries it along
        // (staging rewrites function paths).
        ddl.push(
            Statement::new("CREATE OR REPLACE FUNCTION ")
                .qualified(schema, &Ident::from_static(fence::OWN.function))
                .push("() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER SET search_path = ")
                .ident(schema)
                .push(", pg_temp AS $tenantd$")
                .push(FENCE_BODY)
                .push("$tenantd$"),
        );
    }
    let lacking: Vec<Lacking> = sqlx::query_as(
        "SELECT c.relname::text AS name,
                NOT c.relrowsecurity AS rls_off, NOT c.relforcerowsecurity AS not_forced,
                NOT EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = c.oid AND p.polname = $3) AS no_policy,
                NOT EXISTS (SELECT 1 FROM pg_trigger g
                            WHERE g.tgrelid = c.oid AND g.tgname = $4) AS no_trigger,
                EXISTS (SELECT 1 FROM pg_trigger g
                        WHERE g.tgrelid = c.oid AND g.tgname = $4
                          AND g.tgenabled = 'D') AS trigger_disabled
         FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
         -- The schema's relations through pg_depend's index (see tables::names_in).
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid = 'pg_class'::regclass
           AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1)
           AND d.deptype = 'n'
           AND c.relkind IN ('r', 'p') AND c.relname <> ALL($2)
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                         AND a.attname = 'tenant_id' AND NOT a.attisdropped)
           AND (NOT c.relrowsecurity OR NOT c.relforcerowsecurity
                OR NOT EXISTS (SELECT 1 FROM pg_policy p
                               WHERE p.polrelid = c.oid AND p.polname = $3)
                OR NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid
                                 AND g.tgname = $4 AND g.tgenabled <> 'D'))
         ORDER BY 1",
    )
    .bind(schema.as_str())
    .bind(super::tables::NOT_TENANT_DATA)
    .bind(POLICY)
    .bind(kind.trigger)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    for t in &lacking {
        let table = Ident::new(t.name.clone())?;
        let alter = || Statement::new("ALTER TABLE ").qualified(schema, &table);
        if t.rls_off {
            ddl.push(alter().push(" ENABLE ROW LEVEL SECURITY"));
        }
        if t.not_forced {
            ddl.push(alter().push(" FORCE ROW LEVEL SECURITY"));
        }
        if t.no_policy {
            ddl.push(
                Statement::new("CREATE POLICY tenant_isolation ON ")
                    .qualified(schema, &table)
                    .push(" FOR ALL USING (")
                    .push(POLICY_USING)
                    .push(") WITH CHECK (")
                    .push(POLICY_USING)
                    .push(")"),
            );
        }
        let trigger = Ident::from_static(kind.trigger);
        if t.no_trigger {
            ddl.push(
                Statement::new("CREATE TRIGGER ")
                    .ident(&trigger)
                    .push(" BEFORE INSERT OR UPDATE OR DELETE ON ")
                    .qualified(schema, &table)
                    .push(" FOR EACH STATEMENT EXECUTE FUNCTION ")
                    .qualified(schema, &Ident::from_static(kind.function))
                    .push("()"),
            );
        }
        if t.trigger_disabled {
            ddl.push(alter().push(" ENABLE TRIGGER ").ident(&trigger));
        }
    }
    if ddl.is_empty() {
        return Ok(false);
    }
    // One round trip for all of it (simple query protocol: several statements, no
    // parameters), inside the caller's transaction.
    let mut all = Statement::new("");
    for stmt in ddl {
        all = all.append(stmt).push(";\n");
    }
    sqlx::raw_sql(all.into_sql())
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(true)
}

/// [`ensure`] on its own, under the container's migration lock, then the grants of the roles
/// that reach the container if anything was added: what a workflow runs before it relies on
/// the fence of a container no migration touched lately.
pub async fn secure(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    lock_timeout: std::time::Duration,
) -> Result<(), DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut tx = pool.begin().await.map_err(err)?;
    super::catalog::lock_container(cluster, &mut tx, schema, lock_timeout).await?;
    let wrote = ensure(cluster, &mut tx, schema).await?;
    tx.commit().await.map_err(err)?;
    if wrote {
        super::catalog::regrant(cluster, pool, schema).await?;
    }
    Ok(())
}
