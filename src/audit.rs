//! The audit log (docs/security.md): who did what to which tenant, with which request id, and
//! how it ended. One entry per call that changes state or touches tenant data, and one per
//! call refused for lack of permission.
//!
//! Entries form one hash chain per tenant (entries about no tenant, such as refused calls,
//! form the chain of [`NO_TENANT`]): entry `n` stores the SHA-256 of its own fields and of
//! entry `n - 1`'s hash, and the chain head (seq, hash) is kept apart. The registry refuses
//! UPDATE, DELETE and TRUNCATE on the entries (migration 0005), and [`ChainCheck`] finds what
//! it cannot prevent: an entry altered or removed by someone who bypassed that.
//!
//! Entries hold identifiers and outcomes, never tenant data.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Principal;

/// The chain of entries about no tenant.
pub const NO_TENANT: Uuid = Uuid::nil();

/// The hash before a chain's first entry.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"tenantd-audit/1";

/// What a call named, for finding the chain it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A tenant id or slug, as sent.
    Tenant(String),
    /// `exports/{id}`.
    Export(String),
    /// `operations/{id}`.
    Operation(String),
    None,
}

impl Subject {
    /// What the entry's `target` says: the name as sent, bounded and printable.
    pub fn target(&self) -> String {
        let raw = match self {
            Subject::Tenant(s) | Subject::Export(s) | Subject::Operation(s) => s.as_str(),
            Subject::None => "",
        };
        printable(raw, 200)
    }
}

/// Keeps at most `max` characters, with control characters replaced: the log takes what a
/// caller sent but must stay readable and bounded.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// An entry before the registry places it in its chain.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    /// Known from the answer (e.g. the tenant an operation created); else the registry
    /// resolves the call's [`Subject`].
    pub tenant_id: Option<Uuid>,
    pub principal: String,
    pub role: String,
    pub method: String,
    pub request_id: String,
    /// gRPC status code name (`OK`, `INVALID_ARGUMENT`, …).
    pub code: String,
    /// The operation or resource the call produced, or the error message.
    pub detail: String,
}

impl NewAuditEvent {
    pub fn refused(principal: &Principal, method: &str) -> Self {
        NewAuditEvent {
            tenant_id: None,
            principal: principal.name.clone(),
            role: principal.role.as_str().into(),
            method: printable(method, 200),
            request_id: String::new(),
            code: "PERMISSION_DENIED".into(),
            detail: format!("role {} may not call this method", principal.role),
        }
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub tenant_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub principal: String,
    pub role: String,
    pub method: String,
    pub target: String,
    pub request_id: String,
    pub code: String,
    pub detail: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditEvent {
    /// SHA-256 over every field but `hash`, each length-prefixed so that no two different
    /// entries encode alike.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(DOMAIN);
        field(self.tenant_id.as_bytes());
        field(&self.seq.to_be_bytes());
        field(&self.at.timestamp_micros().to_be_bytes());
        for s in [
            &self.principal,
            &self.role,
            &self.method,
            &self.target,
            &self.request_id,
            &self.code,
            &self.detail,
        ] {
            field(s.as_bytes());
        }
        field(&self.prev_hash);
        h.finalize().into()
    }
}

/// The registry keeps timestamps to the microsecond: an entry's time is cut to that before
/// it is hashed, so that the stored entry hashes the same.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The entry's fields no longer match its hash, or the next entry records another hash.
    Altered,
    /// Entries are missing from the chain.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub tenant_id: Uuid,
    /// The altered entry, or the first removed one.
    pub seq: i64,
    pub kind: ProblemKind,
    pub detail: String,
}

/// Checks one chain, fed its entries in `seq` order.
pub struct ChainCheck {
    tenant_id: Uuid,
    next_seq: i64,
    prev: Vec<u8>,
    pub problems: Vec<Problem>,
    pub events: u64,
}

impl ChainCheck {
    pub fn new(tenant_id: Uuid) -> Self {
        ChainCheck {
            tenant_id,
            next_seq: 1,
            prev: GENESIS.to_vec(),
            problems: Vec::new(),
            events: 0,
        }
    }

    fn problem(&mut self, seq: i64, kind: ProblemKind, detail: String) {
        self.problems.push(Problem {
            tenant_id: self.tenant_id,
            seq,
            kind,
            detail,
        });
    }

