//! The audit log's record of refused calls (PERMISSION_DENIED at admission).
//!
//! Every refusal is an entry in the [`NO_TENANT`] chain, and a chain is appended under a lock
//! on its head. Were each refused call its own transaction, a caller hammering forbidden
//! methods would queue every registry connection of the API pool behind that one lock. So one
//! task per replica writes refusals: callers queue their entry and wait for the batch that
//! holds it to commit (group commit), so a refusal is still on record before its answer
//! leaves, and the whole flood costs one connection and one lock per batch.
//!
//! The queue is bounded. When it is full the refusal is answered at once and counted; the
//! writer records the count as one entry ("N further refused calls"), so the log never loses
//! that refusals happened, only, past the bound, their itemisation
//! (`tenantd_audit_refusals_unitemised_total`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::audit::{NO_TENANT, NewAuditEvent, Subject};
use crate::registry::Registry;

/// Refusals waiting to be written, at most.
const QUEUE: usize = 4096;
/// Entries written in one transaction, at most.
const BATCH: usize = 512;
/// How long a refused call waits for its entry before it is answered anyway.
const WAIT: Duration = Duration::from_secs(10);
/// At most one log line about refused calls per this time; the others are counted in it.
const LOG_EVERY: Duration = Duration::from_secs(1);

struct Queued {
    event: NewAuditEvent,
    written: oneshot::Sender<()>,
}

#[derive(Clone)]
pub struct Refusals {
    queue: mpsc::Sender<Queued>,
    overflow: Arc<AtomicU64>,
    log: Arc<LogThrottle>,
}

#[derive(Default)]
struct LogThrottle {
    last: Mutex<Option<Instant>>,
    quiet: AtomicU64,
}

impl Refusals {
    /// Starts the writer; it ends when every handle is dropped.
    pub fn start(registry: Registry) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicU64::new(0));
        tokio::spawn(write(registry, rx, overflow.clone()));
        Refusals {
            queue,
            overflow,
            log: Arc::default(),
        }
    }

    /// Whether this refusal gets a log line: `Some(n)`, with the `n` refusals since the last
    /// line that got none; `None` within [`LOG_EVERY`] of the last line.
    pub fn log_line(&self) -> Option<u64> {
        let mut last = self.log.last.lock().expect("log throttle");
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            self.log.quiet.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        Some(self.log.quiet.swap(0, Ordering::Relaxed))
    }

    /// A refusal the log records only in a count.
    pub fn count_unitemised(&self) {
        self.overflow.fetch_add(1, Ordering::Relaxed);
        crate::metrics::refusals_unitemised(1);
    }

    /// Records `event`; returns once it is committed (or could not be: then it is logged).
    pub async fn record(&self, event: NewAuditEvent) {
        let (written, committed) = oneshot::channel();
        match self.queue.try_send(Queued { event, written }) {
            Ok(()) => {
                if !matches!(tokio::time::timeout(WAIT, committed).await, Ok(Ok(()))) {
                    tracing::error!("refused call not recorded in the audit log");
                }
            }
            Err(_) => self.count_unitemised(),
        }
    }
}

async fn write(registry: Registry, mut rx: mpsc::Receiver<Queued>, overflow: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Counted refusals are written with the next batch, or alone after a quiet second.
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                n
            }
            _ = tokio::time::sleep(LOG_EVERY) => 0,
        };
        let unitemised = overflow.swap(0, Ordering::Relaxed);
        if got == 0 && unitemised == 0 {
            continue;
        }
        let mut events: Vec<NewAuditEvent> = Vec::with_capacity(batch.len() + 1);
        let mut waiting = Vec::with_capacity(batch.len());
        for q in batch.drain(..) {
            events.push(q.event);
            waiting.push(q.written);
        }
        if unitemised > 0 {
            events.push(summary(unitemised));
        }
        match registry
            .append_to_chain(NO_TENANT, events, &Subject::None)
            .await
        {
            Ok(_) => {
                for w in waiting {
                    let _ = w.send(());
                }
            }
            Err(e) => {
                // Dropping the senders tells each caller its entry is not on record.
                tracing::error!(error = %e, refusals = waiting.len(), "refused calls not recorded in the audit log");
                overflow.fetch_add(unitemised, Ordering::Relaxed);
            }
        }
    }
}

/// How the entry standing for refusals not itemised reads, after their number.
pub const UNITEMISED: &str = "further refused calls, not itemised: the caller was past its limit or the audit queue was full";

/// The entry that stands for `n` refusals the queue had no room for.
fn summary(n: u64) -> NewAuditEvent {
    NewAuditEvent {
        tenant_id: None,
        principal: "tenantd".into(),
        role: "system".into(),
        method: "(refused calls)".into(),
        request_id: String::new(),
        code: "PERMISSION_DENIED".into(),
        detail: format!("{n} {UNITEMISED}"),
    }
}
