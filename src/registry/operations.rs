//! Operations and their steps as the API sees them: created in the caller's transaction,
//! beside the state change that needs them; read, listed and flagged for cancellation. The
//! engine's lease-guarded writes live in [`super::leases`].

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection};
use uuid::Uuid;

use crate::error::{Error, ErrorCode};
use crate::operation::{Operation, OperationError, OperationState, ProgressItem, Step};
use crate::registry::{Registry, events};
use crate::sqlstate;

#[derive(sqlx::FromRow)]
struct OperationRow {
    id: Uuid,
    kind: String,
    tenant_id: Option<Uuid>,
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
        "id, kind, tenant_id, request_id, state, cancel_requested, error_code, error_message, \
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
    /// `None` for a fleet operation (one that belongs to no tenant).
    pub tenant_id: Option<Uuid>,
    pub request_id: Option<&'a str>,
    /// sha256 of the canonical request, to tell a retry from a conflicting reuse.
    pub request_hash: Option<&'a [u8]>,
    pub data: serde_json::Value,
    pub steps: &'a [&'static str],
}

#[derive(Debug, Default, Clone)]
pub struct OperationFilter {
    pub tenant_id: Option<Uuid>,
    pub state: Option<OperationState>,
}

pub type OperationCursor = (DateTime<Utc>, Uuid);

impl Registry {
    /// Enqueues an operation with its steps, in the caller's transaction. Fails with
    /// FAILED_PRECONDITION, naming the holder, when the tenant already has an active one.
    pub async fn insert_operation(
        conn: &mut PgConnection,
        op: NewOperation<'_>,
    ) -> Result<(), Error> {
        // Wait while a fleet migration changes this tenant's container or its cluster's pool
        // (see `Registry::lock_for_migration`), so no operation starts under it.
        if let Some(tenant_id) = op.tenant_id {
            crate::registry::rollouts::share_migration_locks(&mut *conn, tenant_id).await?;
        }
        // A savepoint, so that after a conflict the transaction can still name the holder.
        let mut savepoint = conn.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO operations (id, kind, tenant_id, request_id, request_hash, state, data)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
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
                            op.tenant_id.unwrap_or_default()
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
                        code: ErrorCode::from_i32(code),
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

    /// When the tenant's data first existed: the end of the provisioning (or restore as a
    /// new tenant) that made it active.
    pub async fn tenant_active_since(
        &self,
        tenant_id: Uuid,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT min(finished_at) FROM operations
             WHERE tenant_id = $1 AND kind IN ('provision', 'restore') AND state = 'succeeded'",
        )
        .bind(tenant_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// The latest tier change of the tenant that did not fail and ended after `at` (or has
    /// not ended): since then its data lives elsewhere than at `at`.
    pub async fn tenant_moved_after(
        &self,
        tenant_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<(Uuid, Option<DateTime<Utc>>)>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, finished_at FROM operations
             WHERE tenant_id = $1 AND kind = 'change_tier'
               AND state NOT IN ('failed', 'cancelled')
               AND (finished_at IS NULL OR finished_at > $2)
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(tenant_id)
        .bind(at)
        .fetch_optional(self.pool())
        .await?)
    }
}
