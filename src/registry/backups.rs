//! Backup policies, the scheduler's runs, legal holds and export removal (migration 0010,
//! [`crate::backup`]). A policy covers one tenant or a plan; a tenant's own policy wins. A run
//! row per (tenant, kind, slot) records what the scheduler did about that slot.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::backup::{BackupPolicy, PolicyScope, PolicySpec, Retention, RunKind, Schedule};
use crate::error::Error;
use crate::registry::Registry;

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    plan: Option<String>,
    schedule: String,
    keep_last: i32,
    keep_days: i32,
    keep_monthly: i32,
    keep_yearly: i32,
    drill: String,
    effective_from: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

macro_rules! policy_columns {
    () => {
        "id, tenant_id, plan, schedule, keep_last, keep_days, keep_monthly, keep_yearly, drill, \
         effective_from, created_at, updated_at"
    };
}

impl TryFrom<PolicyRow> for BackupPolicy {
    type Error = Error;
    fn try_from(r: PolicyRow) -> Result<Self, Error> {
        let stored = |e: Error| Error::Internal(format!("stored backup policy {}: {e}", r.id));
        let scope = match (r.tenant_id, r.plan) {
            (Some(t), _) => PolicyScope::Tenant(t),
            (None, Some(p)) => PolicyScope::Plan(p),
            (None, None) => return Err(Error::Internal(format!("policy {} has no scope", r.id))),
        };
        let drill = match r.drill.as_str() {
            "" => None,
            d => Some(Schedule::parse("drill", d).map_err(stored)?),
        };
        Ok(BackupPolicy {
            id: r.id,
            scope,
            spec: PolicySpec {
                schedule: Schedule::parse("schedule", &r.schedule).map_err(stored)?,
                retention: Retention {
                    keep_last: r.keep_last as u32,
                    keep_days: r.keep_days as u32,
                    keep_monthly: r.keep_monthly as u32,
                    keep_yearly: r.keep_yearly as u32,
                },
                drill,
            },
            effective_from: r.effective_from,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn policies(rows: Vec<PolicyRow>) -> Result<Vec<BackupPolicy>, Error> {
    rows.into_iter().map(BackupPolicy::try_from).collect()
}

fn scope_binds(scope: &PolicyScope) -> (Option<Uuid>, Option<&str>) {
    match scope {
        PolicyScope::Tenant(id) => (Some(*id), None),
        PolicyScope::Plan(p) => (None, Some(p.as_str())),
    }
}

/// A slot of one policy that some tenants may be due for.
#[derive(Debug, Clone, Copy)]
pub struct DueSlot {
    pub policy_id: Uuid,
    pub slot: DateTime<Utc>,
}

/// A tenant due for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    pub tenant_id: Uuid,
    pub policy_id: Uuid,
    pub slot: DateTime<Utc>,
}

/// What the scheduler did about a tenant's latest slot of one kind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub slot: DateTime<Utc>,
    pub policy_id: Uuid,
    pub operation_id: Option<Uuid>,
    pub waits: i32,
    pub last_wait: Option<String>,
    pub due_at: DateTime<Utc>,
}

/// How a tenant's latest finished drill ended.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DrillResult {
    pub slot: DateTime<Utc>,
    pub operation_id: Uuid,
    pub export_id: Option<Uuid>,
    pub passed: bool,
    /// Why it failed (the operation's error).
    pub error_message: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An active legal hold.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Hold {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub export_id: Option<Uuid>,
    pub reason: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

impl Hold {
    /// The hold in words, for a refusal.
    pub fn describe(&self) -> String {
        let on = match self.export_id {
            Some(e) => format!("export exports/{e}"),
            None => format!("tenant {}", self.tenant_id),
        };
        format!(
            "{on} is under legal hold since {} (set by {}: {:?})",
            self.set_at.format("%Y-%m-%dT%H:%M:%SZ"),
            self.set_by,
            self.reason
        )
    }
}

impl Registry {
    /// Creates or replaces the policy of `scope`. The schedules take effect now when they
    /// are new or changed; an unchanged schedule keeps its slots.
    pub async fn set_backup_policy(
        &self,
        scope: &PolicyScope,
        spec: &PolicySpec,
    ) -> Result<BackupPolicy, Error> {
        let (tenant_id, plan) = scope_binds(scope);
        let drill = spec.drill.as_ref().map(Schedule::as_str).unwrap_or("");
        let r = &spec.retention;
        let existing = self.backup_policy(scope).await?;
        let row: PolicyRow = sqlx::query_as(concat!(
            "INSERT INTO backup_policies AS p (id, tenant_id, plan, schedule, keep_last,
                 keep_days, keep_monthly, keep_yearly, drill, effective_from)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
             ON CONFLICT (id) DO UPDATE SET schedule = EXCLUDED.schedule, keep_last = EXCLUDED.keep_last,
                 keep_days = EXCLUDED.keep_days, keep_monthly = EXCLUDED.keep_monthly,
                 keep_yearly = EXCLUDED.keep_yearly, drill = EXCLUDED.drill,
                 effective_from = CASE WHEN (p.schedule, p.drill)
                                           = (EXCLUDED.schedule, EXCLUDED.drill)
                                  THEN p.effective_from ELSE now() END,
                 updated_at = now()
             RETURNING ",
            policy_columns!()
        ))
        .bind(existing.map_or_else(Uuid::new_v4, |p| p.id))
        .bind(tenant_id)
        .bind(plan)
        .bind(spec.schedule.as_str())
        .bind(r.keep_last as i32)
        .bind(r.keep_days as i32)
        .bind(r.keep_monthly as i32)
        .bind(r.keep_yearly as i32)
        .bind(drill)
        .fetch_one(self.pool())
        .await
        .map_err(|e| match &e {
            // Two callers created the scope's first policy at once: theirs won.
            sqlx::Error::Database(d) if d.is_unique_violation() => Error::Aborted(
                "another request set this policy at the same moment; retry".into(),
            ),
            _ => e.into(),
        })?;
        row.try_into()
    }

    /// The policy of exactly `scope`.
    pub async fn backup_policy(&self, scope: &PolicyScope) -> Result<Option<BackupPolicy>, Error> {
        let (tenant_id, plan) = scope_binds(scope);
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM backup_policies
             WHERE tenant_id IS NOT DISTINCT FROM $1 AND plan IS NOT DISTINCT FROM $2"
        ))
        .bind(tenant_id)
        .bind(plan)
        .fetch_optional(self.pool())
        .await?;
        row.map(TryInto::try_into).transpose()
    }

