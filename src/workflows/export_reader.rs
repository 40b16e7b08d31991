//! Reading an export back into a container: the archive streamed from the object store,
//! authenticated and decompressed and parsed on a blocking thread, loaded by `COPY`, the
//! keys, indexes and foreign keys built again, and the container read back and compared
//! with what was loaded. A restore (`restore.rs`) and a restore drill (`drill.rs`) both do
//! this; neither imports the other.
//!
//! Every check that fails means the export is not the data that was exported: DATA_LOSS,
//! naming the export or the table.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::archive::ArchiveReader;
use crate::archive::manifest::Manifest;
use crate::archive::verified::VerifiedExport;
use crate::context::Context;
use crate::dataplane::load::{self, DumpReader, Piece, TableLoad};
use crate::dataplane::{Cluster, Container, DataPlaneError, deferred, two_lanes};
use crate::error::ErrorCode;
use crate::operation::ProgressItem;
use crate::sql::Ident;
use crate::tenant_schema::TenantSchema;
use crate::workflow::{StepContext, StepError};

/// Refuses an export the fleet's tenant schema cannot restore: at a version the registry does
/// not hold (its tables cannot be created, nor migrated back), or made with a different text
/// for one of its versions (its tables would not be the ones staged).
pub fn known_schema(m: &Manifest, schema: &TenantSchema) -> Result<(), String> {
    if m.schema_version > schema.latest() {
        return Err(format!(
            "export exports/{} is at tenant-schema version {}, newer than the tenant schema \
             knows ({}); add the newer versions first",
            m.export_id,
            m.schema_version,
            schema.latest()
        ));
    }
    for v in &m.schema {
        let ours = schema.get(v.version).map(|m| m.sha256());
        if ours.as_deref() != Some(v.sha256.as_str()) {
            return Err(format!(
                "export exports/{} was made with tenant-schema version {} ({}, sha256 {}), \
                 which the registry holds with another text (sha256 {}); it cannot be restored \
                 into this fleet",
                m.export_id,
                v.version,
                v.file,
                v.sha256,
                ours.unwrap_or_else(|| "none".into())
            ));
        }
    }
    Ok(())
}

pub fn data_loss(message: String) -> StepError {
    StepError::fatal(ErrorCode::DataLoss, message)
}

/// Reads the whole archive once — every chunk authenticated, both digests compared with the
/// manifest, every COPY block parsed and every row's tenant id checked — counting rows per
/// table, and compares the counts with the manifest. Returns the tables (without row
/// digests: [`load`] digests the rows it hands on). Rows are read as `target`'s.
pub async fn count(
    deps: &Context,
    export: &VerifiedExport,
    target: Uuid,
) -> Result<Vec<TableLoad>, StepError> {
    let (mut pieces, reading) = read_dump(deps, export, target, false).await?;
    while pieces.recv().await.is_some() {}
    let tables = finished(reading).await?;
    let counted: Vec<(&str, u64)> = tables.iter().map(|t| (t.table.as_str(), t.rows)).collect();
    let manifest: Vec<(&str, u64)> = export
        .manifest
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.rows))
        .collect();
    if counted != manifest {
        return Err(data_loss(format!(
            "export exports/{} holds rows {counted:?}, its manifest says {manifest:?}",
            export.row.id
        )));
    }
    Ok(tables)
}

