//! The leading steps of a restore to a point in time (docs/pitr.md): what turns "tenant X as
//! it was at T" into an ordinary export, which the restore's own steps then verify, stage
//! and swap in.
//!
//! - [`check`] (at request time and again in `preflight`, changing nothing): the tenant is
//!   known and not deleted, T is neither in the future nor before the tenant's data existed,
//!   the tenant has not changed tier since T, its cluster is backed up by pgBackRest and the
//!   backups and archived WAL reach T, and the side directory's disk has room.
//! - [`fetch`] (`fetch_backup`): seals the source's WAL up to now, then restores the files
//!   of the cluster's newest base backup before T into the operation's side directory
//!   (`--db-include`: only the database holding the tenant, and the system databases).
//! - [`replay`]: starts the copy on a private socket and waits until recovery paused at T;
//!   the copy keeps running for `extract` in this process.
//! - [`extract`]: takes the running copy (or, in another process after a crash or on another
//!   replica, starts it again: it pauses at T again), reads the one tenant from it into an
//!   export recorded as of T (dumped, sealed under the tenant's key, signed), and removes the
//!   side cluster. A replica that does not have the fetched copy fetches it again.
//!
//! [`remove_side`] removes what any of them left (compensation, and a crash resumed).
//! Not a workflow: the restore runs these as its first steps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::archive::layout::ExportKeys;
use crate::config::ClusterConfig;
use crate::context::Context;
use crate::dataplane::{Cluster, Container, catalog};
use crate::error::Error;
use crate::pitr::side::{self, SideCluster};
use crate::pitr::{Pitr, PitrError};
use crate::registry::Registry;
use crate::registry::exports::NewExport;
use crate::tenant::{Tenant, TenantRef, TenantState};
use crate::workflow::{StepContext, StepError};
use crate::workflows::export_writer::{self, Signed, Source, Wrap};
use crate::workflows::tenant_key;

/// How long sealing waits for the archiver.
const SEAL_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// Head room asked for beyond the databases' size: WAL replayed into the copy, and the
/// system databases.
const HEAD_ROOM: u64 = 256 << 20;

/// What a restore to a point in time records (in the restore's state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointInTime {
    /// The moment the tenant's data is restored to.
    pub at: DateTime<Utc>,
    /// The tenant whose data is taken (in place: the restored tenant itself).
    pub source_tenant: Uuid,
    /// Set by `preflight`: the disk the side cluster needs, and what was free.
    #[serde(default)]
    pub needed_bytes: u64,
    #[serde(default)]
    pub free_bytes: u64,
    /// Set by `fetch_backup`: the base backup restored (pgBackRest's label).
    #[serde(default)]
    pub base_backup: Option<String>,
    /// Set by `replay`: the commit time of the last transaction replayed (at or before
    /// `at`).
    #[serde(default)]
    pub replayed_to: Option<DateTime<Utc>>,
}

