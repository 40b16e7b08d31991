//! What tenantd adds to every container, whatever the tenant schema says: the user's SQL
//! creates tables; tenantd then secures each one. On every tenant table of the container,
//! partitions included (a partition can be read or written directly, past its parent's
//! policies and statement triggers):
//! - row-level security enabled and forced, with the policy `tenant_isolation`
//!   ([`POLICY_USING`]): a session sees and writes only the rows of the tenant its login is
//!   bound to (a login tenantd issued, or a tenant's own role), or, for a role that serves
//!   many tenants, of the tenant in `app.tenant_id`;
//! - the write fence ([`super::fence`]): in a container without one, the `tenantd_write_fences`
//!   table and the `tenantd_write_fence()` trigger function; then the fence's statement-level
//!   trigger on every table. The fence's function and its table's policy use the same
//!   binding, so a bound login cannot write past its own tenant's fence by naming another.
//!
//! The migrator runs [`ensure`] in the transaction that applies new versions, after them, so
//! a table, partition or column a later version adds is covered before any session sees it;
//! the tier change, the in-place restore and credential issuance run it again first
//! ([`secure`]), so a trigger dropped or disabled by hand, or a policy of an earlier form, is
//! replaced before anything relies on it. Only what is missing is written: on a container that
//! has it all, `ensure` is a few catalog reads and [`secure`] takes no lock. A schema that
//! creates these itself keeps its tables and fence table, but its `tenant_isolation` policies
//! and fence function are rewritten as tenantd's (the example's early versions create both,
//! in the form tenantd used before logins were bound to a tenant).

use sqlx::{PgConnection, PgPool};

use super::{Cluster, DataPlaneError, fence};
use crate::sql::{Ident, Statement};

/// The tenant a session's login binds it to, if any: the 32 hex digits of a tenant id in
/// the name of a login tenantd issued (`tl_<id>_<suffix>`, [`crate::credentials`]) or of a
/// tenant's own role (`t_<id>`). `session_user` is the role that authenticated: `SET ROLE`
/// does not change it and only a superuser can, so no setting a session makes can move such
/// a login to another tenant. Only tenantd creates roles on its clusters.
macro_rules! login_tenant {
    () => {
        "substring(session_user, '^tl?_([0-9a-f]{32})(_[0-9a-z]+)?$')"
    };
}
pub(crate) use login_tenant;

/// The USING and WITH CHECK of tenantd's policy: the tenant the session's login is bound to,
/// else (a role that serves many tenants, such as a member of the pool role the operator
/// manages) the tenant in `app.tenant_id`. Each sub-select is one InitPlan per statement,
/// not a call per row, with the cast outside it so that linters see the InitPlan form.
pub const POLICY_USING: &str = concat!(
    "tenant_id = coalesce((SELECT ",
    login_tenant!(),
    ")::uuid, (SELECT current_setting('app.tenant_id', true))::uuid)"
);

/// The policy tenantd wrote before logins were bound to a tenant (the example schema's
/// version 1 writes it too): still accepted from a schema's SQL, and replaced by
/// [`POLICY_USING`] wherever [`ensure`] finds it.
pub const PREVIOUS_POLICY_USING: &str =
    "tenant_id = (SELECT current_setting('app.tenant_id', true)::uuid)";

/// The policy's name on every tenant table.
pub const POLICY: &str = "tenant_isolation";

