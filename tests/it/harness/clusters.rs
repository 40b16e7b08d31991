//! The run's two throwaway PostgreSQL clusters (started once, stopped when the test process
//! exits), and superuser connections to them.

use std::path::PathBuf;
use std::sync::OnceLock;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use tenantd::embedded::{EmbeddedOptions, EmbeddedPostgres};

pub struct Clusters {
    pub main: EmbeddedPostgres,
    pub second: EmbeddedPostgres,
}

/// The run's two clusters: `main` (registry, pool and schema tiers) and `second`.
pub fn clusters() -> &'static Clusters {
    static CLUSTERS: OnceLock<Clusters> = OnceLock::new();
    CLUSTERS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("tenantd-it-{}", std::process::id()));
        let start = |name: &str| {
            EmbeddedPostgres::start(&EmbeddedOptions {
                state_dir: base.join(name),
                port: 0,
                ephemeral: true,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("cannot start test cluster {name}: {e}"))
        };
        // Remove clusters left by earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("tenantd-it-")
                    && !PathBuf::from(format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Clusters {
            main: start("main"),
            second: start("second"),
        }
    })
}

pub fn cluster_url(cluster: &str, db: &str) -> String {
    let c = clusters();
    match cluster {
        "main" => c.main.url(db),
        "second" => c.second.url(db),
        other => panic!("no test cluster {other}"),
    }
}

/// Runs the real psql as the superuser on `db` of `cluster` with `args`, stopping at the
/// first error; panics with psql's message if it fails.
pub fn psql(cluster: &str, db: &str, args: &[&str]) {
    let out = std::process::Command::new("psql")
        .arg(cluster_url(cluster, db))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A superuser pool on `db` of `cluster` (bypasses RLS: for setting up and inspecting).
pub async fn admin(cluster: &str, db: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster_url(cluster, db))
        .await
        .expect("admin connection")
}

pub async fn admin_conn(cluster: &str, db: &str) -> PgConnection {
    PgConnection::connect(&cluster_url(cluster, db))
        .await
        .expect("admin connection")
}
