//! `tenantd`: the service. `tenantd serve --config FILE` runs against configured PostgreSQL
//! clusters; `tenantd dev` runs everything locally (embedded PostgreSQL, local keys).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tenantd::config::Config;

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
    tracing::info!(state_dir = %state_dir.display(), "starting embedded PostgreSQL");
    let stack = tenantd::dev::start(&state_dir, pg_port, listen, false).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "tenantd dev: gRPC on {listen}; PostgreSQL on 127.0.0.1:{} (state in {}).\n\
         Try: tenantctl create acme-health --tier pool",
        stack.postgres.port,
        stack.state_dir.display()
    );
    let result = tenantd::server::run(stack.config.clone(), listener, shutdown).await;
    tokio::task::spawn_blocking(move || drop(stack)).await?;
    Ok(result?)
}
