//! Audit log persistence (migration 0005, [`crate::audit`]). Appending locks the chain head,
//! so entries of one chain get consecutive `seq` and each links to the one before; the
//! entries themselves are only ever inserted.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditEvent, GENESIS, NO_TENANT, NewAuditEvent, Subject};
use crate::error::Error;
use crate::registry::Registry;
use crate::tenant::TenantRef;

#[derive(sqlx::FromRow)]
struct AuditEventRow {
    tenant_id: Uuid,
    seq: i64,
    at: DateTime<Utc>,
    principal: String,
    role: String,
    method: String,
    target: String,
    request_id: String,
    code: String,
    detail: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl From<AuditEventRow> for AuditEvent {
    fn from(r: AuditEventRow) -> Self {
        AuditEvent {
            tenant_id: r.tenant_id,
            seq: r.seq,
            at: r.at,
            principal: r.principal,
            role: r.role,
            method: r.method,
            target: r.target,
            request_id: r.request_id,
            code: r.code,
            detail: r.detail,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// A chain's recorded head.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChainHead {
    pub tenant_id: Uuid,
    pub seq: i64,
    pub head: Vec<u8>,
}

impl Registry {
    /// Appends `event` to the chain of its tenant: the one it names, else the one `subject`
    /// resolves to, else [`NO_TENANT`].
    pub async fn append_audit(
        &self,
        event: NewAuditEvent,
        subject: &Subject,
    ) -> Result<AuditEvent, Error> {
        let tenant_id = match event.tenant_id {
            Some(id) => id,
            None => self.audit_chain_of(subject).await?,
        };
        let mut appended = self
            .append_to_chain(tenant_id, vec![event], subject)
            .await?;
        Ok(appended.pop().expect("one event appended"))
    }

    /// Appends `events`, in order, to one chain in one transaction: the head is locked once
    /// for all of them (how refused calls are recorded in bulk, [`crate::auth::refusals`]).
    pub async fn append_to_chain(
        &self,
        tenant_id: Uuid,
        events: Vec<NewAuditEvent>,
        subject: &Subject,
    ) -> Result<Vec<AuditEvent>, Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO audit_chains (tenant_id, seq, head) VALUES ($1, 0, $2)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .bind(&GENESIS[..])
        .execute(&mut *tx)
        .await?;
        let (mut seq, mut prev_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, head FROM audit_chains WHERE tenant_id = $1 FOR UPDATE")
                .bind(tenant_id)
                .fetch_one(&mut *tx)
                .await?;
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let mut e = AuditEvent {
                tenant_id,
                seq,
                at: crate::audit::now(),
                principal: event.principal,
                role: event.role,
                method: event.method,
                target: subject.target(),
                request_id: event.request_id,
                code: event.code,
                detail: crate::audit::printable(&event.detail, 1000),
                prev_hash,
                hash: Vec::new(),
            };
            e.hash = e.compute_hash().to_vec();
            sqlx::query(
                "INSERT INTO audit_events (tenant_id, seq, at, principal, role, method, target,
                     request_id, code, detail, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(e.tenant_id)
            .bind(e.seq)
            .bind(e.at)
            .bind(&e.principal)
            .bind(&e.role)
            .bind(&e.method)
            .bind(&e.target)
            .bind(&e.request_id)
            .bind(&e.code)
            .bind(&e.detail)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut *tx)
            .await?;
            // The head advances one entry at a time (migration 0005 refuses a jump).
            sqlx::query("UPDATE audit_chains SET seq = $2, head = $3 WHERE tenant_id = $1")
                .bind(tenant_id)
                .bind(e.seq)
                .bind(&e.hash)
                .execute(&mut *tx)
                .await?;
            prev_hash = e.hash.clone();
            appended.push(e);
        }
        tx.commit().await?;
        Ok(appended)
    }

    /// The chain a call's subject belongs to: the tenant it names, or the tenant of the
    /// export or operation it names; [`NO_TENANT`] when it names nothing that exists.
    async fn audit_chain_of(&self, subject: &Subject) -> Result<Uuid, Error> {
        let id = |s: &str, prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|id| Uuid::parse_str(id).ok())
        };
        let tenant = match subject {
            Subject::Tenant(s) => match TenantRef::parse("tenant", s) {
                Ok(r) => self.find_tenant(&r).await?.map(|t| t.id),
                Err(_) => None,
            },
            Subject::Export(s) => match id(s, "exports/") {
                Some(id) => self.find_export(id).await?.map(|e| e.tenant_id),
                None => None,
            },
            Subject::Operation(s) => match id(s, "operations/") {
                Some(id) => self.get_operation(id).await.ok().and_then(|o| o.tenant_id),
                None => None,
            },
            Subject::None => None,
        };
        Ok(tenant.unwrap_or(NO_TENANT))
    }

    /// Up to `limit` entries of one chain after `after_seq`, oldest first.
    pub async fn list_audit_events(
        &self,
        tenant_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, Error> {
        let rows: Vec<AuditEventRow> = sqlx::query_as(
            "SELECT tenant_id, seq, at, principal, role, method, target, request_id, code,
                    detail, prev_hash, hash
             FROM audit_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(tenant_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Every chain head, or one tenant's.
    pub async fn audit_chains(&self, tenant_id: Option<Uuid>) -> Result<Vec<ChainHead>, Error> {
        Ok(sqlx::query_as(
            "SELECT tenant_id, seq, head FROM audit_chains
             WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY tenant_id",
        )
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Tenants with entries but no chain head: a head removed around the triggers.
    pub async fn audit_orphans(&self, tenant_id: Option<Uuid>) -> Result<Vec<Uuid>, Error> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT DISTINCT e.tenant_id FROM audit_events e
             WHERE ($1::uuid IS NULL OR e.tenant_id = $1)
               AND NOT EXISTS (SELECT 1 FROM audit_chains c WHERE c.tenant_id = e.tenant_id)",
        )
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}
