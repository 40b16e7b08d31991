//! Operations and their steps. Two kinds of writers:
//!
//! - API calls create operations (in the caller's transaction, beside the state change that
//!   needs them) and request cancellation;
//! - workflow workers, which may only write an operation while they hold its lease: every
//!   engine write begins with [`Registry::begin_leased`], which locks the operation row and
//!   checks the lease token, so a worker whose lease expired and was taken over cannot
//!   overwrite the new owner's progress.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::error::Error;
use crate::operation::{Operation, OperationError, OperationState, ProgressItem, Step};
use crate::registry::{Registry, events, sqlstate};

#[derive(sqlx::FromRow)]
struct OperationRow {
    id: Uuid,
    kind: String,
    tenant_id: Uuid,
    request_id: Option<String>,
    state: String,
    cancel_requested: bool,
    error_code: Option<i32>,
    error_message: Option<String>,
    error_step: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    data: serde_json::Value,
}

macro_rules! op_columns {
    () => {
        "id, kind, coalesce(tenant_id, '00000000-0000-0000-0000-000000000000') AS tenant_id, \
         request_id, state, cancel_requested, error_code, error_message, \
         error_step, created_at, updated_at, finished_at, data"
    };
}

#[derive(sqlx::FromRow)]
struct StepRow {
    operation_id: Uuid,
    name: String,
    state: String,
    attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    progress_done: i64,
    progress_total: i64,
    progress_items: sqlx::types::Json<Vec<ProgressItem>>,
    last_error: Option<String>,
}

/// A new operation to enqueue.
pub struct NewOperation<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    /// The nil uuid for a fleet operation (one that belongs to no tenant).
    pub tenant_id: Uuid,
    pub request_id: Option<&'a str>,
    /// sha256 of the canonical request, to tell a retry from a conflicting reuse.
    pub request_hash: Option<&'a [u8]>,
    pub data: serde_json::Value,
    pub steps: &'a [&'a str],
}

/// An operation a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    pub tenant_id: Uuid,
    pub state: OperationState,
    pub data: serde_json::Value,
    pub next_step: i32,
    pub failures: i32,
    pub error: Option<OperationError>,
    pub lease: Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub operation_id: Uuid,
    pub token: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease lost: another worker owns the operation")]
    Lost,
    #[error(transparent)]
    Registry(#[from] Error),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> Self {
        LeaseError::Registry(e.into())
    }
}

#[derive(Debug, Default, Clone)]
pub struct OperationFilter {
    pub tenant_id: Option<Uuid>,
    pub state: Option<OperationState>,
}

pub type OperationCursor = (DateTime<Utc>, Uuid);

fn to_code(code: i32) -> tonic::Code {
    tonic::Code::from_i32(code)
}

