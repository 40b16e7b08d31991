//! Proto ⇄ domain conversions. Requests are validated here (TryFrom), so a handler only ever
//! passes valid domain values on.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

use super::pb;
use crate::config::KEY_PENDING_DAYS;
use crate::error::Error;
use crate::operation::{Operation, OperationState, StepState};
use crate::registry::certificates::StoredCertificate;
use crate::registry::exports::ExportState;
use crate::registry::tenants::TenantChanges;
use crate::service::{CertificateRef, DeletionRequest};
use crate::service::{ExportView, NewTenantFromExport, OperationView, RestoreTarget, Route};
use crate::tenant::{self, NewTenant, Slug, Tenant, TenantRef, TenantState, Tier};
use crate::workflows::{change_tier, delete, restore};
use uuid::Uuid;

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_default()
}

pub fn tier_from(field: &str, v: i32, required: bool) -> Result<Option<Tier>, Error> {
    match pb::Tier::try_from(v) {
        Ok(pb::Tier::Pool) => Ok(Some(Tier::Pool)),
        Ok(pb::Tier::Schema) => Ok(Some(Tier::Schema)),
        Ok(pb::Tier::Database) => Ok(Some(Tier::Database)),
        Ok(pb::Tier::Unspecified) if !required => Ok(None),
        Ok(pb::Tier::Unspecified) => Err(Error::invalid(
            field,
            "is required: pool, schema or database",
        )),
        Err(_) => Err(Error::invalid(field, format!("unknown tier {v}"))),
    }
}

pub fn tier_to(t: Tier) -> pb::Tier {
    match t {
        Tier::Pool => pb::Tier::Pool,
        Tier::Schema => pb::Tier::Schema,
        Tier::Database => pb::Tier::Database,
    }
}

pub fn tenant_state_from(v: i32) -> Result<Option<TenantState>, Error> {
    match pb::TenantState::try_from(v) {
        Ok(pb::TenantState::Unspecified) => Ok(None),
        Ok(pb::TenantState::Provisioning) => Ok(Some(TenantState::Provisioning)),
        Ok(pb::TenantState::Active) => Ok(Some(TenantState::Active)),
        Ok(pb::TenantState::Failed) => Ok(Some(TenantState::Failed)),
        Ok(pb::TenantState::Deleting) => Ok(Some(TenantState::Deleting)),
        Ok(pb::TenantState::Deleted) => Ok(Some(TenantState::Deleted)),
        Err(_) => Err(Error::invalid("state", format!("unknown tenant state {v}"))),
    }
}

fn tenant_state_to(s: TenantState) -> pb::TenantState {
    match s {
        TenantState::Provisioning => pb::TenantState::Provisioning,
        TenantState::Active => pb::TenantState::Active,
        TenantState::Failed => pb::TenantState::Failed,
        TenantState::Deleting => pb::TenantState::Deleting,
        TenantState::Deleted => pb::TenantState::Deleted,
    }
}

pub fn operation_state_from(v: i32) -> Result<Option<OperationState>, Error> {
    use pb::OperationState as P;
    Ok(Some(match P::try_from(v) {
        Ok(P::Unspecified) => return Ok(None),
        Ok(P::Pending) => OperationState::Pending,
        Ok(P::Running) => OperationState::Running,
        Ok(P::Compensating) => OperationState::Compensating,
        Ok(P::Succeeded) => OperationState::Succeeded,
        Ok(P::Failed) => OperationState::Failed,
        Ok(P::Cancelled) => OperationState::Cancelled,
        Err(_) => {
            return Err(Error::invalid(
                "state",
                format!("unknown operation state {v}"),
            ));
        }
    }))
}

fn operation_state_to(s: OperationState) -> pb::OperationState {
    use pb::OperationState as P;
    match s {
        OperationState::Pending => P::Pending,
        OperationState::Running => P::Running,
        OperationState::Compensating => P::Compensating,
        OperationState::Succeeded => P::Succeeded,
        OperationState::Failed => P::Failed,
        OperationState::Cancelled => P::Cancelled,
    }
}