/// The fence trigger function's body for the fence table `$table`. An application session
/// (one for a tenant, not a member of the tables' owner) writing while its tenant has a fence
/// row fails with SQLSTATE TF001; tenantd's own sessions (the owner's) pass. The tenant is
/// the one the session's policy admits ([`POLICY_USING`]), so a bound login cannot name
/// another tenant to write past its own fence. Statement-level: once per statement.
macro_rules! fence_body {
    ($table:literal) => {
        concat!(
            "
DECLARE
    tenant uuid := coalesce(",
            $crate::dataplane::isolation::login_tenant!(),
            "::uuid,
                            nullif(current_setting('app.tenant_id', true), '')::uuid);
BEGIN
    IF tenant IS NOT NULL
       AND EXISTS (SELECT 1 FROM ",
            $table,
            " f WHERE f.tenant_id = tenant)
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
"
        )
    };
}
pub(super) use fence_body;

/// tenantd's fence function body ([`fence::OWN`]).
pub(super) const FENCE_BODY: &str = fence::OWN.body;

/// How this server prints tenantd's policy expressions (`pg_get_expr`), to tell a current
/// policy from one written earlier or by hand.
#[derive(Debug, Clone)]
pub struct Canonical {
    pub using: String,
    pub check: String,
    /// [`PREVIOUS_POLICY_USING`], as USING and as WITH CHECK.
    pub previous_using: String,
    pub previous_check: String,
}

/// [`Canonical`] for `cluster`'s server, read once (a probe table in a transaction that is
/// rolled back) and then kept: it only changes with the server's version.
pub async fn canonical(cluster: &Cluster) -> Result<&Canonical, DataPlaneError> {
    cluster
        .canonical_policy
        .get_or_try_init(|| async {
            let err = |e| cluster.err(e);
            let mut tx = cluster.admin().begin().await.map_err(err)?;
            let probe = format!(
                "CREATE TEMPORARY TABLE tenantd_policy_probe (tenant_id uuid NOT NULL);
                 CREATE POLICY now ON tenantd_policy_probe FOR ALL
                     USING ({POLICY_USING}) WITH CHECK ({POLICY_USING});
                 CREATE POLICY before ON tenantd_policy_probe FOR ALL
                     USING ({PREVIOUS_POLICY_USING}) WITH CHECK ({PREVIOUS_POLICY_USING});"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(probe))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT polname::text, pg_get_expr(polqual, polrelid),
                        pg_get_expr(polwithcheck, polrelid)
                 FROM pg_policy WHERE polrelid = 'tenantd_policy_probe'::regclass
                 ORDER BY polname = 'now' DESC",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            tx.rollback().await.map_err(err)?;
            let [(_, using, check), (_, previous_using, previous_check)] = <[_; 2]>::try_from(rows)
                .map_err(|_| DataPlaneError::Invariant("policy probe did not read back".into()))?;
            Ok(Canonical {
                using,
                check,
                previous_using,
                previous_check,
            })
        })
        .await
}

/// One tenant table (or partition) and what it lacks.
#[derive(sqlx::FromRow)]
struct Lacking {
    name: String,
    rls_off: bool,
    not_forced: bool,
    no_policy: bool,
    /// A `tenant_isolation` policy that is not tenantd's current one (an earlier form).
    stale_policy: bool,
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
    let ddl = plan(cluster, conn, schema).await?;
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
        .map_err(|e| cluster.err(e))?;
    Ok(true)
}

/// The statements that would give `schema` what it lacks, read on `conn`; none when it has it
/// all. Writes nothing.
async fn plan(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
) -> Result<Vec<Statement>, DataPlaneError> {
    let err = |e| cluster.err(e);
    let canonical = canonical(cluster).await?;
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
            ddl.extend(fence_table_policy(schema, &fences));
            fence::OWN
        }
    };
    // Application roles read their own tenant's fence (the trigger runs as them), through
    // the same binding as the tenant tables: a fence table whose policy trusts a setting
    // would let a bound login hide its own fence from the trigger.
    let stale_fences: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind = 'r'
           AND NOT (c.relrowsecurity
                    AND EXISTS (SELECT 1 FROM pg_policy p
                                WHERE p.polrelid = c.oid AND p.polname = $3
                                  AND p.polpermissive AND p.polcmd = 'r'
                                  AND pg_get_expr(p.polqual, p.polrelid) = $4))
         ORDER BY 1",
    )
    .bind(schema.as_str())
    .bind(fence::TABLES)
    .bind(POLICY)
    .bind(&canonical.using)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    for (name,) in stale_fences {
        let fences = Ident::new(name)?;
        ddl.push(
            Statement::new("DROP POLICY IF EXISTS tenant_isolation ON ").qualified(schema, &fences),
        );
        ddl.extend(fence_table_policy(schema, &fences));
    }
    // The fence function is kept as tenantd writes it, in either kind of fence.
    let function_ok: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE n.nspname = $1 AND p.proname = $2 AND p.pronargs = 0
                          AND p.prosrc = $3 AND NOT p.prosecdef
                          AND p.proconfig IS NOT NULL)",
    )
    .bind(schema.as_str())
    .bind(kind.function)
    .bind(kind.body)
    .fetch_one(&mut *conn)
    .await
    .map_err(err)?;
    if !function_ok {
        // The path is pinned to the container (and pg_temp last, so a session cannot shadow
        // the fence table with a temporary one); a rename of the schema carries it along
        // (staging rewrites function paths).
        ddl.push(
            Statement::new("CREATE OR REPLACE FUNCTION ")
                .qualified(schema, &Ident::from_static(kind.function))
                .push("() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER SET search_path = ")
                .ident(schema)
                .push(", pg_temp AS $tenantd$")
                .push(kind.body)
                .push("$tenantd$"),
        );
    }
    let lacking: Vec<Lacking> = sqlx::query_as(
        "WITH rel AS (
             SELECT c.oid, c.relname::text AS name,
                    NOT c.relrowsecurity AS rls_off, NOT c.relforcerowsecurity AS not_forced,
                    (SELECT p.polpermissive AND p.polcmd = '*'
                            AND pg_get_expr(p.polqual, p.polrelid) IS NOT DISTINCT FROM $5
                            AND pg_get_expr(p.polwithcheck, p.polrelid) IS NOT DISTINCT FROM $6
                     FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = $3) AS current,
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
                             AND a.attname = 'tenant_id' AND NOT a.attisdropped))
         SELECT name, rls_off, not_forced, current IS NULL AS no_policy,
                coalesce(NOT current, false) AS stale_policy, no_trigger, trigger_disabled
         FROM rel
         WHERE rls_off OR not_forced OR current IS NOT TRUE OR no_trigger OR trigger_disabled
         ORDER BY 1",
    )
    .bind(schema.as_str())
    .bind(super::tables::NOT_TENANT_DATA)
    .bind(POLICY)
    .bind(kind.trigger)
    .bind(&canonical.using)
    .bind(&canonical.check)
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
        if t.stale_policy {
            // Replaced in the same transaction: no statement ever sees the table without one.
            ddl.push(Statement::new("DROP POLICY tenant_isolation ON ").qualified(schema, &table));
        }
        if t.no_policy || t.stale_policy {
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
    Ok(ddl)
}

/// Row-level security on a fence table: a session reads only its own tenant's fence row.
fn fence_table_policy(schema: &Ident, fences: &Ident) -> [Statement; 2] {
    [
        Statement::new("ALTER TABLE ")
            .qualified(schema, fences)
            .push(" ENABLE ROW LEVEL SECURITY"),
        Statement::new("CREATE POLICY tenant_isolation ON ")
            .qualified(schema, fences)
            .push(" FOR SELECT USING (")
            .push(POLICY_USING)
            .push(")"),
    ]
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
    // Most of the time nothing is missing: one catalog read, and no lock that would make
    // concurrent callers (every credential issued in the pool) take turns.
    let mut conn = pool.acquire().await.map_err(err)?;
    if plan(cluster, &mut conn, schema).await?.is_empty() {
        return Ok(());
    }
    drop(conn);
    let mut tx = pool.begin().await.map_err(err)?;
    super::catalog::lock_container(cluster, &mut tx, schema, lock_timeout).await?;
    let wrote = ensure(cluster, &mut tx, schema).await?;
    tx.commit().await.map_err(err)?;
    if wrote {
        super::catalog::regrant(cluster, pool, schema).await?;
    }
    Ok(())
}