/// Empties `into`'s tables, then streams export `export_id` into them — object → decrypt and
/// decompress → dump reader, on a blocking thread → `COPY … FROM STDIN` on two connections —
/// reporting rows per table as the step's progress, with the rows handed on as the
/// operation's tenant's. The archive's digests are checked again at its end, and its tables
/// must be the `expected` ones ([`count`]). Returns them with each table's row digest.
pub async fn load(
    cx: &StepContext<'_>,
    export_id: Uuid,
    cluster: &Cluster,
    into: &Container,
    expected: &[TableLoad],
) -> Result<Vec<TableLoad>, StepError> {
    let deps = cx.deps;
    load::truncate(cluster, into).await?;
    let export = VerifiedExport::open(deps, export_id).await?;
    let progress = Mutex::new(
        expected
            .iter()
            .map(|t| ProgressItem {
                name: t.table.clone(),
                done: 0,
                total: t.rows as i64,
            })
            .collect::<Vec<_>>(),
    );
    let first = progress.lock().expect("progress").clone();
    cx.progress(&first).await?;
    let (pieces, reading) = read_dump(deps, &export, cx.tenant_id()?, true).await?;
    let loading = load::load(cluster, into, pieces, |table, rows| {
        let mut items = progress.lock().expect("progress");
        if let Some(item) = items.iter_mut().find(|i| i.name == table) {
            item.done = rows as i64;
        }
    });
    tokio::pin!(loading);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    let loaded = loop {
        tokio::select! {
            r = &mut loading => break r,
            _ = tick.tick() => {
                let items = progress.lock().expect("progress").clone();
                cx.progress(&items).await?;
            }
        }
    };
    // A failed load closes the queue, which stops the reader; a damaged archive ends the
    // queue early, which fails the load: report the cause, not the consequence.
    let tables = match (loaded.map_err(refused_rows), finished(reading).await) {
        (Err(e), Err(StepError::Retryable(m))) if m == STOPPED => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(tables)) => tables,
    };
    let shape = |t: &TableLoad| (t.table.clone(), t.columns.clone(), t.rows);
    if !tables.iter().map(shape).eq(expected.iter().map(shape)) {
        return Err(data_loss(format!(
            "export exports/{export_id} changed between its verification and its load"
        )));
    }
    let items = progress.lock().expect("progress").clone();
    cx.progress(&items).await?;
    Ok(tables)
}

/// A row the tables refused while loading (a duplicate of the pool's own key, a check) is not
/// the data that was exported: DATA_LOSS; other errors as they are.
fn refused_rows(e: DataPlaneError) -> StepError {
    match e {
        DataPlaneError::Sql { source, .. } if crate::sqlstate::is_integrity_violation(&source) => {
            data_loss(format!(
                "the restored data breaks a constraint: {source}; nothing was changed"
            ))
        }
        other => other.into(),
    }
}

/// Builds `deferred` (keys, indexes, foreign keys) on `into` after a load of `loaded`. A
/// duplicate key or a dangling reference is not the data that was exported: DATA_LOSS.
pub async fn rebuild(
    cluster: &Cluster,
    into: &Container,
    deferred: &[deferred::Deferred],
    loaded: &[TableLoad],
) -> Result<(), StepError> {
    let rows = |table: &str| {
        let t = loaded.iter().find(|t| t.table == table);
        t.map_or(0, |t| t.rows)
    };
    deferred::rebuild(cluster, into, deferred, rows)
        .await
        .map_err(refused_rows)
}

/// Reads every table of `into` back (two tables at a time) and compares its row count and
/// digest with what [`load`] sent.
pub async fn check(
    cluster: &Cluster,
    into: &Container,
    loaded: &[TableLoad],
) -> Result<(), StepError> {
    let [a, b] = two_lanes(loaded.iter().collect(), |t| t.rows);
    tokio::try_join!(
        check_tables(cluster, into, a),
        check_tables(cluster, into, b)
    )?;
    Ok(())
}

