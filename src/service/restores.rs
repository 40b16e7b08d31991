//! Restores: starting one from a complete export, in place or as a new tenant.
//!
//! What can be refused at once is refused here, before any operation exists: an unknown or
//! incomplete export, a manifest that does not verify, a tenant key that is no longer usable,
//! an export newer than this build, a tenant that is not active or is held by another
//! operation. The workflow checks all of it again, and the archive itself, before it changes
//! anything.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, OperationView};
use crate::archive::manifest::WrappedBy;
use crate::archive::verified::VerifiedExport;
use crate::error::{Error, Result};
use crate::keys::KeyState;
use crate::tenant::{NewTenant, Slug, TenantRef, Tier};
use crate::workflows::{Restore, point_in_time, restore};

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
        let source_tier: Tier = m
            .source_tier
            .parse()
            .map_err(|_| Error::Internal(format!("export source tier {:?}", m.source_tier)))?;
        let restore = Started {
            source: export.row.tenant_id,
            source_tier,
            export_id,
            at: None,
        };
        let id = self.start_restore(&restore, target, request_id).await?;
        tracing::info!(export_id = %export_id, operation_id = %id, "restore requested");
        self.get_operation(id).await
    }

    /// Starts restoring `tenant`'s data as it was at `at` (docs/pitr.md), in place or as a
    /// new tenant; idempotent on `request_id`. What cannot be done is refused now, with the
    /// reason ([`point_in_time::check`]); the operation's first steps check it all again.
    pub async fn restore_tenant_at(
        &self,
        tenant: &TenantRef,
        at: DateTime<Utc>,
        target: RestoreTarget,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let checked = point_in_time::check(&self.deps, tenant, at).await?;
        let restore = Started {
            source: checked.tenant.id,
            source_tier: checked.tenant.tier,
            // The export the restore's first steps make of the tenant as it was at `at`.
            export_id: Uuid::new_v4(),
            at: Some(at),
        };
        let id = self.start_restore(&restore, target, request_id).await?;
        tracing::info!(tenant_id = %checked.tenant.id, at = %at.to_rfc3339(), operation_id = %id,
            base_backup = %checked.base_backup, "point-in-time restore requested");
        self.get_operation(id).await
    }

    /// Enqueues the restore of `r` into `target`.
    async fn start_restore(
        &self,
        r: &Started,
        target: RestoreTarget,
        request_id: Option<RequestId>,
    ) -> Result<Uuid> {
        let with_time = |state: restore::State| match r.at {
            Some(at) => state.at(at, r.source),
            None => state,
        };
        // What makes two requests the same: the export (hashed as it always was), or the
        // tenant and the moment.
        let what = match r.at {
            None => serde_json::json!(r.export_id),
            Some(at) => serde_json::json!({"tenant": r.source, "at": at}),
        };
        Ok(match target {
            RestoreTarget::InPlace => {
                let tenant = self.registry().get_tenant(&TenantRef::Id(r.source)).await?;
                let state = with_time(restore::State::new(
                    r.export_id,
                    restore::Mode::InPlace,
                    tenant.tier,
                    &tenant.placement.cluster,
                ));
                self.enqueue::<Restore>(Enqueue {
                    subject: Subject::Tenant {
                        tenant: &tenant,
                        check: &|| tenant.ensure_active(),
                    },
                    request_id: request_id.as_ref(),
                    hash: &request_hash(&("restore", "in_place", &what)),
                    state: &|_| state.clone(),
                })
                .await?
            }
            RestoreTarget::AsNewTenant(n) => {
                let tier = n.tier.unwrap_or(r.source_tier);
                let cluster = match &n.cluster {
                    Some(c) => self.known_cluster(c)?,
                    None => self.deps.config.default_cluster().to_owned(),
                };
                // Plan and labels follow the data, if the source tenant is still known.
                let source = self
                    .registry()
                    .find_tenant(&TenantRef::Id(r.source))
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
                let state = with_time(restore::State::new(
                    r.export_id,
                    restore::Mode::AsNewTenant,
                    tier,
                    &cluster,
                ));
                self.enqueue::<Restore>(Enqueue {
                    subject: Subject::NewTenant {
                        new: &new,
                        cluster: &cluster,
                    },
                    request_id: request_id.as_ref(),
                    hash: &request_hash(&("restore", &what, &new)),
                    state: &|_| state.clone(),
                })
                .await?
            }
        })
    }
}

/// A restore about to be enqueued: whose data, from which export (made first, for a point
/// in time).
struct Started {
    source: Uuid,
    source_tier: Tier,
    export_id: Uuid,
    at: Option<DateTime<Utc>>,
}
