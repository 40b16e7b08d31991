//! Verified deletion of one tenant: fence → final_export → inventory → delete_data →
//! delete_objects → delete_key → verify → certify.
//!
//! - `fence` marks the tenant `deleting` (it is never routed again), refuses to go on if the
//!   tenant or one of its exports is under legal hold, fences its writes in its container and
//!   waits out older writers.
//! - `final_export` (only if requested, for a customer exit) exports the tenant for handing
//!   over: under `handover/<tenant>/`, its data key sealed by the service key, so it outlives
//!   the tenant key. It is named in the certificate as outside the deletion.
//! - `inventory` changes nothing: it counts the tenant's rows in every table with a
//!   `tenant_id` on every cluster ([`erasure::scan`]), lists its objects and its exports. These
//!   counts are the certificate's "rows deleted": taken while fenced, before anything goes.
//! - `delete_data` deletes the tenant's rows wherever the scan finds them outside its own
//!   containers (the pool, or a leftover anywhere), in batches, children first; then drops its
//!   own containers on every cluster (schema, database with sessions forced off, restore
//!   leftovers) and its role, and its sealed credentials in the registry. Before any of it, the
//!   logins issued to it on every cluster are dropped and their sessions ended.
//! - `delete_objects` aborts incomplete uploads and deletes every object under
//!   `tenants/<tenant>/`.
//! - `delete_key` schedules the deletion of the tenant key (window: request or
//!   `deletion.key_pending_days`, 7–30 days). Every export is unreadable from now on.
//! - `verify` checks independently, from scratch: a fresh scan of every table on every
//!   cluster finds zero rows, no schema, database or role of the tenant exists, the object
//!   listing and the incomplete uploads under its prefix are empty, and the key service says
//!   the key is pending deletion (or destroyed). Anything found fails the operation with what
//!   was found; no certificate is written.
//! - `certify` builds the certificate from the recorded evidence, has the service signing key
//!   sign it, stores it, and leaves the tenant's tombstone — one registry transaction.
//!
//! Cancellation is honoured up to `inventory`; from `delete_data` on, the tenant's data is
//! going, and a failure leaves the tenant `deleting` for a new deletion request to finish
//! (every step converges from any partial state). Compensation before `delete_data` lifts the
//! fence, removes a final export and makes the tenant active again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::archive::layout::{ExportKeys, tenant_prefix};
use crate::certificate::{
    self, Certificate, Evidence, FinalExportFacts, KeyCheck, KeyEvidence, ObjectCheck,
    ObjectEvidence, RequestFacts, TenantFacts, Verification,
};
use crate::context::Context;
use crate::credentials::{self, Revoke};
use crate::dataplane::erasure::{self, CatalogCheck, TableCount};
use crate::dataplane::{Cluster, Container, backend, fence, roles};
use crate::error::Error;
use crate::keys::KeyState;
use crate::registry::Registry;
use crate::registry::certificates::NewCertificate;
use crate::tenant::{Tenant, TenantRef, TenantState, Tier};
use crate::workflow::{StepContext, StepError, Workflow, steps};
use crate::workflows::export_writer;

pub struct Delete;

steps!(pub enum Step {
    Fence => "fence",
    FinalExport => "final_export",
    Inventory => "inventory",
    DeleteData => "delete_data",
    DeleteObjects => "delete_objects",
    DeleteKey => "delete_key",
    Verify => "verify",
    Certify => "certify",
});

