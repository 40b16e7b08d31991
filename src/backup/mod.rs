//! Backups that run themselves (docs/backups.md): policies ([`policy`]), which exports a
//! policy keeps and pruning the rest ([`retention`]), and taking an export's objects away
//! while its registry row stays as a tombstone ([`removal`]), which DeleteExport and
//! retention share. The leaderless scheduler that turns due slots into ordinary export
//! operations is [`crate::scheduler`].
//!
//! Invariants:
//! - one operation per (tenant, kind, slot), whatever the number of replicas, restarts or
//!   retries: the request id is derived from them (`backup/{tenant}/{slot}`,
//!   `drill/{tenant}/{slot}`, forms no caller's request id can take);
//! - an export under a legal hold (its own or its tenant's) is never removed;
//! - retention only ever removes scheduled exports, never the newest complete one.

pub mod policy;
pub mod removal;
pub mod retention;

pub use policy::{BackupPolicy, PolicyScope, PolicySpec, Retention, Schedule};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the scheduler runs for a policy's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// A scheduled export.
    Backup,
    /// A restore drill of the newest backup.
    Drill,
}

impl RunKind {
    pub const ALL: [RunKind; 2] = [RunKind::Backup, RunKind::Drill];

    /// As stored in `backup_runs.kind`, and the prefix of its operations' request ids.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Drill => "drill",
        }
    }
}

/// The policy and slot a scheduled export or drill runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub policy_id: Uuid,
    pub slot: DateTime<Utc>,
}
