//! The key backfill: tenants provisioned before tenant keys existed get one. A one-step
//! workflow (`create_key`) that the service enqueues at start for every active tenant without
//! a key; the step is [`tenant_key::ensure`], as in provisioning.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::context::Context;
use crate::error::Error;
use crate::registry::Registry;
use crate::registry::operations::NewOperation;
use crate::workflow::{StepContext, StepError, Steps, Workflow, steps, wrap};
use crate::workflows::tenant_key;

pub struct KeyBackfill;

steps!(pub enum Step {
    CreateKey => "create_key",
});

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub key_id: Option<String>,
}

impl Workflow for KeyBackfill {
    const KIND: &'static str = "create_key";
    type Step = Step;
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        Step::CreateKey: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        state.key_id = Some(tenant_key::ensure(cx.deps, cx.tenant_id()?).await?);
        Ok(())
    }

    /// Nothing to undo: a key without data under it is harmless and the next backfill
    /// finds it by its alias.
    async fn compensate(&self, _cx: &StepContext<'_>, _state: &mut State) -> Result<(), StepError> {
        Ok(())
    }
}

/// Enqueues the backfill for every active tenant without a key. A tenant busy with another
/// operation is skipped; the next start (or its next export) gives it its key.
pub async fn enqueue_backfill(deps: &Context) -> Result<usize, Error> {
    let mut started = 0;
    for tenant_id in deps.registry.tenants_without_key().await? {
        let mut tx = deps.registry.pool().begin().await?;
        let inserted = Registry::insert_operation(
            &mut tx,
            NewOperation {
                id: Uuid::new_v4(),
                kind: KeyBackfill::KIND,
                tenant_id: Some(tenant_id),
                request_id: None,
                request_hash: None,
                data: wrap(&State::default()),
                steps: &Step::names(),
            },
        )
        .await;
        match inserted {
            Ok(()) => {
                tx.commit().await?;
                started += 1;
            }
            // Another operation (or another replica's backfill) got there first.
            Err(Error::FailedPrecondition { .. }) | Err(Error::Unavailable(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if started > 0 {
        tracing::info!(tenants = started, "key backfill enqueued");
    }
    Ok(started)
}