impl Registry {
    /// Enqueues an operation with its steps, in the caller's transaction. Fails with
    /// FAILED_PRECONDITION, naming the holder, when the tenant already has an active one.
    pub async fn insert_operation(
        conn: &mut PgConnection,
        op: NewOperation<'_>,
    ) -> Result<(), Error> {
        // Wait while a fleet migration changes this tenant's container or its cluster's pool
        // (see `Registry::lock_for_migration`), so no operation starts under it.
        if !op.tenant_id.is_nil() {
            crate::registry::rollouts::share_migration_locks(&mut *conn, op.tenant_id).await?;
        }
        // A savepoint, so that after a conflict the transaction can still name the holder.
        let mut savepoint = conn.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO operations (id, kind, tenant_id, request_id, request_hash, state, data)
             VALUES ($1, $2, NULLIF($3, '00000000-0000-0000-0000-000000000000'::uuid), $4, $5,
                     'pending', $6)",
        )
        .bind(op.id)
        .bind(op.kind)
        .bind(op.tenant_id)
        .bind(op.request_id)
        .bind(op.request_hash)
        .bind(&op.data)
        .execute(&mut *savepoint)
        .await;
        if let Err(e) = inserted {
            savepoint.rollback().await?;
            if sqlstate::is_unique(&e, "operations_one_active_per_tenant") {
                let holder: Option<(Uuid, String)> = sqlx::query_as(
                    "SELECT id, kind FROM operations
                     WHERE tenant_id = $1 AND state IN ('pending', 'running', 'compensating')",
                )
                .bind(op.tenant_id)
                .fetch_optional(&mut *conn)
                .await?;
                return Err(match holder {
                    Some((id, kind)) => Error::FailedPrecondition {
                        reason: format!(
                            "tenant {} is held by running operation operations/{id} ({kind})",
                            op.tenant_id
                        ),
                        operation: Some(id),
                    },
                    None => Error::Unavailable("conflicting operation just finished; retry".into()),
                });
            }
            if sqlstate::is_unique(&e, "operations_one_active_fleet") {
                let holder: Option<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM operations WHERE kind = $1 AND tenant_id IS NULL
                       AND state IN ('pending', 'running', 'compensating')",
                )
                .bind(op.kind)
                .fetch_optional(&mut *conn)
                .await?;
                return Err(Error::FailedPrecondition {
                    reason: match holder {
                        Some(id) => format!("{} operations/{id} is still running", op.kind),
                        None => "a conflicting fleet operation just finished; retry".into(),
                    },
                    operation: holder,
                });
            }
            if sqlstate::is_unique(&e, "operations_request_id") {
                return Err(Error::AlreadyExists {
                    kind: "request",
                    name: op.request_id.unwrap_or_default().to_owned(),
                });
            }
            return Err(e.into());
        }
        savepoint.commit().await?;
        sqlx::query(
            "INSERT INTO operation_steps (operation_id, idx, name, state)
             SELECT $1, ordinality - 1, name, 'pending' FROM unnest($2::text[]) WITH ORDINALITY AS s(name, ordinality)",
        )
        .bind(op.id)
        .bind(op.steps)
        .execute(&mut *conn)
        .await?;
        events::notify(&mut *conn, op.id).await?;
        Ok(())
    }

    /// The operation a request id already names, with the hash of the request that created it.
    pub async fn find_operation_by_request(
        conn: &mut PgConnection,
        kind: &str,
        request_id: &str,
    ) -> Result<Option<(Uuid, Option<Vec<u8>>)>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, request_hash FROM operations WHERE kind = $1 AND request_id = $2",
        )
        .bind(kind)
        .bind(request_id)
        .fetch_optional(conn)
        .await?)
    }

    pub async fn get_operation(&self, id: Uuid) -> Result<Operation, Error> {
        let row: Option<OperationRow> = sqlx::query_as(concat!(
            "SELECT ",
            op_columns!(),
            " FROM operations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let row = row.ok_or_else(|| Error::not_found("operation", format!("operations/{id}")))?;
        let mut ops = self.with_steps(vec![row]).await?;
        Ok(ops.pop().expect("one row in, one operation out"))
    }

    pub async fn list_operations(
        &self,
        filter: &OperationFilter,
        after: Option<OperationCursor>,
        limit: i64,
    ) -> Result<Vec<Operation>, Error> {
        let rows: Vec<OperationRow> = sqlx::query_as(concat!(
            "SELECT ",
            op_columns!(),
            " FROM operations
             WHERE ($1::uuid IS NULL OR tenant_id = $1)
               AND ($2::text IS NULL OR state = $2)
               AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
             ORDER BY created_at, id
             LIMIT $5"
        ))
        .bind(filter.tenant_id)
        .bind(filter.state.map(OperationState::as_str))
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        self.with_steps(rows).await
    }

    async fn with_steps(&self, rows: Vec<OperationRow>) -> Result<Vec<Operation>, Error> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let steps: Vec<StepRow> = sqlx::query_as(
            "SELECT operation_id, name, state, attempts, started_at, finished_at,
                    progress_done, progress_total, progress_items, last_error
             FROM operation_steps WHERE operation_id = ANY($1) ORDER BY operation_id, idx",
        )
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                let steps = steps
                    .iter()
                    .filter(|s| s.operation_id == r.id)
                    .map(|s| {
                        Ok(Step {
                            name: s.name.clone(),
                            state: s.state.parse()?,
                            attempts: s.attempts,
                            started_at: s.started_at,
                            finished_at: s.finished_at,
                            progress_done: s.progress_done,
                            progress_total: s.progress_total,
                            progress_items: s.progress_items.0.clone(),
                            last_error: s.last_error.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                Ok(Operation {
                    id: r.id,
                    kind: r.kind,
                    tenant_id: r.tenant_id,
                    request_id: r.request_id,
                    state: r.state.parse()?,
                    steps,
                    cancel_requested: r.cancel_requested,
                    error: r.error_code.map(|code| OperationError {
                        code: to_code(code),
                        message: r.error_message.clone().unwrap_or_default(),
                        step: r.error_step.clone(),
                    }),
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    finished_at: r.finished_at,
                    data: r.data,
                })
            })
            .collect()
    }

    /// Flags the operation for cancellation; the worker acts on it at the next step boundary.
    /// A finished operation, or one already rolling back, is left as it is.
    /// Operations not finished, by kind and state: (kind, state, count).
    pub async fn active_operation_counts(&self) -> Result<Vec<(String, String, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT kind, state, count(*) FROM operations
             WHERE state IN ('pending', 'running', 'compensating')
             GROUP BY kind, state ORDER BY kind, state",
        )
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn request_cancel(&self, id: Uuid) -> Result<(), Error> {
        let mut tx = self.pool().begin().await?;
        let (exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM operations WHERE id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(Error::not_found("operation", format!("operations/{id}")));
        }
        let flagged = sqlx::query(
            "UPDATE operations SET cancel_requested = true, updated_at = now(),
                    run_after = least(run_after, now())
             WHERE id = $1 AND state IN ('pending', 'running') AND NOT cancel_requested",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if flagged.rows_affected() == 1 {
            events::notify(&mut *tx, id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- engine writes -------------------------------------------------------------------

    /// Claims one runnable operation whose lease is free or expired (`FOR UPDATE SKIP LOCKED`,
    /// so replicas never wait on each other).
    pub async fn claim_operation(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claimed>, Error> {
        let token = Uuid::new_v4();
        #[allow(clippy::type_complexity)]
        let row: Option<(
            Uuid,
            String,
            Uuid,
            String,
            serde_json::Value,
            i32,
            i32,
            Option<i32>,
            Option<String>,
            Option<String>,
        )> = sqlx::query_as(
            "UPDATE operations o
             SET lease_token = $1, lease_owner = $2,
                 lease_expires_at = now() + $3 * interval '1 millisecond',
                 state = CASE WHEN o.state = 'pending' THEN 'running' ELSE o.state END,
                 updated_at = now()
             WHERE o.id = (
                 SELECT id FROM operations
                 WHERE state IN ('pending', 'running', 'compensating')
                   AND run_after <= now()
                   AND (lease_expires_at IS NULL OR lease_expires_at < now())
                 ORDER BY run_after, created_at
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING o.id, o.kind,
                       coalesce(o.tenant_id, '00000000-0000-0000-0000-000000000000'), o.state, o.data, o.next_step, o.failures,
                       o.error_code, o.error_message, o.error_step",
        )
        .bind(token)
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .fetch_optional(self.pool())
        .await?;
        let Some((id, kind, tenant_id, state, data, next_step, failures, code, msg, step)) = row
        else {
            return Ok(None);
        };
        Ok(Some(Claimed {
            id,
            kind,
            tenant_id,
            state: state.parse()?,
            data,
            next_step,
            failures,
            error: code.map(|c| OperationError {
                code: to_code(c),
                message: msg.unwrap_or_default(),
                step,
            }),
            lease: Lease {
                operation_id: id,
                token,
            },
        }))
    }

    /// Extends the lease. `Err(Lost)` when another worker holds it now.
    pub async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<(), LeaseError> {
        let r = sqlx::query(
            "UPDATE operations SET lease_expires_at = now() + $3 * interval '1 millisecond'
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(lease.operation_id)
        .bind(lease.token)
        .bind(duration.as_millis() as f64)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 1 {
            Ok(())
        } else {
            Err(LeaseError::Lost)
        }
    }

    /// Begins a transaction that holds the operation row locked, after checking the lease.
    pub async fn begin_leased(
        &self,
        lease: &Lease,
    ) -> Result<Transaction<'static, Postgres>, LeaseError> {
        let mut tx = self.pool().begin().await?;
        let held: Option<(bool,)> = sqlx::query_as(
            "SELECT cancel_requested FROM operations WHERE id = $1 AND lease_token = $2 FOR UPDATE",
        )
        .bind(lease.operation_id)
        .bind(lease.token)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(LeaseError::Lost);
        }
        Ok(tx)
    }

    pub async fn cancel_requested(&self, id: Uuid) -> Result<bool, Error> {
        let (flag,): (bool,) =
            sqlx::query_as("SELECT cancel_requested FROM operations WHERE id = $1")
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        Ok(flag)
    }

    pub async fn step_started(&self, lease: &Lease, idx: i32) -> Result<(), LeaseError> {
        let mut tx = self.begin_leased(lease).await?;
        mark_started(&mut tx, lease.operation_id, idx).await?;
        finish_write(tx, lease.operation_id).await
    }

    /// Records the running step's progress: its items, and their sums as the step's totals.
    pub async fn step_progress(
        &self,
        lease: &Lease,
        idx: i32,
        items: &[ProgressItem],
    ) -> Result<(), LeaseError> {
        let mut tx = self.begin_leased(lease).await?;
        sqlx::query(
            "UPDATE operation_steps SET progress_done = $3, progress_total = $4,
                    progress_items = $5
             WHERE operation_id = $1 AND idx = $2",
        )
        .bind(lease.operation_id)
        .bind(idx)
        .bind(items.iter().map(|i| i.done).sum::<i64>())
        .bind(items.iter().map(|i| i.total).sum::<i64>())
        .bind(sqlx::types::Json(items))
        .execute(&mut *tx)
        .await?;
        finish_write(tx, lease.operation_id).await
    }

    /// Commits a step's output and its done mark together, advances the cursor and, when
    /// `next` is given, marks that step started in the same transaction (one commit per step
    /// instead of two).
    pub async fn step_done(
        &self,
        lease: &Lease,
        idx: i32,
        data: &serde_json::Value,
        next: Option<i32>,
    ) -> Result<(), LeaseError> {
        let mut tx = self.begin_leased(lease).await?;
        sqlx::query(
            "UPDATE operation_steps SET state = 'done', finished_at = now(), last_error = NULL
             WHERE operation_id = $1 AND idx = $2",
        )
        .bind(lease.operation_id)
        .bind(idx)
        .execute(&mut *tx)
        .await?;
        if let Some(next) = next {
            mark_started(&mut tx, lease.operation_id, next).await?;
        }
        sqlx::query("UPDATE operations SET data = $2, next_step = $3, failures = 0 WHERE id = $1")
            .bind(lease.operation_id)
            .bind(data)
            .bind(idx + 1)
            .execute(&mut *tx)
            .await?;
        finish_write(tx, lease.operation_id).await
    }

    /// Records a retryable failure: the step goes back to pending, the lease is released and
    /// the operation becomes runnable again after `backoff`.
    pub async fn step_retry_later(
        &self,
        lease: &Lease,
        idx: Option<i32>,
        error: &str,
        backoff: Duration,
    ) -> Result<(), LeaseError> {
        self.reschedule(lease, idx, error, backoff, 1).await
    }

    /// Parks the operation at step `idx` until `recheck` has passed or someone wakes it
    /// ([`Registry::wake_operation`]): a step waiting for a person (a rollout's approval).
    /// Waiting is not failing: the failure count is reset.
    pub async fn step_wait(
        &self,
        lease: &Lease,
        idx: i32,
        reason: &str,
        recheck: Duration,
    ) -> Result<(), LeaseError> {
        self.reschedule(lease, Some(idx), reason, recheck, 0).await
    }

    /// Makes a parked operation runnable now (and tells the workers).
    pub async fn wake_operation(conn: &mut PgConnection, id: Uuid) -> Result<(), Error> {
        sqlx::query(
            "UPDATE operations SET run_after = now(), updated_at = now()
             WHERE id = $1 AND state IN ('pending', 'running', 'compensating')",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        events::notify(&mut *conn, id).await
    }

    /// Sends the step back to pending and releases the lease until `delay` has passed;
    /// `failure` (0 or 1) is added to the failure count, 0 resetting it.
    async fn reschedule(
        &self,
        lease: &Lease,
        idx: Option<i32>,
        error: &str,
        backoff: Duration,
        failure: i32,
    ) -> Result<(), LeaseError> {
        let mut tx = self.begin_leased(lease).await?;
        if let Some(idx) = idx {
            sqlx::query(
                "UPDATE operation_steps SET state = 'pending', last_error = $3
                 WHERE operation_id = $1 AND idx = $2",
            )
            .bind(lease.operation_id)
            .bind(idx)
            .bind(error)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE operations SET failures = (failures + $3) * $3,
                    run_after = now() + $2 * interval '1 millisecond',
                    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1",
        )
        .bind(lease.operation_id)
        .bind(backoff.as_millis() as f64)
        .bind(failure)
        .execute(&mut *tx)
        .await?;
        finish_write(tx, lease.operation_id).await
    }

    /// Records a fatal failure (or a cancellation) and moves the operation to compensation.
    /// `premarked`: a step marked started with the previous step's commit that never ran.
    pub async fn begin_compensation(
        &self,
        lease: &Lease,
        idx: Option<i32>,
        premarked: Option<i32>,
        error: &OperationError,
    ) -> Result<(), LeaseError> {
        let mut tx = self.begin_leased(lease).await?;
        if let Some(idx) = idx {
            sqlx::query(
                "UPDATE operation_steps SET state = 'failed', finished_at = now(), last_error = $3
                 WHERE operation_id = $1 AND idx = $2",
            )
            .bind(lease.operation_id)
            .bind(idx)
            .bind(&error.message)
            .execute(&mut *tx)
            .await?;
        }
        mark_not_started(&mut tx, lease.operation_id, premarked).await?;
        sqlx::query(
            "UPDATE operations SET state = 'compensating', failures = 0,
                    error_code = $2, error_message = $3, error_step = $4
             WHERE id = $1",
        )
        .bind(lease.operation_id)
        .bind(error.code as i32)
        .bind(&error.message)
        .bind(&error.step)
        .execute(&mut *tx)
        .await?;
        finish_write(tx, lease.operation_id).await
    }

    /// Ends the operation in a final state and releases its lease.
    pub async fn finish_operation(
        &self,
        lease: &Lease,
        state: OperationState,
        data: &serde_json::Value,
    ) -> Result<(), LeaseError> {
        debug_assert!(state.is_done());
        let mut tx = self.begin_leased(lease).await?;
        sqlx::query(
            "UPDATE operations SET state = $2, data = $3, finished_at = now(),
                    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1",
        )
        .bind(lease.operation_id)
        .bind(state.as_str())
        .bind(data)
        .execute(&mut *tx)
        .await?;
        finish_write(tx, lease.operation_id).await
    }

    /// Gives the lease back without changing anything else (graceful shutdown), so another
    /// replica resumes the operation at once instead of waiting for the lease to expire.
    /// Gives the operation up (shutdown) for another worker to claim at once. `premarked`: a
    /// step marked started with the previous step's commit that never ran here.
    pub async fn release_lease(
        &self,
        lease: &Lease,
        premarked: Option<i32>,
    ) -> Result<(), LeaseError> {
        let mut tx = self.begin_leased(lease).await?;
        sqlx::query(
            "UPDATE operations SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1",
        )
        .bind(lease.operation_id)
        .execute(&mut *tx)
        .await?;
        mark_not_started(&mut tx, lease.operation_id, premarked).await?;
        finish_write(tx, lease.operation_id).await
    }
}

async fn mark_started(
    tx: &mut Transaction<'static, Postgres>,
    operation_id: Uuid,
    idx: i32,
) -> Result<(), LeaseError> {
    sqlx::query(
        "UPDATE operation_steps
         SET state = 'running', attempts = attempts + 1,
             started_at = coalesce(started_at, now()), last_error = NULL
         WHERE operation_id = $1 AND idx = $2",
    )
    .bind(operation_id)
    .bind(idx)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts running steps back to pending (cancellation, shutdown), so the operation view never
/// shows a step running that is not. The step in `premarked` was only marked started with the
/// previous step's commit and never ran: its attempt is taken back too, so attempts keep
/// counting runs (a step that ran and was cut off by a crash keeps its attempt).
async fn mark_not_started(
    tx: &mut Transaction<'static, Postgres>,
    operation_id: Uuid,
    premarked: Option<i32>,
) -> Result<(), LeaseError> {
    sqlx::query(
        "UPDATE operation_steps
         SET state = 'pending',
             attempts = attempts - CASE WHEN idx = $2 THEN 1 ELSE 0 END,
             started_at = CASE WHEN idx = $2 AND attempts = 1 THEN NULL ELSE started_at END
         WHERE operation_id = $1 AND state = 'running'",
    )
    .bind(operation_id)
    .bind(premarked)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Touches `updated_at`, notifies watchers and commits.
async fn finish_write(
    mut tx: Transaction<'static, Postgres>,
    operation_id: Uuid,
) -> Result<(), LeaseError> {
    sqlx::query("UPDATE operations SET updated_at = now() WHERE id = $1")
        .bind(operation_id)
        .execute(&mut *tx)
        .await?;
    events::notify(&mut *tx, operation_id).await?;
    tx.commit().await?;
    Ok(())
}
