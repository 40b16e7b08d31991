//! Removing an export (DeleteExport, retention): the registry row is marked `removing`
//! (refused for a held or unfinished export), the archive, manifest and signature are
//! deleted, then the row becomes `removed`, a tombstone that says when and by whom. Every
//! part is idempotent, so a removal interrupted by a crash is finished by the next one of
//! the same export, or by the tenant's next prune.

use uuid::Uuid;

use crate::archive::layout::ExportKeys;
use crate::context::Context;
use crate::error::Error;

/// Removes `export_id`'s objects and leaves its tombstone; `by` says who (a principal, or
/// the retention of a policy). Returns false when the objects were already gone.
pub async fn remove(deps: &Context, export_id: Uuid, by: &str) -> Result<bool, Error> {
    if !deps.registry.begin_removal(export_id).await? {
        return Ok(false);
    }
    let row = deps
        .registry
        .find_export(export_id)
        .await?
        .ok_or_else(|| Error::not_found("export", format!("exports/{export_id}")))?;
    let keys = ExportKeys::for_row(&row);
    for key in keys.objects() {
        deps.objects.delete(key).await?;
    }
    deps.registry.finish_removal(export_id, by).await?;
    tracing::info!(export_id = %export_id, tenant_id = %row.tenant_id, removed_by = by, "export removed");
    Ok(true)
}