    pub fn push(&mut self, e: &AuditEvent) {
        self.events += 1;
        let contiguous = e.seq == self.next_seq;
        if e.seq > self.next_seq {
            let detail = if e.seq - 1 == self.next_seq {
                format!("entry {} was removed", self.next_seq)
            } else {
                format!("entries {} to {} were removed", self.next_seq, e.seq - 1)
            };
            self.problem(self.next_seq, ProblemKind::Removed, detail);
        }
        if e.compute_hash()[..] != e.hash[..] {
            self.problem(
                e.seq,
                ProblemKind::Altered,
                format!(
                    "entry {} was altered: its fields do not match its hash",
                    e.seq
                ),
            );
        } else if contiguous && e.prev_hash != self.prev && e.seq > 1 {
            // The entry is intact but records another hash for its predecessor: the
            // predecessor was rewritten, hash and all.
            self.problem(
                e.seq - 1,
                ProblemKind::Altered,
                format!(
                    "entry {} was altered: entry {} records another hash for it",
                    e.seq - 1,
                    e.seq
                ),
            );
        } else if contiguous && e.prev_hash != self.prev {
            self.problem(
                e.seq,
                ProblemKind::Altered,
                format!("entry {} was altered: it does not start the chain", e.seq),
            );
        }
        self.prev = e.hash.clone();
        self.next_seq = e.seq + 1;
    }

    /// Compares the end of the chain with its recorded head.
    pub fn finish(mut self, head_seq: i64, head_hash: &[u8]) -> Self {
        let last = self.next_seq - 1;
        if head_seq > last {
            let detail = if head_seq == last + 1 {
                format!("entry {head_seq}, the last, was removed")
            } else {
                format!(
                    "entries {} to {head_seq}, the last ones, were removed",
                    last + 1
                )
            };
            self.problem(last + 1, ProblemKind::Removed, detail);
        } else if head_seq == last && head_hash != self.prev.as_slice() {
            self.problem(
                last,
                ProblemKind::Altered,
                format!("entry {last}, the last, was altered: the chain head records another hash"),
            );
        } else if head_seq < last {
            self.problem(
                head_seq + 1,
                ProblemKind::Altered,
                format!("entries after {head_seq} are not in the chain head: they were added around the log"),
            );
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEvent {
                    tenant_id: Uuid::from_u128(7),
                    seq,
                    at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + seq).unwrap(),
                    principal: "ops".into(),
                    role: "admin".into(),
                    method: "/tenantd.v1.TenantService/CreateTenant".into(),
                    target: "acme".into(),
                    request_id: format!("r{seq}"),
                    code: "OK".into(),
                    detail: format!("operations/{seq}"),
                    prev_hash: prev.clone(),
                    hash: vec![],
                };
                e.hash = e.compute_hash().to_vec();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn check(events: &[AuditEvent], head: &AuditEvent) -> Vec<Problem> {
        let mut c = ChainCheck::new(Uuid::from_u128(7));
        events.iter().for_each(|e| c.push(e));
        c.finish(head.seq, &head.hash).problems
    }

    #[test]
    fn an_intact_chain_passes() {
        let c = chain(5);
        assert_eq!(check(&c, &c[4]), vec![]);
    }

    #[test]
    fn each_alteration_and_removal_is_named() {
        let c = chain(5);
        let head = c[4].clone();
        // A field changed.
        let mut altered = c.clone();
        altered[2].principal = "someone-else".into();
        let p = check(&altered, &head);
        assert_eq!((p.len(), p[0].seq, p[0].kind), (1, 3, ProblemKind::Altered));
        // A field changed and the hash recomputed: the next entry names it.
        altered[2].hash = altered[2].compute_hash().to_vec();
        let p = check(&altered, &head);
        assert_eq!((p.len(), p[0].seq, p[0].kind), (1, 3, ProblemKind::Altered));
        // A middle entry removed.
        let mut removed = c.clone();
        removed.remove(1);
        let p = check(&removed, &head);
        assert_eq!((p[0].seq, p[0].kind), (2, ProblemKind::Removed));
        assert_eq!(p[0].detail, "entry 2 was removed");
        // The last entries removed: only the head shows it.
        let p = check(&c[..3], &head);
        assert_eq!((p.len(), p[0].seq, p[0].kind), (1, 4, ProblemKind::Removed));
        // The first entry removed.
        let p = check(&c[1..], &head);
        assert_eq!((p[0].seq, p[0].kind), (1, ProblemKind::Removed));
    }
}
