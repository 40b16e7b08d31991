//! The lifecycle workflows, one file each, dispatched by operation kind through one match.

pub mod change_tier;
pub mod delete;
pub mod export;
pub mod login;
pub mod migrate_fleet;
pub mod provision;
pub mod restore;
pub mod tenant_key;

use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::registry::operations::Claimed;
use crate::workflow::{Workflow, engine};

pub use change_tier::ChangeTier;
pub use delete::Delete;
pub use export::Export;
pub use migrate_fleet::MigrateFleet;
pub use provision::Provision;
pub use restore::Restore;
pub use tenant_key::KeyBackfill;

/// Runs a claimed operation with the workflow its kind names.
pub async fn dispatch(deps: &Context, claimed: Claimed, shutdown: &CancellationToken) {
    match claimed.kind.as_str() {
        Provision::KIND => engine::drive(&Provision, deps, claimed, shutdown).await,
        ChangeTier::KIND => engine::drive(&ChangeTier, deps, claimed, shutdown).await,
        Export::KIND => engine::drive(&Export, deps, claimed, shutdown).await,
        KeyBackfill::KIND => engine::drive(&KeyBackfill, deps, claimed, shutdown).await,
        Restore::KIND => engine::drive(&Restore, deps, claimed, shutdown).await,
        Delete::KIND => engine::drive(&Delete, deps, claimed, shutdown).await,
        MigrateFleet::KIND => engine::drive(&MigrateFleet, deps, claimed, shutdown).await,
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