fn step_state_to(s: StepState) -> pb::StepState {
    match s {
        StepState::Pending => pb::StepState::Pending,
        StepState::Running => pb::StepState::Running,
        StepState::Done => pb::StepState::Done,
        StepState::Failed => pb::StepState::Failed,
    }
}

pub fn labels_from(
    labels: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    tenant::labels(&labels.into_iter().collect())
}

impl TryFrom<pb::CreateTenantRequest> for NewTenant {
    type Error = Error;
    fn try_from(r: pb::CreateTenantRequest) -> Result<Self, Error> {
        let slug = Slug::parse(&r.slug)?;
        let display_name = tenant::text_field("display_name", &r.display_name, false)?;
        Ok(NewTenant {
            display_name: if display_name.is_empty() {
                slug.as_str().to_owned()
            } else {
                display_name
            },
            slug,
            plan: tenant::text_field("plan", &r.plan, false)?,
            tier: tier_from("tier", r.tier, true)?.expect("required"),
            labels: labels_from(r.labels)?,
            cluster: if r.cluster.is_empty() {
                None
            } else {
                Some(tenant::text_field("cluster", &r.cluster, true)?)
            },
        })
    }
}

/// An UpdateTenant request, validated: which tenant, and what changes.
pub struct TenantUpdate {
    pub tenant: TenantRef,
    pub changes: TenantChanges,
}

impl TryFrom<pb::UpdateTenantRequest> for TenantUpdate {
    type Error = Error;
    fn try_from(r: pb::UpdateTenantRequest) -> Result<Self, Error> {
        let tenant = TenantRef::parse("tenant", &r.tenant)?;
        if r.update_mask.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "name the fields to change: display_name, plan, labels",
            ));
        }
        let mut changes = TenantChanges::default();
        for path in &r.update_mask {
            match path.as_str() {
                "display_name" => {
                    changes.display_name =
                        Some(tenant::text_field("display_name", &r.display_name, true)?)
                }
                "plan" => changes.plan = Some(tenant::text_field("plan", &r.plan, false)?),
                "labels" => changes.labels = Some(labels_from(r.labels.clone())?),
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "unknown or immutable field {:?}",
                            other.chars().take(64).collect::<String>()
                        ),
                    ));
                }
            }
        }
        Ok(TenantUpdate { tenant, changes })
    }
}

impl From<Tenant> for pb::Tenant {
    fn from(t: Tenant) -> Self {
        pb::Tenant {
            id: t.id.to_string(),
            slug: t.slug,
            display_name: t.display_name,
            plan: t.plan,
            labels: t.labels.into_iter().collect(),
            tier: tier_to(t.tier) as i32,
            state: tenant_state_to(t.state) as i32,
            placement: Some(pb::Placement {
                cluster: t.placement.cluster,
                database: t.placement.database.unwrap_or_default(),
                schema: t.placement.schema.unwrap_or_default(),
                role: t.placement.role.unwrap_or_default(),
            }),
            schema_version: t.schema_version,
            routing_epoch: t.routing_epoch,
            key_id: t.key_id.unwrap_or_default(),
            create_time: time(t.created_at),
            update_time: time(t.updated_at),
        }
    }
}

impl From<Route> for pb::TenantRoute {
    fn from(r: Route) -> Self {
        pb::TenantRoute {
            tenant_id: r.tenant.id.to_string(),
            tier: tier_to(r.tenant.tier) as i32,
            cluster: r.tenant.placement.cluster,
            host: r.host,
            port: r.port as i32,
            database: r.tenant.placement.database.unwrap_or_default(),
            schema: r.tenant.placement.schema.unwrap_or_default(),
            role: r.tenant.placement.role.unwrap_or_default(),
            session_settings: r.session_settings.into_iter().collect(),
            routing_epoch: r.tenant.routing_epoch,
            credential_ref: r.credential_ref.unwrap_or_default(),
        }
    }
}

