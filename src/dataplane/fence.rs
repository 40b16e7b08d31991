//! The write fence: while a tenant's data moves between containers, its application sessions
//! may read but not write it.
//!
//! A fence is a row in the container's fence table. A statement-level trigger on every
//! tenant table refuses INSERT, UPDATE and DELETE by an application session whose
//! `app.tenant_id` is fenced, with SQLSTATE [`SQLSTATE`]; sessions of the tables' owner
//! (tenantd's own copy and cleanup) pass. Other tenants are never affected: the fence names
//! one tenant. Every container has one, whatever its schema ([`super::isolation`] adds it):
//! - tenantd's own ([`OWN`]: `tenantd_write_fences`, `tenantd_write_fence()`);
//! - or, in a container made from the example schema, the fence its version 2 created
//!   before tenantd added one ([`LEGACY`]: `tenant_write_fences`, `tenant_write_fence()`),
//!   which does the same; tenantd keeps using it there and gives its trigger to every table.
//!
//! A fence is written to the table in use ([`in_use`]) and lifted from every fence table the
//! container has, so a fence set before a container changed fences is lifted too.
//!
//! Committing the fence row is not enough on its own: a transaction that wrote before the
//! fence committed (or that holds a snapshot taken before it, in REPEATABLE READ) can still
//! commit rows a copy started now would miss. [`wait_for_writers`] therefore waits until every
//! application transaction in the container's database that began before the fence has
//! ended, and gives up after a deadline rather than wait forever on an idle-in-transaction
//! session.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Cluster, Container, DataPlaneError};
use crate::sql::{Ident, Statement};

/// When a workflow fenced a tenant's writes and when it allowed them again (stored in its
/// state, flattened).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pause {
    #[serde(default)]
    pub fenced_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub unfenced_at: Option<DateTime<Utc>>,
}

impl Pause {
    /// How long the tenant could not write, once its writes are allowed again.
    pub fn duration(&self) -> Option<Duration> {
        Some(
            (self.unfenced_at? - self.fenced_at?)
                .to_std()
                .unwrap_or_default(),
        )
    }
}

/// One of the two fences a container can have: the table of fence rows, the trigger function
/// that checks it, and the statement-level trigger (of the same name) on every tenant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub table: &'static str,
    pub function: &'static str,
    pub trigger: &'static str,
    /// The trigger function's body, as tenantd writes it (for this kind's table).
    pub body: &'static str,
}

/// tenantd's own fence, which it adds to a container that has none.
pub const OWN: Kind = Kind {
    table: "tenantd_write_fences",
    function: "tenantd_write_fence",
    trigger: "tenantd_write_fence",
    body: super::isolation::fence_body!("tenantd_write_fences"),
};

/// The example schema's fence (its version 2), from before tenantd added its own: a container
/// that has it keeps using its table, and tenantd keeps its function as tenantd writes it and
/// adds its trigger to tables that lack it.
pub const LEGACY: Kind = Kind {
    table: "tenant_write_fences",
    function: "tenant_write_fence",
    trigger: "tenant_write_fence",
    body: super::isolation::fence_body!("tenant_write_fences"),
};

/// tenantd's fence table.
pub const TABLE: &str = OWN.table;

/// tenantd's fence trigger function.
pub const FUNCTION: &str = OWN.function;

/// The example's fence table.
pub const LEGACY_TABLE: &str = LEGACY.table;

/// Every table a fence row may be in: tenantd's, then the legacy one.
pub const TABLES: &[&str] = &[TABLE, LEGACY_TABLE];

/// What a fenced write fails with: documented for applications as "retry after resolving the
/// tenant's route again".
pub const SQLSTATE: &str = crate::sqlstate::FENCED;

/// How long securing a container may wait for its migration lock or a table lock.
const SECURE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The fence `schema` uses, read on `conn`: tenantd's own once its table is there (a
/// container can have both when a later version of a schema created the example's), else the
/// example's when its table and function are, else none yet.
pub async fn in_use(
    cluster: &Cluster,
    conn: &mut sqlx::PgConnection,
    schema: &Ident,
) -> Result<Option<Kind>, DataPlaneError> {
    let (own, legacy): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2),
                EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $3)
                AND EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                            WHERE n.nspname = $1 AND p.proname = $4 AND p.pronargs = 0)",
    )
    .bind(schema.as_str())
    .bind(OWN.table)
    .bind(LEGACY.table)
    .bind(LEGACY.function)
    .fetch_one(conn)
    .await
    .map_err(|e| cluster.err(e))?;
    Ok(if own {
        Some(OWN)
    } else if legacy {
        Some(LEGACY)
    } else {
        None
    })
}

