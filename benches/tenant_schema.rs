//! What a supplied tenant schema costs, on the embedded, durable (fsync on) PostgreSQL:
//!
//! 1. **Containers, side by side.** N schemas made the way the previous release's migrator
//!    made them when the schema was compiled in (its statements, replayed: the files and the
//!    bookkeeping in one transaction, then GRANTs on the compiled-in table list) alternate
//!    with N made the way it makes them now (the same files, then tenantd's isolation step,
//!    then grants on the tables read from the catalog). Prints both p50s and the ratio (≤ 1.1 is the
//!    target).
//! 2. **Catalog discovery per call**, for the example container and a 50-table one: reading
//!    the tenant tables in foreign-key order, the isolation check on a container that has it
//!    all, and the dump's DDL read.
//!    The previous release's per-table DDL read is replayed next to today's set-based one.
//! 3. **Operations end to end** (provision in the schema tier, a pool → schema move of a
//!    small tenant, an export), p50, with the catalog discovery each makes beyond what the
//!    previous release did (calls × the cost per call from 2; for a dump, today's DDL read
//!    over the old one's) and the ratio op / (op − discovery): what a compiled-in list would
//!    have saved (≤ 1.1 is the target).
//!
//! Run: `cargo bench --bench tenant_schema` (`TENANTD_BENCH_TENANTS`, default 20, sets N).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use tenantd::api::pb;
use tenantd::dataplane::{Cluster, DataPlane, catalog, ddl, isolation, tables};
use tenantd::sql::Ident;
use tenantd::tenant_schema::TenantSchema;

use common::percentile;

/// The tables the compiled-in list named.
const COMPILED_IN: &[&str] = &[
    "patients",
    "appointment_types",
    "encounters",
    "observations",
    "clinical_notes",
    "appointments",
    "audit_events",
];

/// Catalog discovery calls per operation (tenant-table reads, isolation checks, DDL reads),
/// counted from the code paths: provision migrates twice (`migrate`, `activate`: a check
/// each) and grants (a read); a move prepares and fences the source (two checks, a read),
/// migrates, grants and fences the target (two checks, a read), copies (a read at each end),
/// verifies (a read) and deletes the pool rows (a read); an export reads the tables and the
/// DDL once.
const PROVISION: (u32, u32, u32) = (1, 2, 0);
const MOVE: (u32, u32, u32) = (6, 4, 0);
const EXPORT: (u32, u32, u32) = (1, 0, 1);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TENANTD_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let running = common::start("tenant-schema").await?;
    let stack = &running.stack;
    let mut clients = running.clients.clone();
    let example = Arc::new(TenantSchema::example());
    let dataplane =
        DataPlane::new(&stack.config.clusters, example.clone()).map_err(anyhow::Error::msg)?;
    let cluster = dataplane.cluster(stack.config.default_cluster())?;
    // The shared database exists once a first tenant is provisioned (and the warm-up keeps
    // first-call costs out of the figures).
    clients.provision("bench-ts-warm", pb::Tier::Schema).await?;
    let shared = PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack.postgres.url(cluster.shared_database.as_str()))
        .await?;
    sqlx::raw_sql("DROP ROLE IF EXISTS bench_schema_role; CREATE ROLE bench_schema_role")
        .execute(&shared)
        .await?;
    let role = Ident::from_static("bench_schema_role");

    println!("tenant schema supplied, {n} of each (embedded PostgreSQL, fsync on)");
    println!();
    println!("1. containers, side by side");
    let (mut before, mut now) = (Vec::new(), Vec::new());
    for i in 0..n {
        let old = Ident::new(format!("bench_old_{i}"))?;
        let new = Ident::new(format!("bench_new_{i}"))?;
        before.push(compiled_in_container(&shared, &example, &old, &role).await?);
        now.push(supplied_container(cluster, &shared, &new, &role).await?);
    }
    let (before, now) = (p50(before), p50(now));
    println!(
        "   {:<34} {:>9.1} ms\n   {:<34} {:>9.1} ms\n   {:<34} {:>9.2}",
        "compiled-in migrator, p50",
        ms(before),
        "supplied schema + machinery, p50",
        ms(now),
        "ratio (target <= 1.1)",
        now.as_secs_f64() / before.as_secs_f64()
    );

    println!();
    println!("2. catalog discovery per call, p50");
    let wide = Ident::from_static("bench_wide");
    make_wide(cluster, &shared, &wide, 50).await?;
    let example_container = Ident::new("bench_new_0")?;
    println!(
        "   {:<16} {:>12} {:>14} {:>12}",
        "container", "tables ms", "isolation ms", "ddl ms"
    );
    let mut costs = None;
    for (name, schema) in [("example (7)", &example_container), ("50 tables", &wide)] {
        let c = discovery(cluster, &shared, schema).await?;
        println!(
            "   {:<16} {:>12.2} {:>14.2} {:>12.2}",
            name,
            ms(c.0),
            ms(c.1),
            ms(c.2)
        );
        if costs.is_none() {
            costs = Some(c);
        }
    }
    let costs = costs.expect("measured");
    let before_ddl = compiled_in_ddl(&shared, &example_container).await?;
    println!(
        "   the previous release's per-table DDL read of the example: {:.2} ms \
         (today's set-based read / it: {:.2})",
        ms(before_ddl),
        costs.2.as_secs_f64() / before_ddl.as_secs_f64()
    );
    // What an operation spends beyond what the previous release spent: table reads and
    // isolation checks are new; a dump's DDL read counts only what it costs over the old one.
    let spent = |(reads, checks, ddls): (u32, u32, u32)| {
        costs.0 * reads + costs.1 * checks + costs.2.saturating_sub(before_ddl) * ddls
    };

    println!();
    println!("3. operations end to end (example schema), p50");
    let mut provision = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        ids.push(
            clients
                .provision(&format!("bench-ts-{i}"), pb::Tier::Schema)
                .await?,
        );
        provision.push(started.elapsed());
    }
    let moves = n.min(5);
    let (mut moved, mut exported) = (Vec::new(), Vec::new());
    for i in 0..moves {
        let id = clients
            .provision(&format!("bench-ts-pool-{i}"), pb::Tier::Pool)
            .await?;
        common::fill(&shared, "pool", id, 1_000).await?;
        let started = Instant::now();
        clients.change_tier(id, pb::Tier::Schema).await?;
        moved.push(started.elapsed());
        let started = Instant::now();
        clients.export(id).await?;
        exported.push(started.elapsed());
    }
    println!(
        "   {:<22} {:>9} {:>14} {:>22}",
        "operation", "p50 ms", "discovery ms", "op/(op-discovery)"
    );
    for (name, took, calls) in [
        ("provision (schema)", p50(provision), PROVISION),
        ("pool -> schema move", p50(moved), MOVE),
        ("export", p50(exported), EXPORT),
    ] {
        let d = spent(calls);
        println!(
            "   {:<22} {:>9.1} {:>14.2} {:>22.3}",
            name,
            ms(took),
            ms(d),
            took.as_secs_f64() / (took - d).as_secs_f64()
        );
    }
    running.stop().await
}