/// What the caller asked for, recorded as given (validated) in the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub reason: String,
    pub requested_by: String,
    pub ticket: String,
    pub request_id: Option<String>,
    /// Export the tenant for handing over before deleting it.
    pub final_export: bool,
    pub key_pending_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub request: Request,
    pub tenant_slug: String,
    pub tier: Tier,
    pub cluster: String,
    pub requested_at: DateTime<Utc>,
    /// The tenant was already `deleting` (an earlier deletion failed part-way): nothing may
    /// make it active again.
    #[serde(default)]
    pub resumed: bool,
    /// The final export's id (chosen at request time, so a retried step reuses it).
    #[serde(default)]
    pub final_export_id: Option<Uuid>,
    /// Set by `final_export`.
    #[serde(default)]
    pub final_export: Option<FinalExportFacts>,
    /// Set by `inventory`: from here on the tenant's data may be gone.
    #[serde(default)]
    pub inventory: Option<Inventory>,
    /// Set by `delete_data`.
    #[serde(default)]
    pub dropped: Vec<String>,
    /// Set by `delete_objects`.
    #[serde(default)]
    pub objects: Option<ObjectEvidence>,
    /// Set by `delete_key`.
    #[serde(default)]
    pub key: Option<KeyEvidence>,
    /// Set by `verify`.
    #[serde(default)]
    pub verification: Option<Verification>,
    /// Set by `certify`.
    #[serde(default)]
    pub certificate_id: Option<Uuid>,
}

impl State {
    pub fn new(tenant: &Tenant, request: Request) -> Self {
        State {
            final_export_id: request.final_export.then(Uuid::new_v4),
            request,
            tenant_slug: tenant.slug.clone(),
            tier: tenant.tier,
            cluster: tenant.placement.cluster.clone(),
            requested_at: Utc::now(),
            resumed: tenant.state == TenantState::Deleting,
            final_export: None,
            inventory: None,
            dropped: Vec::new(),
            objects: None,
            key: None,
            verification: None,
            certificate_id: None,
        }
    }

    /// Rows the inventory found, summed.
    pub fn rows(&self) -> u64 {
        self.inventory
            .as_ref()
            .map_or(0, |i| i.rows.iter().map(|t| t.rows).sum())
    }
}

/// What the tenant had when the deletion counted it (fenced, before deleting anything).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// Tables holding rows of the tenant, with their counts.
    pub rows: Vec<TableCount>,
    /// Objects under the tenant's prefix: (key, size).
    pub objects: Vec<(String, u64)>,
    /// The tenant's complete exports.
    pub exports: Vec<Uuid>,
}

impl Workflow for Delete {
    const KIND: &'static str = "delete";
    type Step = Step;
    const UNCANCELLABLE_FROM: Option<Step> = Some(Step::DeleteData);
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let tenant_id = cx.tenant_id()?;
        match step {
            Step::Fence => fence_step(cx, state).await?,
            Step::FinalExport => {
                if let Some(id) = state.final_export_id {
                    state.final_export = Some(export_writer::handover(cx, id).await?);
                }
            }
            Step::Inventory => {
                let mut rows = Vec::new();
                for cluster in deps.dataplane.clusters() {
                    let found = erasure::scan(cluster, cx.tenant_id()?).await?;
                    rows.extend(found.into_iter().filter(|t| t.rows > 0));
                }
                let objects = deps
                    .objects
                    .list(&tenant_prefix(tenant_id))
                    .await?
                    .into_iter()
                    .map(|o| (o.key.as_str().to_owned(), o.size))
                    .collect();
                let exports = deps.registry.complete_exports(cx.tenant_id()?).await?;
                tracing::info!(tenant_id = %cx.tenant_id()?, tables = rows.len(),
                    rows = rows.iter().map(|t| t.rows).sum::<u64>(), "deletion inventory taken");
                state.inventory = Some(Inventory {
                    rows,
                    objects,
                    exports,
                });
            }
            Step::DeleteData => state.dropped = delete_data(cx).await?,
            Step::DeleteObjects => {
                let inventory = state
                    .inventory
                    .as_ref()
                    .ok_or_else(|| StepError::missing("inventory"))?;
                state.objects = Some(delete_objects(deps, tenant_id, inventory).await?);
            }
            Step::DeleteKey => state.key = delete_key(deps, tenant_id, state).await?,
            Step::Verify => state.verification = Some(verify(cx, state).await?),
            Step::Certify => state.certificate_id = Some(certify(cx, state).await?),
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        if state.inventory.is_some() || state.resumed {
            // Data may be gone: the tenant stays `deleting`, for a new request to finish.
            tracing::warn!(tenant_id = %cx.tenant_id()?,
                "deletion stopped after it began deleting; the tenant stays deleting");
            return Ok(());
        }
        if let Some(id) = state.final_export_id {
            let keys = ExportKeys::handover(cx.tenant_id()?, id);
            export_writer::discard(cx.deps, &keys, id).await?;
        }
        let tenant = cx
            .deps
            .registry
            .get_tenant(&TenantRef::Id(cx.tenant_id()?))
            .await?;
        if let Some((cluster, c)) = container(cx.deps, &tenant)? {
            fence::unfence(cluster, &c).await?;
        }
        Registry::abandon_deletion(cx.deps.registry.pool(), cx.tenant_id()?).await?;
        Ok(())
    }
}