impl From<change_tier::State> for pb::TierChange {
    fn from(s: change_tier::State) -> Self {
        let (source_tier, source_cluster) = match &s.source {
            Some(src) => (tier_to(src.tier), src.cluster.clone()),
            None => (pb::Tier::Unspecified, String::new()),
        };
        pb::TierChange {
            source_tier: source_tier as i32,
            source_cluster,
            target_tier: tier_to(s.target.tier) as i32,
            target_cluster: s.target.cluster.clone(),
            fence_time: opt_time(s.pause.fenced_at),
            unfence_time: opt_time(s.pause.unfenced_at),
            write_pause_ms: s.pause.duration().map_or(0, |d| d.as_millis() as i64),
            rows_copied: s.rows_copied(),
        }
    }
}

impl From<delete::State> for pb::Deletion {
    fn from(s: delete::State) -> Self {
        pb::Deletion {
            rows: s.rows() as i64,
            objects_deleted: s.objects.as_ref().map_or(0, |o| o.deleted as i64),
            key_id: s.key.as_ref().map(|k| k.key_id.clone()).unwrap_or_default(),
            key_deletion_time: s
                .key
                .as_ref()
                .map(|k| k.deletion_date.clone())
                .unwrap_or_default(),
            final_export_name: s
                .final_export
                .as_ref()
                .map(|f| f.export.clone())
                .unwrap_or_default(),
            reason: s.request.reason,
            requested_by: s.request.requested_by,
            ticket: s.request.ticket,
            final_export: s.request.final_export,
            key_pending_days: s.request.key_pending_days as i32,
        }
    }
}

impl From<StoredCertificate> for pb::DeletionCertificate {
    fn from(c: StoredCertificate) -> Self {
        pb::DeletionCertificate {
            name: format!("deletion-certificates/{}", c.id),
            tenant_id: c.tenant_id.to_string(),
            tenant_slug: c.tenant_slug,
            operation: format!("operations/{}", c.operation_id),
            issue_time: time(c.issued_at),
            signing_key_id: c.signing_key_id,
            sha256: c.sha256,
            document: c.document,
        }
    }
}

/// A validated DeleteTenant request.
impl TryFrom<&pb::DeleteTenantRequest> for DeletionRequest {
    type Error = Error;
    fn try_from(r: &pb::DeleteTenantRequest) -> Result<Self, Error> {
        let key_pending_days = match r.key_pending_days {
            0 => None,
            d if d >= 0 && KEY_PENDING_DAYS.contains(&(d as u32)) => Some(d as u32),
            d => {
                return Err(Error::invalid(
                    "key_pending_days",
                    format!("must be 7 to 30 (or 0 for the configured default), got {d}"),
                ));
            }
        };
        Ok(DeletionRequest {
            reason: tenant::text_field("reason", &r.reason, true)?,
            requested_by: tenant::text_field("requested_by", &r.requested_by, true)?,
            ticket: tenant::text_field("ticket", &r.ticket, false)?,
            final_export: r.final_export,
            key_pending_days,
        })
    }
}

/// "deletion-certificates/{uuid}", or a tenant id or slug.
pub fn certificate_ref(name: &str) -> Result<CertificateRef, Error> {
    if name.starts_with("deletion-certificates") {
        return resource_id("name", name, "deletion-certificates").map(CertificateRef::Id);
    }
    TenantRef::parse("name", name).map(CertificateRef::Tenant)
}

impl From<restore::State> for pb::Restore {
    fn from(s: restore::State) -> Self {
        pb::Restore {
            export: format!("exports/{}", s.export_id),
            mode: match s.mode {
                restore::Mode::InPlace => pb::RestoreMode::InPlace,
                restore::Mode::AsNewTenant => pb::RestoreMode::AsNewTenant,
            } as i32,
            source_tenant_id: s
                .manifest
                .as_ref()
                .map(|m| m.tenant_id.clone())
                .unwrap_or_default(),
            tier: tier_to(s.tier) as i32,
            cluster: s.cluster.clone(),
            export_schema_version: s.manifest.as_ref().map_or(0, |m| m.schema_version),
            schema_version: s.schema_version.unwrap_or(0),
            rows: s.rows() as i64,
            fence_time: opt_time(s.pause.fenced_at),
            unfence_time: opt_time(s.pause.unfenced_at),
            write_pause_ms: s.pause.duration().map_or(0, |d| d.as_millis() as i64),
        }
    }
}

