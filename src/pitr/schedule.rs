//! Base backups on the `[pitr]` schedule, on every replica without a leader: each replica
//! checks every 30 s which slot is due per cluster (the latest at or before now), claims it
//! in the registry (`base_backups`, the first insert wins) and only the winner runs
//! pgBackRest's backup; after downtime that is one catch-up backup, not one per missed
//! slot. At start each stanza is created and checked (the cluster's archiving reaches the
//! repository), and a cluster without any base backup gets one at once (claiming the slot
//! due now), so a restore to a point in time works from the moment tenantd runs.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::pgbackrest::PgBackRest;
use crate::backup::Schedule;
use crate::registry::Registry;

/// How often a replica looks for a due base backup.
const EVERY: Duration = Duration::from_secs(30);

pub async fn run(
    pgbackrest: PgBackRest,
    registry: Registry,
    clusters: Vec<String>,
    schedule: Schedule,
    replica: String,
    shutdown: CancellationToken,
) {
    let since = chrono::DateTime::UNIX_EPOCH;
    for cluster in &clusters {
        let due = schedule.due(since, Utc::now());
        if let Err(e) = first_backup(&pgbackrest, &registry, cluster, due, &replica).await {
            tracing::warn!(cluster = %cluster, error = %e,
                "point-in-time restore not ready: the first base backup failed");
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(slot) = schedule.due(since, Utc::now()) else {
            continue;
        };
        for cluster in &clusters {
            match registry.claim_base_backup(cluster, slot, &replica).await {
                Ok(true) => {
                    let result = pgbackrest.backup(cluster, true).await;
                    let error = result.as_ref().err().map(|e| e.to_string());
                    match &error {
                        None => tracing::info!(cluster = %cluster, %slot, "base backup taken"),
                        Some(e) => tracing::warn!(cluster = %cluster, %slot, error = %e,
                            "base backup failed"),
                    }
                    if let Err(e) = registry
                        .finish_base_backup(cluster, slot, error.as_deref())
                        .await
                    {
                        tracing::warn!(cluster = %cluster, error = %e, "base backup not recorded");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(cluster = %cluster, error = %e,
                    "base backup schedule: will try again"),
            }
        }
    }
}

/// Creates and checks the stanza; takes a full backup if the repository has none (as the
/// backup of the slot due now, if any, so the schedule does not take a second at once).
async fn first_backup(
    pgbackrest: &PgBackRest,
    registry: &Registry,
    cluster: &str,
    due: Option<chrono::DateTime<Utc>>,
    replica: &str,
) -> Result<(), super::PitrError> {
    pgbackrest.ensure_stanza(cluster).await?;
    if !pgbackrest.holdings(cluster).await?.backups.is_empty() {
        return Ok(());
    }
    if let Some(slot) = due {
        let claimed = registry.claim_base_backup(cluster, slot, replica).await;
        if !claimed.map_err(|e| super::PitrError::Io(e.to_string()))? {
            // Another replica has the slot, and takes the backup.
            return Ok(());
        }
    }
    let result = pgbackrest.backup(cluster, true).await;
    if let Some(slot) = due {
        let error = result.as_ref().err().map(|e| e.to_string());
        let _ = registry
            .finish_base_backup(cluster, slot, error.as_deref())
            .await;
    }
    result?;
    tracing::info!(cluster = %cluster, "first base backup taken: point-in-time restore ready");
    Ok(())
}
