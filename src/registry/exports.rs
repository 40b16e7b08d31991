//! Export rows: one per export, `running` while its workflow runs, `complete` once the
//! archive and its signed manifest are stored, `failed` after compensation removed them.
//! The archive itself lives in the object store; this row is the index that lists it.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::archive::manifest::TableRows;
use crate::error::Error;
use crate::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportState {
    Running,
    Complete,
    Failed,
    /// The tenant was deleted: objects gone, key pending deletion.
    Deleted,
    /// DeleteExport or retention is taking the objects away.
    Removing,
    /// DeleteExport or retention took the objects away; the row is the tombstone.
    Removed,
}

#[derive(Debug, Clone)]
pub struct Export {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub operation_id: Uuid,
    pub state: ExportState,
    pub tier: String,
    pub schema_version: Option<i32>,
    pub object_key: String,
    pub manifest_key: String,
    pub key_id: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub plaintext_sha256: Option<String>,
    pub tables: Vec<TableRows>,
    pub snapshot_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A deleted tenant's final export, kept for handing over (see migration 0004).
    pub handover: bool,
    /// A scheduled backup: the policy and slot it was taken for (migration 0010).
    pub scheduled: Option<(Uuid, DateTime<Utc>)>,
    /// When and by whom the objects were removed (DeleteExport, retention).
    pub removed: Option<(DateTime<Utc>, String)>,
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    id: Uuid,
    tenant_id: Uuid,
    operation_id: Uuid,
    state: String,
    tier: String,
    schema_version: Option<i32>,
    object_key: String,
    manifest_key: String,
    key_id: Option<String>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    plaintext_sha256: Option<String>,
    table_rows: sqlx::types::Json<Vec<TableRows>>,
    snapshot_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    handover: bool,
    policy_id: Option<Uuid>,
    slot: Option<DateTime<Utc>>,
    removed_at: Option<DateTime<Utc>>,
    removed_by: Option<String>,
}

macro_rules! columns {
    () => {
        "id, tenant_id, operation_id, state, tier, schema_version, object_key, manifest_key, \
         key_id, size_bytes, sha256, plaintext_sha256, table_rows, snapshot_at, created_at, \
         completed_at, handover, policy_id, slot, removed_at, removed_by"
    };
}

impl From<ExportRow> for Export {
    fn from(r: ExportRow) -> Self {
        Export {
            id: r.id,
            tenant_id: r.tenant_id,
            operation_id: r.operation_id,
            state: match r.state.as_str() {
                "complete" => ExportState::Complete,
                "failed" => ExportState::Failed,
                "deleted" => ExportState::Deleted,
                "removing" => ExportState::Removing,
                "removed" => ExportState::Removed,
                _ => ExportState::Running,
            },
            tier: r.tier,
            schema_version: r.schema_version,
            object_key: r.object_key,
            manifest_key: r.manifest_key,
            key_id: r.key_id,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            plaintext_sha256: r.plaintext_sha256,
            tables: r.table_rows.0,
            snapshot_at: r.snapshot_at,
            created_at: r.created_at,
            completed_at: r.completed_at,
            handover: r.handover,
            scheduled: r.policy_id.zip(r.slot),
            removed: r.removed_at.zip(r.removed_by),
        }
    }
}

/// Where an export's objects are.
pub struct NewExport<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub operation_id: Uuid,
    pub tier: &'a str,
    pub object_key: &'a str,
    pub manifest_key: &'a str,
    pub handover: bool,
    /// A scheduled backup's policy and slot.
    pub scheduled: Option<(Uuid, DateTime<Utc>)>,
}

/// What a finished export records.
pub struct CompletedExport<'a> {
    pub schema_version: i32,
    pub key_id: &'a str,
    pub size_bytes: u64,
    pub sha256: &'a str,
    pub plaintext_sha256: &'a str,
    pub tables: &'a [TableRows],
    pub snapshot_at: DateTime<Utc>,
}

impl Registry {
    /// Records a running export; a retried step finds the row it made.
    pub async fn insert_export<'e>(
        exec: impl PgExecutor<'e>,
        e: &NewExport<'_>,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO exports (id, tenant_id, operation_id, state, tier, object_key,
                                  manifest_key, handover, policy_id, slot)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(e.id)
        .bind(e.tenant_id)
        .bind(e.operation_id)
        .bind(e.tier)
        .bind(e.object_key)
        .bind(e.manifest_key)
        .bind(e.handover)
        .bind(e.scheduled.map(|s| s.0))
        .bind(e.scheduled.map(|s| s.1))
        .execute(exec)
        .await?;
        Ok(())
    }

    pub async fn complete_export<'e>(
        exec: impl PgExecutor<'e>,
        id: Uuid,
        c: &CompletedExport<'_>,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE exports SET state = 'complete', schema_version = $2, key_id = $3,
                    size_bytes = $4, sha256 = $5, plaintext_sha256 = $6, table_rows = $7,
                    snapshot_at = $8, completed_at = coalesce(completed_at, now())
             WHERE id = $1",
        )
        .bind(id)
        .bind(c.schema_version)
        .bind(c.key_id)
        .bind(c.size_bytes as i64)
        .bind(c.sha256)
        .bind(c.plaintext_sha256)
        .bind(sqlx::types::Json(c.tables))
        .bind(c.snapshot_at)
        .execute(exec)
        .await?;
        Ok(())
    }

    pub async fn fail_export<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<(), Error> {
        sqlx::query("UPDATE exports SET state = 'failed' WHERE id = $1 AND state = 'running'")
            .bind(id)
            .execute(exec)
            .await?;
        Ok(())
    }

    pub async fn find_export(&self, id: Uuid) -> Result<Option<Export>, Error> {
        let row: Option<ExportRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM exports WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(Export::from))
    }

    /// A tenant's exports, oldest first, after the keyset position `after`.
    pub async fn list_exports(
        &self,
        tenant_id: Uuid,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<Export>, Error> {
        let (at, id) = after.unzip();
        let rows: Vec<ExportRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM exports WHERE tenant_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
             ORDER BY created_at, id LIMIT $4"
        ))
        .bind(tenant_id)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Export::from).collect())
    }

    /// The tenant's complete exports (what a deletion crypto-shreds; not a handover export),
    /// oldest first.
    pub async fn complete_exports(&self, tenant_id: Uuid) -> Result<Vec<Uuid>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM exports WHERE tenant_id = $1 AND state = 'complete' AND NOT handover
             ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks every export of a deleted tenant `deleted`, except a final export kept for
    /// handing over.
    pub async fn delete_exports<'e>(
        exec: impl PgExecutor<'e>,
        tenant_id: Uuid,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE exports SET state = 'deleted'
             WHERE tenant_id = $1 AND state NOT IN ('deleted', 'removed') AND NOT handover",
        )
        .bind(tenant_id)
        .execute(exec)
        .await?;
        Ok(())
    }
}
