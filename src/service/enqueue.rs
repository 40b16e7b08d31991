//! Starting any operation: one transaction that replays a known request id, inserts what the
//! operation is about (a new tenant, a rollout's row) and the operation itself, so a state
//! change and the workflow that follows it commit together.
//!
//! Idempotency (AIP-155): a request id names one request of one kind. The same id with the
//! same request (its [`request_hash`]) returns the first operation, whatever races: two
//! identical calls racing on one id both get the winner's operation, because the loser's
//! insert fails on a unique index and its second round finds the winner. The same id with a
//! different request is INVALID_ARGUMENT.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Control;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::registry::operations::NewOperation;
use crate::tenant::{NewTenant, Tenant};
use crate::workflow::{Steps, Workflow, wrap};

/// An idempotency key (AIP-155): 1–128 characters of `[A-Za-z0-9_.:-]` (a UUID fits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub(super) String);

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

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fingerprint of a request, stored beside its request id to tell a retry from a
/// conflicting reuse: sha256 of the request's canonical JSON.
pub fn request_hash(request: &impl Serialize) -> Vec<u8> {
    Sha256::digest(serde_json::to_vec(request).expect("requests serialise")).to_vec()
}

/// What a new operation is about.
pub(crate) enum Subject<'a> {
    /// An existing tenant; `check` decides, inside the transaction, whether it may start.
    Tenant {
        tenant: &'a Tenant,
        check: &'a (dyn Fn() -> Result<()> + Sync),
    },
    /// A tenant inserted (state `provisioning`) on `cluster` in the same transaction.
    NewTenant {
        new: &'a NewTenant,
        cluster: &'a str,
    },
    /// The fleet: a rollout to tenant-schema `version`, which the fleet's version moves to
    /// in the same transaction (forward only).
    Rollout { version: i32 },
}

/// One operation to start.
pub(crate) struct Enqueue<'a, S> {
    pub subject: Subject<'a>,
    pub request_id: Option<&'a RequestId>,
    /// [`request_hash`] of the request.
    pub hash: &'a [u8],
    /// The workflow's first state, from the new operation's id.
    pub state: &'a (dyn Fn(Uuid) -> S + Sync),
}

impl Control {
    /// Starts workflow `W` (see the module doc); returns the operation's id, the first one
    /// when the request id was seen before.
    pub(crate) async fn enqueue<W: Workflow>(&self, e: Enqueue<'_, W::State>) -> Result<Uuid> {
        let rid = e.request_id.map(RequestId::as_str);
        // A racing duplicate can make our insert fail; the second round then finds its op.
        for round in 0..2 {
            let mut tx = self.registry().pool().begin().await?;
            if let Some(id) = replay(&mut tx, W::KIND, rid, e.hash).await? {
                return Ok(id);
            }
            let op_id = Uuid::new_v4();
            let attempt = insert::<W>(&mut tx, &e, rid, op_id).await;
            match attempt {
                Ok(tenant_id) => {
                    tx.commit().await?;
                    tracing::info!(tenant_id = tenant_id.map(tracing::field::display),
                        operation_id = %op_id, kind = W::KIND, "operation started");
                    return Ok(op_id);
                }
                // The request id, the slug or the tenant's (or fleet's) one active slot was
                // taken meanwhile, maybe by our own retry: look again.
                Err(Error::AlreadyExists { .. } | Error::FailedPrecondition { .. })
                    if rid.is_some() && round == 0 =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(
            "request id raced with another request; retry".into(),
        ))
    }
}

/// Inserts the subject's rows and the operation; returns the operation's tenant.
async fn insert<W: Workflow>(
    conn: &mut PgConnection,
    e: &Enqueue<'_, W::State>,
    rid: Option<&str>,
    op_id: Uuid,
) -> Result<Option<Uuid>> {
    let tenant_id = match &e.subject {
        Subject::Tenant { tenant, check } => {
            check()?;
            Some(tenant.id)
        }
        Subject::NewTenant { new, cluster } => {
            let id = Uuid::new_v4();
            Registry::insert_tenant(conn, id, new, cluster).await?;
            Some(id)
        }
        Subject::Rollout { version } => {
            let before = Registry::advance_schema_version(conn, *version).await?;
            if *version < before {
                return Err(Error::FailedPrecondition {
                    reason: format!(
                        "the fleet is at tenant-schema version {before}; a rollout only moves \
                         it forward (there are no down migrations)"
                    ),
                    operation: None,
                });
            }
            None
        }
    };
    Registry::insert_operation(
        conn,
        NewOperation {
            id: op_id,
            kind: W::KIND,
            tenant_id,
            request_id: rid,
            request_hash: Some(e.hash),
            data: wrap(&(e.state)(op_id)),
            steps: &W::Step::names(),
        },
    )
    .await?;
    if let Subject::Rollout { version } = e.subject {
        Registry::insert_rollout(conn, op_id, version).await?;
    }
    Ok(tenant_id)
}

/// The operation `request_id` already names for `kind`, if any (AIP-155). The same id with a
/// different request (another hash) is refused.
async fn replay(
    conn: &mut PgConnection,
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
