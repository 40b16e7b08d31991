//! `tenantd.v1.BackupService`: backup policies, a tenant's backup status and legal holds
//! (docs/backups.md).

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::audit::{Audited, Outcome, audited, caller};
use super::convert::{opt_time, resource_id, time};
use super::pb;
use crate::audit::Subject;
use crate::backup::{BackupPolicy, PolicyScope, PolicySpec, Retention, Schedule};
use crate::error::Error;
use crate::registry::backups::Hold;
use crate::service::{BackupStatus, Control, HoldTarget, PolicyTarget};
use crate::tenant::{TenantRef, text_field};

pub struct BackupApi {
    control: Control,
}

impl BackupApi {
    pub fn new(control: Control) -> Self {
        BackupApi { control }
    }
}

impl TryFrom<Option<&pb::PolicyTarget>> for PolicyTarget {
    type Error = Error;
    fn try_from(t: Option<&pb::PolicyTarget>) -> Result<Self, Error> {
        use pb::policy_target::Target;
        match t.and_then(|t| t.target.as_ref()) {
            Some(Target::Tenant(s)) => {
                Ok(PolicyTarget::Tenant(TenantRef::parse("target.tenant", s)?))
            }
            Some(Target::Plan(p)) => Ok(PolicyTarget::Plan(text_field("target.plan", p, true)?)),
            None => Err(Error::invalid("target", "must name a tenant or a plan")),
        }
    }
}

impl TryFrom<Option<&pb::HoldTarget>> for HoldTarget {
    type Error = Error;
    fn try_from(t: Option<&pb::HoldTarget>) -> Result<Self, Error> {
        use pb::hold_target::Target;
        match t.and_then(|t| t.target.as_ref()) {
            Some(Target::Tenant(s)) => {
                Ok(HoldTarget::Tenant(TenantRef::parse("target.tenant", s)?))
            }
            Some(Target::Export(e)) => Ok(HoldTarget::Export(resource_id(
                "target.export",
                e,
                "exports",
            )?)),
            None => Err(Error::invalid("target", "must name a tenant or an export")),
        }
    }
}

impl TryFrom<&pb::SetBackupPolicyRequest> for PolicySpec {
    type Error = Error;
    fn try_from(r: &pb::SetBackupPolicyRequest) -> Result<Self, Error> {
        let drill = match r.drill.trim() {
            "" => None,
            d => Some(Schedule::parse("drill", d)?),
        };
        Ok(PolicySpec {
            schedule: Schedule::parse("schedule", &r.schedule)?,
            retention: Retention::new(
                r.keep_last.into(),
                r.keep_days.into(),
                r.keep_monthly.into(),
                r.keep_yearly.into(),
            )?,
            drill,
        })
    }
}

impl From<BackupPolicy> for pb::BackupPolicy {
    fn from(p: BackupPolicy) -> Self {
        let (tenant_id, plan) = match p.scope {
            PolicyScope::Tenant(t) => (t.to_string(), String::new()),
            PolicyScope::Plan(plan) => (String::new(), plan),
        };
        let r = p.spec.retention;
        pb::BackupPolicy {
            name: format!("backup-policies/{}", p.id),
            tenant_id,
            plan,
            schedule: p.spec.schedule.as_str().to_owned(),
            keep_last: r.keep_last as i32,
            keep_days: r.keep_days as i32,
            keep_monthly: r.keep_monthly as i32,
            keep_yearly: r.keep_yearly as i32,
            drill: p
                .spec
                .drill
                .map(|d| d.as_str().to_owned())
                .unwrap_or_default(),
            effective_time: time(p.effective_from),
            create_time: time(p.created_at),
            update_time: time(p.updated_at),
        }
    }
}

/// An active hold (cleared: see [`cleared`]).
impl From<Hold> for pb::LegalHold {
    fn from(h: Hold) -> Self {
        pb::LegalHold {
            tenant_id: h.tenant_id.to_string(),
            export: h
                .export_id
                .map(|e| format!("exports/{e}"))
                .unwrap_or_default(),
            reason: h.reason,
            set_by: h.set_by,
            set_time: time(h.set_at),
            cleared_by: String::new(),
            clear_time: String::new(),
        }
    }
}

impl From<BackupStatus> for pb::BackupStatus {
    fn from(s: BackupStatus) -> Self {
        let run = s.latest_run.as_ref();
        pb::BackupStatus {
            tenant_id: s.tenant.id.to_string(),
            policy: s.policy.map(Into::into),
            newest_export: s
                .newest
                .map(|(id, _)| format!("exports/{id}"))
                .unwrap_or_default(),
            newest_snapshot_time: opt_time(s.newest.map(|(_, at)| at)),
            recovery_point_age_seconds: s
                .newest
                .map(|(_, at)| (s.now - at).num_seconds().max(0))
                .unwrap_or(0),
            next_due_time: opt_time(s.next_due),
            last_slot_time: opt_time(run.map(|r| r.slot)),
            last_operation: run
                .and_then(|r| r.operation_id)
                .map(|o| format!("operations/{o}"))
                .unwrap_or_default(),
            busy_ticks: run
                .filter(|r| r.operation_id.is_none())
                .map_or(0, |r| r.waits),
            busy_reason: run
                .filter(|r| r.operation_id.is_none())
                .and_then(|r| r.last_wait.clone())
                .unwrap_or_default(),
            legal_holds: s.holds.into_iter().map(Into::into).collect(),
            next_drill_time: opt_time(s.next_drill),
            last_drill: s.last_drill.map(|d| pb::DrillOutcome {
                operation: format!("operations/{}", d.operation_id),
                export: d
                    .export_id
                    .map(|e| format!("exports/{e}"))
                    .unwrap_or_default(),
                passed: d.passed,
                error: d.error_message.unwrap_or_default(),
                slot_time: time(d.slot),
                finish_time: opt_time(d.finished_at),
            }),
        }
    }
}

