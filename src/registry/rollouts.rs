//! The fleet's tenant-schema version and rollouts: their parameters, approvals and one status
//! row per target (see docs/rollouts.md).
//!
//! Exclusion between a rollout and tenant operations: a target is migrated inside a registry
//! transaction holding an advisory lock ([`lock_for_migration`]) that every operation start
//! for the tenant shares ([`share_migration_locks`], called by `insert_operation`). So no
//! operation starts on a tenant while its container is migrated, and a tenant (or, for the
//! pool, the fleet) with an operation running is not migrated.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::error::Error;
use crate::registry::Registry;
use crate::rollout::{Canaries, Counts, Target, TargetState};
use crate::tenant::{Placement, Tier};

/// The tenants a target holds: `$1` the tenant id, or (NULL) the live pool tenants of
/// cluster `$2`.
macro_rules! target_tenants {
    () => {
        "CASE WHEN $1::uuid IS NOT NULL THEN id = $1
              ELSE tier = 'pool' AND cluster = $2 AND state NOT IN ('failed', 'deleted') END"
    };
}

const POOL_LOCK: &str = "tenantd:migration:pool";

fn tenant_lock(id: Uuid) -> String {
    format!("tenantd:migration:tenant:{id}")
}

/// Waits while a rollout migrates `tenant_id`'s container or any pool, and keeps both from
/// starting until the caller's transaction ends.
pub(crate) async fn share_migration_locks(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> Result<(), Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0)),
                pg_advisory_xact_lock_shared(hashtextextended($2, 0))",
    )
    .bind(tenant_lock(tenant_id))
    .bind(POOL_LOCK)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the lock that keeps operations from starting on the target (a tenant, or every
/// tenant for a pool) until `tx` ends.
///
/// The tenant rows the rollout will update are locked first, then the advisory lock: an API
/// transaction that changed a tenant row before it starts an operation (and so waits for the
/// advisory lock) is waited for here instead, so the two never wait on each other.
pub async fn lock_for_migration(
    tx: &mut Transaction<'static, Postgres>,
    target: &Target,
) -> Result<(), Error> {
    sqlx::query(concat!(
        "SELECT 1 FROM tenants WHERE ",
        target_tenants!(),
        " ORDER BY id FOR UPDATE"
    ))
    .bind(target.tenant_id)
    .bind(&target.cluster)
    .execute(&mut **tx)
    .await?;
    let key = target.tenant_id.map_or(POOL_LOCK.to_owned(), tenant_lock);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Why the target must not be migrated by the rollout now, if it must not: the tenant is not
/// active or an operation holds it; for a pool, a tier change or restore is running
/// somewhere (it may be copying into or out of a pool).
pub async fn busy_reason(
    tx: &mut Transaction<'static, Postgres>,
    target: &Target,
) -> Result<Option<String>, Error> {
    let reason: Option<String> = match target.tenant_id {
        Some(id) => {
            sqlx::query_scalar(
                "SELECT CASE WHEN t.state <> 'active' THEN 'tenant is ' || t.state
                             ELSE 'held by ' || o.kind || ' operations/' || o.id END
                 FROM tenants t
                 LEFT JOIN operations o ON o.tenant_id = t.id
                      AND o.state IN ('pending', 'running', 'compensating')
                 WHERE t.id = $1 AND (t.state <> 'active' OR o.id IS NOT NULL)
                 LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
        }
        None => {
            sqlx::query_scalar(
                "SELECT 'waiting for ' || kind || ' operations/' || id FROM operations
                 WHERE kind IN ('change_tier', 'restore') AND tenant_id IS NOT NULL
                   AND state IN ('pending', 'running', 'compensating')
                 LIMIT 1",
            )
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    Ok(reason)
}

/// A tenant's tier and placement, read in the rollout's transaction once it holds the
/// tenant's locks (so they cannot change before the migration), on its own connection (a
/// target in flight never waits for a second registry connection).
pub async fn placement(
    tx: &mut Transaction<'static, Postgres>,
    tenant_id: Uuid,
) -> Result<(Tier, Placement), Error> {
    let (tier, cluster, database, schema, role): (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT tier, cluster, database_name, schema_name, role_name FROM tenants WHERE id = $1",
    )
    .bind(tenant_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok((
        tier.parse()?,
        Placement {
            cluster,
            database,
            schema,
            role,
        },
    ))
}

/// Records the version the target's container is at now, for every tenant it holds.
/// Versions only move forward.
pub async fn record_version(
    tx: &mut Transaction<'static, Postgres>,
    target: &Target,
    version: i32,
) -> Result<(), Error> {
    sqlx::query(concat!(
        "UPDATE tenants SET schema_version = greatest(schema_version, $3), updated_at = now()
         WHERE ",
        target_tenants!()
    ))
    .bind(target.tenant_id)
    .bind(&target.cluster)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct TargetRow {
    operation_id: Uuid,
    target: String,
    seq: i32,
    tenant_id: Option<Uuid>,
    slug: Option<String>,
    tier: String,
    cluster_name: String,
    canary: bool,
    state: String,
    from_version: Option<i32>,
    to_version: Option<i32>,
    attempts: i32,
    error: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<TargetRow> for Target {
    type Error = Error;
    fn try_from(r: TargetRow) -> Result<Self, Error> {
        Ok(Target {
            operation_id: r.operation_id,
            key: r.target,
            seq: r.seq,
            tenant_id: r.tenant_id,
            slug: r.slug,
            tier: r.tier.parse()?,
            cluster: r.cluster_name,
            canary: r.canary,
            state: r.state.parse()?,
            from_version: r.from_version,
            to_version: r.to_version,
            attempts: r.attempts,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

const TARGET_COLUMNS: &str = "operation_id, target, seq, tenant_id, slug, tier, cluster_name, \
     canary, state, from_version, to_version, attempts, error, started_at, finished_at";

impl Registry {
    /// The fleet's tenant-schema version, set on first start: the highest version a tenant is
    /// at (a registry from before rollouts existed), or `latest` for an empty one.
    pub async fn init_schema_version(&self, latest: i32) -> Result<i32, Error> {
        sqlx::query(
            "INSERT INTO tenant_schema (version)
             SELECT least(coalesce(max(schema_version) FILTER (WHERE schema_version > 0), $1), $1)
             FROM tenants WHERE state NOT IN ('failed', 'deleted')
             ON CONFLICT DO NOTHING",
        )
        .bind(latest)
        .execute(self.pool())
        .await?;
        self.schema_version().await
    }

    /// The version new containers are migrated to (provisioning, restores).
    pub async fn schema_version(&self) -> Result<i32, Error> {
        sqlx::query_scalar("SELECT version FROM tenant_schema")
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::Internal("the fleet's tenant-schema version is not set".into()))
    }

    /// Live tenants by the tenant-schema version their container is at.
    pub async fn tenants_by_version(&self) -> Result<Vec<(i32, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT schema_version, count(*) FROM tenants WHERE state = 'active'
             GROUP BY schema_version ORDER BY schema_version",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Moves the fleet's version forward to `version` (never back); returns the one before.
    pub async fn advance_schema_version(
        conn: &mut PgConnection,
        version: i32,
    ) -> Result<i32, Error> {
        let before: i32 = sqlx::query_scalar("SELECT version FROM tenant_schema FOR UPDATE")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("UPDATE tenant_schema SET version = greatest(version, $1), updated_at = now()")
            .bind(version)
            .execute(&mut *conn)
            .await?;
        Ok(before)
    }

    pub async fn insert_rollout(
        conn: &mut PgConnection,
        operation_id: Uuid,
        target_version: i32,
    ) -> Result<(), Error> {
        sqlx::query("INSERT INTO rollouts (operation_id, target_version) VALUES ($1, $2)")
            .bind(operation_id)
            .bind(target_version)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Lists the rollout's targets, once (a re-run after a crash adds nothing): every pool
    /// with a live tenant below `version`, and every live schema/database tenant below it;
    /// `only` restricts the plan to one target key (a retry). Canaries are marked and come
    /// first; a pool comes after the tenants. Tenants still being provisioned, moved,
    /// restored or deleted are listed as skipped: their own workflow migrates them. Returns
    /// the targets per state and how many are canaries.
    pub async fn plan_rollout(
        &self,
        operation_id: Uuid,
        version: i32,
        canaries: &Canaries,
        only: Option<&str>,
    ) -> Result<(Counts, i64), Error> {
        let (count, ids) = match canaries {
            Canaries::Count(n) => (i64::from(*n), Vec::new()),
            Canaries::Tenants(ids) => (0, ids.clone()),
        };
        sqlx::query(
            "WITH candidates AS (
                 SELECT t.id::text AS target, t.id AS tenant_id, t.slug, t.tier, t.cluster,
                        t.state, t.schema_version, t.created_at
                 FROM tenants t
                 WHERE t.tier <> 'pool' AND t.state IN ('provisioning', 'active', 'deleting')
                   AND t.schema_version < $2
                 UNION ALL
                 SELECT 'pool:' || t.cluster, NULL, NULL, 'pool', t.cluster, 'active',
                        min(t.schema_version), max(t.created_at)
                 FROM tenants t
                 WHERE t.tier = 'pool' AND t.state = 'active'
                 GROUP BY t.cluster
                 HAVING min(t.schema_version) < $2),
             chosen AS (
                 SELECT c.*,
                        CASE WHEN c.tenant_id = ANY($4::uuid[]) THEN true
                             WHEN c.tier = 'pool' OR c.state <> 'active' THEN false
                             ELSE row_number() OVER (
                                      PARTITION BY c.tier = 'pool' OR c.state <> 'active'
                                      ORDER BY c.rank_in_tier, c.tier, c.cluster) <= $3 END
                          AS canary
                 FROM (SELECT *, row_number() OVER (PARTITION BY tier, cluster
                                                    ORDER BY created_at, target) AS rank_in_tier
                       FROM candidates
                       WHERE $5::text IS NULL OR target = $5) c)
             INSERT INTO rollout_targets (operation_id, target, seq, tenant_id, slug, tier,
                                          cluster_name, canary, state, from_version, error)
             SELECT $1, target,
                    row_number() OVER (ORDER BY canary DESC, tier = 'pool', created_at, target),
                    tenant_id, slug, tier, cluster, canary,
                    CASE WHEN state = 'active' THEN 'pending' ELSE 'skipped' END,
                    schema_version,
                    CASE WHEN state <> 'active'
                         THEN 'tenant is ' || state || '; its own workflow migrates it' END
             FROM chosen
             ON CONFLICT DO NOTHING",
        )
        .bind(operation_id)
        .bind(version)
        .bind(count)
        .bind(&ids)
        .bind(only)
        .execute(self.pool())
        .await?;
        let canaries: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rollout_targets WHERE operation_id = $1 AND canary",
        )
        .bind(operation_id)
        .fetch_one(self.pool())
        .await?;
        Ok((self.rollout_counts(operation_id).await?, canaries))
    }

    /// Targets to run next, in order: left running by a crashed worker first, then pending
    /// ones, those tried fewer times first (a target sent back waits for the others).
    pub async fn runnable_targets(
        &self,
        operation_id: Uuid,
        canaries_only: bool,
    ) -> Result<Vec<Target>, Error> {
        let rows: Vec<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TARGET_COLUMNS} FROM rollout_targets
             WHERE operation_id = $1 AND state IN ('running', 'pending') AND (canary OR NOT $2)
             ORDER BY state = 'pending', attempts, seq"
        )))
        .bind(operation_id)
        .bind(canaries_only)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Target::try_from).collect()
    }

    /// Skipped targets, for the rollout's last look.
    pub async fn skipped_targets(&self, operation_id: Uuid) -> Result<Vec<Target>, Error> {
        let rows: Vec<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TARGET_COLUMNS} FROM rollout_targets
             WHERE operation_id = $1 AND state = 'skipped' ORDER BY seq"
        )))
        .bind(operation_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Target::try_from).collect()
    }

    pub async fn target_started(&self, t: &Target) -> Result<(), Error> {
        sqlx::query(
            "UPDATE rollout_targets SET state = 'running', attempts = attempts + 1,
                    started_at = now(), finished_at = NULL
             WHERE operation_id = $1 AND target = $2",
        )
        .bind(t.operation_id)
        .bind(&t.key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records how the target ended (or, `Pending`, that it is to be tried again).
    /// `also`: another rollout whose row for the same target follows this one (a retry's
    /// original).
    pub async fn target_finished<'e>(
        exec: impl sqlx::PgExecutor<'e>,
        t: &Target,
        state: TargetState,
        to_version: Option<i32>,
        error: Option<&str>,
        also: Option<Uuid>,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE rollout_targets SET state = $3, to_version = coalesce($4, to_version),
                    error = $5,
                    finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
             WHERE operation_id IN ($1, $6) AND target = $2",
        )
        .bind(t.operation_id)
        .bind(&t.key)
        .bind(state.as_str())
        .bind(to_version)
        .bind(error)
        .bind(also)
        .execute(exec)
        .await?;
        Ok(())
    }

    pub async fn rollout_counts(&self, operation_id: Uuid) -> Result<Counts, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM rollout_targets WHERE operation_id = $1 GROUP BY state",
        )
        .bind(operation_id)
        .fetch_all(self.pool())
        .await?;
        let mut c = Counts::default();
        for (state, n) in rows {
            match state.parse()? {
                TargetState::Pending => c.pending = n,
                TargetState::Running => c.running = n,
                TargetState::Done => c.done = n,
                TargetState::Failed => c.failed = n,
                TargetState::Skipped => c.skipped = n,
            }
        }
        Ok(c)
    }

    /// A page of the rollout's targets in order, optionally in one state.
    pub async fn list_targets(
        &self,
        operation_id: Uuid,
        state: Option<TargetState>,
        after: Option<i32>,
        limit: i64,
    ) -> Result<Vec<Target>, Error> {
        let rows: Vec<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TARGET_COLUMNS} FROM rollout_targets
             WHERE operation_id = $1 AND ($2::text IS NULL OR state = $2)
               AND ($3::int IS NULL OR seq > $3)
             ORDER BY seq LIMIT $4"
        )))
        .bind(operation_id)
        .bind(state.map(TargetState::as_str))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Target::try_from).collect()
    }

    pub async fn get_target(&self, operation_id: Uuid, key: &str) -> Result<Target, Error> {
        let row: Option<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TARGET_COLUMNS} FROM rollout_targets WHERE operation_id = $1 AND target = $2"
        )))
        .bind(operation_id)
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        row.map(Target::try_from).transpose()?.ok_or_else(|| {
            Error::not_found("rollout target", format!("operations/{operation_id}/{key}"))
        })
    }

    /// The rollout's target version and who approved it past its canaries, if anyone.
    pub async fn rollout(&self, operation_id: Uuid) -> Result<(i32, Option<String>), Error> {
        sqlx::query_as("SELECT target_version, approved_by FROM rollouts WHERE operation_id = $1")
            .bind(operation_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("rollout", format!("operations/{operation_id}")))
    }

    /// Records the approval (the first one stands) and wakes the rollout.
    pub async fn approve_rollout(&self, operation_id: Uuid, principal: &str) -> Result<(), Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE rollouts SET approved_by = coalesce(approved_by, $2),
                    approved_at = coalesce(approved_at, now())
             WHERE operation_id = $1",
        )
        .bind(operation_id)
        .bind(principal)
        .execute(&mut *tx)
        .await?;
        Registry::wake_operation(&mut tx, operation_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sends a failed or skipped target of a running rollout back to the queue, and wakes
    /// the rollout. False if the target was not failed or skipped.
    pub async fn requeue_target(&self, operation_id: Uuid, key: &str) -> Result<bool, Error> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "UPDATE rollout_targets SET state = 'pending', finished_at = NULL
             WHERE operation_id = $1 AND target = $2 AND state IN ('failed', 'skipped')",
        )
        .bind(operation_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        Registry::wake_operation(&mut tx, operation_id).await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }
}
