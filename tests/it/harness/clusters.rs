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

/// Where the `archived` cluster's pgBackRest files go: tenantd writes its configuration
/// there at start (the same for every test environment), the repository beside it.
fn archived_base() -> PathBuf {
    std::env::temp_dir()
        .join(format!("tenantd-it-{}", std::process::id()))
        .join("archived-pitr")
}

/// A third cluster, `archived`, that archives its WAL through pgBackRest (docs/pitr.md),
/// for point-in-time restores; started on first use. Tests using it take
/// [`super::one_at_a_time`]: they share its stanza.
pub fn archived() -> &'static EmbeddedPostgres {
    static ARCHIVED: OnceLock<EmbeddedPostgres> = OnceLock::new();
    ARCHIVED.get_or_init(|| {
        clusters();
        let base = archived_base();
        let config_file = base
            .join("work")
            .join(tenantd::pitr::pgbackrest::CONFIG_FILE);
        EmbeddedPostgres::start(&archiving(&base.join("cluster"), &config_file, "archived"))
            .unwrap_or_else(|e| panic!("cannot start the archiving test cluster: {e}"))
    })
}

/// A cluster under `state_dir` that archives its WAL through pgBackRest as stanza `stanza`
/// of the configuration at `config_file` (written later, by tenantd at start).
pub fn archiving(
    state_dir: &std::path::Path,
    config_file: &std::path::Path,
    stanza: &str,
) -> EmbeddedOptions {
    EmbeddedOptions {
        state_dir: state_dir.to_owned(),
        settings: vec![
            ("archive_mode".into(), "on".into()),
            (
                "archive_command".into(),
                tenantd::pitr::pgbackrest::archive_command_for(config_file, stanza),
            ),
        ],
        ..Default::default()
    }
}

/// `[pitr]` for the `archived` cluster.
pub fn archived_pitr() -> tenantd::config::PitrConfig {
    pitr_for(archived(), &archived_base())
}

/// `[pitr]` for cluster `pg` (named `archived`), its repository and work directory under
/// `base`.
pub fn pitr_for(pg: &EmbeddedPostgres, base: &std::path::Path) -> tenantd::config::PitrConfig {
    tenantd::config::PitrConfig {
        repo_path: Some(base.join("repo")),
        s3: None,
        work_dir: base.join("work"),
        schedule: "0 1 * * *".into(),
        retention_full: 2,
        clusters: vec![tenantd::config::PitrCluster {
            name: "archived".into(),
            data_dir: pg.data_dir().to_owned(),
            socket_dir: pg.socket_dir().to_owned(),
            port: pg.port,
        }],
    }
}

pub fn cluster_url(cluster: &str, db: &str) -> String {
    let c = clusters();
    match cluster {
        "main" => c.main.url(db),
        "second" => c.second.url(db),
        "archived" => archived().url(db),
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
