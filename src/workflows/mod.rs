//! The lifecycle workflows, one file each, dispatched by operation kind through one match.
//!
//! Workflows: `provision`, `change_tier`, `export`, `restore`, `delete`, `migrate_fleet`,
//! `key_backfill`, `drill`. No workflow imports another; what several of them do lives in
//! pieces of its own that are not workflows:
//! - `container`: a new container at the fleet's tenant-schema version, and undoing one;
//! - `export_writer`: dumping, sealing, uploading and recording one export (exports and a
//!   deletion's final export);
//! - `export_reader`: reading an export back into a container and checking it (restores
//!   and drills);
//! - `tenant_key`: the tenant's key in the key service.

pub mod change_tier;
pub mod container;
pub mod delete;
pub mod drill;
pub mod export;
pub mod export_reader;
pub mod export_writer;
pub mod key_backfill;
pub mod migrate_fleet;
pub mod point_in_time;
pub mod provision;
pub mod restore;
pub mod tenant_key;

use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::registry::leases::Claimed;
use crate::workflow::Workflow;
use crate::workflow::engine::{self, Dispatch};

pub use change_tier::ChangeTier;
pub use delete::Delete;
pub use drill::Drill;
pub use export::Export;
pub use key_backfill::KeyBackfill;
pub use migrate_fleet::MigrateFleet;
pub use provision::Provision;
pub use restore::Restore;

/// Runs a claimed operation with the workflow its kind names; `server.rs` hands it to the
/// engine.
pub struct Dispatcher;

impl Dispatch for Dispatcher {
    async fn dispatch(&self, deps: &Context, claimed: Claimed, shutdown: &CancellationToken) {
        match claimed.kind.as_str() {
            Provision::KIND => engine::drive(&Provision, deps, claimed, shutdown).await,
            ChangeTier::KIND => engine::drive(&ChangeTier, deps, claimed, shutdown).await,
            Export::KIND => engine::drive(&Export, deps, claimed, shutdown).await,
            KeyBackfill::KIND => engine::drive(&KeyBackfill, deps, claimed, shutdown).await,
            Restore::KIND => engine::drive(&Restore, deps, claimed, shutdown).await,
            Delete::KIND => engine::drive(&Delete, deps, claimed, shutdown).await,
            MigrateFleet::KIND => engine::drive(&MigrateFleet, deps, claimed, shutdown).await,
            Drill::KIND => engine::drive(&Drill, deps, claimed, shutdown).await,
            other => {
                // Written by a newer release: leave it for a replica that knows the kind.
                tracing::error!(kind = other, operation_id = %claimed.id, "unknown operation kind");
                let _ = deps
                    .registry
                    .step_retry_later(
                        &claimed.lease,
                        None,
                        &format!("unknown operation kind {other:?}"),
                        std::time::Duration::from_secs(60),
                    )
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Steps;

    /// The registry stores steps by name and the cursor by position: the lists earlier
    /// releases stored must stay exactly as they are, or stored operations would resume at
    /// the wrong step.
    #[test]
    fn stored_step_names_and_order_never_change() {
        fn names<W: Workflow>() -> (&'static str, Vec<&'static str>) {
            (W::KIND, W::Step::names())
        }
        let stored: [(&str, &[&str]); 8] = [
            (
                "provision",
                &[
                    "reserve",
                    "create_key",
                    "create_container",
                    "migrate",
                    "grant",
                    "seed",
                    "activate",
                ],
            ),
            (
                // Changed once, by migration 0009, which renumbers operations stored with
                // the eight steps before online moves (preflight, create_target, fence,
                // copy, verify, switch, unfence, cleanup).
                "change_tier",
                &[
                    "preflight",
                    "create_target",
                    "capture",
                    "copy",
                    "catch_up",
                    "fence",
                    "tail",
                    "verify",
                    "switch",
                    "unfence",
                    "cleanup",
                ],
            ),
            // `prune` appended by migration 0010, which gives unfinished exports the step.
            ("export", &["prepare", "dump", "sign", "record", "prune"]),
            ("create_key", &["create_key"]),
            (
                // Changed once, by migration 0012, which renumbers restores stored with the
                // twelve steps from `verify` before point-in-time restores.
                "restore",
                &[
                    "preflight",
                    "fetch_backup",
                    "replay",
                    "extract",
                    "verify",
                    "prepare",
                    "stage",
                    "load",
                    "index",
                    "check",
                    "migrate",
                    "grant",
                    "fence",
                    "swap",
                    "activate",
                    "cleanup",
                ],
            ),
            (
                "delete",
                &[
                    "fence",
                    "final_export",
                    "inventory",
                    "delete_data",
                    "delete_objects",
                    "delete_key",
                    "verify",
                    "certify",
                ],
            ),
            ("migrate_fleet", &["plan", "canary", "approve", "rollout"]),
            (
                "drill",
                &["verify", "stage", "load", "index", "check", "cleanup"],
            ),
        ];
        let ours = [
            names::<Provision>(),
            names::<ChangeTier>(),
            names::<Export>(),
            names::<KeyBackfill>(),
            names::<Restore>(),
            names::<Delete>(),
            names::<MigrateFleet>(),
            names::<Drill>(),
        ];
        for ((kind, steps), (our_kind, our_steps)) in stored.iter().zip(&ours) {
            assert_eq!((kind, steps.to_vec()), (our_kind, our_steps.clone()));
        }
        // The points of no return are where they were.
        assert_eq!(
            ChangeTier::ROLL_FORWARD_FROM.map(|s| s.name()),
            Some("switch")
        );
        assert_eq!(Restore::ROLL_FORWARD_FROM.map(|s| s.name()), Some("swap"));
        assert_eq!(
            Delete::UNCANCELLABLE_FROM.map(|s| s.name()),
            Some("delete_data")
        );
        assert_eq!(Delete::ROLL_FORWARD_FROM, None);
    }
}