async fn check_tables(
    cluster: &Cluster,
    into: &Container,
    tables: Vec<&TableLoad>,
) -> Result<(), StepError> {
    for t in tables {
        let table = Ident::new(t.table.clone()).map_err(DataPlaneError::from)?;
        let columns = t
            .columns
            .iter()
            .map(|c| Ident::new(c.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(DataPlaneError::from)?;
        let stored = load::read_back(cluster, into, &table, &columns).await?;
        if stored.rows != t.rows || stored.checksum() != t.checksum {
            return Err(data_loss(format!(
                "verification failed for table {table}: the export holds {} rows \
                 (checksum {}), the copy read back {} rows (checksum {}); nothing was \
                 changed",
                t.rows,
                t.checksum,
                stored.rows,
                stored.checksum()
            )));
        }
    }
    Ok(())
}

/// Why the archive reader stopped when its consumer did (the consumer's error is the cause).
const STOPPED: &str = "the load stopped reading the archive";

/// Sealed archive chunks read per request to the object store.
const READ_CHUNK: usize = 256 * 1024;

/// Streams the export's archive — object store → decrypt, decompress, [`DumpReader`] (on a
/// blocking thread: CPU work) — into the returned queue, rows of the exported tenant handed
/// on as `target`'s. The handle ends with the tables read once the archive was authenticated to its
/// end and both digests matched the manifest; a consumer that stops early closes the queue,
/// which stops the reading.
async fn read_dump(
    deps: &Context,
    export: &VerifiedExport,
    target: Uuid,
    digests: bool,
) -> Result<
    (
        mpsc::Receiver<Piece>,
        tokio::task::JoinHandle<Result<Vec<TableLoad>, StepError>>,
    ),
    StepError,
> {
    let source: Uuid = export
        .manifest
        .tenant_id
        .parse()
        .map_err(|_| data_loss("manifest names no tenant id".into()))?;
    let key = export.data_key(deps).await?;
    let mut archive = deps.objects.read(&export.keys.archive).await?;
    let manifest = export.manifest.clone();
    let (sealed_tx, mut sealed_rx) = mpsc::channel::<Vec<u8>>(4);
    let (pieces_tx, pieces_rx) = mpsc::channel::<Piece>(8);
    let fetch = tokio::spawn(async move {
        loop {
            let mut buf = Vec::with_capacity(READ_CHUNK);
            let n = (&mut archive)
                .take(READ_CHUNK as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| StepError::Retryable(format!("reading the archive: {e}")))?;
            if n == 0 || sealed_tx.send(buf).await.is_err() {
                return Ok::<(), StepError>(());
            }
        }
    });
    let decode = tokio::task::spawn_blocking(move || -> Result<Vec<TableLoad>, StepError> {
        let corrupt = |e: &dyn std::fmt::Display| {
            data_loss(format!(
                "export exports/{} is damaged: {e}; nothing was changed",
                manifest.export_id
            ))
        };
        let mut archive = ArchiveReader::for_manifest(&manifest, &key).map_err(|e| corrupt(&e))?;
        let tables = manifest.tables.iter().map(|t| t.table.clone()).collect();
        let mut dump = DumpReader::new(source, target, tables);
        if !digests {
            dump = dump.without_digests();
        }
        let hand_on = |pieces: Vec<Piece>| {
            pieces
                .into_iter()
                .try_for_each(|p| pieces_tx.blocking_send(p).map_err(|_| ()))
        };
        while let Some(sealed) = sealed_rx.blocking_recv() {
            let plain = archive.write(&sealed).map_err(|e| corrupt(&e))?;
            let pieces = dump.feed(&plain).map_err(|e| corrupt(&e))?;
            if hand_on(pieces).is_err() {
                return Err(StepError::Retryable(STOPPED.into()));
            }
        }
        let tail = archive.finish_checked(&manifest).map_err(|e| corrupt(&e))?;
        let pieces = dump.feed(&tail).map_err(|e| corrupt(&e))?;
        if hand_on(pieces).is_err() {
            return Err(StepError::Retryable(STOPPED.into()));
        }
        dump.finish().map_err(|e| corrupt(&e))
    });
    let reading = tokio::spawn(async move {
        let fetched = fetch
            .await
            .map_err(|e| StepError::Retryable(format!("archive reader: {e}")))?;
        let decoded = decode
            .await
            .map_err(|e| StepError::Retryable(format!("archive decoder: {e}")))?;
        // A failed fetch cuts the stream short, which the decoder reports as damage: the
        // fetch's error is the cause.
        fetched?;
        decoded
    });
    Ok((pieces_rx, reading))
}

async fn finished(
    reading: tokio::task::JoinHandle<Result<Vec<TableLoad>, StepError>>,
) -> Result<Vec<TableLoad>, StepError> {
    reading
        .await
        .map_err(|e| StepError::Retryable(format!("archive reader: {e}")))?
}
