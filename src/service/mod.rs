//! The control service: what each RPC means, independent of gRPC. Handlers convert requests
//! into these calls and encode the answers; all registry and data-plane work happens here or
//! in workflows.

mod audit;
mod backups;
mod credentials;
mod deletions;
mod enqueue;
mod exports;
mod operations;
mod restores;
mod rollouts;
mod tenants;

pub use audit::AuditReport;
pub use backups::{BackupStatus, HoldTarget, PolicyTarget, Started};
pub use credentials::connection_uri;
pub use deletions::{CertificateRef, DeletionRequest};
pub use enqueue::{RequestId, request_hash};
pub use exports::{ExportRead, ExportView};
pub use operations::{MAX_WAIT, OperationView};
pub use restores::{NewTenantFromExport, RestoreTarget};
pub use rollouts::{CanaryRequest, FleetSchema, TargetPage};
pub use tenants::Route;

use std::sync::Arc;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::registry::events::OperationEvents;

#[derive(Clone)]
pub struct Control {
    deps: Context,
    events: OperationEvents,
    /// The tenant schema's advice, by the version it was read at ([`Control::fleet_schema`]).
    advice: Arc<tokio::sync::Mutex<Option<AdviceAt>>>,
}

/// Advice read at a tenant-schema version.
type AdviceAt = (i32, Vec<crate::dataplane::advice::Advice>);

impl Control {
    /// Calls reach the registry through its API pool, apart from the workers'.
    pub fn new(mut deps: Context, events: OperationEvents) -> Self {
        deps.registry = deps.registry.for_api();
        Control {
            deps,
            events,
            advice: Arc::default(),
        }
    }

    fn registry(&self) -> &Registry {
        &self.deps.registry
    }

    /// The registry, for the background tasks that drive this service (the scheduler).
    pub fn registry_handle(&self) -> &Registry {
        &self.deps.registry
    }

    /// A cluster named in a request, if configured.
    fn known_cluster(&self, name: &str) -> Result<String> {
        self.deps
            .dataplane
            .cluster(name)
            .map(|c| c.name.clone())
            .map_err(|_| Error::invalid("cluster", format!("unknown cluster {name:?}")))
    }
}
