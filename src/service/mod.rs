//! The control service: what each RPC means, independent of gRPC. Handlers convert requests
//! into these calls and encode the answers; all registry and data-plane work happens here or
//! in workflows.

mod audit;
mod deletions;
mod exports;
mod restores;
mod rollouts;

pub use audit::AuditReport;
pub use deletions::{CertificateRef, DeletionRequest};
pub use exports::{ExportRead, ExportView};
pub use restores::{NewTenantFromExport, RestoreTarget};
pub use rollouts::{CanaryRequest, FleetSchema, TargetPage};

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::operation::Operation;
use crate::paging;
use crate::registry::Registry;
use crate::registry::certificates::StoredCertificate;
use crate::registry::events::OperationEvents;
use crate::registry::operations::{NewOperation, OperationFilter};
use crate::registry::tenants::{TenantChanges, TenantFilter};
use crate::tenant::{NewTenant, Tenant, TenantRef, TenantState, Tier};
use crate::workflow::{Workflow, wrap};
use crate::workflows::{
    ChangeTier, Delete, Provision, Restore, change_tier, delete, provision, restore,
};

/// Longest WaitOperation the server grants.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// An idempotency key (AIP-155): 1–128 characters of `[A-Za-z0-9_.:-]` (a UUID fits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(s: &str) -> Result<Option<Self>> {
        if s.is_empty() {
            return Ok(None);
        }
        let ok = s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if !ok {
            return Err(Error::invalid(
                "request_id",
                "must be 1-128 characters of A-Z a-z 0-9 _ . : - (a UUID is recommended)",
            ));
        }
        Ok(Some(RequestId(s.to_owned())))
    }
}

/// How an application reaches a tenant.
#[derive(Debug, Clone)]
pub struct Route {
    pub tenant: Tenant,
    pub host: String,
    pub port: u16,
    pub session_settings: Vec<(String, String)>,
    pub credential_ref: Option<String>,
}

/// An operation and, once it succeeded, what it produced.
#[derive(Debug, Clone)]
pub struct OperationView {
    pub operation: Operation,
    pub tenant: Option<Tenant>,
    /// An export operation's export, once it completed.
    pub export: Option<ExportView>,
    /// A tier change's progress details (source, fence times).
    pub tier_change: Option<change_tier::State>,
    /// A restore's details (export, mode, rows, fence times).
    pub restore: Option<restore::State>,
    /// A deletion's details (request, evidence so far).
    pub deletion: Option<delete::State>,
    /// A deletion's certificate, once it succeeded.
    pub certificate: Option<StoredCertificate>,
}

#[derive(Clone)]
pub struct Control {
    deps: Context,
    events: OperationEvents,
}

impl Control {
    pub fn new(deps: Context, events: OperationEvents) -> Self {
        Control { deps, events }
    }