fn policy_subject(t: &Option<pb::PolicyTarget>) -> Subject {
    match t.as_ref().and_then(|t| t.target.as_ref()) {
        Some(pb::policy_target::Target::Tenant(s)) => Subject::Tenant(s.clone()),
        _ => Subject::None,
    }
}

fn hold_subject(t: &Option<pb::HoldTarget>) -> Subject {
    match t.as_ref().and_then(|t| t.target.as_ref()) {
        Some(pb::hold_target::Target::Tenant(s)) => Subject::Tenant(s.clone()),
        Some(pb::hold_target::Target::Export(e)) => Subject::Export(e.clone()),
        None => Subject::None,
    }
}

impl Audited for pb::SetBackupPolicyRequest {
    fn subject(&self) -> Subject {
        policy_subject(&self.target)
    }
}

impl Audited for pb::DeleteBackupPolicyRequest {
    fn subject(&self) -> Subject {
        policy_subject(&self.target)
    }
}

impl Audited for pb::SetLegalHoldRequest {
    fn subject(&self) -> Subject {
        hold_subject(&self.target)
    }
}

impl Audited for pb::ClearLegalHoldRequest {
    fn subject(&self) -> Subject {
        hold_subject(&self.target)
    }
}

impl Outcome for pb::BackupPolicy {
    fn detail(&self) -> String {
        format!("{} schedule {:?}", self.name, self.schedule)
    }
    fn tenant_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.tenant_id).ok()
    }
}

impl Outcome for pb::LegalHold {
    fn detail(&self) -> String {
        let on = if self.export.is_empty() {
            "tenant"
        } else {
            &self.export
        };
        let what = if self.clear_time.is_empty() {
            "set"
        } else {
            "cleared"
        };
        format!("legal hold on {on} {what}: {:?}", self.reason)
    }
    fn tenant_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.tenant_id).ok()
    }
}

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for BackupApi {
    async fn set_backup_policy(
        &self,
        request: Request<pb::SetBackupPolicyRequest>,
    ) -> Result<Response<pb::BackupPolicy>, Status> {
        audited(&self.control, request, |control, r| async move {
            let target = PolicyTarget::try_from(r.target.as_ref())?;
            let spec = PolicySpec::try_from(&r)?;
            Ok(control.set_backup_policy(&target, &spec).await?.into())
        })
        .await
    }

    async fn get_backup_policy(
        &self,
        request: Request<pb::GetBackupPolicyRequest>,
    ) -> Result<Response<pb::BackupPolicy>, Status> {
        let target = PolicyTarget::try_from(request.get_ref().target.as_ref())?;
        Ok(Response::new(
            self.control.get_backup_policy(&target).await?.into(),
        ))
    }

    async fn list_backup_policies(
        &self,
        request: Request<pb::ListBackupPoliciesRequest>,
    ) -> Result<Response<pb::ListBackupPoliciesResponse>, Status> {
        let r = request.into_inner();
        let (policies, next_page_token) = self
            .control
            .list_backup_policies(r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListBackupPoliciesResponse {
            policies: policies.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn delete_backup_policy(
        &self,
        request: Request<pb::DeleteBackupPolicyRequest>,
    ) -> Result<Response<pb::BackupPolicy>, Status> {
        audited(&self.control, request, |control, r| async move {
            let target = PolicyTarget::try_from(r.target.as_ref())?;
            Ok(control.delete_backup_policy(&target).await?.into())
        })
        .await
    }

    async fn get_backup_status(
        &self,
        request: Request<pb::GetBackupStatusRequest>,
    ) -> Result<Response<pb::BackupStatus>, Status> {
        let tenant = TenantRef::parse("tenant", &request.get_ref().tenant)?;
        let status = self
            .control
            .backup_status(&tenant, chrono::Utc::now())
            .await?;
        Ok(Response::new(status.into()))
    }

    async fn set_legal_hold(
        &self,
        request: Request<pb::SetLegalHoldRequest>,
    ) -> Result<Response<pb::LegalHold>, Status> {
        let by = caller(&request)?.principal.name;
        audited(&self.control, request, move |control, r| async move {
            let target = HoldTarget::try_from(r.target.as_ref())?;
            let reason = text_field("reason", &r.reason, true)?;
            Ok(control.set_legal_hold(&target, &reason, &by).await?.into())
        })
        .await
    }

    async fn clear_legal_hold(
        &self,
        request: Request<pb::ClearLegalHoldRequest>,
    ) -> Result<Response<pb::LegalHold>, Status> {
        let by = caller(&request)?.principal.name;
        audited(&self.control, request, move |control, r| async move {
            let target = HoldTarget::try_from(r.target.as_ref())?;
            let hold = control.clear_legal_hold(&target, &by).await?;
            Ok(cleared(hold, &by))
        })
        .await
    }
}

/// A hold as ClearLegalHold answers it: cleared now, by `by`.
fn cleared(h: Hold, by: &str) -> pb::LegalHold {
    pb::LegalHold {
        cleared_by: by.to_owned(),
        clear_time: time(chrono::Utc::now()),
        ..h.into()
    }
}