impl PointInTime {
    pub fn new(at: DateTime<Utc>, source_tenant: Uuid) -> Self {
        PointInTime {
            at,
            source_tenant,
            needed_bytes: 0,
            free_bytes: 0,
            base_backup: None,
            replayed_to: None,
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    pub tenant: Tenant,
    pub needed_bytes: u64,
    pub free_bytes: u64,
    pub base_backup: String,
}

fn refused(reason: String) -> Error {
    Error::FailedPrecondition {
        reason,
        operation: None,
    }
}

fn pitr(deps: &Context) -> Result<&Pitr, Error> {
    deps.pitr.as_deref().ok_or_else(|| {
        refused(
            "point-in-time restore is off: configure [pitr] (docs/pitr.md) and install \
             pgbackrest"
                .into(),
        )
    })
}

/// Refuses, with the reason and nothing changed, a restore of `tenant` to `at` that cannot
/// be done (see the module doc); otherwise what it needs.
pub async fn check(
    deps: &Context,
    tenant: &TenantRef,
    at: DateTime<Utc>,
) -> Result<Checked, Error> {
    // A deleted tenant answers by its old slug too, so that the refusal below names why.
    let tenant = deps.registry.get_tenant_or_tombstone(tenant).await?;
    if matches!(tenant.state, TenantState::Deleted | TenantState::Deleting) {
        return Err(refused(format!(
            "tenant {} is {}: its deletion certificate promises that no restore brings its \
             data back",
            tenant.slug,
            tenant.state.as_str()
        )));
    }
    tenant.ensure_active()?;
    let now = Utc::now();
    if at > now {
        return Err(refused(format!("{} is in the future", at.to_rfc3339())));
    }
    let since = deps
        .registry
        .tenant_active_since(tenant.id)
        .await?
        .unwrap_or(tenant.created_at);
    if at < since {
        return Err(refused(format!(
            "tenant {} did not exist at {}: its data exists from {}",
            tenant.slug,
            at.to_rfc3339(),
            since.to_rfc3339()
        )));
    }
    unmoved(deps, &tenant, at).await?;
    let pitr = pitr(deps)?;
    let cluster = &tenant.placement.cluster;
    if !pitr.covers(cluster) {
        return Err(refused(format!(
            "cluster {cluster} of tenant {} is not backed up for point-in-time restore \
             ([pitr] clusters does not list it)",
            tenant.slug
        )));
    }
    let held = pitr.pgbackrest.holdings(cluster).await?;
    held.reaches(at, now)?;
    let base_backup = held
        .backups
        .iter()
        .rev()
        .find(|b| b.stopped < at)
        .map(|b| b.label.clone())
        .unwrap_or_default();
    let (needed_bytes, free_bytes) = disk(deps, pitr, &tenant).await?;
    room(&tenant.slug, needed_bytes, free_bytes, &pitr.side_root())?;
    Ok(Checked {
        tenant,
        needed_bytes,
        free_bytes,
        base_backup,
    })
}

/// The disk a copy of the tenant's database needs (its size now, with head room), and what is
/// free where side clusters go.
async fn disk(deps: &Context, pitr: &Pitr, tenant: &Tenant) -> Result<(u64, u64), Error> {
    let cluster = deps.dataplane.cluster(&tenant.placement.cluster)?;
    let c = Container::from_placement(tenant.id, tenant.tier, &tenant.placement)?;
    let size: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(pg_database_size(datname)), 0)::bigint FROM pg_database
         WHERE datname = $1 OR datname IN ('postgres', 'template1', 'template0')",
    )
    .bind(c.database.as_str())
    .fetch_one(cluster.admin())
    .await
    .map_err(|e| Error::from(cluster.err(e)))?;
    let root = pitr.side_root();
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::Unavailable(format!("{}: {e}", root.display())))?;
    let free = free_bytes(&root)?;
    Ok((
        size.max(0) as u64 + size.max(0) as u64 / 10 + HEAD_ROOM,
        free,
    ))
}

/// Refuses a copy needing more than is free, saying how much each is.
fn room(slug: &str, needed: u64, free: u64, root: &std::path::Path) -> Result<(), Error> {
    if free >= needed {
        return Ok(());
    }
    Err(refused(format!(
        "restoring tenant {slug} to a point in time needs about {} MiB free under {} for a \
         copy of its database; {} MiB are free",
        needed.div_ceil(1 << 20),
        root.display(),
        free >> 20
    )))
}

