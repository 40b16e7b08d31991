//! Backups that run themselves ([`crate::backup`]): policies, a tenant's backup status, legal
//! holds, removing an export, and starting what one due slot calls for, a scheduled export
//! or a restore drill (what the scheduler calls).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, ExportView};
use crate::backup::{BackupPolicy, PolicyScope, PolicySpec, RunKind, Slot, removal};
use crate::error::{Error, Result};
use crate::paging;
use crate::registry::backups::{DrillResult, Due, Hold, Run};
use crate::tenant::{Tenant, TenantRef, TenantState};
use crate::workflows::{Drill, Export, drill, export};

/// Whom a request's policy is for, as the caller named it.
#[derive(Debug, Clone)]
pub enum PolicyTarget {
    Tenant(TenantRef),
    Plan(String),
}

/// What a legal hold is on.
#[derive(Debug, Clone)]
pub enum HoldTarget {
    Tenant(TenantRef),
    Export(Uuid),
}

/// A tenant's backups at a glance (GetBackupStatus).
#[derive(Debug, Clone)]
pub struct BackupStatus {
    pub tenant: Tenant,
    /// The policy that covers it (its own or its plan's).
    pub policy: Option<BackupPolicy>,
    /// The newest complete export (scheduled or not) and when its data is from.
    pub newest: Option<(Uuid, DateTime<Utc>)>,
    /// The next slot the policy will back the tenant up at.
    pub next_due: Option<DateTime<Utc>>,
    /// What the scheduler last did: the operation it started, or how often it found the
    /// tenant busy.
    pub latest_run: Option<Run>,
    pub holds: Vec<Hold>,
    /// The next drill slot, if the policy drills.
    pub next_drill: Option<DateTime<Utc>>,
    /// How the latest finished drill ended.
    pub last_drill: Option<DrillResult>,
    pub now: DateTime<Utc>,
}

/// What starting one due slot came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Operation(Uuid),
    /// The tenant was busy (another operation holds it) or not active: it stays due.
    Waiting(String),
}

impl Control {
    async fn scope(&self, target: &PolicyTarget) -> Result<PolicyScope> {
        Ok(match target {
            PolicyTarget::Tenant(r) => {
                let t = self.registry().get_tenant(r).await?;
                if matches!(
                    t.state,
                    TenantState::Failed | TenantState::Deleting | TenantState::Deleted
                ) {
                    return Err(Error::FailedPrecondition {
                        reason: format!(
                            "tenant {} is {}: it gets no backups",
                            t.slug,
                            t.state.as_str()
                        ),
                        operation: None,
                    });
                }
                PolicyScope::Tenant(t.id)
            }
            PolicyTarget::Plan(p) => PolicyScope::Plan(p.clone()),
        })
    }

    pub async fn set_backup_policy(
        &self,
        target: &PolicyTarget,
        spec: &PolicySpec,
    ) -> Result<BackupPolicy> {
        let scope = self.scope(target).await?;
        let policy = self.registry().set_backup_policy(&scope, spec).await?;
        tracing::info!(policy_id = %policy.id, schedule = policy.spec.schedule.as_str(),
            "backup policy set");
        Ok(policy)
    }

    pub async fn get_backup_policy(&self, target: &PolicyTarget) -> Result<BackupPolicy> {
        let scope = self.scope(target).await?;
        self.registry()
            .backup_policy(&scope)
            .await?
            .ok_or_else(|| Error::not_found("backup policy", describe(target)))
    }

    pub async fn list_backup_policies(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<BackupPolicy>, String)> {
        let limit = paging::page_size(page_size)?;
        let after = paging::decode(page_token, "backup-policies")?;
        let rows = self
            .registry()
            .list_backup_policies(after, limit + 1)
            .await?;
        Ok(paging::finish(rows, limit, "backup-policies", |p| {
            (p.created_at, p.id)
        }))
    }

    /// Deletes the policy: its schedule stops. Existing backups stay (DeleteExport removes
    /// them one by one).
    pub async fn delete_backup_policy(&self, target: &PolicyTarget) -> Result<BackupPolicy> {
        let policy = self.get_backup_policy(target).await?;
        if !self.registry().delete_backup_policy(&policy.scope).await? {
            return Err(Error::not_found("backup policy", describe(target)));
        }
        tracing::info!(policy_id = %policy.id, "backup policy deleted");
        Ok(policy)
    }

    pub async fn backup_status(&self, r: &TenantRef, now: DateTime<Utc>) -> Result<BackupStatus> {
        let tenant = self.registry().get_tenant(r).await?;
        let policy = match tenant.state {
            TenantState::Active | TenantState::Provisioning => {
                self.registry()
                    .effective_backup_policy(tenant.id, &tenant.plan)
                    .await?
            }
            _ => None,
        };
        let next = |schedule: Option<&crate::backup::Schedule>, p: &BackupPolicy| {
            let after = now.max(p.effective_from - chrono::Duration::seconds(1));
            schedule?.next_after(after)
        };
        let next_due = policy
            .as_ref()
            .and_then(|p| next(Some(&p.spec.schedule), p));
        let next_drill = policy.as_ref().and_then(|p| next(p.spec.drill.as_ref(), p));
        Ok(BackupStatus {
            newest: self.registry().newest_export(tenant.id).await?,
            latest_run: self
                .registry()
                .latest_run(tenant.id, RunKind::Backup)
                .await?,
            holds: self.registry().holds(tenant.id).await?,
            last_drill: self.registry().latest_drill(tenant.id).await?,
            next_drill,
            policy,
            next_due,
            tenant,
            now,
        })
    }

