//! The backup scheduler (docs/backups.md): on every replica, with no leader. Each tick reads
//! the policies (one query), works out each policy's due slot (the latest at or before now,
//! since the policy took effect) for backups and for drills, asks the registry in one query
//! per kind which tenants lack a started run for that slot or a later one, and starts a
//! scheduled export or a restore drill for each ([`Control::start_scheduled`]).
//!
//! Why it needs no leader: the export's request id is derived from (tenant, slot), so
//! replicas racing on a slot, a replica restarted mid-tick or a retried start all get the
//! same operation. After downtime only the latest slot is due, so a tenant gets one catch-up
//! backup, not one per missed slot. A tenant busy with another operation stays due; each
//! tick that finds it so is counted on its run (visible in GetBackupStatus), and it gets its
//! backup on the first tick after it is free.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backup::RunKind;
use crate::error::Error;
use crate::registry::backups::{Due, DueSlot};
use crate::service::{Control, Started};

/// The most tenants one tick starts backups for; the rest are due on the next tick.
pub const MAX_STARTS_PER_TICK: i64 = 500;

/// What one tick did.
#[derive(Debug, Default, Clone)]
pub struct Tick {
    pub started: Vec<(RunKind, Due, Uuid)>,
    pub waiting: Vec<(RunKind, Due, String)>,
    /// Tenants whose start failed for another reason (logged; due again next tick).
    pub failed: usize,
}

/// One pass at `now` (the clock is the caller's, so tests can move it): backups first, then
/// drills, so a drill due with a backup finds the tenant busy and drills the new backup on a
/// later tick.
pub async fn tick(control: &Control, now: DateTime<Utc>) -> Result<Tick, Error> {
    let registry = control.registry_handle();
    let policies = registry.all_backup_policies().await?;
    let mut done = Tick::default();
    for kind in RunKind::ALL {
        let slots: Vec<DueSlot> = policies
            .iter()
            .filter_map(|p| {
                let slot = match kind {
                    RunKind::Backup => p.due(now),
                    RunKind::Drill => p.drill_due(now),
                };
                slot.map(|slot| DueSlot {
                    policy_id: p.id,
                    slot,
                })
            })
            .collect();
        if slots.is_empty() {
            continue;
        }
        for due in registry.due_runs(kind, &slots, MAX_STARTS_PER_TICK).await? {
            match control.start_scheduled(kind, &due).await {
                Ok(Started::Operation(id)) => done.started.push((kind, due, id)),
                Ok(Started::Waiting(reason)) => done.waiting.push((kind, due, reason)),
                Err(e) => {
                    tracing::warn!(tenant_id = %due.tenant_id, kind = kind.as_str(), error = %e,
                        "scheduled run not started; due again next tick");
                    done.failed += 1;
                }
            }
        }
    }
    if !done.started.is_empty() || !done.waiting.is_empty() {
        tracing::info!(
            started = done.started.len(),
            waiting = done.waiting.len(),
            "backup scheduler tick"
        );
    }
    crate::metrics::backups_scheduled(done.started.len() as u64, done.waiting.len() as u64);
    Ok(done)
}

/// Ticks every `every` until shutdown.
pub async fn run(control: Control, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = tick(&control, Utc::now()).await {
            tracing::warn!(error = %e, "backup scheduler: will try again");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
