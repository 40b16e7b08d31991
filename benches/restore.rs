//! Restore throughput: a tenant holding N rows (default 1,000,000, or `TENANTD_BENCH_ROWS`)
//! across the healthcare tables is exported, then restored from that export, on an embedded,
//! durable PostgreSQL with the local key service and object store. For each case it prints
//!
//! - the whole restore operation's time (request to SUCCEEDED: the verification pass over the
//!   archive, the load, the read-back check, migration, grants, fence, swap and cleanup), its
//!   throughput in MB/s of tenant rows (text form) and rows/s, and each step's time;
//! - the ratio to `psql -f` of the same export, decrypted beforehand (not timed), into an
//!   empty database of the same cluster, timed in the same run: ≥ 1.0 means the restore,
//!   which also decrypts, verifies twice and swaps atomically, is at least as fast. Best of
//!   two runs on each side (the pool restore, slow by nature, runs once).
//!
//! Run: `cargo bench --bench restore`

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use sqlx::postgres::PgPoolOptions;

use tenantd::api::pb;
use tenantd::archive::ArchiveReader;
use tenantd::archive::manifest::Manifest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = common::rows();
    let running = common::start("restore").await?;
    let mut c = running.clients.clone();
    let url = |db: &str| running.stack.postgres.url(db);

    let (tenant, _, _, mb) = common::big_schema_tenant(&running, "big", rows).await?;
    let export = c.export(tenant).await?;

    // The baseline: the same dump, decrypted, loaded by psql -f into an empty database.
    let sql =
        std::env::temp_dir().join(format!("tenantd-bench-restore-{}.sql", std::process::id()));
    decrypt(&mut c, &export.name, &sql).await?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url("postgres"))
        .await?;
    let mut psql = f64::MAX;
    for _ in 0..2 {
        sqlx::raw_sql("CREATE DATABASE bench_psql_restore")
            .execute(&admin)
            .await?;
        let started = Instant::now();
        let out = Command::new("psql")
            .arg(url("bench_psql_restore"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&sql)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "psql -f failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        psql = psql.min(started.elapsed().as_secs_f64());
        sqlx::raw_sql("DROP DATABASE bench_psql_restore")
            .execute(&admin)
            .await?;
    }
    std::fs::remove_file(&sql)?;

    println!();
    println!(
        "restore of a {rows}-row export ({mb:.1} MB of tenant rows); psql -f {psql:.2} s \
         (best of 2)"
    );
    let in_place = || pb::RestoreTenantRequest {
        export: export.name.clone(),
        mode: pb::RestoreMode::InPlace as i32,
        ..Default::default()
    };
    let as_new = |slug: &str, tier: pb::Tier| pb::RestoreTenantRequest {
        export: export.name.clone(),
        mode: pb::RestoreMode::AsNewTenant as i32,
        new_slug: slug.into(),
        tier: tier as i32,
        ..Default::default()
    };
    for (what, requests) in [
        ("in place, schema tier", vec![in_place(), in_place()]),
        (
            "as a new tenant, database tier",
            vec![
                as_new("big-db-1", pb::Tier::Database),
                as_new("big-db-2", pb::Tier::Database),
            ],
        ),
        // Slow by nature (see docs/restore.md): one run.
        (
            "as a new tenant, pool tier",
            vec![as_new("big-pool", pb::Tier::Pool)],
        ),
    ] {
        let runs = requests.len();
        let mut best: Option<(f64, pb::Operation)> = None;
        for request in requests {
            let started = Instant::now();
            let op = c.exports.restore_tenant(request).await?.into_inner();
            let op = c.wait(op.name).await?;
            let secs = started.elapsed().as_secs_f64();
            anyhow::ensure!(
                matches!(op.result, Some(pb::operation::Result::Tenant(_))),
                "restore failed: {:?}",
                op.result
            );
            if best.as_ref().is_none_or(|(b, _)| secs < *b) {
                best = Some((secs, op));
            }
        }
        let (secs, op) = best.expect("one run at least");
        println!(
            "  {what}: {secs:.2} s (best of {runs}) = {:.1} MB/s, {:.0} rows/s; ratio to \
             psql -f {:.2} (target >= 1.0)",
            mb / secs,
            rows as f64 / secs,
            psql / secs
        );
        let steps: Vec<String> = op
            .metadata
            .unwrap_or_default()
            .steps
            .iter()
            .map(|s| format!("{} {:.2}", s.name, step_secs(s)))
            .collect();
        println!("    steps (s): {}", steps.join(", "));
    }
    running.stop().await
}

fn step_secs(s: &pb::Step) -> f64 {
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (at(&s.start_time), at(&s.end_time)) {
        (Some(a), Some(b)) => (b - a).as_seconds_f64(),
        _ => 0.0,
    }
}

/// Reads the export through ReadExport and writes its SQL to `out`, checked end to end.
async fn decrypt(c: &mut common::Clients, name: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let public = c
        .exports
        .get_signing_key(pb::GetSigningKeyRequest {})
        .await?
        .into_inner();
    let spki = tenantd::keys::public_key_from_pem(&public.public_key_pem)?;
    let mut stream = c
        .exports
        .read_export(pb::ReadExportRequest { name: name.into() })
        .await?
        .into_inner();
    let Some(pb::ReadExportResponse {
        part: Some(pb::read_export_response::Part::Header(header)),
    }) = stream.message().await?
    else {
        anyhow::bail!("no export header");
    };
    let manifest = Manifest::verified(&header.manifest, &header.signature, &spki)?;
    let key: [u8; 32] = header.data_key.as_slice().try_into()?;
    let mut reader = ArchiveReader::for_manifest(&manifest, &key)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    while let Some(msg) = stream.message().await? {
        if let Some(pb::read_export_response::Part::Chunk(chunk)) = msg.part {
            file.write_all(&reader.write(&chunk)?)?;
        }
    }
    file.write_all(&reader.finish_checked(&manifest)?)?;
    file.flush()?;
    Ok(())
}
