//! `tenantd.v1.FleetService`: fleet migrations of the tenant schema (docs/rollouts.md).

use tonic::{Request, Response, Status};

use super::audit::{Audited, audited};
use super::convert::{self, opt_time, tier_to};
use super::pb;
use crate::audit::Subject;
use crate::auth::Caller;
use crate::error::Error;
use crate::rollout::{Plan, Target, TargetState};
use crate::service::{CanaryRequest, Control, RequestId};
use crate::tenant::TenantRef;

/// Defaults for what a MigrateFleet request leaves at zero.
const DEFAULT_CANARIES: u32 = 1;
const DEFAULT_CONCURRENCY: u32 = 4;
const DEFAULT_LOCK_TIMEOUT_MS: u32 = 5_000;
/// The most canary tenants a request may name.
const MAX_CANARY_TENANTS: usize = 100;

pub struct FleetApi {
    control: Control,
}

impl FleetApi {
    pub fn new(control: Control) -> Self {
        FleetApi { control }
    }
}

fn target_state_from(v: i32) -> Result<Option<TargetState>, Error> {
    use pb::rollout_target::State as P;
    Ok(Some(match P::try_from(v) {
        Ok(P::Unspecified) => return Ok(None),
        Ok(P::Pending) => TargetState::Pending,
        Ok(P::Running) => TargetState::Running,
        Ok(P::Done) => TargetState::Done,
        Ok(P::Failed) => TargetState::Failed,
        Ok(P::Skipped) => TargetState::Skipped,
        Err(_) => return Err(Error::invalid("state", format!("unknown target state {v}"))),
    }))
}

fn target_state_to(s: TargetState) -> pb::rollout_target::State {
    use pb::rollout_target::State as P;
    match s {
        TargetState::Pending => P::Pending,
        TargetState::Running => P::Running,
        TargetState::Done => P::Done,
        TargetState::Failed => P::Failed,
        TargetState::Skipped => P::Skipped,
    }
}

impl From<Target> for pb::RolloutTarget {
    fn from(t: Target) -> Self {
        pb::RolloutTarget {
            target: t.key,
            tenant_id: t.tenant_id.map(|id| id.to_string()).unwrap_or_default(),
            slug: t.slug.unwrap_or_default(),
            tier: tier_to(t.tier) as i32,
            cluster: t.cluster,
            canary: t.canary,
            state: target_state_to(t.state) as i32,
            from_version: t.from_version.unwrap_or(0),
            to_version: t.to_version.unwrap_or(0),
            attempts: t.attempts,
            error: t.error.unwrap_or_default(),
            start_time: opt_time(t.started_at),
            finish_time: opt_time(t.finished_at),
        }
    }
}

/// The request as a plan (versions and bounds are checked by the service).
fn plan_from(r: &pb::MigrateFleetRequest) -> Result<(Plan, CanaryRequest), Error> {
    let canaries = if r.canary_tenants.is_empty() {
        CanaryRequest::Count(if r.canary_count == 0 {
            DEFAULT_CANARIES
        } else {
            r.canary_count
        })
    } else if r.canary_count != 0 {
        return Err(Error::invalid(
            "canary_count",
            "give either canary_count or canary_tenants",
        ));
    } else if r.canary_tenants.len() > MAX_CANARY_TENANTS {
        return Err(Error::invalid(
            "canary_tenants",
            format!("at most {MAX_CANARY_TENANTS}"),
        ));
    } else {
        CanaryRequest::Tenants(
            r.canary_tenants
                .iter()
                .map(|t| TenantRef::parse("canary_tenants", t))
                .collect::<Result<_, _>>()?,
        )
    };
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    // Explicit: a rollout changes every tenant.
    if r.target_version == 0 {
        return Err(Error::invalid(
            "target_version",
            "is required (GetFleetSchema gives the newest this tenantd knows)",
        ));
    }
    let plan = Plan {
        target_version: r.target_version,
        // Replaced by the resolved canaries.
        canaries: crate::rollout::Canaries::Count(0),
        auto_continue: r.auto_continue,
        concurrency: or(r.concurrency, DEFAULT_CONCURRENCY),
        max_failures: r.max_failures,
        lock_timeout_ms: or(r.lock_timeout_ms, DEFAULT_LOCK_TIMEOUT_MS),
    };
    Ok((plan, canaries))
}

