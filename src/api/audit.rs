//! `tenantd.v1.AuditService`, and [`audited`]: the one wrapper every handler that changes
//! state or touches tenant data runs through, so that each such call leaves an audit entry
//! (who, what, which tenant, request id, result) whatever its outcome.

use std::future::Future;

use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use super::pb;
use crate::audit::{AuditEvent, NO_TENANT, NewAuditEvent, ProblemKind, Subject};
use crate::auth::Caller;
use crate::service::Control;
use crate::tenant::TenantRef;

/// What a request names, for the audit entry.
pub trait Audited {
    fn subject(&self) -> Subject;
    fn request_id(&self) -> &str {
        ""
    }
}

/// What an answer tells the audit entry.
pub trait Outcome {
    /// The operation or resource produced.
    fn detail(&self) -> String;
    /// The tenant, when the answer knows it (e.g. the one CreateTenant is creating).
    fn tenant_id(&self) -> Option<Uuid> {
        None
    }
}

/// Runs `handle` and records its outcome. If the entry cannot be written the call fails
/// (UNAVAILABLE): no unaudited change is reported as done. A retry with the same
/// `request_id` gets the same operation and writes the entry.
///
/// Both run in a task of their own: a caller whose deadline passes or who goes away drops
/// this future, not the task, so a change that committed still gets its entry.
pub async fn audited<T, R, F, Fut>(
    control: &Control,
    request: Request<T>,
    handle: F,
) -> Result<Response<R>, Status>
where
    T: Audited + Send + 'static,
    R: Outcome + Send + 'static,
    F: FnOnce(Control, T) -> Fut + Send + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
{
    let caller = caller(&request)?;
    let body = request.into_inner();
    let control = control.clone();
    let task = tokio::spawn(async move {
        let subject = body.subject();
        let request_id = crate::audit::printable(body.request_id(), 128);
        let result = handle(control.clone(), body).await;
        let (code, detail, tenant_id) = match &result {
            Ok(answer) => (Code::Ok, answer.detail(), answer.tenant_id()),
            Err(status) => (status.code(), status.message().to_owned(), None),
        };
        let event = NewAuditEvent {
            tenant_id,
            principal: caller.principal.name,
            role: caller.principal.role.as_str().into(),
            method: caller.method,
            request_id,
            code: code_name(code).into(),
            detail,
        };
        control.record_audit(event, &subject).await?;
        result
    });
    task.await
        .map_err(|e| Status::internal(format!("call failed: {e}")))?
        .map(Response::new)
}

/// Who made the call, as admission recorded it.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("call reached a handler without admission"))
}

/// The canonical gRPC name of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Outcome for pb::Operation {
    fn detail(&self) -> String {
        self.name.clone()
    }
    fn tenant_id(&self) -> Option<Uuid> {
        let m = self.metadata.as_ref()?;
        Uuid::parse_str(&m.tenant_id).ok()
    }
}

/// Who got which login until when; never the password.
impl Outcome for pb::Credentials {
    fn detail(&self) -> String {
        format!("login {} until {}", self.username, self.expire_time)
    }
    fn tenant_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.route.as_ref()?.tenant_id).ok()
    }
}

impl Outcome for pb::RevokeCredentialsResponse {
    fn detail(&self) -> String {
        format!("{} login(s) revoked", self.revoked)
    }
}

impl Outcome for pb::Tenant {
    fn detail(&self) -> String {
        format!("tenants/{}", self.id)
    }
    fn tenant_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.id).ok()
    }
}

macro_rules! audited_by {
    ($($ty:ty => $kind:ident($field:ident) $(, $rid:ident)?;)*) => {$(
        impl Audited for $ty {
            fn subject(&self) -> Subject {
                Subject::$kind(self.$field.clone())
            }
            $(fn request_id(&self) -> &str {
                &self.$rid
            })?
        }
    )*};
}

audited_by! {
    pb::CreateTenantRequest => Tenant(slug), request_id;
    pb::UpdateTenantRequest => Tenant(tenant);
    pb::ChangeTierRequest => Tenant(tenant), request_id;
    pb::IssueCredentialsRequest => Tenant(tenant);
    pb::RevokeCredentialsRequest => Tenant(tenant);
    pb::CancelOperationRequest => Operation(name);
    pb::ExportTenantRequest => Tenant(tenant), request_id;
    pb::ReadExportRequest => Export(name);
    pb::DeleteExportRequest => Export(name);
    pb::RestoreTenantRequest => Export(export), request_id;
    pb::DeleteTenantRequest => Tenant(tenant), request_id;
}

pub struct AuditApi {
    control: Control,
}

impl AuditApi {
    pub fn new(control: Control) -> Self {
        AuditApi { control }
    }
}

fn tenant_filter(s: &str) -> Result<Option<TenantRef>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    Ok(Some(TenantRef::parse("tenant", s)?))
}

fn chain_id(id: Uuid) -> String {
    if id == NO_TENANT {
        String::new()
    } else {
        id.to_string()
    }
}

impl From<AuditEvent> for pb::AuditEvent {
    fn from(e: AuditEvent) -> Self {
        pb::AuditEvent {
            tenant_id: chain_id(e.tenant_id),
            seq: e.seq,
            time: e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            principal: e.principal,
            role: e.role,
            method: e.method,
            target: e.target,
            request_id: e.request_id,
            code: e.code,
            detail: e.detail,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = request.into_inner();
        let tenant = tenant_filter(&r.tenant)?;
        let (events, next_page_token) = self
            .control
            .list_audit_events(tenant.as_ref(), r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn verify_audit_log(
        &self,
        request: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let tenant = tenant_filter(&request.into_inner().tenant)?;
        let report = self.control.verify_audit_log(tenant.as_ref()).await?;
        Ok(Response::new(pb::VerifyAuditLogResponse {
            chains: report.chains as i64,
            events: report.events as i64,
            problems: report
                .problems
                .into_iter()
                .map(|p| pb::AuditProblem {
                    tenant_id: chain_id(p.tenant_id),
                    seq: p.seq,
                    kind: match p.kind {
                        ProblemKind::Altered => pb::audit_problem::Kind::Altered,
                        ProblemKind::Removed => pb::audit_problem::Kind::Removed,
                    } as i32,
                    detail: p.detail,
                })
                .collect(),
        }))
    }
}