/// The tenant's live container and its cluster (`None` once its placement is gone).
fn container<'d>(
    deps: &'d Context,
    tenant: &Tenant,
) -> Result<Option<(&'d Cluster, Container)>, StepError> {
    if tenant.placement.schema.is_none() {
        return Ok(None);
    }
    let cluster = deps.dataplane.cluster(&tenant.placement.cluster)?;
    let c = Container::from_placement(tenant.id, tenant.tier, &tenant.placement)?;
    Ok(Some((cluster, c)))
}

/// The `fence` step: the tenant leaves routing, then its writes are fenced where its
/// container still exists (a repeated deletion may find it gone).
async fn fence_step(cx: &StepContext<'_>, state: &State) -> Result<(), StepError> {
    let deps = cx.deps;
    if !Registry::begin_deletion(deps.registry.pool(), cx.tenant_id()?).await? {
        return Err(StepError::precondition(format!(
            "tenant {} is neither active nor deleting",
            state.tenant_slug
        )));
    }
    // A legal hold placed before the tenant became `deleting` is seen here (one placed
    // after is refused, since the tenant is no longer active): the deletion stops, and
    // compensation makes the tenant active again.
    if let Some(hold) = deps.registry.holds(cx.tenant_id()?).await?.first() {
        return Err(StepError::precondition(format!(
            "the tenant cannot be deleted: {}",
            hold.describe()
        )));
    }
    let tenant = deps
        .registry
        .get_tenant(&TenantRef::Id(cx.tenant_id()?))
        .await?;
    if let Some((cluster, c)) = container(deps, &tenant)?
        && cluster.schema_exists(&c.database, &c.schema).await?
    {
        fence::fence(cluster, &c, cx.operation_id).await?;
        fence::wait_for_writers(cluster, &c, deps.config.workflow.fence_wait()).await?;
    }
    Ok(())
}

/// The `delete_data` step (see the module doc). Returns what was dropped whole.
async fn delete_data(cx: &StepContext<'_>) -> Result<Vec<String>, StepError> {
    let deps = cx.deps;
    let own = erasure::own_names(cx.tenant_id()?);
    let is_own = |name: &str| own.iter().any(|n| n.as_str() == name);
    let mut dropped = Vec::new();
    // Its logins first: no session of the tenant outlives its data.
    let logins = credentials::revoke(deps, cx.tenant_id()?, Revoke::All).await?;
    if logins > 0 {
        dropped.push(format!("{logins} issued login(s)"));
    }
    for cluster in deps.dataplane.clusters() {
        // Rows outside the tenant's own containers: the pool, or a leftover anywhere. Scanned
        // again rather than taken from the inventory: a retried step must see what is left.
        for t in erasure::scan(cluster, cx.tenant_id()?).await? {
            if t.rows == 0 || is_own(&t.database) || is_own(&t.schema) {
                continue;
            }
            let (database, schema, table) = t.idents()?;
            let pace = erasure::DELETION;
            let deleted =
                erasure::delete_rows(cluster, &database, &schema, &table, cx.tenant_id()?, pace)
                    .await?;
            crate::metrics::rows_moved(<Delete as Workflow>::KIND, deleted);
            tracing::info!(tenant_id = %cx.tenant_id()?, table = %t.qualified(), rows = deleted,
                "tenant rows deleted");
        }
        // Its own schemas (tenant schema, restore leftovers) in every tenant-data database.
        for (database, schema) in erasure::own_schemas(cluster, cx.tenant_id()?).await? {
            cluster.drop_schema(&database, &schema).await?;
            dropped.push(format!(
                "schema {}.{} on cluster {}",
                database.as_str(),
                schema.as_str(),
                cluster.name
            ));
        }
        // Its database, sessions forced off, and its role.
        let own_db = Container::plan(cx.tenant_id()?, Tier::Database, cluster);
        if cluster.database_exists(&own_db.database).await? {
            backend(Tier::Database)
                .drop_container(cluster, &own_db)
                .await?;
            dropped.push(format!(
                "database {} on cluster {}",
                own_db.database.as_str(),
                cluster.name
            ));
        }
        if roles::role_exists(cluster, &own_db.role).await? {
            roles::drop_role(cluster, &own_db.role, &[&cluster.shared_database]).await?;
            dropped.push(format!(
                "role {} on cluster {}",
                own_db.role.as_str(),
                cluster.name
            ));
        }
    }
    Registry::delete_credentials(deps.registry.pool(), cx.tenant_id()?).await?;
    Ok(dropped)
}

