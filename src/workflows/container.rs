//! A new tenant container at the fleet's tenant-schema version, and taking one back: what
//! provisioning, a tier change's target and a restore as a new tenant share. Not a workflow:
//! workflows call it from their steps and compensation.

use crate::context::Context;
use crate::dataplane::{Cluster, Container, backend, catalog};
use crate::registry::Registry;
use crate::workflow::StepError;

/// Migrates the container to the fleet's tenant-schema version (see docs/rollouts.md), or
/// leaves it where it is if it is already past it (the shared pool); returns its version.
pub async fn migrate_to_fleet(
    deps: &Context,
    cluster: &Cluster,
    c: &Container,
) -> Result<i32, StepError> {
    let fleet = deps.registry.schema_version().await?;
    deps.tenant_schema().await?;
    let db = cluster.database(&c.database);
    let options = catalog::MigrateOptions {
        newer_ok: true,
        ..Default::default()
    };
    Ok(catalog::migrate_with(cluster, &db, &c.schema, fleet, options).await?)
}

/// Rolls back the creation of a tenant whose container is `c` (provisioning, or a restore as
/// a new tenant), from any point: destroys what exists of the container and its role,
/// schedules the deletion of the tenant key, drops the credential and marks the tenant
/// `failed`, which frees its slug. Idempotent.
pub async fn undo(deps: &Context, cluster: &Cluster, c: &Container) -> Result<(), StepError> {
    backend(c.tier).destroy(cluster, c, false).await?;
    // No data was ever encrypted under it; the key service keeps its waiting period.
    if let Some(key) = deps.keys.tenant_key(c.tenant_id).await? {
        deps.keys.schedule_key_deletion(&key.key_id, 7).await?;
    }
    let mut tx = deps.registry.pool().begin().await?;
    Registry::delete_credentials(&mut *tx, c.tenant_id).await?;
    Registry::fail_tenant(&mut *tx, c.tenant_id).await?;
    tx.commit().await?;
    Ok(())
}
