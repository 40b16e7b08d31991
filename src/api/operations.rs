//! `tenantd.v1.OperationService` (AIP-151).

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::audit::audited;
use super::convert;
use super::convert::{opt_time, tier_to, time};
use super::pb;
use crate::error::Error;
use crate::operation::{Operation, OperationState, StepState};
use crate::service::OperationView;
use crate::service::{Control, MAX_WAIT};
use crate::tenant::TenantRef;
use crate::workflows::{change_tier, delete, restore};

pub struct OperationApi {
    control: Control,
}

impl OperationApi {
    pub fn new(control: Control) -> Self {
        OperationApi { control }
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

#[tonic::async_trait]
impl pb::operation_service_server::OperationService for OperationApi {
    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = convert::resource_id("name", &request.into_inner().name, "operations")?;
        Ok(Response::new(self.control.get_operation(id).await?.into()))
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let r = request.into_inner();
        let tenant = if r.tenant.is_empty() {
            None
        } else {
            Some(TenantRef::parse("tenant", &r.tenant)?)
        };
        let state = operation_state_from(r.state)?;
        let (ops, next_page_token) = self
            .control
            .list_operations(tenant.as_ref(), state, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn cancel_operation(
        &self,
        request: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let id = convert::resource_id("name", &r.name, "operations")?;
            Ok(control.cancel_operation(id).await?.into())
        })
        .await
    }

    async fn wait_operation(
        &self,
        request: Request<pb::WaitOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let r = request.into_inner();
        let id = convert::resource_id("name", &r.name, "operations")?;
        let timeout = match r.timeout_seconds {
            0 => MAX_WAIT,
            s => Duration::from_secs(s.into()),
        };
        Ok(Response::new(
            self.control.wait_operation(id, timeout).await?.into(),
        ))
    }

    type WatchOperationStream = OperationStream;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = convert::resource_id("name", &request.into_inner().name, "operations")?;
        let rx = self.control.watch_operation(id).await?;
        let stream = ReceiverStream::new(rx).map(|r| r.map(Into::into).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

// ---- conversions -----------------------------------------------------------------------

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
            online: s.online.is_some(),
            fenced_copy_because: s.fenced_copy_because.clone().unwrap_or_default(),
            catch_up_rounds: s.online.as_ref().map_or(0, |o| o.rounds as i32),
            catch_up_changes: s.online.as_ref().map_or(0, |o| o.changes as i64),
            lag_bytes: s.online.as_ref().map_or(0, |o| o.lag_bytes),
            tail_changes: s.online.as_ref().map_or(0, |o| o.tail_changes as i64),
            verified_changed_rows: s.online.as_ref().map_or(0, |o| o.verified_changed as i64),
            recent_rounds: s.online.as_ref().map_or_else(Vec::new, |o| {
                o.recent_rounds
                    .iter()
                    .map(|r| pb::CatchUpRound {
                        round: r.round as i32,
                        changes: r.changes as i64,
                        lag_bytes: r.lag_bytes,
                        elapsed_ms: r.elapsed_ms as i64,
                    })
                    .collect()
            }),
            peak_retained_wal_bytes: s.online.as_ref().map_or(0, |o| o.peak_retained_bytes),
            verified_ahead_rows: s.online.as_ref().map_or(0, |o| o.verified_ahead as i64),
            copy_mb_per_s: s.copy_mb_per_s,
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

impl From<restore::State> for pb::Restore {
    fn from(s: restore::State) -> Self {
        pb::Restore {
            export: format!("exports/{}", s.export_id),
            mode: match s.mode {
                restore::Mode::InPlace => pb::RestoreMode::InPlace,
                restore::Mode::AsNewTenant => pb::RestoreMode::AsNewTenant,
            } as i32,
            source_tenant_id: match (&s.manifest, &s.point_in_time) {
                (Some(m), _) => m.tenant_id.clone(),
                (None, Some(p)) => p.source_tenant.to_string(),
                (None, None) => String::new(),
            },
            tier: tier_to(s.tier) as i32,
            cluster: s.cluster.clone(),
            export_schema_version: s.manifest.as_ref().map_or(0, |m| m.schema_version),
            schema_version: s.schema_version.unwrap_or(0),
            rows: s.rows() as i64,
            fence_time: opt_time(s.pause.fenced_at),
            unfence_time: opt_time(s.pause.unfenced_at),
            write_pause_ms: s.pause.duration().map_or(0, |d| d.as_millis() as i64),
            point_in_time: opt_time(s.point_in_time.as_ref().map(|p| p.at)),
            base_backup: s
                .point_in_time
                .as_ref()
                .and_then(|p| p.base_backup.clone())
                .unwrap_or_default(),
            replayed_to: opt_time(s.point_in_time.as_ref().and_then(|p| p.replayed_to)),
            needed_bytes: s
                .point_in_time
                .as_ref()
                .map_or(0, |p| p.needed_bytes as i64),
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