/// A container as the compiled-in migrator made it (the previous release's `migrate_with`
/// and `grant_tables`, statement for statement): the lock, the files and bookkeeping in one
/// transaction; then the grant checks and one serialised transaction per GRANT on the
/// compiled-in list.
async fn compiled_in_container(
    pool: &PgPool,
    schema_files: &TenantSchema,
    schema: &Ident,
    role: &Ident,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let s = schema.to_string();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {s}")))
        .execute(pool)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', '10000ms', true)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("tenantd:migrate:{}", schema.as_str()))
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL search_path TO {s}")))
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {s}.tenant_schema_migrations (version integer PRIMARY KEY,
             name text NOT NULL, checksum text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await?;
    let _: Vec<(i32, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, checksum FROM {s}.tenant_schema_migrations ORDER BY version"
    )))
    .fetch_all(&mut *tx)
    .await?;
    for m in schema_files.migrations() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.clone()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {s}.tenant_schema_migrations (version, name, checksum) \
             VALUES ($1, $2, $3)"
        )))
        .bind(m.version)
        .bind(&m.name)
        .bind(m.sha256())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let _: (bool,) = sqlx::query_as(
        "SELECT has_schema_privilege($1, n.oid, 'USAGE')
                AND count(c.oid) = cardinality($3::text[])
                AND coalesce(bool_and(has_table_privilege($1, c.oid, 'SELECT')
                                      AND has_table_privilege($1, c.oid, 'INSERT')
                                      AND has_table_privilege($1, c.oid, 'UPDATE')
                                      AND has_table_privilege($1, c.oid, 'DELETE')), false)
         FROM pg_namespace n
         LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = ANY($3::text[])
         WHERE n.nspname = $2
         GROUP BY n.oid",
    )
    .bind(role.as_str())
    .bind(schema.as_str())
    .bind(COMPILED_IN)
    .fetch_one(pool)
    .await?;
    let _: Option<bool> = sqlx::query_scalar(
        "SELECT has_table_privilege($1, c.oid, 'SELECT') FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $2 AND c.relname = $3",
    )
    .bind(role.as_str())
    .bind(schema.as_str())
    .bind("tenant_write_fences")
    .fetch_optional(pool)
    .await?;
    let list: Vec<String> = COMPILED_IN.iter().map(|t| format!("{s}.{t}")).collect();
    for grant in [
        format!("GRANT SELECT ON TABLE {s}.tenant_write_fences TO {role}"),
        format!("GRANT USAGE ON SCHEMA {s} TO {role}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {role}",
            list.join(", ")
        ),
    ] {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("tenantd:schema-acl:{}", schema.as_str()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(grant))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

/// A container as tenantd makes it now.
async fn supplied_container(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    role: &Ident,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(pool)
        .await?;
    let latest = cluster.tenant_schema().latest();
    anyhow::ensure!(catalog::migrate(cluster, pool, schema, latest).await? == latest);
    catalog::grant_tables(cluster, pool, schema, role).await?;
    Ok(started.elapsed())
}

/// `tables` tables chained by foreign keys, secured as tenantd secures a container.
async fn make_wide(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    tables: usize,
) -> anyhow::Result<()> {
    let mut sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};");
    for i in 1..=tables {
        let parent = if i == 1 {
            String::new()
        } else {
            format!(
                ", parent bigint, FOREIGN KEY (tenant_id, parent) REFERENCES {schema}.t{:02}",
                i - 1
            )
        };
        sql.push_str(&format!(
            "CREATE TABLE {schema}.t{i:02} (tenant_id uuid NOT NULL, id bigint NOT NULL,
                 name text, created_at timestamptz DEFAULT now(){parent},
                 PRIMARY KEY (tenant_id, id));"
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await?;
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    isolation::ensure(cluster, &mut tx, schema).await?;
    tx.commit().await?;
    Ok(())
}

/// The previous release's DDL read for a dump (its statements, replayed): the compiled-in
/// tables present, then columns, constraints and indexes one table at a time.
async fn compiled_in_ddl_read(
    conn: &mut sqlx::PgConnection,
    schema: &Ident,
) -> anyhow::Result<usize> {
    let present: Vec<(String, sqlx::postgres::types::Oid)> = sqlx::query_as(
        "SELECT c.relname::text, c.oid FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')",
    )
    .bind(schema.as_str())
    .bind(COMPILED_IN)
    .fetch_all(&mut *conn)
    .await?;
    for (_, oid) in &present {
        let _: Vec<(String, String, bool, Option<String>)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
             FROM pg_attribute a
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
        let _: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT conname::text, contype::text, pg_get_constraintdef(oid, true)
             FROM pg_constraint WHERE conrelid = $1 AND contype IN ('c', 'p', 'u', 'f')
             ORDER BY contype DESC, conname",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
        let _: Vec<(String, bool, String)> = sqlx::query_as(
            "SELECT i.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid)
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             WHERE x.indrelid = $1 AND NOT EXISTS (
                 SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid
                   AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
             ORDER BY i.relname",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
    }
    Ok(present.len())
}

/// p50 of the previous release's DDL read of the example container.
async fn compiled_in_ddl(pool: &PgPool, schema: &Ident) -> anyhow::Result<Duration> {
    let mut conn = pool.acquire().await?;
    let mut took = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        anyhow::ensure!(compiled_in_ddl_read(&mut conn, schema).await? == COMPILED_IN.len());
        took.push(started.elapsed());
    }
    Ok(p50(took))
}

/// p50 of reading the tenant tables, the isolation check, and the DDL read of `schema`.
async fn discovery(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    const RUNS: usize = 100;
    let mut conn = pool.acquire().await?;
    let (mut read, mut check, mut dump) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let started = Instant::now();
        let found = tables::names_in(&mut *conn, schema.as_str()).await?;
        read.push(started.elapsed());
        anyhow::ensure!(!found.is_empty());

        let mut tx = conn.begin().await?;
        let started = Instant::now();
        let wrote = isolation::ensure(cluster, &mut tx, schema).await?;
        check.push(started.elapsed());
        anyhow::ensure!(!wrote, "{schema} was secured already");
        tx.commit().await?;

        let mut tx = conn.begin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET LOCAL search_path TO {schema}"
        )))
        .execute(&mut *tx)
        .await?;
        let started = Instant::now();
        let d = ddl::read(cluster, &mut tx, schema).await?;
        dump.push(started.elapsed());
        anyhow::ensure!(d.tables.len() == found.len());
        tx.rollback().await?;
    }
    Ok((p50(read), p50(check), p50(dump)))
}
