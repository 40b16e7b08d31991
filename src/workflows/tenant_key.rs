//! The tenant's own key in the key service. Provisioning creates it (step `create_key`), an
//! export or a restore creates it for a tenant that has none, and tenants provisioned before
//! keys existed get one from the key backfill (`key_backfill.rs`). All go through [`ensure`],
//! which is idempotent: the key service finds the key by the tenant's alias, and the registry
//! records whatever it returns. Not a workflow.

use uuid::Uuid;

use crate::context::Context;
use crate::registry::Registry;
use crate::workflow::StepError;

/// Creates (or finds) the tenant's key and records it on the tenant.
pub async fn ensure(deps: &Context, tenant_id: Uuid) -> Result<String, StepError> {
    let key = deps.keys.create_tenant_key(tenant_id).await?;
    Registry::set_tenant_key(deps.registry.pool(), tenant_id, &key.key_id).await?;
    Ok(key.key_id)
}
