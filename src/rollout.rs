//! Fleet migrations of the tenant data schema as the domain sees them (docs/rollouts.md): a
//! rollout moves every container of the fleet to one tenant-schema version, canaries first,
//! then in parallel batches, and keeps one status row per container it migrates.
//!
//! A *target* is one container: the pool of a cluster (all its pool tenants at once) or one
//! schema- or database-tier tenant.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::operation::string_enum;
use crate::tenant::Tier;

string_enum!(TargetState {
    Pending => "pending",
    Running => "running",
    Done => "done",
    Failed => "failed",
    Skipped => "skipped",
});

/// One container of a rollout and how far it got.
#[derive(Debug, Clone)]
pub struct Target {
    pub operation_id: Uuid,
    /// `pool:<cluster>`, or the tenant id.
    pub key: String,
    pub seq: i32,
    /// `None` for a pool.
    pub tenant_id: Option<Uuid>,
    pub slug: Option<String>,
    pub tier: Tier,
    pub cluster: String,
    pub canary: bool,
    pub state: TargetState,
    pub from_version: Option<i32>,
    pub to_version: Option<i32>,
    pub attempts: i32,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Target {
    /// The key of the pool target of `cluster`.
    pub fn pool_key(cluster: &str) -> String {
        format!("pool:{cluster}")
    }

    /// How the target is named to people: the tenant's slug, or `pool:<cluster>`.
    pub fn name(&self) -> &str {
        self.slug.as_deref().unwrap_or(&self.key)
    }
}

/// How many targets of a rollout are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub pending: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.pending + self.running + self.done + self.failed + self.skipped
    }
}

/// Which targets go first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Canaries {
    /// This many schema- and database-tier tenants, spread across tiers and clusters. A pool
    /// is never picked: it is every pool tenant of its cluster at once.
    Count(u32),
    /// These tenants (ids).
    Tenants(Vec<Uuid>),
}

/// The most targets migrated at once. Each one in flight holds a registry connection (the
/// registry pool has 16, shared with the API and the workers) and a data-plane one.
pub const MAX_CONCURRENCY: u32 = 8;
/// How long a rollout waits for a lock in a tenant's container, at most.
pub const MAX_LOCK_TIMEOUT_MS: u32 = 60_000;

/// A validated MigrateFleet request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub target_version: i32,
    pub canaries: Canaries,
    /// Continue past the canaries without ResumeRollout.
    pub auto_continue: bool,
    pub concurrency: u32,
    /// The rollout stops once more targets than this have failed (canaries: any).
    pub max_failures: u32,
    pub lock_timeout_ms: u32,
}

impl Plan {
    /// Checks the numbers; `latest` is the newest version this build knows.
    pub fn validate(&self, latest: i32) -> Result<()> {
        if self.target_version < 1 || self.target_version > latest {
            return Err(Error::invalid(
                "target_version",
                format!(
                    "{} is not a tenant-schema version this tenantd knows (1 to {latest})",
                    self.target_version
                ),
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(Error::invalid(
                "concurrency",
                format!("must be 1 to {MAX_CONCURRENCY}"),
            ));
        }
        if self.lock_timeout_ms == 0 || self.lock_timeout_ms > MAX_LOCK_TIMEOUT_MS {
            return Err(Error::invalid(
                "lock_timeout_ms",
                format!("must be 1 to {MAX_LOCK_TIMEOUT_MS}"),
            ));
        }
        if let Canaries::Count(n) = self.canaries
            && n > 1000
        {
            return Err(Error::invalid("canary_count", "must be at most 1000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            target_version: 2,
            canaries: Canaries::Count(1),
            auto_continue: false,
            concurrency: 4,
            max_failures: 0,
            lock_timeout_ms: 5000,
        }
    }

    #[test]
    fn plans_are_bounded() {
        assert!(plan().validate(2).is_ok());
        for bad in [
            Plan {
                target_version: 3,
                ..plan()
            },
            Plan {
                target_version: 0,
                ..plan()
            },
            Plan {
                concurrency: 0,
                ..plan()
            },
            Plan {
                concurrency: MAX_CONCURRENCY + 1,
                ..plan()
            },
            Plan {
                lock_timeout_ms: 0,
                ..plan()
            },
            Plan {
                canaries: Canaries::Count(1001),
                ..plan()
            },
        ] {
            assert!(bad.validate(2).is_err(), "{bad:?}");
        }
    }
}