/// [`in_use`] for `c` (none if its database is gone).
async fn in_use_by(cluster: &Cluster, c: &Container) -> Result<Option<Kind>, DataPlaneError> {
    if !cluster.database_exists(&c.database).await? {
        return Ok(None);
    }
    let mut conn = cluster
        .database(&c.database)
        .acquire()
        .await
        .map_err(|e| cluster.err(e))?;
    in_use(cluster, &mut conn, &c.schema).await
}

/// The fence tables `c` has (none if its schema or database is gone).
async fn tables_in(cluster: &Cluster, c: &Container) -> Result<Vec<Ident>, DataPlaneError> {
    if !cluster.database_exists(&c.database).await? {
        return Ok(Vec::new());
    }
    let mut conn = cluster
        .database(&c.database)
        .acquire()
        .await
        .map_err(|e| cluster.err(e))?;
    tables_on(cluster, &mut conn, c).await
}

async fn tables_on(
    cluster: &Cluster,
    conn: &mut sqlx::PgConnection,
    c: &Container,
) -> Result<Vec<Ident>, DataPlaneError> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)
         ORDER BY tablename = $3 DESC",
    )
    .bind(c.schema.as_str())
    .bind(TABLES)
    .bind(TABLE)
    .fetch_all(conn)
    .await
    .map_err(|e| cluster.err(e))?;
    super::idents(names)
}

/// Why `c`'s writes cannot be fenced, if they cannot: there is no fence table, or a tenant
/// table lacks the fence's trigger (its writes would go on during a move and be lost).
/// `None`: every tenant table is fenced by the trigger.
pub async fn missing(cluster: &Cluster, c: &Container) -> Result<Option<String>, DataPlaneError> {
    let Some(kind) = in_use_by(cluster, c).await? else {
        return Ok(Some(format!("no {TABLE} table")));
    };
    let db = cluster.database(&c.database);
    let tables = super::tables::tenant_tables(cluster, &db, &c.schema).await?;
    let unfenced: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2)
           AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                           WHERE t.tgrelid = c.oid AND t.tgname = $3 AND t.tgenabled <> 'D')
         ORDER BY 1",
    )
    .bind(c.schema.as_str())
    .bind(tables.iter().map(Ident::as_str).collect::<Vec<_>>())
    .bind(kind.trigger)
    .fetch_all(&db)
    .await
    .map_err(|e| cluster.err(e))?;
    Ok((!unfenced.is_empty()).then(|| {
        let names: Vec<String> = unfenced.into_iter().map(|(t,)| t).collect();
        format!("no {} trigger on {}", kind.trigger, names.join(", "))
    }))
}

/// Makes sure `c` can be fenced before a workflow relies on it: adds what tenantd's isolation
/// machinery lacks there (a trigger dropped or disabled by hand, a container from before
/// tenantd owned the fence; [`super::isolation::secure`]), then says why the writes still
/// cannot be fenced, if they cannot.
pub async fn prepare(cluster: &Cluster, c: &Container) -> Result<Option<String>, DataPlaneError> {
    let db = cluster.database(&c.database);
    super::isolation::secure(cluster, &db, &c.schema, SECURE_LOCK_TIMEOUT).await?;
    missing(cluster, c).await
}

/// Fences the tenant's writes in `c` on behalf of `operation_id`, securing the container
/// first as [`prepare`] does (a container no migration touched since an upgrade). Idempotent.
pub async fn fence(
    cluster: &Cluster,
    c: &Container,
    operation_id: Uuid,
) -> Result<(), DataPlaneError> {
    let db = cluster.database(&c.database);
    super::isolation::secure(cluster, &db, &c.schema, SECURE_LOCK_TIMEOUT).await?;
    let kind = in_use_by(cluster, c).await?.ok_or_else(|| {
        DataPlaneError::Invariant(format!("{} has no write fence", c.schema.as_str()))
    })?;
    let stmt = Statement::new("INSERT INTO ")
        .qualified(&c.schema, &Ident::from_static(kind.table))
        .push(" (tenant_id, operation_id) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING");
    sqlx::query(stmt.into_sql())
        .bind(c.tenant_id)
        .bind(operation_id)
        .execute(&cluster.database(&c.database))
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(())
}