/// A validated RestoreTenant request.
pub struct RestoreRequest {
    pub export_id: Uuid,
    pub target: RestoreTarget,
}

impl TryFrom<&pb::RestoreTenantRequest> for RestoreRequest {
    type Error = Error;
    fn try_from(r: &pb::RestoreTenantRequest) -> Result<Self, Error> {
        let export_id = resource_id("export", &r.export, "exports")?;
        let optional = |field: &str, v: &str| -> Result<Option<String>, Error> {
            Ok(if v.is_empty() {
                None
            } else {
                Some(tenant::text_field(field, v, true)?)
            })
        };
        let target = match pb::RestoreMode::try_from(r.mode) {
            Ok(pb::RestoreMode::InPlace) => {
                for (field, set) in [
                    ("new_slug", !r.new_slug.is_empty()),
                    ("tier", r.tier != 0),
                    ("cluster", !r.cluster.is_empty()),
                    ("display_name", !r.display_name.is_empty()),
                ] {
                    if set {
                        return Err(Error::invalid(
                            field,
                            "applies only to RESTORE_MODE_AS_NEW_TENANT; an in-place restore \
                             keeps the tenant where it is",
                        ));
                    }
                }
                RestoreTarget::InPlace
            }
            Ok(pb::RestoreMode::AsNewTenant) => {
                if r.new_slug.is_empty() {
                    return Err(Error::invalid(
                        "new_slug",
                        "is required for RESTORE_MODE_AS_NEW_TENANT",
                    ));
                }
                RestoreTarget::AsNewTenant(NewTenantFromExport {
                    slug: Slug::parse(&r.new_slug).map_err(|e| match e {
                        Error::InvalidArgument { reason, .. } => Error::invalid("new_slug", reason),
                        other => other,
                    })?,
                    tier: tier_from("tier", r.tier, false)?,
                    cluster: optional("cluster", &r.cluster)?,
                    display_name: {
                        let d = tenant::text_field("display_name", &r.display_name, false)?;
                        (!d.is_empty()).then_some(d)
                    },
                })
            }
            Ok(pb::RestoreMode::Unspecified) => {
                return Err(Error::invalid(
                    "mode",
                    "is required: RESTORE_MODE_IN_PLACE or RESTORE_MODE_AS_NEW_TENANT",
                ));
            }
            Err(_) => {
                return Err(Error::invalid(
                    "mode",
                    format!("unknown restore mode {}", r.mode),
                ));
            }
        };
        Ok(RestoreRequest { export_id, target })
    }
}

/// A validated ChangeTier request.
pub struct TierChangeRequest {
    pub tenant: TenantRef,
    pub tier: Tier,
    pub cluster: Option<String>,
}

impl TryFrom<&pb::ChangeTierRequest> for TierChangeRequest {
    type Error = Error;
    fn try_from(r: &pb::ChangeTierRequest) -> Result<Self, Error> {
        Ok(TierChangeRequest {
            tenant: TenantRef::parse("tenant", &r.tenant)?,
            tier: tier_from("tier", r.tier, true)?.expect("required"),
            cluster: if r.cluster.is_empty() {
                None
            } else {
                Some(tenant::text_field("cluster", &r.cluster, true)?)
            },
        })
    }
}

/// The id in a resource name `{collection}/{uuid}` (AIP-122), or in a bare uuid, for
/// operators typing ids.
pub fn resource_id(field: &str, name: &str, collection: &str) -> Result<Uuid, Error> {
    let id = name
        .strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(name);
    Uuid::parse_str(id).map_err(|_| {
        Error::invalid(
            field,
            format!("must be {collection}/{{uuid}} as returned by the API"),
        )
    })
}

