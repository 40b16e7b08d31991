//! The durable workflow engine: operations persisted in the registry, run step by step by
//! workers that claim them with a lease.
//!
//! Invariants (see docs/workflows.md):
//! - a step is idempotent: re-running it after a crash at any point converges to the same
//!   state, because every side effect is keyed by names derived from the operation or tenant;
//! - a step's output (the workflow state) and its done mark commit in one short transaction;
//!   no transaction spans a step's work;
//! - only the lease holder writes an operation (every write re-checks the lease token);
//! - a fatal error or a cancellation runs the workflow's compensation, which must converge
//!   too, and ends the operation FAILED or CANCELLED; from a workflow's point of no return
//!   (`ROLL_FORWARD_FROM`) errors are retried until the steps succeed instead;
//! - at most one active operation per tenant (a partial unique index in the registry).

pub mod engine;
pub mod failpoint;

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::context::Context;
use crate::operation::ProgressItem;
use crate::registry::operations::Lease;

/// How a step failed, and so whether to try it again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// Transient (connection lost, serialization failure, lock timeout): retried with
    /// exponential back-off.
    #[error("{0}")]
    Retryable(String),
    /// Permanent: compensation runs and the operation fails with this code and message.
    #[error("{message}")]
    Fatal { code: tonic::Code, message: String },
    /// Not failed: waiting for something outside the workflow (a person's approval). The
    /// operation is parked at this step, its lease released, and runs the step again after
    /// `recheck` or when woken ([`crate::registry::Registry::wake_operation`]).
    #[error("{reason}")]
    Wait {
        reason: String,
        recheck: std::time::Duration,
    },
}

impl StepError {
    pub fn fatal(code: tonic::Code, message: impl Into<String>) -> Self {
        StepError::Fatal {
            code,
            message: message.into(),
        }
    }
}

impl From<crate::error::Error> for StepError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error;
        match e {
            Error::Unavailable(m) => StepError::Retryable(m),
            Error::FailedPrecondition { reason, .. } => {
                StepError::fatal(tonic::Code::FailedPrecondition, reason)
            }
            other => StepError::fatal(tonic::Code::Internal, other.to_string()),
        }
    }
}

/// A durable workflow: a fixed list of named steps over a serialisable state.
pub trait Workflow: Send + Sync + 'static {
    const KIND: &'static str;
    const STEPS: &'static [&'static str];
    type State: Serialize + DeserializeOwned + Send + Sync;
    /// The step from which the workflow can only roll forward (e.g. once routing points at
    /// the new copy): from it on, every error is retried with back-off instead of compensated,
    /// and cancellation is no longer honoured. `None`: every step can be undone.
    const ROLL_FORWARD_FROM: Option<&'static str> = None;
    /// The step from which cancellation is no longer honoured: by default the point of no
    /// return. A workflow that destroys data but must still be able to fail afterwards (a
    /// deletion whose verification finds a survivor) sets only this.
    const UNCANCELLABLE_FROM: Option<&'static str> = Self::ROLL_FORWARD_FROM;

    /// Runs step `step` (an index into `STEPS`). May update `state`; the new state is
    /// committed together with the step's done mark.
    fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: usize,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Undoes whatever the steps may have done, from any point. Must be idempotent.
    fn compensate(
        &self,
        cx: &StepContext<'_>,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// What a step sees: the service's dependencies and which operation it is part of.
pub struct StepContext<'a> {
    pub deps: &'a Context,
    pub operation_id: Uuid,
    pub tenant_id: Uuid,
    pub(crate) lease: Lease,
    pub(crate) step: i32,
}

impl StepContext<'_> {
    /// Reports progress of the running step, per item (shown by WatchOperation and
    /// tenantctl).
    pub async fn progress(&self, items: &[ProgressItem]) -> Result<(), StepError> {
        self.deps
            .registry
            .step_progress(&self.lease, self.step, items)
            .await
            .map_err(|e| StepError::Retryable(e.to_string()))
    }
}

/// The stored form of a workflow's state: versioned from day one so a later release can
/// migrate or refuse states written by an older one.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Envelope<S> {
    pub version: u32,
    pub state: S,
}

pub const ENVELOPE_VERSION: u32 = 1;

pub fn wrap<S: Serialize>(state: &S) -> serde_json::Value {
    serde_json::to_value(Envelope {
        version: ENVELOPE_VERSION,
        state,
    })
    .expect("workflow state serialises")
}

pub fn unwrap<S: DeserializeOwned>(value: serde_json::Value) -> Result<S, StepError> {
    let env: Envelope<S> = serde_json::from_value(value).map_err(|e| {
        StepError::fatal(
            tonic::Code::Internal,
            format!("stored workflow state unreadable: {e}"),
        )
    })?;
    if env.version != ENVELOPE_VERSION {
        return Err(StepError::fatal(
            tonic::Code::Internal,
            format!("workflow state version {} not supported", env.version),
        ));
    }
    Ok(env.state)
}