/// Lifts the tenant's fence in `c`. Idempotent, also once the container is gone.
pub async fn unfence(cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
    if !cluster.database_exists(&c.database).await? {
        return Ok(());
    }
    let mut conn = cluster
        .database(&c.database)
        .acquire()
        .await
        .map_err(|e| cluster.err(e))?;
    unfence_in(cluster, &mut conn, c).await
}

/// Lifts the tenant's fence in `c` on `conn`, e.g. inside the transaction that makes the
/// container live: from every fence table the container has.
pub async fn unfence_in(
    cluster: &Cluster,
    conn: &mut sqlx::PgConnection,
    c: &Container,
) -> Result<(), DataPlaneError> {
    for fences in tables_on(cluster, &mut *conn, c).await? {
        let stmt = Statement::new("DELETE FROM ")
            .qualified(&c.schema, &fences)
            .push(" WHERE tenant_id = $1");
        sqlx::query(stmt.into_sql())
            .bind(c.tenant_id)
            .execute(&mut *conn)
            .await
            .map_err(|e| cluster.err(e))?;
    }
    Ok(())
}

/// Whether the tenant is fenced in `c`, in any of its fence tables.
pub async fn is_fenced(cluster: &Cluster, c: &Container) -> Result<bool, DataPlaneError> {
    for fences in tables_in(cluster, c).await? {
        let stmt = Statement::new("SELECT EXISTS (SELECT 1 FROM ")
            .qualified(&c.schema, &fences)
            .push(" WHERE tenant_id = $1)");
        let (fenced,): (bool,) = sqlx::query_as(stmt.into_sql())
            .bind(c.tenant_id)
            .fetch_one(&cluster.database(&c.database))
            .await
            .map_err(|e| cluster.err(e))?;
        if fenced {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Application transactions in `database` that began before `before` and have written or hold
/// a snapshot. Sessions whose login role is a member of ours (maintenance) are not fenced and
/// so not waited for; neither is a READ COMMITTED transaction idle between statements, whose
/// next statement will see the fence; nor a session of a login issued to another tenant,
/// which the policy keeps from writing this tenant's rows (so one tenant's long transaction
/// never holds up another's move). `$3`: the name prefix of this tenant's issued logins.
const IN_FLIGHT: &str = "SELECT pid FROM pg_stat_activity
     WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
       AND xact_start < $2
       AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
       AND NOT (usename ~ '^tl_[0-9a-f]{32}_' AND NOT starts_with(usename, $3))
       AND NOT pg_has_role(usesysid, current_user, 'MEMBER')
     ORDER BY pid";

/// Whether our admin role can see other roles' transactions (superuser or
/// `pg_read_all_stats`), which [`wait_for_writers`] needs.
pub async fn can_see_writers(cluster: &Cluster) -> Result<(), DataPlaneError> {
    let (allowed,): (bool,) =
        sqlx::query_as("SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')")
            .fetch_one(cluster.admin())
            .await
            .map_err(|e| cluster.err(e))?;
    if !allowed {
        return Err(DataPlaneError::Precondition(format!(
            "cluster {}: the admin role needs pg_read_all_stats to see in-flight transactions",
            cluster.name
        )));
    }
    Ok(())
}

/// Waits until every application transaction in `c`'s database that began before now (call
/// it after the fence committed) has ended. Fails with [`DataPlaneError::Precondition`] after
/// `timeout`, naming the sessions still running.
pub async fn wait_for_writers(
    cluster: &Cluster,
    c: &Container,
    timeout: Duration,
) -> Result<(), DataPlaneError> {
    can_see_writers(cluster).await?;
    let admin = cluster.admin();
    let (now,): (DateTime<Utc>,) = sqlx::query_as("SELECT statement_timestamp()")
        .fetch_one(admin)
        .await
        .map_err(|e| cluster.err(e))?;
    let deadline = Instant::now() + timeout;
    loop {
        let pids: Vec<(i32,)> = sqlx::query_as(IN_FLIGHT)
            .bind(c.database.as_str())
            .bind(now)
            .bind(super::logins::prefix_of(c.tenant_id))
            .fetch_all(admin)
            .await
            .map_err(|e| cluster.err(e))?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pids: Vec<String> = pids.iter().map(|p| p.0.to_string()).collect();
            return Err(DataPlaneError::Precondition(format!(
                "cluster {}: {} transaction(s) that began before the write fence still run \
                 after {} ms (pids {})",
                cluster.name,
                pids.len(),
                timeout.as_millis(),
                pids.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
