//! `tenantctl`: the operator CLI for tenantd.

mod audit;
mod certificate;
mod connect;
mod fleet;

use audit::AuditCommand;
use certificate::CertificateCommand;
use connect::Connection;
use fleet::FleetCommand;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use tenantd::api::pb;
use tenantd::api::pb::audit_service_client::AuditServiceClient;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::export_service_client::ExportServiceClient;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::client::AuthChannel;

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
enum TierArg {
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
struct Start {
    /// Idempotency key; retrying with the same key never starts a second operation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Print the operation and return without watching it.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Provision a tenant and watch the operation until it is done.
    Create {
        slug: String,
        #[arg(long, value_enum)]
        tier: TierArg,
        #[arg(long, default_value = "")]
        display_name: String,
        #[arg(long, default_value = "")]
        plan: String,
        /// key=value, repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Cluster to place the tenant on (default: the first configured).
        #[arg(long, default_value = "")]
        cluster: String,
        #[command(flatten)]
        start: Start,
    },
    /// Move a tenant to another tier (or cluster) and watch the move: per-table copy
    /// progress, then the write pause the tenant saw.
    ChangeTier {
        /// Tenant id or slug.
        tenant: String,
        #[arg(long, value_enum)]
        tier: TierArg,
        /// Cluster to move to (default: the tenant's current cluster).
        #[arg(long, default_value = "")]
        cluster: String,
        #[command(flatten)]
        start: Start,
    },
    /// Show a tenant (by id or slug).
    Get { tenant: String },
    /// List tenants.
    List {
        #[arg(long, value_enum)]
        tier: Option<TierArg>,
        #[arg(long, default_value_t = 50)]
        page_size: i32,
    },
    /// Show how an application connects to a tenant.
    Resolve { tenant: String },
    /// Operations: get, list, watch, wait, cancel.
    #[command(subcommand)]
    Operation(OperationCommand),
    /// Exports: create, list, show, and download (verified and decrypted).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Print the public key that signs export manifests (PEM), to pin it for `export get`
    /// and for offline checks with openssl.
    SigningKey,
    /// Delete a tenant everywhere and watch it; the result is a signed deletion certificate
    /// (written to --certificate-out). A failed deletion leaves the tenant deleting: run the
    /// same command again to finish it.
    Delete {
        /// Tenant id or slug.
        tenant: String,
        /// Why (recorded in the certificate).
        #[arg(long)]
        reason: String,
        /// Who asked (recorded in the certificate).
        #[arg(long)]
        requested_by: String,
        /// Ticket or case reference (recorded in the certificate).
        #[arg(long, default_value = "")]
        ticket: String,
        /// Export the tenant for handing over first (kept outside the deletion).
        #[arg(long)]
        final_export: bool,
        /// Days the tenant key stays pending deletion, 7-30 (default: the server's).
        #[arg(long, default_value_t = 0)]
        key_pending_days: i32,
        /// Where to write the signed certificate.
        #[arg(long)]
        certificate_out: Option<std::path::PathBuf>,
        #[command(flatten)]
        start: Start,
    },
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
    /// Restore a tenant from an export and watch it: in place (the export's tenant, in its
    /// current tier), or with --as-new as a new tenant. The archive is verified end to end
    /// before anything changes.
    Restore {
        /// exports/<id> or the bare id.
        export: String,
        /// Create a new tenant with this slug instead of replacing the export's tenant.
        #[arg(long = "as-new", value_name = "SLUG")]
        as_new: Option<String>,
        /// With --as-new: the tier (default: the export's source tier).
        #[arg(long, value_enum, requires = "as_new")]
        tier: Option<TierArg>,
        /// With --as-new: the cluster (default: the first configured).
        #[arg(long, default_value = "", requires = "as_new")]
        cluster: String,
        /// With --as-new: the display name (default: the slug).
        #[arg(long, default_value = "", requires = "as_new")]
        display_name: String,
        #[command(flatten)]
        start: Start,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Export a tenant (encrypted with its own key) and watch the operation.
    Create {
        /// Tenant id or slug.
        tenant: String,
        #[command(flatten)]
        start: Start,
    },
    /// List a tenant's exports.
    List { tenant: String },
    /// Show an export.
    Show { name: String },
    /// Download an export: verify the manifest's signature, the archive's checksums, decrypt,
    /// and write the SQL (restore it with `psql -f`). Nothing is written unless all checks
    /// pass.
    Get {
        name: String,
        #[arg(long)]
        out: std::path::PathBuf,
        /// The signing public key (PEM) to trust; without it the server's key is used.
        #[arg(long)]
        public_key: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum OperationCommand {
    Get {
        name: String,
    },
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Follow an operation with a progress bar until it is done.
    Watch {
        name: String,
    },
    Cancel {
        name: String,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
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
    let mut tenants = TenantServiceClient::new(channel.clone());
    let mut exports = ExportServiceClient::new(channel.clone());
    let mut deletions = DeletionServiceClient::new(channel.clone());
    let mut audit = AuditServiceClient::new(channel.clone());
    let mut fleet = FleetServiceClient::new(channel.clone());
    let mut ops = OperationServiceClient::new(channel);
    match cli.command {
        Command::Create {
            slug,
            tier,
            display_name,
            plan,
            labels,
            cluster,
            start,
        } => {
            let op = tenants
                .create_tenant(pb::CreateTenantRequest {
                    slug,
                    display_name,
                    plan,
                    tier: pb::Tier::from(tier) as i32,
                    labels: labels.into_iter().collect::<HashMap<_, _>>(),
                    cluster,
                    request_id: start.request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            finish(&mut ops, op, start.no_wait).await?;
        }
        Command::ChangeTier {
            tenant,
            tier,
            cluster,
            start,
        } => {
            let op = tenants
                .change_tier(pb::ChangeTierRequest {
                    tenant,
                    tier: pb::Tier::from(tier) as i32,
                    cluster,
                    request_id: start.request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            finish(&mut ops, op, start.no_wait).await?;
        }
        Command::Restore {
            export,
            as_new,
            tier,
            cluster,
            display_name,
            start,
        } => {
            let mode = if as_new.is_some() {
                pb::RestoreMode::AsNewTenant
            } else {
                pb::RestoreMode::InPlace
            };
            let op = exports
                .restore_tenant(pb::RestoreTenantRequest {
                    export,
                    mode: mode as i32,
                    new_slug: as_new.unwrap_or_default(),
                    tier: tier.map_or(0, |t| pb::Tier::from(t) as i32),
                    cluster,
                    display_name,
                    request_id: start.request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            finish(&mut ops, op, start.no_wait).await?;
        }
        Command::Delete {
            tenant,
            reason,
            requested_by,
            ticket,
            final_export,
            key_pending_days,
            certificate_out,
            start,
        } => {
            let op = deletions
                .delete_tenant(pb::DeleteTenantRequest {
                    tenant,
                    reason,
                    requested_by,
                    ticket,
                    final_export,
                    key_pending_days,
                    request_id: start.request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            let op = finish(&mut ops, op, start.no_wait).await?;
            if let (Some(out), Some(pb::operation::Result::Certificate(c))) =
                (certificate_out, &op.result)
            {
                std::fs::write(&out, &c.document)
                    .with_context(|| format!("writing {}", out.display()))?;
                println!("certificate written to {}", out.display());
            }
        }
        Command::Certificate(cmd) => certificate::run(&mut deletions, cmd).await?,
        Command::Audit(cmd) => audit::run(&mut audit, cmd).await?,
        Command::Fleet(cmd) => fleet::run(&mut fleet, &mut ops, cmd).await?,
        Command::Get { tenant } => {
            let t = tenants
                .get_tenant(pb::GetTenantRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            print_tenant(&t);
        }
        Command::List { tier, page_size } => {
            let mut pages = crate::Pages::default();
            println!(
                "{:<36}  {:<24}  {:<8}  {:<12}  SCHEMA",
                "ID", "SLUG", "TIER", "STATE"
            );
            while let Some(page_token) = pages.next() {
                let r = tenants
                    .list_tenants(pb::ListTenantsRequest {
                        page_size,
                        page_token,
                        tier: tier.map_or(0, |t| pb::Tier::from(t) as i32),
                        state: 0,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for t in &r.tenants {
                    println!(
                        "{:<36}  {:<24}  {:<8}  {:<12}  v{}",
                        t.id,
                        t.slug,
                        tier_name(t.tier),
                        state_name(t.state),
                        t.schema_version
                    );
                }
                pages.advance(r.next_page_token);
            }
        }
        Command::Resolve { tenant } => {
            let r = tenants
                .resolve_tenant(pb::ResolveTenantRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            println!("tenant:      {}", r.tenant_id);
            println!("tier:        {}", tier_name(r.tier));
            println!("server:      {}:{} (cluster {})", r.host, r.port, r.cluster);
            println!("database:    {}", r.database);
            println!("schema:      {}", r.schema);
            println!("role:        {}", r.role);
            let mut settings: Vec<_> = r.session_settings.iter().collect();
            settings.sort();
            for (k, v) in settings {
                println!("set:         {k} = {v}");
            }
            println!("epoch:       {}", r.routing_epoch);
            if !r.credential_ref.is_empty() {
                println!("credential:  {}", r.credential_ref);
            }
        }
        Command::Export(cmd) => export_command(&mut exports, &mut ops, cmd).await?,
        Command::SigningKey => {
            let key = exports
                .get_signing_key(pb::GetSigningKeyRequest {})
                .await
                .map_err(status)?
                .into_inner();
            eprintln!("key id: {} ({})", key.key_id, key.algorithm);
            print!("{}", key.public_key_pem);
        }
        Command::Operation(cmd) => match cmd {
            OperationCommand::Get { name } => {
                let op = ops
                    .get_operation(pb::GetOperationRequest {
                        name: op_name(&name),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                print_operation(&op);
            }
            OperationCommand::List { tenant } => {
                let r = ops
                    .list_operations(pb::ListOperationsRequest {
                        tenant,
                        state: 0,
                        page_size: 100,
                        page_token: String::new(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for op in &r.operations {
                    let m = op.metadata.clone().unwrap_or_default();
                    println!(
                        "{}  {:<10}  {:<12}  tenant {}  {}",
                        op.name,
                        m.kind,
                        op_state_name(m.state),
                        m.tenant_id,
                        m.create_time
                    );
                }
            }
            OperationCommand::Watch { name } => {
                watch(&mut ops, &op_name(&name)).await?;
            }
            OperationCommand::Cancel { name } => {
                let op = ops
                    .cancel_operation(pb::CancelOperationRequest {
                        name: op_name(&name),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                print_operation(&op);
            }
        },
    }
    Ok(())
}

async fn export_command(
    exports: &mut ExportServiceClient<AuthChannel>,
    ops: &mut OperationServiceClient<AuthChannel>,
    cmd: ExportCommand,
) -> anyhow::Result<()> {
    match cmd {
        ExportCommand::Create { tenant, start } => {
            let op = exports
                .export_tenant(pb::ExportTenantRequest {
                    tenant,
                    request_id: start.request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            finish(ops, op, start.no_wait).await?;
        }
        ExportCommand::List { tenant } => {
            let mut pages = crate::Pages::default();
            while let Some(page_token) = pages.next() {
                let page = exports
                    .list_exports(pb::ListExportsRequest {
                        tenant: tenant.clone(),
                        page_size: 100,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for e in &page.exports {
                    println!(
                        "{:<46} {:<9} {:>12} bytes  snapshot {}",
                        e.name,
                        export_state_name(e.state),
                        e.size_bytes,
                        e.snapshot_time
                    );
                }
                pages.advance(page.next_page_token);
            }
        }
        ExportCommand::Show { name } => {
            let e = exports
                .get_export(pb::GetExportRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            print_export(&e);
        }
        ExportCommand::Get {
            name,
            out,
            public_key,
        } => download(exports, &name, &out, public_key.as_deref()).await?,
    }
    Ok(())
}

/// Streams an export, checks it end to end and writes the SQL to `out` (via a temporary file
/// renamed into place only when every check passed).
async fn download(
    exports: &mut ExportServiceClient<AuthChannel>,
    name: &str,
    out: &std::path::Path,
    public_key: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    use tenantd::archive::ArchiveReader;
    use tenantd::archive::manifest::Manifest;
    let pem = match public_key {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            eprintln!(
                "note: trusting the signing key the server reports; pin it with --public-key"
            );
            exports
                .get_signing_key(pb::GetSigningKeyRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .public_key_pem
        }
    };
    let spki = tenantd::keys::public_key_from_pem(&pem)?;
    let mut stream = exports
        .read_export(pb::ReadExportRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let Some(pb::ReadExportResponse {
        part: Some(pb::read_export_response::Part::Header(header)),
    }) = stream.message().await.map_err(status)?
    else {
        bail!("tenantd sent no export header");
    };
    let manifest = Manifest::verified(&header.manifest, &header.signature, &spki)?;
    let wanted = name.strip_prefix("exports/").unwrap_or(name);
    if manifest.export_id != wanted {
        bail!(
            "tenantd sent the manifest of export {}, not {wanted}",
            manifest.export_id
        );
    }
    let data_key: [u8; 32] = header
        .data_key
        .as_slice()
        .try_into()
        .context("data key is not 32 bytes")?;
    let mut reader = ArchiveReader::for_manifest(&manifest, &data_key)?;
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let result = async {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?,
        );
        while let Some(msg) = stream.message().await.map_err(status)? {
            if let Some(pb::read_export_response::Part::Chunk(chunk)) = msg.part {
                file.write_all(&reader.write(&chunk)?)?;
            }
        }
        file.write_all(&reader.finish_checked(&manifest)?)?;
        file.into_inner()?.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!(
            "export {name} failed verification; nothing written"
        )));
    }
    std::fs::rename(&partial, out)?;
    println!("signature:   verified ({})", manifest.signing_key_id);
    println!(
        "archive:     {} bytes, sha256 {} verified",
        manifest.ciphertext.bytes, manifest.ciphertext.sha256
    );
    println!(
        "sql:         {} bytes, sha256 {} verified -> {}",
        manifest.plaintext.bytes,
        manifest.plaintext.sha256,
        out.display()
    );
    for t in &manifest.tables {
        println!("  {:<20} {:>12} rows", t.table, t.rows);
    }
    Ok(())
}

fn print_export(e: &pb::Export) {
    println!("export:      {} ({})", e.name, export_state_name(e.state));
    println!("tenant:      {}", e.tenant_id);
    println!("object:      {}", e.object_uri);
    println!("manifest:    {}", e.manifest_uri);
    println!("size:        {} bytes, sha256 {}", e.size_bytes, e.sha256);
    println!(
        "snapshot:    {} (schema version {}, {} tier)",
        e.snapshot_time,
        e.schema_version,
        tier_name(e.source_tier)
    );
    println!("key:         {}", e.key_id);
    for t in &e.tables {
        println!("  {:<20} {:>12} rows", t.table, t.rows);
    }
}

fn export_state_name(s: i32) -> &'static str {
    match pb::ExportState::try_from(s) {
        Ok(pb::ExportState::Running) => "running",
        Ok(pb::ExportState::Complete) => "complete",
        Ok(pb::ExportState::Failed) => "failed",
        _ => "unknown",
    }
}

fn op_name(name: &str) -> String {
    if name.starts_with("operations/") {
        name.to_owned()
    } else {
        format!("operations/{name}")
    }
}

/// Prints a just-started operation, or watches it until it is done.
async fn finish(
    ops: &mut OperationServiceClient<AuthChannel>,
    op: pb::Operation,
    no_wait: bool,
) -> anyhow::Result<pb::Operation> {
    if no_wait {
        print_operation(&op);
        Ok(op)
    } else {
        watch(ops, &op.name).await
    }
}

/// What the running step is doing: its name, and its progress when it reports any (per item,
/// e.g. "copy observations 120000/400000 rows, 310000/900000 in all"; an item whose total is
/// not known yet reports a total of 0: "dump observations 120000 rows, 310000 in all").
fn step_message(s: &pb::Step) -> String {
    let current = s.items.iter().find(|i| i.done < i.total);
    let open_ended = s.items.iter().find(|i| i.total == 0 && i.done > 0);
    match (current, open_ended) {
        (Some(i), _) => format!(
            "{} {} {}/{} rows, {}/{} in all",
            s.name, i.name, i.done, i.total, s.progress_done, s.progress_total
        ),
        (None, Some(i)) => format!(
            "{} {} {} rows, {} in all",
            s.name, i.name, i.done, s.progress_done
        ),
        (None, None) if s.progress_total > 0 => {
            format!("{} {}/{}", s.name, s.progress_done, s.progress_total)
        }
        (None, None) => s.name.clone(),
    }
}

/// Follows an operation with a progress bar: one tick per step, the running step's own
/// progress in the message.
async fn watch(
    ops: &mut OperationServiceClient<AuthChannel>,
    name: &str,
) -> anyhow::Result<pb::Operation> {
    let mut stream = ops
        .watch_operation(pb::WatchOperationRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut last = None;
    while let Some(op) = stream.message().await.map_err(status)? {
        let m = op.metadata.clone().unwrap_or_default();
        bar.set_length(m.steps.len() as u64);
        let done = m
            .steps
            .iter()
            .filter(|s| s.state == pb::StepState::Done as i32)
            .count();
        bar.set_position(done as u64);
        let running = m
            .steps
            .iter()
            .find(|s| s.state == pb::StepState::Running as i32);
        bar.set_message(match running {
            Some(s) => step_message(s),
            None => op_state_name(m.state).to_owned(),
        });
        last = Some(op);
    }
    bar.finish_and_clear();
    let Some(op) = last else {
        bail!("the operation stream ended without an update")
    };
    print_operation(&op);
    if let Some(pb::operation::Result::Error(e)) = &op.result {
        bail!("{} failed: {}", op.name, e.message);
    }
    Ok(op)
}

fn print_operation(op: &pb::Operation) {
    let m = op.metadata.clone().unwrap_or_default();
    println!("operation:   {}", op.name);
    if m.tenant_id.is_empty() {
        println!("kind:        {}  (fleet-wide)", m.kind);
    } else {
        println!("kind:        {}  tenant {}", m.kind, m.tenant_id);
    }
    println!("state:       {}", op_state_name(m.state));
    for s in &m.steps {
        let state = pb::StepState::try_from(s.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("STEP_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let retry = if s.attempts > 1 {
            format!(" ({} attempts)", s.attempts)
        } else {
            String::new()
        };
        println!("  {:<18} {state}{retry}", s.name);
    }
    if let Some(pb::operation_metadata::Details::TierChange(t)) = &m.details {
        println!(
            "move:        {} on {} -> {} on {}",
            tier_name(t.source_tier),
            t.source_cluster,
            tier_name(t.target_tier),
            t.target_cluster
        );
        if t.rows_copied > 0 {
            println!("rows copied: {} (verified)", t.rows_copied);
        }
        print_pause(&t.fence_time, &t.unfence_time, t.write_pause_ms);
    }
    if let Some(pb::operation_metadata::Details::Restore(r)) = &m.details {
        let mode = match pb::RestoreMode::try_from(r.mode) {
            Ok(pb::RestoreMode::AsNewTenant) => "as a new tenant",
            _ => "in place",
        };
        println!(
            "restore:     {} {mode}, into the {} tier on {}",
            r.export,
            tier_name(r.tier),
            r.cluster
        );
        if r.rows > 0 {
            println!(
                "rows:        {} (archive verified; tenant-schema v{} -> v{})",
                r.rows, r.export_schema_version, r.schema_version
            );
        }
        print_pause(&r.fence_time, &r.unfence_time, r.write_pause_ms);
    }
    if let Some(pb::operation_metadata::Details::Deletion(d)) = &m.details {
        println!(
            "deletion:    {} (by {}, ticket {:?})",
            d.reason, d.requested_by, d.ticket
        );
        if d.rows > 0 || d.objects_deleted > 0 {
            println!(
                "deleted:     {} rows, {} objects",
                d.rows, d.objects_deleted
            );
        }
        if !d.key_id.is_empty() {
            println!(
                "key:         {} destroyed on {}",
                d.key_id, d.key_deletion_time
            );
        }
        if !d.final_export_name.is_empty() {
            println!("handover:    {}", d.final_export_name);
        }
    }
    match &op.result {
        Some(pb::operation::Result::Tenant(t)) => print_tenant(t),
        Some(pb::operation::Result::Export(e)) => print_export(e),
        Some(pb::operation::Result::Certificate(c)) => println!(
            "certificate: {} (sha256 {}, signed by {})",
            c.name, c.sha256, c.signing_key_id
        ),
        Some(pb::operation::Result::Error(e)) => println!(
            "error:       {} (code {}, step {})",
            e.message, e.code, e.step
        ),
        None => {}
    }
}

/// How long a tenant's writes were fenced (or since when, while they still are).
fn print_pause(fence_time: &str, unfence_time: &str, pause_ms: i64) {
    if !unfence_time.is_empty() && !fence_time.is_empty() {
        println!("write pause: {pause_ms} ms ({fence_time} -> {unfence_time})");
    } else if !fence_time.is_empty() {
        println!("writes fenced since {fence_time}");
    }
}

fn print_tenant(t: &pb::Tenant) {
    let p = t.placement.clone().unwrap_or_default();
    println!("tenant:      {} ({})", t.slug, t.id);
    println!("name:        {}", t.display_name);
    println!("plan:        {}", t.plan);
    println!("tier:        {}", tier_name(t.tier));
    println!("state:       {}", state_name(t.state));
    println!(
        "placement:   cluster {} database {} schema {} role {}",
        p.cluster, p.database, p.schema, p.role
    );
    println!("schema:      v{}", t.schema_version);
    if !t.labels.is_empty() {
        let mut labels: Vec<_> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!("labels:      {}", labels.join(", "));
    }
}

fn tier_name(t: i32) -> &'static str {
    match pb::Tier::try_from(t) {
        Ok(pb::Tier::Pool) => "pool",
        Ok(pb::Tier::Schema) => "schema",
        Ok(pb::Tier::Database) => "database",
        _ => "?",
    }
}

fn state_name(s: i32) -> String {
    pb::TenantState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TENANT_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn op_state_name(s: i32) -> &'static str {
    match pb::OperationState::try_from(s) {
        Ok(pb::OperationState::Pending) => "pending",
        Ok(pb::OperationState::Running) => "running",
        Ok(pb::OperationState::Compensating) => "compensating",
        Ok(pb::OperationState::Succeeded) => "succeeded",
        Ok(pb::OperationState::Failed) => "failed",
        Ok(pb::OperationState::Cancelled) => "cancelled",
        _ => "?",
    }
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

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {}",
        tenantd::api::audit::code_name(s.code()),
        s.message()
    )
}
