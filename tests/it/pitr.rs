//! Physical backups and WAL archiving through pgBackRest (docs/pitr.md), on a cluster of the
//! test's own with archiving on: a base backup, rows written, a moment T, more rows, and a
//! copy of the cluster restored at T into a side cluster on a private socket shows the rows
//! exactly as at T; the side cluster's directory is gone once it is dropped; a moment before
//! the oldest backup or in the future is refused. And `tenantd serve` with `[pitr]` creates
//! the stanza, checks archiving and takes a first base backup at start, recorded for the
//! slot due then so no replica takes it again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;

use tenantd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tenantd::pitr::pgbackrest::{PgBackRest, Repository, Stanza};
use tenantd::pitr::side::SideCluster;

/// A cluster archiving through pgBackRest into a repository under `dir`.
fn archiving_cluster(dir: &std::path::Path) -> (EmbeddedPostgres, PgBackRest) {
    let repo = Repository {
        path: dir.join("repo"),
        retention_full: 2,
    };
    // The configuration names the cluster's data directory and socket, known only once it
    // exists: start it once to lay it out, configure, then start it archiving.
    let first = EmbeddedPostgres::start(&EmbeddedOptions {
        state_dir: dir.join("cluster"),
        ..Default::default()
    })
    .unwrap();
    let stanza = |pg: &EmbeddedPostgres| Stanza {
        name: "main".into(),
        pg_path: pg.data_dir().to_owned(),
        pg_port: pg.port,
        pg_socket: pg.socket_dir().to_owned(),
        password: password(&pg.url("postgres")),
    };
    let port = first.port;
    let s = stanza(&first);
    drop(first);
    let pgbackrest = PgBackRest::configure(&dir.join("work"), &repo, vec![s]).unwrap();
    let pg = EmbeddedPostgres::start(&EmbeddedOptions {
        state_dir: dir.join("cluster"),
        port,
        settings: vec![
            ("archive_mode".into(), "on".into()),
            ("archive_command".into(), pgbackrest.archive_command("main")),
        ],
        ..Default::default()
    })
    .unwrap();
    (pg, pgbackrest)
}

/// Removes the test's directory whatever the outcome (after the clusters in it stopped).
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn password(url: &str) -> String {
    url.strip_prefix("postgres://postgres:")
        .and_then(|rest| rest.split_once('@'))
        .map(|(pw, _)| pw.to_owned())
        .unwrap()
}

async fn count(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM visits")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_at_a_moment_holds_the_rows_of_that_moment() {
    let _one = crate::harness::one_at_a_time().await;
    let dir = std::env::temp_dir().join(format!("tenantd-pitr-{}", uuid::Uuid::new_v4().simple()));
    let _removed = Removed(dir.clone());
    let (pg, pgbackrest) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || archiving_cluster(&dir))
            .await
            .unwrap()
    };
    pgbackrest.ensure_stanza("main").await.unwrap();
    pgbackrest.backup("main", true).await.unwrap();
    let held = pgbackrest.holdings("main").await.unwrap();
    assert_eq!(held.backups.len(), 1, "{held:?}");
    assert_eq!(held.backups[0].kind, "full");

    // pgBackRest records a backup's end to the second: a moment to restore to comes after.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let url = pg.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE visits (id int PRIMARY KEY); INSERT INTO visits SELECT generate_series(1, 100)")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (t,): (DateTime<Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sqlx::raw_sql("INSERT INTO visits SELECT generate_series(101, 150)")
        .execute(&mut conn)
        .await
        .unwrap();
    // A commit after T and the WAL holding it archived: what recovery to T needs.
    tenantd::pitr::seal(&mut conn, Duration::from_secs(60))
        .await
        .unwrap();

    let side_dir = dir.join("side");
    let side = SideCluster::restore(&pgbackrest, "main", t, &side_dir, &[], &password(&url))
        .await
        .unwrap();
    assert_eq!(count(&side.url("postgres")).await, 100);
    assert!(
        !side.url("postgres").contains("127.0.0.1"),
        "a side cluster is reached by socket only"
    );
    drop(side);
    assert!(
        !side_dir.exists(),
        "the side cluster's directory is removed"
    );
    assert_eq!(count(&url).await, 150, "the source is untouched");

    // Refused: before the oldest backup, and the future.
    let held = pgbackrest.holdings("main").await.unwrap();
    let now = Utc::now();
    assert!(held.reaches(t, now).is_ok(), "{held:?} {t}");
    assert!(
        held.reaches(held.backups[0].started - chrono::TimeDelta::hours(1), now)
            .is_err()
    );
    assert!(
        held.reaches(now + chrono::TimeDelta::minutes(5), now)
            .is_err()
    );
    drop(pg);
}