fn free_bytes(dir: &std::path::Path) -> Result<u64, Error> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs struct of our own.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(Error::Unavailable(format!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The source tenant as it is now (placement unchanged since T: checked).
async fn source(deps: &Context, p: &PointInTime) -> Result<(Tenant, Container), StepError> {
    let tenant = deps
        .registry
        .get_tenant(&TenantRef::Id(p.source_tenant))
        .await?;
    let c = Container::from_placement(tenant.id, tenant.tier, &tenant.placement)?;
    Ok((tenant, c))
}

/// The `preflight` step: [`check`] again, now that the operation holds the tenant.
pub async fn preflight(cx: &StepContext<'_>, p: &mut PointInTime) -> Result<(), StepError> {
    let checked = check(cx.deps, &TenantRef::Id(p.source_tenant), p.at).await?;
    p.needed_bytes = checked.needed_bytes;
    p.free_bytes = checked.free_bytes;
    p.base_backup = Some(checked.base_backup);
    Ok(())
}

/// The `fetch_backup` step.
pub async fn fetch(cx: &StepContext<'_>, p: &PointInTime) -> Result<(), StepError> {
    let deps = cx.deps;
    let pitr = pitr(deps)?;
    let (tenant, c) = source(deps, p).await?;
    let cluster = deps.dataplane.cluster(&tenant.placement.cluster)?;
    // Recovery to T stops at the first commit after T: make sure there is one, archived.
    let mut conn = cluster
        .admin()
        .acquire()
        .await
        .map_err(|e| StepError::from(cluster.err(e)))?;
    crate::pitr::seal(&mut conn, SEAL_WITHIN)
        .await
        .map_err(Error::from)?;
    drop(conn);
    let dir = pitr.side_dir(cx.operation_id);
    let only = [c.database.as_str().to_owned()];
    let fetched = SideCluster::fetch(&pitr.pgbackrest, &cluster.name, p.at, &dir, &only).await;
    match fetched {
        // A database created after the base backup is not in it (the WAL creates it):
        // restore them all.
        Err(PitrError::Command { detail, .. })
            if detail.contains("database to include") && detail.contains("does not exist") =>
        {
            SideCluster::fetch(&pitr.pgbackrest, &cluster.name, p.at, &dir, &[])
                .await
                .map_err(Error::from)?;
        }
        other => other.map_err(Error::from)?,
    }
    tracing::info!(operation_id = %cx.operation_id, cluster = %cluster.name,
        at = %p.at.to_rfc3339(), "base backup restored into the side directory");
    Ok(())
}

/// Starts the side copy and waits until it paused at T.
async fn start(cx: &StepContext<'_>, cluster: &Cluster) -> Result<SideCluster, StepError> {
    let pitr = pitr(cx.deps)?;
    let password = pitr
        .pgbackrest
        .password(&cluster.name)
        .map_err(Error::from)?;
    // A hot standby refuses to start with less of these than its source had.
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', \
         'max_worker_processes', 'max_wal_senders', 'max_prepared_transactions', \
         'max_locks_per_transaction')",
    )
    .fetch_all(cluster.admin())
    .await
    .map_err(|e| StepError::from(cluster.err(e)))?;
    let dir = pitr.side_dir(cx.operation_id);
    Ok(SideCluster::start(&dir, password, settings)
        .await
        .map_err(Error::from)?)
}

/// Side clusters this process started and keeps running from `replay` to `extract`, by
/// operation. Only an optimisation: `extract` in another process (after a crash, or on
/// another replica) starts the copy again, and it replays to the same moment.
static RUNNING: std::sync::Mutex<Vec<(Uuid, SideCluster)>> = std::sync::Mutex::new(Vec::new());

fn take_running(operation_id: Uuid) -> Option<SideCluster> {
    let mut running = RUNNING.lock().expect("side clusters lock");
    let i = running.iter().position(|(id, _)| *id == operation_id)?;
    Some(running.swap_remove(i).1)
}

/// The operation's copy as fetched: fetched again if this replica does not have it (the
/// operation moved here from another replica).
async fn ensure_fetched(cx: &StepContext<'_>, p: &PointInTime) -> Result<(), StepError> {
    let pitr = pitr(cx.deps)?;
    if !SideCluster::fetched(&pitr.side_dir(cx.operation_id)) {
        tracing::info!(operation_id = %cx.operation_id,
            "the side copy is not on this replica: fetching it again");
        fetch(cx, p).await?;
    }
    Ok(())
}

/// The `replay` step. The copy is left running for `extract`.
pub async fn replay(cx: &StepContext<'_>, p: &mut PointInTime) -> Result<(), StepError> {
    let (tenant, _) = source(cx.deps, p).await?;
    let cluster = cx.deps.dataplane.cluster(&tenant.placement.cluster)?;
    drop(take_running(cx.operation_id));
    ensure_fetched(cx, p).await?;
    let side = start(cx, cluster).await?;
    p.replayed_to = side.replayed_to().await.map_err(Error::from)?;
    RUNNING
        .lock()
        .expect("side clusters lock")
        .push((cx.operation_id, side));
    tracing::info!(operation_id = %cx.operation_id, at = %p.at.to_rfc3339(),
        replayed_to = ?p.replayed_to, "WAL replayed to the target");
    Ok(())
}

/// The `extract` step: export `export_id` of the source tenant, as of T, read from the side
/// copy. Done once: an export already complete is kept.
pub async fn extract(
    cx: &StepContext<'_>,
    p: &PointInTime,
    export_id: Uuid,
) -> Result<(), StepError> {
    let deps = cx.deps;
    let pitr = pitr(deps)?;
    if deps
        .registry
        .find_export(export_id)
        .await?
        .is_some_and(|e| e.state == crate::registry::exports::ExportState::Complete)
    {
        side::remove(&pitr.side_dir(cx.operation_id))
            .await
            .map_err(Error::from)?;
        return Ok(());
    }
    let (tenant, c) = source(deps, p).await?;
    // The operation does not hold a source it restores as a new tenant: it must still be
    // where it was at T.
    unmoved(deps, &tenant, p.at).await?;
    let cluster = deps.dataplane.cluster(&tenant.placement.cluster)?;
    let side = match take_running(cx.operation_id) {
        Some(side) => side,
        None => {
            ensure_fetched(cx, p).await?;
            start(cx, cluster).await?
        }
    };
    let copy = Cluster::detached(
        &ClusterConfig {
            name: format!("{}-at-{}", cluster.name, p.at.timestamp()),
            admin_url: side.url("postgres"),
            public_host: None,
            public_port: None,
            shared_database: cluster.shared_database.as_str().to_owned(),
        },
        deps.tenant_schema().await?,
    )
    .map_err(StepError::internal)?;
    // The tenant's schema version then, from the copy itself (a rollout may have moved it
    // on since).
    let db = copy.database(&c.database);
    let schema_version = catalog::current_version(&copy, &db, &c.schema).await?;
    let key_id = match tenant.key_id.clone() {
        Some(k) => k,
        None => tenant_key::ensure(deps, tenant.id).await?,
    };
    let keys = ExportKeys::new(tenant.id, export_id);
    Registry::insert_export(
        deps.registry.pool(),
        &NewExport {
            id: export_id,
            tenant_id: tenant.id,
            operation_id: cx.operation_id,
            tier: tenant.tier.as_str(),
            object_key: keys.archive.as_str(),
            manifest_key: keys.manifest.as_str(),
            handover: false,
            scheduled: None,
        },
    )
    .await?;
    let from = Source {
        tenant_id: tenant.id,
        tier: tenant.tier,
        cluster: &copy,
        container: c,
        schema_version,
        as_of: Some(p.at),
    };
    let wrap = Wrap::Tenant(&key_id);
    let dumped = export_writer::dump(cx, &from, export_id, wrap, &tenant.slug, &keys).await?;
    copy.admin().close().await;
    drop(copy);
    drop(side);
    let signed = Signed {
        tenant_id: tenant.id,
        export_id,
        slug: &tenant.slug,
        key_id: &key_id,
    };
    export_writer::write_manifest(deps, &keys, &signed, &dumped).await?;
    export_writer::record(deps, export_id, &dumped, &key_id).await?;
    tracing::info!(operation_id = %cx.operation_id, export_id = %export_id,
        rows = dumped.tables.iter().map(|t| t.rows).sum::<u64>(),
        at = %p.at.to_rfc3339(), "tenant extracted as of the target");
    Ok(())
}

/// Refuses a tenant that changed tier after `at`: its data was elsewhere then.
async fn unmoved(deps: &Context, tenant: &Tenant, at: DateTime<Utc>) -> Result<(), Error> {
    let Some((op, ended)) = deps.registry.tenant_moved_after(tenant.id, at).await? else {
        return Ok(());
    };
    let when = ended.map_or_else(
        || "is still moving".to_owned(),
        |e| format!("moved at {}", e.to_rfc3339()),
    );
    Err(refused(format!(
        "tenant {} changed tier after {} (operations/{op}; it {when}): restore it to a \
         moment after the move",
        tenant.slug,
        at.to_rfc3339()
    )))
}

/// Removes the operation's side cluster, whatever state it was left in.
pub async fn remove_side(deps: &Context, operation_id: Uuid) -> Result<(), StepError> {
    drop(take_running(operation_id));
    if let Some(pitr) = deps.pitr.as_deref() {
        side::remove(&pitr.side_dir(operation_id))
            .await
            .map_err(Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_disk_is_refused_saying_how_much_is_needed_and_free() {
        let root = std::path::Path::new("/var/lib/tenantd/pgbackrest/side");
        assert!(room("north", 100 << 20, 100 << 20, root).is_ok());
        let e = room("north", 3 << 30, 512 << 20, root).unwrap_err();
        let Error::FailedPrecondition { reason, .. } = e else {
            panic!("{e:?}");
        };
        assert_eq!(
            reason,
            "restoring tenant north to a point in time needs about 3072 MiB free under \
             /var/lib/tenantd/pgbackrest/side for a copy of its database; 512 MiB are free"
        );
    }

    #[test]
    fn free_space_is_read_from_the_file_system() {
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(free_bytes(std::path::Path::new("/no/such/dir")).is_err());
    }
}