    fn registry(&self) -> &Registry {
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

    /// Starts provisioning. The tenant row and its operation commit together; the same
    /// request id with the same request returns the first operation, whatever races.
    pub async fn create_tenant(
        &self,
        new: NewTenant,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let cluster = match &new.cluster {
            Some(c) => self.known_cluster(c)?,
            None => self.deps.config.default_cluster().to_owned(),
        };
        let hash = Sha256::digest(serde_json::to_vec(&new).expect("request serialises")).to_vec();
        let state = provision::State::new(new.tier, &cluster);
        self.create_with::<Provision>(&new, &cluster, request_id.as_ref(), &hash, state)
            .await
    }

    /// Inserts a new tenant (state `provisioning`) on `cluster` and workflow `W`'s operation
    /// for it in one transaction, or returns the operation `request_id` already names.
    pub(crate) async fn create_with<W: Workflow>(
        &self,
        new: &NewTenant,
        cluster: &str,
        request_id: Option<&RequestId>,
        hash: &[u8],
        state: W::State,
    ) -> Result<OperationView> {
        let rid = request_id.map(|r| r.0.as_str());
        // A racing duplicate can make our insert fail; the second round then finds its op.
        for _ in 0..2 {
            let mut tx = self.registry().pool().begin().await?;
            if let Some(id) = replay(&mut tx, W::KIND, rid, hash).await? {
                drop(tx);
                return self.get_operation(id).await;
            }
            let tenant_id = Uuid::new_v4();
            let op_id = Uuid::new_v4();
            let attempt = async {
                Registry::insert_tenant(&mut tx, tenant_id, new, cluster).await?;
                Registry::insert_operation(
                    &mut tx,
                    NewOperation {
                        id: op_id,
                        kind: W::KIND,
                        tenant_id,
                        request_id: rid,
                        request_hash: Some(hash),
                        data: wrap(&state),
                        steps: W::STEPS,
                    },
                )
                .await
            }
            .await;
            match attempt {
                Ok(()) => {
                    tx.commit().await?;
                    tracing::info!(tenant_id = %tenant_id, operation_id = %op_id, tier = %new.tier,
                        kind = W::KIND, "tenant creation requested");
                    return self.get_operation(op_id).await;
                }
                // The slug (or the request id) was taken meanwhile, maybe by our own retry.
                Err(Error::AlreadyExists { .. }) if rid.is_some() => {
                    drop(tx);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::AlreadyExists {
            kind: "tenant",
            name: new.slug.as_str().to_owned(),
        })
    }

    /// Starts moving the tenant to `tier` on `cluster` (default: where it is). Idempotent on
    /// the request id like [`Self::create_tenant`]; a retry finds its operation even after the
    /// move is done.
    pub async fn change_tier(
        &self,
        r: &TenantRef,
        tier: Tier,
        cluster: Option<String>,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let tenant = self.registry().get_tenant(r).await?;
        let cluster = match cluster {
            Some(c) => self.known_cluster(&c)?,
            None => tenant.placement.cluster.clone(),
        };
        let target = change_tier::Side { tier, cluster };
        let hash =
            Sha256::digest(serde_json::to_vec(&(tenant.id, &target)).expect("request serialises"))
                .to_vec();
        let id = self
            .start::<ChangeTier>(
                &tenant,
                request_id.as_ref(),
                &hash,
                |_| change_tier::State::new(target.clone()),
                || {
                    tenant.ensure_active()?;
                    if tenant.tier == target.tier && tenant.placement.cluster == target.cluster {
                        return Err(Error::FailedPrecondition {
                            reason: format!(
                                "tenant {} is already in the {} tier on cluster {}",
                                tenant.slug, target.tier, target.cluster
                            ),
                            operation: None,
                        });
                    }
                    Ok(())
                },
            )
            .await?;
        self.get_operation(id).await
    }

    /// Starts workflow `W` for `tenant`, or returns the operation `request_id` already names
    /// (AIP-155, compared by `hash` of the request). `check` decides, inside the transaction
    /// that inserts the operation, whether the tenant may start it; `state` builds the
    /// workflow's state from the new operation's id. Returns the operation id.
    pub(crate) async fn start<W: Workflow>(
        &self,
        tenant: &Tenant,
        request_id: Option<&RequestId>,
        hash: &[u8],
        state: impl Fn(Uuid) -> W::State,
        check: impl Fn() -> Result<()>,
    ) -> Result<Uuid> {
        let rid = request_id.map(|r| r.0.as_str());
        for _ in 0..2 {
            let mut tx = self.registry().pool().begin().await?;
            if let Some(id) = replay(&mut tx, W::KIND, rid, hash).await? {
                return Ok(id);
            }
            check()?;
            let op_id = Uuid::new_v4();
            let inserted = Registry::insert_operation(
                &mut tx,
                NewOperation {
                    id: op_id,
                    kind: W::KIND,
                    tenant_id: tenant.id,
                    request_id: rid,
                    request_hash: Some(hash),
                    data: wrap(&state(op_id)),
                    steps: W::STEPS,
                },
            )
            .await;
            match inserted {
                Ok(()) => {
                    tx.commit().await?;
                    tracing::info!(tenant_id = %tenant.id, operation_id = %op_id,
                        kind = W::KIND, "operation started");
                    return Ok(op_id);
                }
                // The request id was taken meanwhile, maybe by our own retry.
                Err(Error::AlreadyExists { .. }) if rid.is_some() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(
            "request id raced with another request; retry".into(),
        ))
    }

    pub async fn get_tenant(&self, r: &TenantRef) -> Result<Tenant> {
        self.registry().get_tenant(r).await
    }

    pub async fn list_tenants(
        &self,
        tier: Option<Tier>,
        state: Option<TenantState>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Tenant>, String)> {
        let limit = paging::page_size(page_size)?;
        let filter_key = format!(
            "tier={};state={}",
            tier.map_or("", Tier::as_str),
            state.map_or("", TenantState::as_str)
        );
        let after = paging::decode(page_token, &filter_key)?;
        let tenants = self
            .registry()
            .list_tenants(&TenantFilter { tier, state }, after, limit + 1)
            .await?;
        Ok(paging::finish(tenants, limit, &filter_key, |t| {
            (t.created_at, t.id)
        }))
    }

    pub async fn update_tenant(&self, r: &TenantRef, changes: TenantChanges) -> Result<Tenant> {
        let tenant = self.registry().get_tenant(r).await?;
        // A tombstone keeps no tenant data, and one on its way there gets none.
        if matches!(tenant.state, TenantState::Deleting | TenantState::Deleted) {
            return Err(Error::FailedPrecondition {
                reason: format!("tenant {} is {}", tenant.slug, tenant.state.as_str()),
                operation: None,
            });
        }
        self.registry().update_tenant(tenant.id, &changes).await
    }

    pub async fn resolve_tenant(&self, r: &TenantRef) -> Result<Route> {
        let tenant = self.registry().get_tenant(r).await?;
        tenant.ensure_active()?;
        let cluster = self
            .deps
            .dataplane
            .cluster(&tenant.placement.cluster)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut session_settings = vec![("app.tenant_id".to_owned(), tenant.id.to_string())];
        if let Some(schema) = &tenant.placement.schema {
            session_settings.push(("search_path".to_owned(), schema.clone()));
        }
        let credential_ref = match (tenant.tier, &tenant.placement.role) {
            (Tier::Pool, _) | (_, None) => None,
            (_, Some(role)) => Some(format!("tenantd:credentials/{}/{role}", tenant.id)),
        };
        Ok(Route {
            host: cluster.public_host.clone(),
            port: cluster.public_port,
            tenant,
            session_settings,
            credential_ref,
        })
    }

    pub async fn get_operation(&self, id: Uuid) -> Result<OperationView> {
        let operation = self.registry().get_operation(id).await?;
        self.view(operation).await
    }

    async fn view(&self, operation: Operation) -> Result<OperationView> {
        let tenant = if operation.state == crate::operation::OperationState::Succeeded
            && matches!(
                operation.kind.as_str(),
                Provision::KIND | ChangeTier::KIND | Restore::KIND
            ) {
            self.registry()
                .find_tenant(&TenantRef::Id(operation.tenant_id))
                .await?
        } else {
            None
        };
        let export = if operation.state == crate::operation::OperationState::Succeeded
            && operation.kind == crate::workflows::Export::KIND
        {
            self.find_export(operation.id).await?
        } else {
            None
        };
        let details = |kind: &str| (operation.kind == kind).then(|| operation.data.clone());
        let tier_change = details(ChangeTier::KIND).and_then(|d| crate::workflow::unwrap(d).ok());
        let restore = details(Restore::KIND).and_then(|d| crate::workflow::unwrap(d).ok());
        let deletion = details(Delete::KIND).and_then(|d| crate::workflow::unwrap(d).ok());
        let certificate = if operation.state == crate::operation::OperationState::Succeeded
            && operation.kind == Delete::KIND
        {
            self.registry()
                .certificate_of_operation(operation.id)
                .await?
        } else {
            None
        };
        Ok(OperationView {
            operation,
            tenant,
            export,
            tier_change,
            restore,
            deletion,
            certificate,
        })
    }

    pub async fn list_operations(
        &self,
        tenant: Option<&TenantRef>,
        state: Option<crate::operation::OperationState>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<OperationView>, String)> {
        let limit = paging::page_size(page_size)?;
        let tenant_id = match tenant {
            Some(r) => Some(self.registry().get_tenant(r).await?.id),
            None => None,
        };
        let filter_key = format!(
            "tenant={};state={}",
            tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            state.map_or("", |s| s.as_str())
        );
        let after = paging::decode(page_token, &filter_key)?;
        let ops = self
            .registry()
            .list_operations(&OperationFilter { tenant_id, state }, after, limit + 1)
            .await?;
        let (ops, next) = paging::finish(ops, limit, &filter_key, |o| (o.created_at, o.id));
        let mut views = Vec::with_capacity(ops.len());
        for op in ops {
            views.push(self.view(op).await?);
        }
        Ok((views, next))
    }

    pub async fn cancel_operation(&self, id: Uuid) -> Result<OperationView> {
        self.registry().request_cancel(id).await?;
        self.get_operation(id).await
    }

    /// Returns once the operation is done or `timeout` has passed.
    pub async fn wait_operation(&self, id: Uuid, timeout: Duration) -> Result<OperationView> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let mut events = self.events.subscribe();
        loop {
            let view = self.get_operation(id).await?;
            if view.operation.done() || tokio::time::Instant::now() >= deadline {
                return Ok(view);
            }
            wait_for_change(&mut events, id, deadline).await;
        }
    }

    /// Streams the operation each time it changes; the stream ends after the final state.
    pub async fn watch_operation(&self, id: Uuid) -> Result<mpsc::Receiver<Result<OperationView>>> {
        let first = self.get_operation(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut events = this.events.subscribe();
            let mut last = first.operation.updated_at;
            let mut done = first.operation.done();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while !done {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                wait_for_change(&mut events, id, deadline).await;
                match this.get_operation(id).await {
                    Ok(view) => {
                        if view.operation.updated_at == last {
                            continue;
                        }
                        last = view.operation.updated_at;
                        done = view.operation.done();
                        if tx.send(Ok(view)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The operation `request_id` already names for `kind`, if any (AIP-155). The same id with a
/// different request (another hash) is refused.
async fn replay(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    request_id: Option<&str>,
    hash: &[u8],
) -> Result<Option<Uuid>> {
    let Some(rid) = request_id else {
        return Ok(None);
    };
    match Registry::find_operation_by_request(conn, kind, rid).await? {
        Some((id, stored)) if stored.as_deref() == Some(hash) => Ok(Some(id)),
        Some(_) => Err(Error::invalid(
            "request_id",
            "was already used for a different request",
        )),
        None => Ok(None),
    }
}

/// Waits for a notification about `id`, or until `deadline` (polling is the fallback).
async fn wait_for_change(
    events: &mut tokio::sync::broadcast::Receiver<Uuid>,
    id: Uuid,
    deadline: tokio::time::Instant,
) {
    let poll = tokio::time::Instant::now() + Duration::from_secs(1);
    let until = deadline.min(poll);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return,
            got = events.recv() => match got {
                Ok(changed) if changed == id => return,
                Ok(_) => continue,
                // Lagged or closed: re-read now rather than miss a change.
                Err(_) => return,
            }
        }
    }
}
