//! `tenantctl`: the operator CLI for tenantd.

mod audit;
mod backups;
mod certificate;
mod connect;
mod credentials;
mod exports;
mod fleet;
mod operations;
mod schema;
mod tenants;

use audit::AuditCommand;
use backups::{BackupCommand, HoldCommand};
use certificate::CertificateCommand;
use connect::Connection;
use fleet::FleetCommand;
use operations::OperationCommand;
use schema::SchemaCommand;

use clap::{Args, Parser, Subcommand, ValueEnum};

use tenantd::api::pb;
use tenantd::api::pb::audit_service_client::AuditServiceClient;
use tenantd::api::pb::backup_service_client::BackupServiceClient;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;

#[derive(Parser)]
#[command(
    version,
    about = "Operate tenantd: create, inspect and watch tenants and operations"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TierArg {
    Pool,
    Schema,
    Database,
}

impl From<TierArg> for pb::Tier {
    fn from(t: TierArg) -> Self {
        match t {
            TierArg::Pool => pb::Tier::Pool,
            TierArg::Schema => pb::Tier::Schema,
            TierArg::Database => pb::Tier::Database,
        }
    }
}

/// How a command that starts an operation behaves.
#[derive(Args)]
pub struct Start {
    /// Idempotency key; retrying with the same key never starts a second operation.
    #[arg(long, default_value = "")]
    pub request_id: String,
    /// Print the operation and return without watching it.
    #[arg(long)]
    pub no_wait: bool,
}

/// One file per command group; the tenant and export groups are flattened into the top
/// level (`tenantctl create`, `tenantctl restore`).
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Tenants(tenants::Command),
    /// Operations: get, list, watch, cancel.
    #[command(subcommand)]
    Operation(OperationCommand),
    #[command(flatten)]
    Credentials(credentials::Command),
    #[command(flatten)]
    Exports(exports::Command),
    /// Deletion certificates: get, list, and verify offline.
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// The audit log: list a tenant's entries, verify the hash chains.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Fleet migrations of the tenant schema: the fleet's version, rollouts (canaries,
    /// approval, progress, per-target status), retrying one target.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The tenant schema: every version the registry recorded, with checksums and tenants.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Scheduled backups: policies (per tenant or per plan) and a tenant's backup status.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Legal holds: keep a tenant's exports (or one export) past retention and block their
    /// deletion.
    #[command(subcommand)]
    Hold(HoldCommand),
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Offline: no service involved.
    if let Command::Certificate(CertificateCommand::Verify { file, public_key }) = &cli.command {
        return certificate::verify(file, public_key);
    }
    let channel = cli.connection.channel().await?;
    match cli.command {
        Command::Tenants(cmd) => tenants::run(channel, cmd).await?,
        Command::Operation(cmd) => operations::run(channel, cmd).await?,
        Command::Credentials(cmd) => credentials::run(channel, cmd).await?,
        Command::Exports(cmd) => exports::run(channel, cmd).await?,
        Command::Certificate(cmd) => {
            certificate::run(&mut DeletionServiceClient::new(channel), cmd).await?
        }
        Command::Audit(cmd) => audit::run(&mut AuditServiceClient::new(channel), cmd).await?,
        Command::Schema(cmd) => schema::run(&mut FleetServiceClient::new(channel), cmd).await?,
        Command::Backup(cmd) => backups::run(&mut BackupServiceClient::new(channel), cmd).await?,
        Command::Hold(cmd) => backups::hold(&mut BackupServiceClient::new(channel), cmd).await?,
        Command::Fleet(cmd) => {
            let mut ops = OperationServiceClient::new(channel.clone());
            fleet::run(&mut FleetServiceClient::new(channel), &mut ops, cmd).await?
        }
    }
    Ok(())
}

/// Walks a paged listing: `next` yields each page's token (the first is empty) until the
/// server has said, through `advance`, that there is no next page.
#[derive(Default)]
struct Pages {
    next: Option<String>,
    done: bool,
}

impl Pages {
    fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        Some(self.next.take().unwrap_or_default())
    }

    /// Records the page's `next_page_token` ("" on the last page).
    fn advance(&mut self, next_page_token: String) {
        self.done = next_page_token.is_empty();
        self.next = Some(next_page_token);
    }
}

/// Asks `question` on the terminal and reads y/N. Never asks when stdin is not a terminal
/// (scripts pass `--yes` or pipe): the answer is then yes.
/// "1 table", "3 tables".
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {}",
        tenantd::api::audit::code_name(s.code()),
        s.message()
    )
}