    /// The policy that covers a tenant: its own, else its plan's.
    pub async fn effective_backup_policy(
        &self,
        tenant_id: Uuid,
        plan: &str,
    ) -> Result<Option<BackupPolicy>, Error> {
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM backup_policies WHERE tenant_id = $1 OR plan = $2
             ORDER BY tenant_id IS NULL LIMIT 1"
        ))
        .bind(tenant_id)
        .bind(plan)
        .fetch_optional(self.pool())
        .await?;
        row.map(TryInto::try_into).transpose()
    }

    /// Policies in (created_at, id) order after `after`.
    pub async fn list_backup_policies(
        &self,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<BackupPolicy>, Error> {
        let (at, id) = after.unzip();
        let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM backup_policies
             WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2)
             ORDER BY created_at, id LIMIT $3"
        ))
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        policies(rows)
    }

    /// Every policy: what one scheduler tick starts from.
    pub async fn all_backup_policies(&self) -> Result<Vec<BackupPolicy>, Error> {
        let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM backup_policies ORDER BY id"
        ))
        .fetch_all(self.pool())
        .await?;
        policies(rows)
    }

    /// Deletes the policy of `scope`; false when there was none.
    pub async fn delete_backup_policy(&self, scope: &PolicyScope) -> Result<bool, Error> {
        let (tenant_id, plan) = scope_binds(scope);
        let done = sqlx::query(
            "DELETE FROM backup_policies
             WHERE tenant_id IS NOT DISTINCT FROM $1 AND plan IS NOT DISTINCT FROM $2",
        )
        .bind(tenant_id)
        .bind(plan)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims the base backup of `cluster` at `slot` for `replica`: true for the one replica
    /// whose claim is first (migration 0011).
    pub async fn claim_base_backup(
        &self,
        cluster: &str,
        slot: DateTime<Utc>,
        replica: &str,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO base_backups (cluster, slot, started_by) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(cluster)
        .bind(slot)
        .bind(replica)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how a claimed base backup ended.
    pub async fn finish_base_backup(
        &self,
        cluster: &str,
        slot: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE base_backups SET finished_at = now(), error = $3
             WHERE cluster = $1 AND slot = $2",
        )
        .bind(cluster)
        .bind(slot)
        .bind(error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Drops a deleted tenant's own policy (its runs stay, as history).
    pub async fn drop_tenant_backup_policy<'e>(
        exec: impl sqlx::PgExecutor<'e>,
        tenant_id: Uuid,
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM backup_policies WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(exec)
            .await?;
        Ok(())
    }

    /// The active tenants due for one of `slots` (of runs of `kind`): covered by the slot's
    /// policy (their own, or their plan's when they have none), existing at the slot, and
    /// without a started run for that slot or a later one. One query, whatever the number of
    /// policies and tenants.
    pub async fn due_runs(
        &self,
        kind: RunKind,
        slots: &[DueSlot],
        limit: i64,
    ) -> Result<Vec<Due>, Error> {
        let ids: Vec<Uuid> = slots.iter().map(|s| s.policy_id).collect();
        let at: Vec<DateTime<Utc>> = slots.iter().map(|s| s.slot).collect();
        Ok(sqlx::query_as(
            "SELECT t.id AS tenant_id, d.policy_id, d.slot
             FROM unnest($1::uuid[], $2::timestamptz[]) AS d (policy_id, slot)
             JOIN backup_coverage c ON c.policy_id = d.policy_id
             JOIN tenants t ON t.id = c.tenant_id
             WHERE t.state = 'active' AND t.created_at <= d.slot
               AND NOT EXISTS (SELECT 1 FROM backup_runs r
                               WHERE r.tenant_id = t.id AND r.kind = $3
                                 AND r.slot >= d.slot AND r.operation_id IS NOT NULL)
             ORDER BY d.slot, t.id
             LIMIT $4",
        )
        .bind(ids)
        .bind(at)
        .bind(kind.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Records that `due` got operation `operation_id` (idempotent: every replica that
    /// started it records the same operation).
    pub async fn run_started(
        &self,
        kind: RunKind,
        due: &Due,
        operation_id: Uuid,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO backup_runs (tenant_id, kind, slot, policy_id, operation_id, started_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (tenant_id, kind, slot) DO UPDATE
             SET operation_id = coalesce(backup_runs.operation_id, EXCLUDED.operation_id),
                 started_at = coalesce(backup_runs.started_at, EXCLUDED.started_at)",
        )
        .bind(due.tenant_id)
        .bind(kind.as_str())
        .bind(due.slot)
        .bind(due.policy_id)
        .bind(operation_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Counts one more tick that found the tenant busy for `due`.
    pub async fn run_waited(&self, kind: RunKind, due: &Due, reason: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO backup_runs (tenant_id, kind, slot, policy_id, waits, last_wait)
             VALUES ($1, $2, $3, $4, 1, $5)
             ON CONFLICT (tenant_id, kind, slot) DO UPDATE
             SET waits = backup_runs.waits + 1, last_wait = EXCLUDED.last_wait
             WHERE backup_runs.operation_id IS NULL",
        )
        .bind(due.tenant_id)
        .bind(kind.as_str())
        .bind(due.slot)
        .bind(due.policy_id)
        .bind(reason)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The tenant's latest run of `kind`.
    pub async fn latest_run(&self, tenant_id: Uuid, kind: RunKind) -> Result<Option<Run>, Error> {
        Ok(sqlx::query_as(
            "SELECT slot, policy_id, operation_id, waits, last_wait, due_at FROM backup_runs
             WHERE tenant_id = $1 AND kind = $2 ORDER BY slot DESC LIMIT 1",
        )
        .bind(tenant_id)
        .bind(kind.as_str())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Records the export drill `operation_id` restores.
    pub async fn record_drilled_export(
        &self,
        operation_id: Uuid,
        export_id: Uuid,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE backup_runs SET export_id = $2 WHERE operation_id = $1")
            .bind(operation_id)
            .bind(export_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The tenant's latest finished drill.
    pub async fn latest_drill(&self, tenant_id: Uuid) -> Result<Option<DrillResult>, Error> {
        Ok(sqlx::query_as(
            "SELECT r.slot, r.operation_id AS operation_id, r.export_id,
                    o.state = 'succeeded' AS passed, o.error_message, o.finished_at
             FROM backup_runs r JOIN operations o ON o.id = r.operation_id
             WHERE r.tenant_id = $1 AND r.kind = 'drill'
               AND o.state IN ('succeeded', 'failed', 'cancelled')
             ORDER BY r.slot DESC LIMIT 1",
        )
        .bind(tenant_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Per policy, how many of the active tenants it covers failed their latest finished
    /// drill.
    pub async fn failing_drills(&self) -> Result<Vec<(Uuid, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT c.policy_id, count(*) FILTER (WHERE d.state <> 'succeeded')
             FROM backup_coverage c
             JOIN tenants t ON t.id = c.tenant_id AND t.state = 'active'
             JOIN LATERAL (
                 SELECT o.state FROM backup_runs r JOIN operations o ON o.id = r.operation_id
                 WHERE r.tenant_id = t.id AND r.kind = 'drill'
                   AND o.state IN ('succeeded', 'failed', 'cancelled')
                 ORDER BY r.slot DESC LIMIT 1) d ON true
             GROUP BY c.policy_id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Per policy, the oldest recovery point among the active tenants it covers, in seconds:
    /// how old the newest complete export of its worst-off tenant is (a tenant without one
    /// counts from when the policy or the tenant began).
    pub async fn recovery_point_ages(&self) -> Result<Vec<(Uuid, f64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT c.policy_id, max(extract(epoch FROM now() - coalesce(
                        e.at, greatest(p.effective_from, t.created_at))))::float8
             FROM backup_coverage c
             JOIN backup_policies p ON p.id = c.policy_id
             JOIN tenants t ON t.id = c.tenant_id AND t.state = 'active'
             LEFT JOIN LATERAL (
                 SELECT max(coalesce(x.snapshot_at, x.created_at)) AS at FROM exports x
                 WHERE x.tenant_id = t.id AND x.state = 'complete' AND NOT x.handover) e ON true
             GROUP BY c.policy_id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The tenant's complete scheduled exports: (id, when their data is from).
    pub async fn scheduled_exports(
        &self,
        tenant_id: Uuid,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, coalesce(snapshot_at, created_at) FROM exports
             WHERE tenant_id = $1 AND state = 'complete' AND policy_id IS NOT NULL
               AND NOT handover",
        )
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The tenant's newest complete export: (id, when its data is from).
    pub async fn newest_export(
        &self,
        tenant_id: Uuid,
    ) -> Result<Option<(Uuid, DateTime<Utc>)>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, coalesce(snapshot_at, created_at) AS at FROM exports
             WHERE tenant_id = $1 AND state = 'complete' AND NOT handover
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(tenant_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Exports a removal began but did not finish (a crash in between).
    pub async fn exports_being_removed(&self, tenant_id: Uuid) -> Result<Vec<Uuid>, Error> {
        Ok(
            sqlx::query_scalar(
                "SELECT id FROM exports WHERE tenant_id = $1 AND state = 'removing'",
            )
            .bind(tenant_id)
            .fetch_all(self.pool())
            .await?,
        )
    }

    /// The tenant's active holds: on the tenant, or on one of its exports.
    pub async fn holds(&self, tenant_id: Uuid) -> Result<Vec<Hold>, Error> {
        holds_of(self.pool(), tenant_id, None).await
    }

    /// Places a hold on the tenant (`export_id` None) or on one of its complete exports.
    /// FAILED_PRECONDITION when that export's objects are gone; an existing hold on the same
    /// thing is returned as it is (a hold is set once; clear it to change its reason).
    pub async fn set_hold(
        &self,
        tenant_id: Uuid,
        export_id: Option<Uuid>,
        reason: &str,
        set_by: &str,
    ) -> Result<Hold, Error> {
        let mut tx = self.pool().begin().await?;
        // Serialises with removals and with a deletion marking the tenant `deleting`, whose
        // first step looks for holds after that mark: either it sees this hold, or this
        // sees the mark and refuses.
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
        match state.as_deref() {
            Some("active" | "provisioning") => {}
            Some(s) => {
                return Err(Error::FailedPrecondition {
                    reason: format!("tenant {tenant_id} is {s}: there is nothing left to hold"),
                    operation: None,
                });
            }
            None => return Err(Error::not_found("tenant", tenant_id.to_string())),
        }
        if let Some(export_id) = export_id {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT state FROM exports WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
            )
            .bind(export_id)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
            match state.as_deref() {
                Some("complete") => {}
                Some(s) => {
                    return Err(Error::FailedPrecondition {
                        reason: format!(
                            "export exports/{export_id} is {s}: only a complete export can be held"
                        ),
                        operation: None,
                    });
                }
                None => return Err(Error::not_found("export", format!("exports/{export_id}"))),
            }
        }
        sqlx::query(
            "INSERT INTO legal_holds (id, tenant_id, export_id, reason, set_by)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(tenant_id)
        .bind(export_id)
        .bind(reason)
        .bind(set_by)
        .execute(&mut *tx)
        .await?;
        let hold = holds_of(&mut *tx, tenant_id, Some(export_id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("hold vanished".into()))?;
        tx.commit().await?;
        Ok(hold)
    }

    /// Clears the active hold on the tenant or one export; false when there was none.
    pub async fn clear_hold(
        &self,
        tenant_id: Uuid,
        export_id: Option<Uuid>,
        cleared_by: &str,
    ) -> Result<Option<Hold>, Error> {
        Ok(sqlx::query_as(
            "UPDATE legal_holds SET cleared_at = now(), cleared_by = $3
             WHERE tenant_id = $1 AND export_id IS NOT DISTINCT FROM $2 AND cleared_at IS NULL
             RETURNING id, tenant_id, export_id, reason, set_by, set_at",
        )
        .bind(tenant_id)
        .bind(export_id)
        .bind(cleared_by)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Starts removing an export: locks it, refuses a held one (FAILED_PRECONDITION naming
    /// the hold) or a running one, and marks it `removing`. Returns false when it was gone
    /// already (removed, or crypto-shredded with a deleted tenant).
    pub async fn begin_removal(&self, export_id: Uuid) -> Result<bool, Error> {
        let mut tx = self.pool().begin().await?;
        let found: Option<(Uuid, String)> =
            sqlx::query_as("SELECT tenant_id, state FROM exports WHERE id = $1 FOR UPDATE")
                .bind(export_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((tenant_id, state)) = found else {
            return Err(Error::not_found("export", format!("exports/{export_id}")));
        };
        match state.as_str() {
            "removed" | "deleted" | "failed" => return Ok(false),
            "removing" => return Ok(true),
            "running" => {
                return Err(Error::FailedPrecondition {
                    reason: format!("export exports/{export_id} is still being written"),
                    operation: None,
                });
            }
            _ => {}
        }
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR SHARE")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if let Some(hold) = holds_of(&mut *tx, tenant_id, None)
            .await?
            .into_iter()
            .find(|h| h.export_id.is_none_or(|e| e == export_id))
        {
            return Err(Error::FailedPrecondition {
                reason: format!(
                    "export exports/{export_id} cannot be deleted: {}",
                    hold.describe()
                ),
                operation: None,
            });
        }
        sqlx::query("UPDATE exports SET state = 'removing' WHERE id = $1")
            .bind(export_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks an export whose objects are gone `removed`: the row stays as its tombstone.
    pub async fn finish_removal(&self, export_id: Uuid, removed_by: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE exports SET state = 'removed', removed_at = now(), removed_by = $2
             WHERE id = $1 AND state = 'removing'",
        )
        .bind(export_id)
        .bind(removed_by)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Active holds of a tenant: all of them (`only` None), or only the one on exactly the
/// tenant (`Some(None)`) or on exactly one export.
async fn holds_of<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    tenant_id: Uuid,
    only: Option<Option<Uuid>>,
) -> Result<Vec<Hold>, Error> {
    let (filter, export_id) = match only {
        None => (false, None),
        Some(e) => (true, e),
    };
    Ok(sqlx::query_as(
        "SELECT id, tenant_id, export_id, reason, set_by, set_at FROM legal_holds
         WHERE tenant_id = $1 AND cleared_at IS NULL
           AND (NOT $2 OR export_id IS NOT DISTINCT FROM $3)
         ORDER BY set_at, id",
    )
    .bind(tenant_id)
    .bind(filter)
    .bind(export_id)
    .fetch_all(exec)
    .await?)
}