impl From<ExportView> for pb::Export {
    fn from(v: ExportView) -> Self {
        let e = v.export;
        pb::Export {
            name: format!("exports/{}", e.id),
            tenant_id: e.tenant_id.to_string(),
            state: match e.state {
                ExportState::Running => pb::ExportState::Running,
                ExportState::Complete => pb::ExportState::Complete,
                ExportState::Failed => pb::ExportState::Failed,
                ExportState::Deleted => pb::ExportState::Deleted,
            } as i32,
            object_uri: v.object_uri,
            manifest_uri: v.manifest_uri,
            size_bytes: e.size_bytes.unwrap_or(0).max(0) as u64,
            sha256: e.sha256.unwrap_or_default(),
            plaintext_sha256: e.plaintext_sha256.unwrap_or_default(),
            tables: e
                .tables
                .into_iter()
                .map(|t| pb::TableRowCount {
                    table: t.table,
                    rows: t.rows,
                })
                .collect(),
            snapshot_time: e.snapshot_at.map(time).unwrap_or_default(),
            key_id: e.key_id.unwrap_or_default(),
            schema_version: e.schema_version.unwrap_or(0),
            source_tier: e
                .tier
                .parse::<Tier>()
                .map(tier_to)
                .unwrap_or(pb::Tier::Unspecified) as i32,
            operation: format!("operations/{}", e.operation_id),
            create_time: time(e.created_at),
            complete_time: e.completed_at.map(time).unwrap_or_default(),
        }
    }
}

impl From<OperationView> for pb::Operation {
    fn from(v: OperationView) -> Self {
        let op: Operation = v.operation;
        let result = match (&op.error, v.tenant) {
            (Some(e), _) if op.done() => Some(pb::operation::Result::Error(pb::OperationError {
                code: tonic::Code::from(e.code) as i32,
                message: e.message.clone(),
                step: e.step.clone().unwrap_or_default(),
            })),
            (_, Some(t)) => Some(pb::operation::Result::Tenant(t.into())),
            _ if v.export.is_some() => v.export.map(|e| pb::operation::Result::Export(e.into())),
            _ if v.certificate.is_some() => v
                .certificate
                .map(|c| pb::operation::Result::Certificate(c.into())),
            _ => None,
        };
        pb::Operation {
            name: op.name(),
            done: op.done(),
            metadata: Some(pb::OperationMetadata {
                kind: op.kind,
                // Empty for a fleet operation, which belongs to no tenant.
                tenant_id: op.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                state: operation_state_to(op.state) as i32,
                steps: op
                    .steps
                    .into_iter()
                    .map(|s| pb::Step {
                        name: s.name,
                        state: step_state_to(s.state) as i32,
                        attempts: s.attempts,
                        start_time: opt_time(s.started_at),
                        end_time: opt_time(s.finished_at),
                        progress_done: s.progress_done,
                        progress_total: s.progress_total,
                        last_error: s.last_error.unwrap_or_default(),
                        items: s
                            .progress_items
                            .into_iter()
                            .map(|i| pb::ProgressItem {
                                name: i.name,
                                done: i.done,
                                total: i.total,
                            })
                            .collect(),
                    })
                    .collect(),
                create_time: time(op.created_at),
                update_time: time(op.updated_at),
                end_time: opt_time(op.finished_at),
                cancel_requested: op.cancel_requested,
                request_id: op.request_id.unwrap_or_default(),
                details: v
                    .tier_change
                    .map(|t| pb::operation_metadata::Details::TierChange(t.into()))
                    .or_else(|| {
                        v.restore
                            .map(|r| pb::operation_metadata::Details::Restore(r.into()))
                    })
                    .or_else(|| {
                        v.deletion
                            .map(|d| pb::operation_metadata::Details::Deletion(d.into()))
                    }),
            }),
            result,
        }
    }
}
