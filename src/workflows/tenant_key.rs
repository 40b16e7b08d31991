//! The tenant's own key in the key service: provisioning creates it (step `create_key`), and
//! tenants provisioned before keys existed get one from the key backfill, a one-step
//! workflow (`create_key`) that the service enqueues at start for every active tenant
//! without a key. Both go through [`ensure`], which is idempotent: the key service finds the
//! key by the tenant's alias, and the registry records whatever it returns.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::context::Context;
use crate::error::Error;
use crate::registry::Registry;
use crate::registry::operations::NewOperation;
use crate::workflow::{StepContext, StepError, Workflow, wrap};

/// Creates (or finds) the tenant's key and records it on the tenant.
pub async fn ensure(deps: &Context, tenant_id: Uuid) -> Result<String, StepError> {
    let key = deps
        .keys
        .create_tenant_key(tenant_id)
        .await
        .map_err(Error::from)?;
    Registry::set_tenant_key(deps.registry.pool(), tenant_id, &key.key_id).await?;
    Ok(key.key_id)
}

pub struct KeyBackfill;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub key_id: Option<String>,
}

impl Workflow for KeyBackfill {
    const KIND: &'static str = "create_key";
    const STEPS: &'static [&'static str] = &["create_key"];
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        _step: usize,
        state: &mut State,
    ) -> Result<(), StepError> {
        state.key_id = Some(ensure(cx.deps, cx.tenant_id).await?);
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
                tenant_id,
                request_id: None,
                request_hash: None,
                data: wrap(&State::default()),
                steps: KeyBackfill::STEPS,
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
