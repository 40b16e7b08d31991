//! A tenant schema is tried before any tenant gets it: every version is applied, in order,
//! to a throwaway container (a scratch schema in one transaction in a data-plane cluster's
//! admin database, rolled back at the end, so nothing stays), and the catalog is checked
//! after each version.
//! A version that breaks a convention is refused with the file, the object and the rule.
//!
//! The conventions, and why each exists (docs/tenant-schema.md):
//! - every table has `tenant_id uuid NOT NULL`: rows are told apart, copied, exported and
//!   deleted by it;
//! - every primary key, unique constraint and unique index leads with `tenant_id`, and every
//!   foreign key includes it: no key spans tenants, and the pool's shared tables stay one
//!   index range per tenant;
//! - a version does not turn row-level security off on a table tenantd secured (DISABLE or
//!   NO FORCE), does not write its own `tenant_isolation` policy differently from tenantd's
//!   (its current form or the earlier one, which tenantd then replaces),
//!   and adds no other permissive policy (one would widen what a tenant sees). RLS, the
//!   policy and the write fence are tenantd's to add ([`super::isolation`]), after each version
//!   here as in every real container, so a schema needs none of it;
//! - names beginning `tenantd_` are tenantd's;
//! - nothing is created outside the container: no schema-qualified objects elsewhere, no
//!   roles, no event triggers, no grants (access is tenantd's), no extension the
//!   configuration does not allow (`[tenant_schema] extensions`);
//! - a `SECURITY DEFINER` function sets its `search_path`.
//!
//! What the linters users already run would report about the schema's own tables (unindexed
//! foreign keys, missing primary keys, duplicate indexes, functions without a fixed
//! `search_path`) is returned as advice, never refused ([`super::advice`]).

use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::isolation::{Canonical, POLICY_USING};
use super::{Cluster, DataPlaneError};
use crate::sql::{Ident, Statement};
use crate::tenant_schema::{Migration, TenantSchema};

#[derive(Debug, thiserror::Error)]
pub enum ConventionError {
    #[error("tenant schema: {file} is refused: {reason}")]
    Refused { file: String, reason: String },
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
}

/// Tries every version of `schema` in a throwaway container on `cluster` (see the module
/// doc). Nothing is left behind, whatever the outcome. A try cut short by a transient error
/// (a lost connection, a lock or serialization conflict with another session) is made again.
/// What the linters users run would report about the schema's own tables and functions comes
/// back as advice ([`super::advice`]), read after the last version.
pub async fn check(
    cluster: &Cluster,
    schema: &TenantSchema,
    extensions: &[String],
) -> Result<Vec<super::advice::Advice>, ConventionError> {
    let mut attempt = 1;
    loop {
        match try_once(cluster, schema, extensions).await {
            Err(ConventionError::DataPlane(e)) if e.is_transient() && attempt < 3 => {
                tracing::warn!(error = %e, attempt, "tenant schema try interrupted; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn try_once(
    cluster: &Cluster,
    schema: &TenantSchema,
    extensions: &[String],
) -> Result<Vec<super::advice::Advice>, ConventionError> {
    let err = |e| cluster.err(e);
    // The admin database: it always exists, and the try leaves nothing in it.
    let mut tx = cluster.admin().begin().await.map_err(err)?;
    // One snapshot for the whole try: roles or objects other sessions create meanwhile
    // (another tenant's provisioning) are not taken for this migration's.
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '5min'")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    let scratch = Ident::new(format!("tenantd_check_{}", uuid::Uuid::new_v4().simple()))
        .map_err(DataPlaneError::from)?;
    for stmt in [
        Statement::new("CREATE SCHEMA ").ident(&scratch),
        Statement::new("SET LOCAL search_path TO ").ident(&scratch),
    ] {
        sqlx::query(stmt.into_sql())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    let canonical = super::isolation::canonical(cluster).await?;
    let before = outside(cluster, &mut tx, &scratch).await?;
    for m in schema.migrations() {
        let refuse = |reason: String| ConventionError::Refused {
            file: m.file_name(),
            reason,
        };
        let secured = relations_in(cluster, &mut tx, &scratch).await?;
        sqlx::raw_sql(Statement::new("").trusted_file(&m.sql).into_sql())
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if crate::sqlstate::is_transient(&e) {
                    ConventionError::DataPlane(cluster.err(e))
                } else {
                    refuse(format!("it does not apply: {e}"))
                }
            })?;
        let after = outside(cluster, &mut tx, &scratch).await?;
        if let Some(reason) = created_outside(&before, &after, extensions) {
            return Err(refuse(reason));
        }
        if let Some(reason) =
            tables_break_rules(cluster, &mut tx, &scratch, canonical, &secured).await?
        {
            return Err(refuse(reason));
        }
        check_functions(cluster, &mut tx, &scratch, m).await?;
        // What every real container gets after a version, before the next one.
        super::isolation::ensure(cluster, &mut tx, &scratch).await?;
    }
    let advice = super::advice::read(cluster, &mut tx, &scratch).await?;
    // Dropping the transaction rolls back the scratch schema and everything in it.
    drop(tx);
    Ok(advice)
}

/// Every object outside `scratch` that no extension owns (and every role, event trigger and
/// extension), keyed by what identifies it in this transaction's snapshot, with the name to
/// show. Relations, functions and types are keyed by oid: their printed names come from the
/// catalog cache, which sees other sessions' drops, so a neighbour dropping a table during the
/// try must not make that table look new.
async fn outside(
    cluster: &Cluster,
    conn: &mut PgConnection,
    scratch: &Ident,
) -> Result<BTreeMap<String, String>, DataPlaneError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "WITH own AS (SELECT oid FROM pg_namespace WHERE nspname = $1),
              skip AS (SELECT oid FROM pg_namespace
                       WHERE nspname IN ('pg_toast', 'pg_catalog', 'information_schema')
                          OR nspname LIKE 'pg_temp%' OR nspname LIKE 'pg_toast_temp%'
                          OR oid IN (SELECT oid FROM own))
         SELECT 'schema ' || oid::text, 'schema ' || nspname FROM pg_namespace
             WHERE oid NOT IN (SELECT oid FROM skip) AND nspname <> 'public'
         UNION ALL
         SELECT 'relation ' || c.oid::text, 'relation ' || n.nspname || '.' || c.relname
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relnamespace NOT IN (SELECT oid FROM skip)
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.objid = c.oid AND d.deptype = 'e')
         UNION ALL
         SELECT 'function ' || p.oid::text, 'function ' || n.nspname || '.' || p.proname || '()'
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.pronamespace NOT IN (SELECT oid FROM skip)
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.objid = p.oid AND d.deptype = 'e')
         UNION ALL
         SELECT 'type ' || t.oid::text, 'type ' || n.nspname || '.' || t.typname
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typnamespace NOT IN (SELECT oid FROM skip)
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.objid = t.oid AND d.deptype = 'e')
         UNION ALL
         SELECT 'role ' || rolname, 'role ' || rolname FROM pg_roles
         UNION ALL
         SELECT 'event trigger ' || evtname, 'event trigger ' || evtname FROM pg_event_trigger
         UNION ALL
         SELECT 'extension ' || extname, 'extension ' || extname FROM pg_extension",
    )
    .bind(scratch.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| cluster.err(e))?;
    Ok(rows.into_iter().collect())
}

