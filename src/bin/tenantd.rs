//! `tenantd`: the service. `tenantd serve --config FILE` runs against configured PostgreSQL
//! clusters; `tenantd dev` runs everything locally (embedded PostgreSQL, local keys).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tenantd::config::{ClusterConfig, Config, KeysConfig, WorkflowConfig};
use tenantd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tenantd::sql::Ident;

#[derive(Parser)]
#[command(
    version,
    about = "Tenant lifecycle control plane for multi-tenant PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run against the clusters in a configuration file.
    Serve {
        #[arg(long, env = "TENANTD_CONFIG")]
        config: PathBuf,
    },
    /// Run everything on this machine: an embedded PostgreSQL cluster started from the
    /// installed server binaries, a local key provider, gRPC on 127.0.0.1:50051.
    Dev {
        /// Where the embedded cluster and the master key live.
        #[arg(long, env = "TENANTD_STATE_DIR", default_value = ".tenantd")]
        state_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// PostgreSQL port; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        pg_port: u16,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENANTD_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,tower=warn,h2=warn".into()),
        )
        .init();
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown.cancel();
        });
    }
    match Cli::parse().command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            tenantd::server::run(config, listener, shutdown).await?;
        }
        Command::Dev {
            state_dir,
            listen,
            pg_port,
        } => dev(state_dir, listen, pg_port, shutdown).await?,
    }
    Ok(())
}

async fn dev(
    state_dir: PathBuf,
    listen: std::net::SocketAddr,
    pg_port: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let opts = EmbeddedOptions {
        state_dir: state_dir.clone(),
        port: pg_port,
        ephemeral: false,
    };
    tracing::info!(state_dir = %state_dir.display(), "starting embedded PostgreSQL");
    let pg: EmbeddedPostgres =
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
    let registry_db = Ident::from_static("tenantd_registry");
    tenantd::registry::Registry::create_database_if_missing(&pg.url("postgres"), &registry_db)
        .await?;
    let state_dir = std::fs::canonicalize(&state_dir)?;
    let config = Config {
        listen,
        registry_url: pg.url(registry_db.as_str()),
        clusters: vec![ClusterConfig {
            name: "local".into(),
            admin_url: pg.url("postgres"),
            public_host: None,
            public_port: None,
            shared_database: "tenants".into(),
        }],
        workflow: WorkflowConfig::default(),
        keys: KeysConfig::Local {
            master_key_file: state_dir.join("master.key"),
        },
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "tenantd dev: gRPC on {listen}; PostgreSQL on 127.0.0.1:{} (state in {}).\n\
         Try: tenantctl create acme-health --tier pool",
        pg.port,
        state_dir.display()
    );
    let result = tenantd::server::run(config, listener, shutdown).await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(result?)
}