impl Audited for pb::MigrateFleetRequest {
    fn subject(&self) -> Subject {
        Subject::None
    }
    fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl Audited for pb::ResumeRolloutRequest {
    fn subject(&self) -> Subject {
        Subject::Operation(self.name.clone())
    }
}

impl Audited for pb::RetryRolloutTargetRequest {
    fn subject(&self) -> Subject {
        Subject::Operation(self.name.clone())
    }
    fn request_id(&self) -> &str {
        &self.request_id
    }
}

#[tonic::async_trait]
impl pb::fleet_service_server::FleetService for FleetApi {
    async fn get_fleet_schema(
        &self,
        _request: Request<pb::GetFleetSchemaRequest>,
    ) -> Result<Response<pb::FleetSchema>, Status> {
        let f = self.control.fleet_schema().await?;
        let tenants = |v: i32| {
            let at = f
                .tenants_by_version
                .iter()
                .find(|(version, _)| *version == v);
            at.map_or(0, |(_, n)| *n)
        };
        let versions = f
            .schema
            .migrations()
            .iter()
            .map(|m| pb::fleet_schema::Version {
                version: m.version,
                file: m.file_name(),
                sha256: m.sha256(),
                seed_sha256: m.seed_sha256().unwrap_or_default(),
                tenants: tenants(m.version),
            })
            .collect();
        Ok(Response::new(pb::FleetSchema {
            version: f.version,
            latest_version: f.latest,
            tenants_by_version: f
                .tenants_by_version
                .iter()
                .map(|&(version, tenants)| pb::fleet_schema::VersionCount { version, tenants })
                .collect(),
            versions,
            advice: f
                .advice
                .iter()
                .map(|a| pb::fleet_schema::Advice {
                    lint: a.lint.to_owned(),
                    object: a.object.clone(),
                    detail: a.detail.clone(),
                })
                .collect(),
        }))
    }

    async fn migrate_fleet(
        &self,
        request: Request<pb::MigrateFleetRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let (plan, canaries) = plan_from(&r)?;
            let rid = RequestId::parse(&r.request_id)?;
            let view = control.migrate_fleet(plan, canaries, rid).await?;
            Ok(view.into())
        })
        .await
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::ResumeRolloutRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let principal = request
            .extensions()
            .get::<Caller>()
            .map(|c| c.principal.name.clone())
            .unwrap_or_default();
        audited(&self.control, request, move |control, r| async move {
            let id = convert::resource_id("name", &r.name, "operations")?;
            Ok(control.resume_rollout(id, &principal).await?.into())
        })
        .await
    }

    async fn list_rollout_targets(
        &self,
        request: Request<pb::ListRolloutTargetsRequest>,
    ) -> Result<Response<pb::ListRolloutTargetsResponse>, Status> {
        let r = request.into_inner();
        let id = convert::resource_id("name", &r.name, "operations")?;
        let state = target_state_from(r.state)?;
        let page = self
            .control
            .list_rollout_targets(id, state, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListRolloutTargetsResponse {
            targets: page.targets.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
            target_version: page.target_version,
            pending: page.counts.pending,
            running: page.counts.running,
            done: page.counts.done,
            failed: page.counts.failed,
            skipped: page.counts.skipped,
        }))
    }

    async fn retry_rollout_target(
        &self,
        request: Request<pb::RetryRolloutTargetRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let id = convert::resource_id("name", &r.name, "operations")?;
            let rid = RequestId::parse(&r.request_id)?;
            Ok(control
                .retry_rollout_target(id, &r.target, rid)
                .await?
                .into())
        })
        .await
    }
}