/// What a migration created outside its container, as a refusal.
fn created_outside(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    extensions: &[String],
) -> Option<String> {
    let created = after
        .iter()
        .filter(|(key, _)| !before.contains_key(*key))
        .map(|(_, shown)| shown);
    for new in created {
        let (kind, name) = new.split_once(' ').unwrap_or((new, ""));
        let reason = match kind {
            "extension" if extensions.iter().any(|e| e == name) => continue,
            "extension" => format!(
                "it creates extension {name}, which [tenant_schema] extensions does not allow"
            ),
            "role" => format!("it creates role {name}: roles and logins are tenantd's"),
            "event trigger" => {
                format!("it creates event trigger {name}: event triggers act on the whole database")
            }
            _ => format!(
                "it creates {new} outside the tenant's container: write unqualified names, \
                 the migration runs in each container's own schema"
            ),
        };
        return Some(reason);
    }
    None
}

/// The relations in `scratch` now: before a version, those tenantd has secured.
async fn relations_in(
    cluster: &Cluster,
    conn: &mut PgConnection,
    scratch: &Ident,
) -> Result<Vec<sqlx::postgres::types::Oid>, DataPlaneError> {
    sqlx::query_scalar(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1",
    )
    .bind(scratch.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| cluster.err(e))
}

/// The first table rule the container breaks, if any. `secured`: the relations that were
/// there before the version (tenantd secured them after the last one).
async fn tables_break_rules(
    cluster: &Cluster,
    conn: &mut PgConnection,
    scratch: &Ident,
    canonical: &Canonical,
    secured: &[sqlx::postgres::types::Oid],
) -> Result<Option<String>, DataPlaneError> {
    let err = |e| cluster.err(e);
    // One row per broken rule, ordered so the message is the same on every run.
    let broken: Vec<(i32, String)> = sqlx::query_as(
        "WITH t AS (
             SELECT c.oid, c.relname::text AS name, c.relrowsecurity, c.relforcerowsecurity,
                    c.relispartition, c.relacl,
                    (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = c.oid
                       AND a.attname = 'tenant_id' AND a.atttypid = 'uuid'::regtype
                       AND a.attnotnull AND NOT a.attisdropped) AS tenant
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
               AND c.relname <> ALL($2))
         SELECT 1, format('table %s has no tenant_id uuid NOT NULL column', name)
             FROM t WHERE tenant IS NULL
         UNION ALL
         SELECT 2, format('%s %s of table %s does not lead with tenant_id',
                       CASE k.contype WHEN 'p' THEN 'the primary key' ELSE 'unique constraint' END,
                       k.conname, t.name)
             FROM t JOIN pg_constraint k ON k.conrelid = t.oid
             WHERE t.tenant IS NOT NULL AND k.contype IN ('p', 'u') AND k.conkey[1] <> t.tenant
         UNION ALL
         SELECT 3, format('unique index %s of table %s does not lead with tenant_id',
                       i.indexrelid::regclass, t.name)
             FROM t JOIN pg_index i ON i.indrelid = t.oid
             WHERE t.tenant IS NOT NULL AND i.indisunique AND i.indkey[0] <> t.tenant
         UNION ALL
         SELECT 4, format('foreign key %s of table %s does not include tenant_id',
                       k.conname, t.name)
             FROM t JOIN pg_constraint k ON k.conrelid = t.oid
             WHERE t.tenant IS NOT NULL AND k.contype = 'f' AND NOT t.tenant = ANY(k.conkey)
         UNION ALL
         SELECT 5, format('table %s: the version turns row-level security off \
                        (DISABLE or NO FORCE ROW LEVEL SECURITY); tenantd enables and forces \
                        it on every tenant table', name)
             FROM t WHERE t.oid = ANY($8) AND NOT (relrowsecurity AND relforcerowsecurity)
         UNION ALL
         SELECT 6, format('policy tenant_isolation on table %s is not tenantd''s \
                           (FOR ALL USING (%s) WITH CHECK (%s)): leave it out, tenantd adds it',
                          t.name, $5::text, $5::text)
             FROM t JOIN pg_policy p ON p.polrelid = t.oid
             WHERE p.polname = 'tenant_isolation'
               AND NOT (p.polpermissive AND p.polcmd = '*'
                        AND ((pg_get_expr(p.polqual, p.polrelid) IS NOT DISTINCT FROM $3
                              AND pg_get_expr(p.polwithcheck, p.polrelid) IS NOT DISTINCT FROM $4)
                             -- The earlier form (the example's version 1): ensure replaces it.
                             OR (pg_get_expr(p.polqual, p.polrelid) IS NOT DISTINCT FROM $9
                                 AND pg_get_expr(p.polwithcheck, p.polrelid)
                                     IS NOT DISTINCT FROM $10)))
         UNION ALL
         SELECT 7, format('policy %s on table %s is permissive: it widens what a tenant sees \
                        (make it AS RESTRICTIVE)', p.polname, t.name)
             FROM t JOIN pg_policy p ON p.polrelid = t.oid
             WHERE p.polpermissive AND p.polname <> 'tenant_isolation'
         UNION ALL
         SELECT 8, format('table %s carries grants: access to tenant tables is tenantd''s', name)
             FROM t WHERE relacl IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pg_default_acl d
                               WHERE d.defaclrole = (SELECT oid FROM pg_roles
                                                     WHERE rolname = current_user))
         UNION ALL
         SELECT 9, format('%s is named like tenantd''s own objects: names beginning \
                           tenantd_ are tenantd''s', c.oid::regclass)
             FROM pg_class c
             WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
               AND c.relname LIKE 'tenantd\\_%' AND NOT c.oid = ANY($8)
         UNION ALL
         SELECT 9, format('function %s is named like tenantd''s own objects: names \
                           beginning tenantd_ are tenantd''s', p.oid::regprocedure)
             FROM pg_proc p
             WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
               AND p.proname LIKE 'tenantd\\_%'
               AND NOT (p.proname = $6 AND p.prosrc = $7)
         ORDER BY 1, 2",
    )
    .bind(scratch.as_str())
    .bind(super::tables::NOT_TENANT_DATA)
    .bind(&canonical.using)
    .bind(&canonical.check)
    .bind(POLICY_USING)
    .bind(super::fence::FUNCTION)
    .bind(super::isolation::FENCE_BODY)
    .bind(secured)
    .bind(&canonical.previous_using)
    .bind(&canonical.previous_check)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    Ok(broken.into_iter().next().map(|(_, r)| r))
}

/// A `SECURITY DEFINER` function must pin its `search_path`, or a caller's path decides what
/// its unqualified names resolve to, with the definer's rights.
async fn check_functions(
    cluster: &Cluster,
    conn: &mut PgConnection,
    scratch: &Ident,
    m: &Migration,
) -> Result<(), ConventionError> {
    let unsafe_definers: Vec<(String,)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = $1 AND p.prosecdef
           AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
         ORDER BY 1",
    )
    .bind(scratch.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| cluster.err(e))?;
    match unsafe_definers.into_iter().next() {
        None => Ok(()),
        Some((f,)) => Err(ConventionError::Refused {
            file: m.file_name(),
            reason: format!("function {f} is SECURITY DEFINER without SET search_path"),
        }),
    }
}
