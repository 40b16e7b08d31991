//! Workers: claim runnable operations, keep their lease alive with a heartbeat, run their steps
//! in order, and record every transition through the lease-guarded registry writes.
//!
//! A worker that loses its lease (a long pause, a partition) stops at once: the heartbeat
//! cancels the running step, and every later write would be refused anyway. A worker that
//! cannot reach the registry does not wait to hear that: it fences itself on its own clock,
//! stopping the step a margin before the lease it last renewed could expire (measured from
//! before each renewal was sent), so it never runs a step while another worker that took
//! the lease over does.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{StepContext, StepError, Steps, Workflow, failpoint, unwrap, wrap};
use crate::context::Context;
use crate::error::ErrorCode;
use crate::operation::{OperationError, OperationState};
use crate::registry::events::OperationEvents;
use crate::registry::leases::{Claimed, Lease, LeaseError};

/// Runs a claimed operation with the workflow its kind names. The engine knows no workflow:
/// `server.rs` hands it the lifecycle workflows' dispatcher (`workflows::Dispatcher`), and
/// the dispatcher calls back into [`drive`].
pub trait Dispatch: Send + Sync + 'static {
    fn dispatch(
        &self,
        deps: &Context,
        claimed: Claimed,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Starts `config.workflow.workers` workers. The returned handle completes once every worker
/// has stopped after `shutdown` (each finishes or releases the operation it holds).
///
/// Workers run on a runtime of their own (two `tenantd-worker` threads), not on the one that
/// serves calls: however many calls keep that one busy, steps and heartbeats are scheduled,
/// so a fenced tenant's write pause does not grow with the API's load.
pub fn start<D: Dispatch>(
    deps: Context,
    events: OperationEvents,
    dispatcher: std::sync::Arc<D>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let owner = format!(
        "{}/{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "tenantd".into()),
        uuid::Uuid::new_v4()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tenantd-worker")
        .enable_all()
        .build()
        .expect("the workers' runtime starts");
    let mut set = tokio::task::JoinSet::new();
    for n in 0..deps.config.workflow.workers {
        let (deps, events, shutdown) = (deps.clone(), events.clone(), shutdown.clone());
        let dispatcher = dispatcher.clone();
        let owner = format!("{owner}#{n}");
        set.spawn_on(
            async move { worker(deps, events, &*dispatcher, shutdown, owner).await },
            runtime.handle(),
        );
    }
    tokio::spawn(async move {
        while set.join_next().await.is_some() {}
        // Every worker has stopped: nothing is left to wait for.
        runtime.shutdown_background();
    })
}

async fn worker(
    deps: Context,
    events: OperationEvents,
    dispatcher: &impl Dispatch,
    shutdown: CancellationToken,
    owner: String,
) {
    let mut wakeups = events.subscribe();
    let poll = Duration::from_millis(deps.config.workflow.poll_ms);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match deps
            .registry
            .claim_operation(&owner, deps.config.workflow.lease())
            .await
        {
            Ok(Some(claimed)) => {
                dispatcher.dispatch(&deps, claimed, &shutdown).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim operations"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wakeups.recv() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Runs a claimed operation of workflow `W` until it finishes, must wait (retry back-off),
/// or the lease is lost or released.
pub async fn drive<W: Workflow>(
    workflow: &W,
    deps: &Context,
    claimed: Claimed,
    shutdown: &CancellationToken,
) {
    let span = tracing::info_span!("operation",
        operation_id = %claimed.id, tenant_id = claimed.tenant_id.map(tracing::field::display),
        kind = W::KIND);
    async {
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            deps.clone(),
            claimed.lease,
            claimed.claimed_at,
            lost.clone(),
        ));
        let outcome = Run {
            workflow,
            deps,
            claimed: &claimed,
            lost: &lost,
        }
        .run(shutdown)
        .await;
        heartbeat.abort();
        match outcome {
            Ok(()) => {}
            Err(LeaseError::Lost) => tracing::warn!("lease lost; another worker continues"),
            Err(LeaseError::Registry(e)) => {
                tracing::warn!(error = %e, "registry write failed; the operation resumes when its lease expires")
            }
        }
    }
    .instrument(span)
    .await
}

/// How much earlier than its lease could expire a worker cut off from the registry stops:
/// room for clock drift between this process and the registry, and for a step to wind down.
fn self_fence_margin(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_millis(200))
}

async fn heartbeat(
    deps: Context,
    lease: Lease,
    claimed_at: std::time::Instant,
    lost: CancellationToken,
) {
    let duration = deps.config.workflow.lease();
    let every = duration / 3;
    let margin = self_fence_margin(duration);
    // The lease cannot outlast `duration` from before the request that granted it was sent.
    let mut valid_until = claimed_at + duration.saturating_sub(margin);
    loop {
        let wake = (tokio::time::Instant::now() + every).min(valid_until.into());
        tokio::time::sleep_until(wake).await;
        let sent = std::time::Instant::now();
        if sent >= valid_until {
            tracing::warn!("registry unreachable: stopping the step before the lease can expire");
            lost.cancel();
            return;
        }
        let renewal = deps.registry.heartbeat(&lease, duration);
        match tokio::time::timeout(valid_until - sent, renewal).await {
            Ok(Ok(())) => valid_until = sent + duration.saturating_sub(margin),
            Ok(Err(LeaseError::Lost)) => {
                lost.cancel();
                return;
            }
            // A registry hiccup: keep trying until the lease could expire.
            Ok(Err(LeaseError::Registry(e))) => tracing::warn!(error = %e, "heartbeat failed"),
            Err(_) => tracing::warn!("heartbeat unanswered"),
        }
    }
}

struct Run<'a, W> {
    workflow: &'a W,
    deps: &'a Context,
    claimed: &'a Claimed,
    lost: &'a CancellationToken,
}

impl<W: Workflow> Run<'_, W> {
    fn cx(&self, step: i32) -> StepContext<'_> {
        StepContext {
            deps: self.deps,
            operation_id: self.claimed.id,
            tenant: self.claimed.tenant_id,
            lease: self.claimed.lease,
            step,
        }
    }

    /// Runs `fut` unless the lease is lost first.
    async fn guarded<T>(&self, fut: impl Future<Output = T>) -> Result<T, LeaseError> {
        tokio::select! {
            r = fut => Ok(r),
            _ = self.lost.cancelled() => Err(LeaseError::Lost),
        }
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<(), LeaseError> {
        let registry = &self.deps.registry;
        let lease = &self.claimed.lease;
        let mut state: W::State = match unwrap(self.claimed.data.clone()) {
            Ok(s) => s,
            Err(e) => {
                // Nothing can be compensated without the state; fail loudly for an operator.
                tracing::error!(error = %e, "operation state unreadable");
                let err = OperationError {
                    code: ErrorCode::Internal,
                    message: e.to_string(),
                    step: None,
                };
                registry.begin_compensation(lease, None, None, &err).await?;
                return registry
                    .finish_operation(lease, OperationState::Failed, &self.claimed.data)
                    .await;
            }
        };
        if self.claimed.state == OperationState::Compensating {
            let error = self.claimed.error.clone().unwrap_or(OperationError {
                code: ErrorCode::Internal,
                message: "compensation resumed without a recorded error".into(),
                step: None,
            });
            return self.compensate(state, error).await;
        }
        let steps = W::Step::ALL;
        // Whether step `idx` was already marked started by the previous step's commit.
        let mut marked_started = false;
        for (idx, &step) in steps
            .iter()
            .enumerate()
            .skip(self.claimed.next_step as usize)
        {
            let name = step.name();
            let rolling_forward = W::ROLL_FORWARD_FROM.is_some_and(|from| step >= from);
            if shutdown.is_cancelled() {
                tracing::info!("shutting down; releasing the operation to another worker");
                let premarked = marked_started.then_some(idx as i32);
                return registry.release_lease(lease, premarked).await;
            }
            let cancellable = W::UNCANCELLABLE_FROM.is_none_or(|from| step < from);
            if cancellable && registry.cancel_requested(self.claimed.id).await? {
                let error = OperationError {
                    code: ErrorCode::Cancelled,
                    message: "operation cancelled by request".into(),
                    step: Some(name.to_owned()),
                };
                let premarked = marked_started.then_some(idx as i32);
                registry
                    .begin_compensation(lease, None, premarked, &error)
                    .await?;
                return self.compensate(state, error).await;
            }
            if !marked_started {
                registry.step_started(lease, idx as i32).await?;
            }
            tracing::info!(step = name, "step started");
            let started = std::time::Instant::now();
            let cx = self.cx(idx as i32);
            let result = self
                .guarded(
                    async {
                        failpoint::hit(&format!("{}.before_{name}", W::KIND)).await?;
                        self.workflow.run_step(&cx, step, &mut state).await?;
                        failpoint::hit(&format!("{}.after_{name}", W::KIND)).await
                    }
                    .instrument(tracing::info_span!("step", step = name)),
                )
                .await?;
            match result {
                Ok(()) => {
                    let next = (idx + 1 < steps.len()).then_some(idx as i32 + 1);
                    registry
                        .step_done(lease, idx as i32, &wrap(&state), next)
                        .await?;
                    marked_started = next.is_some();
                    crate::metrics::step(W::KIND, name, "done", started.elapsed());
                    tracing::info!(
                        step = name,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "step done"
                    );
                }
                Err(StepError::Wait { reason, recheck }) => {
                    crate::metrics::step(W::KIND, name, "waiting", started.elapsed());
                    tracing::info!(step = name, %reason, "step waiting");
                    return registry
                        .step_wait(lease, idx as i32, &reason, recheck)
                        .await;
                }
                Err(e)
                    if rolling_forward
                        || matches!(e, StepError::Retryable(_))
                            && self.claimed.failures + 1
                                < self.deps.config.workflow.max_failures =>
                {
                    crate::metrics::step(W::KIND, name, "retry", started.elapsed());
                    let delay = backoff(self.deps, self.claimed.failures);
                    let msg = e.to_string();
                    tracing::warn!(step = name, error = %msg, retry_in_ms = delay.as_millis() as u64, rolling_forward, "step failed; will retry");
                    return registry
                        .step_retry_later(lease, Some(idx as i32), &msg, delay)
                        .await;
                }
                Err(e) => {
                    let error = OperationError {
                        code: e.code(),
                        message: e.to_string(),
                        step: Some(name.to_owned()),
                    };
                    crate::metrics::step(W::KIND, name, "failed", started.elapsed());
                    tracing::warn!(step = name, error = %error.message, "step failed; compensating");
                    registry
                        .begin_compensation(lease, Some(idx as i32), None, &error)
                        .await?;
                    return self.compensate(state, error).await;
                }
            }
        }
        registry
            .finish_operation(lease, OperationState::Succeeded, &wrap(&state))
            .await?;
        crate::metrics::operation_finished(W::KIND, OperationState::Succeeded.as_str());
        tracing::info!("operation succeeded");
        Ok(())
    }

    async fn compensate(
        &self,
        mut state: W::State,
        error: OperationError,
    ) -> Result<(), LeaseError> {
        let registry = &self.deps.registry;
        let lease = &self.claimed.lease;
        let cx = self.cx(-1);
        let result = self
            .guarded(async {
                failpoint::hit(&format!("{}.before_compensate", W::KIND)).await?;
                self.workflow.compensate(&cx, &mut state).await
            })
            .await?;
        match result {
            Ok(()) => {
                let end = if error.code == ErrorCode::Cancelled {
                    OperationState::Cancelled
                } else {
                    OperationState::Failed
                };
                registry.finish_operation(lease, end, &wrap(&state)).await?;
                crate::metrics::operation_finished(W::KIND, end.as_str());
                tracing::info!(state = end.as_str(), "compensation done");
                Ok(())
            }
            // Compensation must converge: retry it, whatever the error, with back-off.
            Err(e) => {
                let delay = backoff(self.deps, self.claimed.failures);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "compensation failed; will retry");
                registry
                    .step_retry_later(lease, None, &e.to_string(), delay)
                    .await
            }
        }
    }
}

/// Exponential back-off with ±20 % jitter, so retries from many operations spread out.
fn backoff(deps: &Context, failures: i32) -> Duration {
    let wf = &deps.config.workflow;
    let exp = wf
        .backoff_ms
        .saturating_mul(1u64 << failures.clamp(0, 20))
        .min(wf.max_backoff_ms);
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_millis((exp as f64 * jitter) as u64)
}