/// A `base_backups` row: slot, finished_at, error.
type BaseBackupRow = (DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenantd_with_pitr_takes_a_first_base_backup_at_start() {
    let _one = crate::harness::one_at_a_time().await;
    let dir = std::env::temp_dir().join(format!("tenantd-pitr-{}", uuid::Uuid::new_v4().simple()));
    let _removed = Removed(dir.clone());
    let work = dir.join("work");
    let config_file = work.join(tenantd::pitr::pgbackrest::CONFIG_FILE);
    // The cluster archives through the configuration tenantd will write at start.
    let pg = {
        let (dir, config_file) = (dir.clone(), config_file.clone());
        tokio::task::spawn_blocking(move || {
            EmbeddedPostgres::start(&EmbeddedOptions {
                state_dir: dir.join("cluster"),
                settings: vec![
                    ("archive_mode".into(), "on".into()),
                    (
                        "archive_command".into(),
                        tenantd::pitr::pgbackrest::archive_command_for(&config_file, "archived"),
                    ),
                ],
                ..Default::default()
            })
            .unwrap()
        })
        .await
        .unwrap()
    };
    let (mut config, env_dir) = crate::harness::TestEnv::config().await;
    config.clusters.push(tenantd::config::ClusterConfig {
        name: "archived".into(),
        admin_url: pg.url("postgres"),
        public_host: None,
        public_port: None,
        shared_database: "tenants".into(),
    });
    let pitr = tenantd::config::PitrConfig {
        repo_path: dir.join("repo"),
        work_dir: work.clone(),
        schedule: "0 1 * * *".into(),
        retention_full: 2,
        clusters: vec![tenantd::config::PitrCluster {
            name: "archived".into(),
            data_dir: pg.data_dir().to_owned(),
            socket_dir: pg.socket_dir().to_owned(),
            port: pg.port,
        }],
    };
    config.pitr = Some(pitr.clone());
    let env = crate::harness::TestEnv::start_with(config.clone(), env_dir).await;

    // The first backup is recorded against the slot due at start (today's 01:00).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (slot, error) = loop {
        let row: Option<BaseBackupRow> = sqlx::query_as(
            "SELECT slot, finished_at, error FROM base_backups WHERE cluster = 'archived'",
        )
        .fetch_optional(&env.registry)
        .await
        // The in-process server may still be migrating the registry.
        .unwrap_or(None);
        if let Some((slot, Some(_), error)) = row {
            break (slot, error);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no first base backup within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(error, None);
    let schedule = tenantd::backup::Schedule::parse("schedule", "0 1 * * *").unwrap();
    assert_eq!(Some(slot), schedule.latest_at_or_before(Utc::now()));
    let pgbackrest = tenantd::pitr::configure(&pitr, &config.clusters).unwrap();
    let held = pgbackrest.holdings("archived").await.unwrap();
    assert_eq!(held.backups.len(), 1, "{held:?}");
    assert!(
        held.archive.is_some(),
        "WAL reaches the repository: {held:?}"
    );
    drop(env);
    drop(pg);
}
