//! Restores: starting one from a complete export, in place or as a new tenant.
//!
//! What can be refused at once is refused here, before any operation exists: an unknown or
//! incomplete export, a manifest that does not verify, a tenant key that is no longer usable,
//! an export newer than this build, a tenant that is not active or is held by another
//! operation. The workflow checks all of it again, and the archive itself, before it changes
//! anything.

use uuid::Uuid;

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, OperationView};
use crate::archive::manifest::WrappedBy;
use crate::archive::verified::VerifiedExport;
use crate::error::{Error, Result};
use crate::keys::KeyState;
use crate::tenant::{NewTenant, Slug, TenantRef, Tier};
use crate::workflows::{Restore, restore};

/// The new tenant a restore creates.
#[derive(Debug, Clone)]
pub struct NewTenantFromExport {
    pub slug: Slug,
    /// Default: the export's source tier.
    pub tier: Option<Tier>,
    /// Default: the configured default cluster.
    pub cluster: Option<String>,
    /// Default: the slug.
    pub display_name: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RestoreTarget {
    /// The export's own tenant, in its current tier.
    InPlace,
    AsNewTenant(NewTenantFromExport),
}

impl Control {
    /// Starts restoring export `export_id`; idempotent on `request_id`.
    pub async fn restore_tenant(
        &self,
        export_id: Uuid,
        target: RestoreTarget,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let export = VerifiedExport::open(&self.deps, export_id).await?;
        let m = &export.manifest;
        // A handover export's data key is sealed by the service key, which is always usable.
        let key = match m.encryption.wrapped_by {
            WrappedBy::TenantKey => Some(self.deps.keys.describe_key(&m.encryption.key_id).await?),
            WrappedBy::ServiceKey => None,
        };
        if let Some(key) = key.filter(|k| k.state != KeyState::Enabled) {
            let when = key
                .deletion_date
                .map(|d| format!(" (deletion on {})", d.to_rfc3339()))
                .unwrap_or_default();
            return Err(Error::FailedPrecondition {
                reason: format!(
                    "export exports/{export_id} cannot be restored: the key of tenant {} that \
                     encrypts it ({}) is {}{when}",
                    m.tenant_id, key.key_id, key.state
                ),
                operation: None,
            });
        }
        let schema = self.deps.tenant_schema().await?;
        restore::known_schema(m, &schema).map_err(|reason| Error::FailedPrecondition {
            reason,
            operation: None,
        })?;
        let id = match target {
            RestoreTarget::InPlace => {
                let tenant = self
                    .registry()
                    .get_tenant(&TenantRef::Id(export.row.tenant_id))
                    .await?;
                let state = restore::State::new(
                    export_id,
                    restore::Mode::InPlace,
                    tenant.tier,
                    &tenant.placement.cluster,
                );
                self.enqueue::<Restore>(Enqueue {
                    subject: Subject::Tenant {
                        tenant: &tenant,
                        check: &|| tenant.ensure_active(),
                    },
                    request_id: request_id.as_ref(),
                    hash: &request_hash(&("restore", "in_place", export_id)),
                    state: &|_| state.clone(),
                })
                .await?
            }
            RestoreTarget::AsNewTenant(n) => {
                let tier = match n.tier {
                    Some(t) => t,
                    None => m.source_tier.parse().map_err(|_| {
                        Error::Internal(format!("export source tier {:?}", m.source_tier))
                    })?,
                };
                let cluster = match &n.cluster {
                    Some(c) => self.known_cluster(c)?,
                    None => self.deps.config.default_cluster().to_owned(),
                };
                // Plan and labels follow the data, if the source tenant is still known.
                let source = self
                    .registry()
                    .find_tenant(&TenantRef::Id(export.row.tenant_id))
                    .await?;
                let new = NewTenant {
                    display_name: n
                        .display_name
                        .clone()
                        .unwrap_or_else(|| n.slug.as_str().to_owned()),
                    plan: source.as_ref().map(|s| s.plan.clone()).unwrap_or_default(),
                    labels: source.map(|s| s.labels).unwrap_or_default(),
                    slug: n.slug,
                    tier,
                    cluster: Some(cluster.clone()),
                };
                let state =
                    restore::State::new(export_id, restore::Mode::AsNewTenant, tier, &cluster);
                self.enqueue::<Restore>(Enqueue {
                    subject: Subject::NewTenant {
                        new: &new,
                        cluster: &cluster,
                    },
                    request_id: request_id.as_ref(),
                    hash: &request_hash(&("restore", export_id, &new)),
                    state: &|_| state.clone(),
                })
                .await?
            }
        };
        tracing::info!(export_id = %export_id, operation_id = %id, "restore requested");
        self.get_operation(id).await
    }
}
