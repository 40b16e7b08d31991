//! `tenantd`: the service. `tenantd serve --config FILE` runs against configured PostgreSQL
//! clusters; `tenantd dev` runs everything locally (embedded PostgreSQL, local keys).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tenantd::auth::Role;
use tenantd::config::{AuthConfig, Config, TokenConfig};

#[derive(Parser)]
#[command(
    version,
    about = "Tenant lifecycle control plane for multi-tenant PostgreSQL"
)]
struct Cli {
    /// Log lines as text for people, or as one JSON object per line for log pipelines.
    #[arg(
        long,
        env = "TENANTD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Accept calls without credentials (as an admin). Only on a loopback address; by
        /// default dev generates an admin token, prints it and keeps it in STATE_DIR/admin.token.
        #[arg(long)]
        insecure_no_auth: bool,
        /// Your tenant schema: a directory of NNNN_name.sql migrations (and NNNN_name.seed.sql
        /// reference rows). Default: the example that ships with tenantd (examples/healthcare).
        #[arg(long, value_name = "DIR")]
        tenant_schema: Option<PathBuf>,
    },
    /// Bearer tokens for `[[auth.tokens]]`.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new token: prints it once, and the configuration entry that holds only its hash.
    New {
        /// The principal written to the audit log for calls made with it.
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Only with --role application: the tenants it may reach, by label
        /// (`region=eu`; comma-separated pairs that must all match).
        #[arg(long)]
        tenants: Option<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "admin" => Ok(Role::Admin),
        "billing" => Ok(Role::Billing),
        "compliance" => Ok(Role::Compliance),
        "viewer" => Ok(Role::Viewer),
        "application" => Ok(Role::Application),
        _ => Err("one of admin, billing, compliance, viewer, application".into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Flushes traces when main returns.
    let _telemetry = tenantd::telemetry::init(matches!(cli.log_format, LogFormat::Json))?;
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
    match cli.command {
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
            metrics_listen,
            insecure_no_auth,
            tenant_schema,
        } => {
            let options = DevOptions {
                metrics_listen,
                insecure_no_auth,
                tenant_schema,
            };
            dev(state_dir, listen, pg_port, options, shutdown).await?
        }
        Command::Token(TokenCommand::New {
            name,
            role,
            tenants,
        }) => {
            let token = tenantd::auth::new_token();
            let entry = TokenConfig {
                name,
                role,
                sha256: tenantd::auth::token_hash(&token),
                tenants,
            };
            tenantd::auth::Authenticator::new(&AuthConfig {
                tokens: vec![entry.clone()],
                ..Default::default()
            })?;
            eprintln!("token (shown once; give it to the caller, keep it out of logs):");
            println!("{token}");
            eprintln!(
                "\nadd to the configuration:\n\n[[auth.tokens]]\nname = {:?}\nrole = \"{}\"\nsha256 = \"{}\"{}",
                entry.name,
                entry.role,
                entry.sha256,
                entry
                    .tenants
                    .as_ref()
                    .map(|t| format!("\ntenants = {t:?}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

struct DevOptions {
    metrics_listen: Option<std::net::SocketAddr>,
    insecure_no_auth: bool,
    tenant_schema: Option<PathBuf>,
}

async fn dev(
    state_dir: PathBuf,
    listen: std::net::SocketAddr,
    pg_port: u16,
    DevOptions {
        metrics_listen,
        insecure_no_auth,
        tenant_schema,
    }: DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if insecure_no_auth && !listen.ip().is_loopback() {
        anyhow::bail!("--insecure-no-auth is refused on {listen}: only on a loopback address");
    }
    tracing::info!(state_dir = %state_dir.display(), "starting embedded PostgreSQL");
    let mut stack = tenantd::dev::start(&state_dir, pg_port, listen, false, true).await?;
    stack.config.metrics.listen = metrics_listen;
    stack.config.tenant_schema.dir = tenant_schema;
    let access = if insecure_no_auth {
        stack.config.auth.allow_unauthenticated = true;
        "no credentials needed (--insecure-no-auth)".to_owned()
    } else {
        let (token_file, token) = tenantd::dev::admin_token(&stack.state_dir)?;
        stack.config.auth.tokens.push(TokenConfig {
            name: "dev-admin".into(),
            role: Role::Admin,
            sha256: tenantd::auth::token_hash(&token),
            tenants: None,
        });
        format!(
            "admin token {token}\n(kept in {}; tenantctl reads it from there)",
            token_file.display()
        )
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let password_file = stack.state_dir.join("superuser.password");
    println!(
        "tenantd dev: gRPC on {listen}; PostgreSQL on 127.0.0.1:{port} (state in {}).\n\
         Access: {access}\n\
         psql as the superuser: PGPASSWORD=\"$(cat {})\" psql -h 127.0.0.1 -p {port} -U postgres tenants\n\
         Try: tenantctl create acme-health --tier pool",
        stack.state_dir.display(),
        password_file.display(),
        port = stack.postgres.port,
    );
    let result = tenantd::server::run(stack.config.clone(), listener, shutdown).await;
    tokio::task::spawn_blocking(move || drop(stack)).await?;
    Ok(result?)
}
