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
mod error;
pub mod failpoint;

pub use error::{StepError, StepResultExt};

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::context::Context;
use crate::operation::ProgressItem;
use crate::registry::leases::Lease;

/// A workflow's steps: an enum whose variants run in declaration order (so `Ord` is the
/// order). The registry stores each step by [`Steps::name`] and an operation's cursor as an
/// index into [`Steps::ALL`]: names and order are part of the stored format, so a new step
/// goes at the end or under a new name, and a name never changes.
pub trait Steps: Copy + Ord + std::fmt::Debug + Send + Sync + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    /// The names in order, as an operation's steps are inserted.
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|s| s.name()).collect()
    }
}

/// Declares a workflow's step enum and its stored names:
/// `steps!(pub enum ExportStep { Prepare => "prepare", Dump => "dump" });`
macro_rules! steps {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        $vis enum $name { $($variant),+ }
        impl $crate::workflow::Steps for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn name(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
    };
}

pub(crate) use steps;

/// A durable workflow: a fixed list of typed steps over a serialisable state.
pub trait Workflow: Send + Sync + 'static {
    const KIND: &'static str;
    type Step: Steps;
    type State: Serialize + DeserializeOwned + Send + Sync;
    /// The step from which the workflow can only roll forward (e.g. once routing points at
    /// the new copy): from it on, every error is retried with back-off instead of compensated,
    /// and cancellation is no longer honoured. `None`: every step can be undone.
    const ROLL_FORWARD_FROM: Option<Self::Step> = None;
    /// The step from which cancellation is no longer honoured: by default the point of no
    /// return. A workflow that destroys data but must still be able to fail afterwards (a
    /// deletion whose verification finds a survivor) sets only this.
    const UNCANCELLABLE_FROM: Option<Self::Step> = Self::ROLL_FORWARD_FROM;

    /// Runs `step`. May update `state`; the new state is committed together with the step's
    /// done mark.
    fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Self::Step,
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
    /// The operation's tenant; `None` for a fleet operation (a rollout).
    pub tenant: Option<Uuid>,
    pub(crate) lease: Lease,
    pub(crate) step: i32,
}

impl StepContext<'_> {
    /// The tenant the operation is about; a fleet operation has none.
    pub fn tenant_id(&self) -> Result<Uuid, StepError> {
        self.tenant
            .ok_or_else(|| StepError::internal("a tenant workflow ran without a tenant"))
    }

    /// Whether someone asked to cancel the operation: a long step (a tier change's catch-up)
    /// checks between rounds and stops with [`crate::error::ErrorCode::Cancelled`].
    pub async fn cancel_requested(&self) -> Result<bool, StepError> {
        self.deps
            .registry
            .cancel_requested(self.operation_id)
            .await
            .retryable()
    }

    /// Reports progress of the running step, per item (shown by WatchOperation and
    /// tenantctl).
    pub async fn progress(&self, items: &[ProgressItem]) -> Result<(), StepError> {
        self.deps
            .registry
            .step_progress(&self.lease, self.step, items)
            .await
            .retryable()
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
    let env: Envelope<S> = serde_json::from_value(value)
        .map_err(|e| StepError::internal(format!("stored workflow state unreadable: {e}")))?;
    if env.version != ENVELOPE_VERSION {
        return Err(StepError::internal(format!(
            "workflow state version {} not supported",
            env.version
        )));
    }
    Ok(env.state)
}