/// The `delete_objects` step: everything under the tenant's prefix, incomplete uploads too.
/// The evidence covers what the inventory listed and whatever this run found.
async fn delete_objects(
    deps: &Context,
    tenant_id: Uuid,
    inventory: &Inventory,
) -> Result<ObjectEvidence, StepError> {
    let prefix = tenant_prefix(tenant_id);
    let aborted = deps.objects.abort_uploads(&prefix).await?;
    let mut seen: std::collections::BTreeMap<String, u64> =
        inventory.objects.iter().cloned().collect();
    for o in deps.objects.list(&prefix).await? {
        deps.objects.delete(&o.key).await?;
        seen.insert(o.key.as_str().to_owned(), o.size);
    }
    let mut hasher = Sha256::new();
    for key in seen.keys() {
        hasher.update(key.as_bytes());
        hasher.update(b"\n");
    }
    Ok(ObjectEvidence {
        prefix: prefix.as_str().to_owned(),
        deleted: seen.len() as u64,
        bytes: seen.values().sum(),
        incomplete_uploads_aborted: aborted as u64,
        keys_sha256: hex::encode(hasher.finalize()),
    })
}

/// The `delete_key` step: schedules the tenant key's deletion (idempotent: a key already
/// pending deletion keeps its date). `None`: the tenant never had a key.
async fn delete_key(
    deps: &Context,
    tenant_id: Uuid,
    state: &State,
) -> Result<Option<KeyEvidence>, StepError> {
    let Some(key) = deps.keys.tenant_key(tenant_id).await? else {
        return Ok(None);
    };
    let info = match key.state {
        KeyState::PendingDeletion | KeyState::Destroyed => key,
        KeyState::Enabled | KeyState::Disabled => {
            deps.keys
                .schedule_key_deletion(&key.key_id, state.request.key_pending_days)
                .await?
        }
    };
    tracing::info!(tenant_id = %tenant_id, key_id = %info.key_id, "tenant key deletion scheduled");
    Ok(Some(KeyEvidence {
        key_id: info.key_id,
        state: info.state.as_str().to_owned(),
        deletion_date: info.deletion_date.map(rfc3339).unwrap_or_default(),
        pending_window_days: state.request.key_pending_days,
    }))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The `verify` step (see the module doc): what it finds is the certificate's verification,
/// and anything of the tenant it finds fails the deletion.
async fn verify(cx: &StepContext<'_>, state: &State) -> Result<Verification, StepError> {
    let deps = cx.deps;
    let mut tables: Vec<TableCount> = Vec::new();
    let mut catalog: Vec<CatalogCheck> = Vec::new();
    for cluster in deps.dataplane.clusters() {
        tables.extend(erasure::scan(cluster, cx.tenant_id()?).await?);
        catalog.extend(erasure::catalog_checks(cluster, cx.tenant_id()?).await?);
    }
    let prefix = tenant_prefix(cx.tenant_id()?);
    let objects = deps.objects.list(&prefix).await?;
    let uploads = deps.objects.incomplete_uploads(&prefix).await?;
    let found = deps.keys.tenant_key(cx.tenant_id()?).await?;
    let key_gone = found
        .as_ref()
        .is_none_or(|k| matches!(k.state, KeyState::PendingDeletion | KeyState::Destroyed));
    let key = match found {
        Some(k) => KeyCheck {
            key_id: k.key_id,
            state: k.state.as_str().to_owned(),
        },
        None => KeyCheck {
            key_id: String::new(),
            state: "none".into(),
        },
    };
    let mut survivors: Vec<String> = tables
        .iter()
        .filter(|t| t.rows > 0)
        .map(|t| {
            format!(
                "{} row(s) in {} on cluster {} ({})",
                t.rows,
                t.qualified(),
                t.cluster,
                erasure::COUNT_QUERY
            )
        })
        .collect();
    survivors.extend(catalog.iter().filter(|c| c.found > 0).map(|c| {
        format!(
            "{} object(s) named {:?} in {} on cluster {} ({})",
            c.found, c.bound, c.database, c.cluster, c.query
        )
    }));
    if !objects.is_empty() || !uploads.is_empty() {
        survivors.push(format!(
            "{} object(s) and {} incomplete upload(s) under {}",
            objects.len(),
            uploads.len(),
            prefix.as_str()
        ));
    }
    if !key_gone {
        survivors.push(format!("tenant key {} is {}", key.key_id, key.state));
    }
    if !survivors.is_empty() {
        return Err(StepError::precondition(format!(
            "deletion of tenant {} not verified: found {}; no certificate was issued; \
                 request the deletion again",
            state.tenant_slug,
            survivors.join("; ")
        )));
    }
    Ok(Verification {
        verified_at: rfc3339(Utc::now()),
        row_query: erasure::COUNT_QUERY.to_owned(),
        tables,
        catalog,
        objects: ObjectCheck {
            prefix: prefix.as_str().to_owned(),
            objects_listed: objects.len() as u64,
            incomplete_uploads_listed: uploads.len() as u64,
        },
        key,
    })
}

/// The `certify` step: certificate → signature → registry (with the tombstone).
async fn certify(cx: &StepContext<'_>, state: &State) -> Result<Uuid, StepError> {
    let deps = cx.deps;
    if let Some(stored) = deps
        .registry
        .certificate_of_operation(cx.operation_id)
        .await?
    {
        return Ok(stored.id);
    }
    let inventory = state
        .inventory
        .clone()
        .ok_or_else(|| StepError::missing("inventory"))?;
    let verification = state
        .verification
        .clone()
        .ok_or_else(|| StepError::missing("verification"))?;
    let objects = state
        .objects
        .clone()
        .ok_or_else(|| StepError::missing("object evidence"))?;
    let public = deps.keys.public_key().await?;
    let id = Uuid::new_v4();
    let now = Utc::now();
    let key = state.key.clone().unwrap_or(KeyEvidence {
        key_id: String::new(),
        state: "none".into(),
        deletion_date: String::new(),
        pending_window_days: 0,
    });
    let operation = deps.registry.get_operation(cx.operation_id).await?;
    let cert = Certificate {
        format: certificate::FORMAT.to_owned(),
        certificate_id: id.to_string(),
        tenant: TenantFacts {
            id: cx.tenant_id()?.to_string(),
            slug: state.tenant_slug.clone(),
            tier: state.tier.as_str().to_owned(),
            cluster: state.cluster.clone(),
        },
        request: RequestFacts {
            reason: state.request.reason.clone(),
            requested_by: state.request.requested_by.clone(),
            ticket: state.request.ticket.clone(),
            request_id: state.request.request_id.clone().unwrap_or_default(),
            operation: format!("operations/{}", cx.operation_id),
            requested_at: rfc3339(state.requested_at),
        },
        started_at: rfc3339(operation.created_at),
        completed_at: rfc3339(now),
        scope: scope(deps, state, &key, now),
        evidence: Evidence {
            rows_deleted: inventory.rows,
            dropped: state.dropped.clone(),
            objects,
            key,
            exports: inventory
                .exports
                .iter()
                .map(|e| format!("exports/{e}"))
                .collect(),
            final_export: state.final_export.clone(),
        },
        verification,
        signing_key_id: public.key_id,
    };
    let signature = deps.keys.sign(&cert.message()).await?;
    if signature.key_id != cert.signing_key_id {
        return Err(StepError::Retryable(
            "the signing key changed while signing; signing again".into(),
        ));
    }
    let document = cert.document(&signature.der);
    deps.registry
        .issue_certificate(&NewCertificate {
            id,
            tenant_id: cx.tenant_id()?,
            operation_id: cx.operation_id,
            tenant_slug: &state.tenant_slug,
            signing_key_id: &cert.signing_key_id,
            document: &document,
            issued_at: now,
        })
        .await?;
    tracing::info!(tenant_id = %cx.tenant_id()?, certificate_id = %id, "deletion certificate issued");
    // A retry that lost the race keeps the first certificate.
    Ok(deps
        .registry
        .certificate_of_operation(cx.operation_id)
        .await?
        .map_or(id, |c| c.id))
}

/// The certificate's honest statement of what the deletion does not reach.
fn scope(deps: &Context, state: &State, key: &KeyEvidence, now: DateTime<Utc>) -> Vec<String> {
    let retention = deps.config.deletion.backup_retention_days;
    let clusters: Vec<&str> = deps.dataplane.clusters().map(|c| c.name.as_str()).collect();
    let mut scope = vec![
        format!(
            "Physical backups and WAL archives of the PostgreSQL clusters ({}) are outside \
             tenantd's reach: rows deleted here remain in backups taken before {} until those \
             expire under the configured retention of {retention} days, by {}.",
            clusters.join(", "),
            rfc3339(now),
            rfc3339(now + chrono::Duration::days(i64::from(retention)))
        ),
        if key.key_id.is_empty() {
            "The tenant had no key of its own; no export of it existed.".to_owned()
        } else {
            format!(
                "Every export of the tenant was encrypted under its key {}; the key refuses to \
                 decrypt from now on and is destroyed on {} (crypto-shredding), so copies of \
                 its exports anywhere are unreadable; the exports' objects were deleted.",
                key.key_id, key.deletion_date
            )
        },
        "The registry keeps a tombstone (tenant id, slug, tier, cluster, key id), the \
         history of operations on the tenant and its audit log (who did what, when); they \
         hold no tenant data."
            .to_owned(),
        "Copies made outside tenantd (by applications, logs, caches or downstream systems) \
         are not covered."
            .to_owned(),
    ];
    if state.tier == Tier::Pool {
        scope.push(format!(
            "A deletion fence row (tenant id and this operation's id, no tenant data) stays in \
             the write-fence table of schema pool ({} or {}) on cluster {} so that no \
             application session can write under this tenant id again.",
            fence::OWN.table,
            fence::LEGACY.table,
            state.cluster
        ));
    }
    if let Some(f) = &state.final_export {
        scope.push(format!(
            "The final export {} requested for handing over is kept at {}, encrypted under \
             {}; it is outside this deletion and must be deleted once handed over.",
            f.export, f.object_uri, f.encrypted_with
        ));
    }
    scope
}

/// Whether `tenant` may be deleted: an active one, or one whose earlier deletion failed (it is
/// requested again). A final export needs all of the tenant's data, so not the latter.
pub fn deletable(tenant: &Tenant, final_export: bool) -> Result<(), Error> {
    match tenant.state {
        TenantState::Active => Ok(()),
        TenantState::Deleting if final_export => Err(Error::FailedPrecondition {
            reason: format!(
                "tenant {} is deleting: an earlier deletion may have removed part of its data, \
                 so no final export can be taken; request the deletion without one",
                tenant.slug
            ),
            operation: None,
        }),
        TenantState::Deleting => Ok(()),
        other => Err(Error::FailedPrecondition {
            reason: format!(
                "tenant {} is {}; only an active tenant (or one whose deletion failed) can be \
                 deleted",
                tenant.slug,
                other.as_str()
            ),
            operation: None,
        }),
    }
}