    /// Removes an export's objects, keeping its row as a tombstone. FAILED_PRECONDITION,
    /// naming the hold, for a held export; a removed one is returned as it is.
    pub async fn delete_export(&self, id: Uuid, by: &str) -> Result<ExportView> {
        removal::remove(&self.deps, id, &format!("DeleteExport by {by}")).await?;
        self.get_export(id).await
    }

    pub async fn set_legal_hold(
        &self,
        target: &HoldTarget,
        reason: &str,
        by: &str,
    ) -> Result<Hold> {
        let (tenant_id, export_id) = self.hold_target(target).await?;
        let hold = self
            .registry()
            .set_hold(tenant_id, export_id, reason, by)
            .await?;
        tracing::info!(tenant_id = %tenant_id, export_id = export_id.map(tracing::field::display),
            "legal hold set");
        Ok(hold)
    }

    pub async fn clear_legal_hold(&self, target: &HoldTarget, by: &str) -> Result<Hold> {
        let (tenant_id, export_id) = self.hold_target(target).await?;
        let hold = self
            .registry()
            .clear_hold(tenant_id, export_id, by)
            .await?
            .ok_or_else(|| Error::not_found("legal hold", hold_name(target)))?;
        tracing::info!(tenant_id = %tenant_id, export_id = export_id.map(tracing::field::display),
            "legal hold cleared");
        Ok(hold)
    }

    async fn hold_target(&self, target: &HoldTarget) -> Result<(Uuid, Option<Uuid>)> {
        Ok(match target {
            HoldTarget::Tenant(r) => (self.registry().get_tenant(r).await?.id, None),
            HoldTarget::Export(id) => (self.get_export(*id).await?.export.tenant_id, Some(*id)),
        })
    }

    /// FAILED_PRECONDITION naming the first hold, when the tenant or any of its exports is
    /// under legal hold (a deletion would destroy them all).
    pub(crate) async fn ensure_not_held(&self, tenant_id: Uuid) -> Result<()> {
        match self.registry().holds(tenant_id).await?.first() {
            Some(h) => Err(Error::FailedPrecondition {
                reason: format!("the tenant cannot be deleted: {}", h.describe()),
                operation: None,
            }),
            None => Ok(()),
        }
    }

    /// Starts what one due slot of `kind` calls for (a scheduled export, or a drill): one
    /// operation per (tenant, kind, slot), with a request id no caller can send (see
    /// [`crate::backup`]), so every replica that finds the slot due gets the same operation.
    pub async fn start_scheduled(&self, kind: RunKind, due: &Due) -> Result<Started> {
        let tenant = self
            .registry()
            .get_tenant(&TenantRef::Id(due.tenant_id))
            .await?;
        let request_id = RequestId(format!(
            "{}/{}/{}",
            kind.as_str(),
            due.tenant_id,
            due.slot.timestamp()
        ));
        let slot = Slot {
            policy_id: due.policy_id,
            slot: due.slot,
        };
        let check = || tenant.ensure_active();
        let subject = || Subject::Tenant {
            tenant: &tenant,
            check: &check,
        };
        let hash = request_hash(&(kind.as_str(), tenant.id, due.slot));
        let started = match kind {
            RunKind::Backup => {
                self.enqueue::<Export>(Enqueue {
                    subject: subject(),
                    request_id: Some(&request_id),
                    hash: &hash,
                    state: &|id| export::State::scheduled(id, slot),
                })
                .await
            }
            RunKind::Drill => {
                self.enqueue::<Drill>(Enqueue {
                    subject: subject(),
                    request_id: Some(&request_id),
                    hash: &hash,
                    state: &|_| drill::State::new(slot),
                })
                .await
            }
        };
        match started {
            Ok(id) => {
                self.registry().run_started(kind, due, id).await?;
                Ok(Started::Operation(id))
            }
            Err(Error::FailedPrecondition { reason, .. }) => {
                self.registry().run_waited(kind, due, &reason).await?;
                Ok(Started::Waiting(reason))
            }
            Err(e) => Err(e),
        }
    }
}

fn describe(target: &PolicyTarget) -> String {
    match target {
        PolicyTarget::Tenant(r) => format!("of tenant {r}"),
        PolicyTarget::Plan(p) => format!("of plan {p:?}"),
    }
}

fn hold_name(target: &HoldTarget) -> String {
    match target {
        HoldTarget::Tenant(r) => format!("on tenant {r}"),
        HoldTarget::Export(id) => format!("on exports/{id}"),
    }
}
