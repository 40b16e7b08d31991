//! The embedded default behind `tenantd dev` (and the benchmarks): a private PostgreSQL
//! cluster, the registry database on it, one data-plane cluster `local`, local keys and a
//! local object-store directory, all under one state directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{
    ClusterConfig, Config, KeysConfig, ObjectsConfig, PitrCluster, PitrConfig, WorkflowConfig,
};
use crate::embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use crate::registry::Registry;
use crate::sql::Ident;

pub const REGISTRY_DATABASE: &str = "tenantd_registry";

/// The embedded data-plane cluster's name (and its pgBackRest stanza's).
pub const DEV_CLUSTER: &str = "local";

/// Where `tenantd dev` keeps its admin token, under the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Postgres(#[from] EmbeddedError),
    #[error(transparent)]
    Registry(#[from] crate::error::Error),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running embedded default. Dropping it stops PostgreSQL (a blocking wait: drop it from a
/// blocking context).
pub struct DevStack {
    pub postgres: EmbeddedPostgres,
    pub config: Config,
    pub state_dir: PathBuf,
}

/// Starts PostgreSQL under `state_dir` (created if missing), creates the registry database and
/// returns the configuration that runs tenantd against it. `pitr`: archive the WAL through
/// pgBackRest and take base backups (docs/pitr.md), if pgBackRest is installed.
pub async fn start(
    state_dir: &Path,
    pg_port: u16,
    listen: SocketAddr,
    ephemeral: bool,
    pitr: bool,
) -> Result<DevStack, DevError> {
    std::fs::create_dir_all(state_dir).map_err(|source| DevError::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    let state_dir = std::fs::canonicalize(state_dir).map_err(|source| DevError::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    // Point-in-time restores from the start: WAL archived through pgBackRest (when it is
    // installed; scripts/setup installs it), its files where the server user reaches them.
    let pitr_dir = if pitr && crate::pitr::pgbackrest::installed() {
        Some(crate::embedded::server_files_dir(&state_dir)?.join("pgbackrest"))
    } else {
        if pitr {
            tracing::warn!(
                "pgbackrest is not installed: point-in-time restore is off (scripts/setup installs it)"
            );
        }
        None
    };
    let settings = match &pitr_dir {
        Some(dir) => vec![
            ("archive_mode".to_owned(), "on".to_owned()),
            (
                "archive_command".to_owned(),
                crate::pitr::pgbackrest::archive_command_for(
                    &dir.join(crate::pitr::pgbackrest::CONFIG_FILE),
                    DEV_CLUSTER,
                ),
            ),
        ],
        None => Vec::new(),
    };
    let opts = EmbeddedOptions {
        state_dir: state_dir.clone(),
        port: pg_port,
        ephemeral,
        settings,
        ..Default::default()
    };
    let postgres = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
        .await
        .map_err(|e| EmbeddedError::Failed {
            step: "start postgres",
            detail: e.to_string(),
        })??;
    let registry = Ident::from_static(REGISTRY_DATABASE);
    Registry::create_database_if_missing(&postgres.url("postgres"), &registry).await?;
    let config = Config {
        listen,
        registry_url: postgres.url(REGISTRY_DATABASE),
        clusters: vec![ClusterConfig {
            name: DEV_CLUSTER.into(),
            admin_url: postgres.url("postgres"),
            public_host: None,
            public_port: None,
            shared_database: "tenants".into(),
        }],
        workflow: WorkflowConfig::default(),
        keys: KeysConfig::Local {
            master_key_file: state_dir.join("master.key"),
        },
        objects: ObjectsConfig::Local {
            dir: state_dir.join("objects"),
        },
        aws: Default::default(),
        deletion: Default::default(),
        credentials: Default::default(),
        auth: Default::default(),
        tls: None,
        server: Default::default(),
        limits: Default::default(),
        metrics: Default::default(),
        grpc_web: Default::default(),
        tenant_schema: Default::default(),
        backups: Default::default(),
        pitr: pitr_dir.map(|dir| PitrConfig {
            repo_path: Some(dir.join("repo")),
            s3: None,
            work_dir: dir,
            schedule: "0 1 * * *".into(),
            retention_full: 2,
            clusters: vec![PitrCluster {
                name: DEV_CLUSTER.into(),
                data_dir: postgres.data_dir().to_owned(),
                socket_dir: postgres.socket_dir().to_owned(),
                port: postgres.port,
            }],
        }),
    };
    Ok(DevStack {
        postgres,
        config,
        state_dir,
    })
}

/// The dev admin token: made once per state directory and kept in `admin.token` (mode 0600),
/// so that tenantctl finds it and it survives restarts. Returns the file and the token.
pub fn admin_token(state_dir: &Path) -> Result<(PathBuf, String), DevError> {
    use std::io::Write;
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    let io = |source| DevError::StateDir {
        path: path.clone(),
        source,
    };
    // A token group or others may read is refused (secret_file), not used.
    if let Some(t) = crate::secret_file::read(&path).map_err(io)? {
        let t = String::from_utf8_lossy(&t).trim().to_owned();
        if !t.is_empty() {
            return Ok((path, t));
        }
    }
    let token = crate::auth::new_token();
    let mut f = crate::secret_file::open_new(&path).map_err(io)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
    Ok((path, token))
}
