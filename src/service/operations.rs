//! Operations as callers see them: one with what it produced, listing, cancelling, waiting
//! for one to finish and watching it change.

use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Control, ExportView};
use crate::error::Result;
use crate::operation::{Operation, OperationState};
use crate::paging;
use crate::registry::certificates::StoredCertificate;
use crate::registry::operations::OperationFilter;
use crate::tenant::{Tenant, TenantRef};
use crate::workflow::{Workflow, unwrap};
use crate::workflows::{
    ChangeTier, Delete, Export, Provision, Restore, change_tier, delete, restore,
};

/// Longest WaitOperation the server grants.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

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

impl Control {
    pub async fn get_operation(&self, id: Uuid) -> Result<OperationView> {
        let operation = self.registry().get_operation(id).await?;
        self.view(operation).await
    }

    async fn view(&self, operation: Operation) -> Result<OperationView> {
        let succeeded = operation.state == OperationState::Succeeded;
        let tenant = match operation.tenant_id {
            Some(id)
                if succeeded
                    && matches!(
                        operation.kind.as_str(),
                        Provision::KIND | ChangeTier::KIND | Restore::KIND
                    ) =>
            {
                self.registry().find_tenant(&TenantRef::Id(id)).await?
            }
            _ => None,
        };
        let export = if succeeded && operation.kind == Export::KIND {
            self.find_export(operation.id).await?
        } else {
            None
        };
        let details = |kind: &str| (operation.kind == kind).then(|| operation.data.clone());
        let tier_change = details(ChangeTier::KIND).and_then(|d| unwrap(d).ok());
        let restore = details(Restore::KIND).and_then(|d| unwrap(d).ok());
        let deletion = details(Delete::KIND).and_then(|d| unwrap(d).ok());
        let certificate = if succeeded && operation.kind == Delete::KIND {
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
        state: Option<OperationState>,
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

    /// Streams the operation each time it changes; the stream ends after the final state,
    /// and as soon as its receiver is dropped (the client went away): a watcher that left
    /// costs nothing from that moment.
    pub async fn watch_operation(&self, id: Uuid) -> Result<mpsc::Receiver<Result<OperationView>>> {
        let first = self.get_operation(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let _open = crate::metrics::stream_opened("WatchOperation");
            let watch = async {
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
            };
            tokio::select! {
                _ = watch => {}
                _ = tx.closed() => {}
            }
        });
        Ok(rx)
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
