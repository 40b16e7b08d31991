//! Operation change notifications. Every committed change to an operation sends
//! `NOTIFY tenantd_operations, '<operation id>'` in the same transaction; one listener per
//! process fans the ids out to waiters (WaitOperation, WatchOperation) and to idle workers.
//! Notifications are a latency optimisation only: every consumer also polls, so a dropped
//! listener connection delays, but never loses, an update.

use std::time::Duration;

use sqlx::PgExecutor;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::Error;

pub const CHANNEL: &str = "tenantd_operations";

/// Sends the notification inside the caller's transaction.
pub async fn notify<'e>(exec: impl PgExecutor<'e>, operation_id: Uuid) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify('tenantd_operations', $1)")
        .bind(operation_id.to_string())
        .execute(exec)
        .await?;
    Ok(())
}

#[derive(Clone)]
pub struct OperationEvents {
    tx: broadcast::Sender<Uuid>,
}

impl OperationEvents {
    /// Starts the listener task; it reconnects on failure until `shutdown` fires.
    pub fn start(pool: sqlx::PgPool, shutdown: tokio_util::sync::CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let events = OperationEvents { tx: tx.clone() };
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                match listen(&pool, &tx, &shutdown).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "operation listener lost; reconnecting");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        events
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }
}

async fn listen(
    pool: &sqlx::PgPool,
    tx: &broadcast::Sender<Uuid>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = listener.recv() => {
                let n = n?;
                if let Ok(id) = Uuid::parse_str(n.payload()) {
                    let _ = tx.send(id);
                }
            }
        }
    }
}
