//! The embedded default behind `tenantd dev` (and the benchmarks): a private PostgreSQL
//! cluster, the registry database on it, one data-plane cluster `local`, local keys and a
//! local object-store directory, all under one state directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{ClusterConfig, Config, KeysConfig, ObjectsConfig, WorkflowConfig};
use crate::embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use crate::registry::Registry;
use crate::sql::Ident;

pub const REGISTRY_DATABASE: &str = "tenantd_registry";

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
/// returns the configuration that runs tenantd against it.
pub async fn start(
    state_dir: &Path,
    pg_port: u16,
    listen: SocketAddr,
    ephemeral: bool,
) -> Result<DevStack, DevError> {
    std::fs::create_dir_all(state_dir).map_err(|source| DevError::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    let state_dir = std::fs::canonicalize(state_dir).map_err(|source| DevError::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    let opts = EmbeddedOptions {
        state_dir: state_dir.clone(),
        port: pg_port,
        ephemeral,
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
            name: "local".into(),
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
