//! The engine's writes to an operation: claiming it with a lease, the heartbeat, and every
//! step transition. A worker may only write an operation while it holds the lease: each write
//! begins with [`Registry::begin_leased`], which locks the operation row and checks the lease
//! token, so a worker whose lease expired and was taken over cannot overwrite the new owner's
//! progress. A step's output, its done mark and the next step's start commit together.

use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::error::{Error, ErrorCode};
use crate::operation::{OperationError, OperationState, ProgressItem};
use crate::registry::{Registry, events};

/// An operation a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    /// `None` for a fleet operation.
    pub tenant_id: Option<Uuid>,
    pub state: OperationState,
    pub data: serde_json::Value,
    pub next_step: i32,
    pub failures: i32,
    pub error: Option<OperationError>,
    pub lease: Lease,
    /// This process's own clock reading from before the claim was sent: the lease cannot
    /// have been granted for longer than its duration from then.
    pub claimed_at: std::time::Instant,
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

/// What claiming returns of the operation row.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: Uuid,
    kind: String,
    tenant_id: Option<Uuid>,
    state: String,
    data: serde_json::Value,
    next_step: i32,
    failures: i32,
    error_code: Option<i32>,
    error_message: Option<String>,
    error_step: Option<String>,
}

impl Registry {
    /// Claims one runnable operation whose lease is free or expired (`FOR UPDATE SKIP LOCKED`,
    /// so replicas never wait on each other).
    pub async fn claim_operation(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claimed>, Error> {
        let token = Uuid::new_v4();
        let claimed_at = std::time::Instant::now();
        let row: Option<ClaimedRow> = sqlx::query_as(
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
             RETURNING o.id, o.kind, o.tenant_id, o.state, o.data, o.next_step, o.failures,
                       o.error_code, o.error_message, o.error_step",
        )
        .bind(token)
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .fetch_optional(self.leases())
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        Ok(Some(Claimed {
            id: r.id,
            kind: r.kind,
            tenant_id: r.tenant_id,
            state: r.state.parse()?,
            data: r.data,
            next_step: r.next_step,
            failures: r.failures,
            error: r.error_code.map(|c| OperationError {
                code: ErrorCode::from_i32(c),
                message: r.error_message.unwrap_or_default(),
                step: r.error_step,
            }),
            claimed_at,
            lease: Lease {
                operation_id: r.id,
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
        .execute(self.leases())
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
        let mut tx = self.leases().begin().await?;
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
                .fetch_one(self.leases())
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
        .bind(error.code.as_i32())
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
