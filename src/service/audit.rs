//! The audit log as the API sees it: recording a call, listing one chain, verifying chains.

use uuid::Uuid;

use super::Control;
use crate::audit::{
    AuditEvent, ChainCheck, NO_TENANT, NewAuditEvent, Problem, ProblemKind, Subject,
};
use crate::error::Result;
use crate::paging;
use crate::tenant::TenantRef;

/// What [`Control::verify_audit_log`] found.
#[derive(Debug, Default)]
pub struct AuditReport {
    pub chains: u64,
    pub events: u64,
    pub problems: Vec<Problem>,
}

/// Entries read per query while verifying a chain.
const VERIFY_BATCH: i64 = 1000;

impl Control {
    pub async fn record_audit(&self, event: NewAuditEvent, subject: &Subject) -> Result<()> {
        self.registry().append_audit(event, subject).await?;
        Ok(())
    }

    /// The chain a request names: a tenant by id (deleted ones too: their chain outlives
    /// them) or by the slug of a live tenant; `None`, the chain of entries about no tenant.
    async fn audit_chain(&self, tenant: Option<&TenantRef>) -> Result<Uuid> {
        Ok(match tenant {
            None => NO_TENANT,
            Some(TenantRef::Id(id)) => *id,
            Some(r) => self.registry().get_tenant(r).await?.id,
        })
    }

    pub async fn list_audit_events(
        &self,
        tenant: Option<&TenantRef>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String)> {
        let chain = self.audit_chain(tenant).await?;
        let limit = paging::page_size(page_size)?;
        let filter_key = format!("audit;tenant={chain}");
        let after: i64 = paging::decode(page_token, &filter_key)?.unwrap_or(0);
        let rows = self
            .registry()
            .list_audit_events(chain, after, limit + 1)
            .await?;
        Ok(paging::finish(rows, limit, &filter_key, |e| e.seq))
    }

    /// Recomputes every chain (or one tenant's) from its first entry and compares its end
    /// with the recorded head.
    pub async fn verify_audit_log(&self, tenant: Option<&TenantRef>) -> Result<AuditReport> {
        let only = match tenant {
            Some(_) => Some(self.audit_chain(tenant).await?),
            None => None,
        };
        let mut report = AuditReport::default();
        for head in self.registry().audit_chains(only).await? {
            let mut check = ChainCheck::new(head.tenant_id);
            let mut after = 0;
            loop {
                let batch = self
                    .registry()
                    .list_audit_events(head.tenant_id, after, VERIFY_BATCH)
                    .await?;
                batch.iter().for_each(|e| check.push(e));
                match batch.last() {
                    Some(last) if batch.len() as i64 == VERIFY_BATCH => after = last.seq,
                    _ => break,
                }
            }
            let check = check.finish(head.seq, &head.head);
            report.chains += 1;
            report.events += check.events;
            report.problems.extend(check.problems);
        }
        for tenant_id in self.registry().audit_orphans(only).await? {
            report.problems.push(Problem {
                tenant_id,
                seq: 0,
                kind: ProblemKind::Removed,
                detail: "the chain head was removed".into(),
            });
        }
        Ok(report)
    }
}
