//! Export commands: `export create | list | show | get` (the download, verified and
//! decrypted) `| delete`, `signing-key`, and `restore`.

use anyhow::{Context as _, bail};
use clap::Subcommand;

use tenantd::api::pb;
use tenantd::api::pb::export_service_client::ExportServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::operations::finish;
use crate::tenants::tier_name;
use crate::{Pages, Start, TierArg, status};

#[derive(Subcommand)]
pub enum Command {
    /// Exports: create, list, show, and download (verified and decrypted).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Print the public key that signs export manifests (PEM), to pin it for `export get`
    /// and for offline checks with openssl.
    SigningKey,
    /// Restore a tenant from an export and watch it: in place (the export's tenant, in its
    /// current tier), or with --as-new as a new tenant. The archive is verified end to end
    /// before anything changes. With --to: the tenant's data as it was at that moment, from
    /// its cluster's physical backups and WAL, while other tenants keep their newer writes.
    Restore {
        /// exports/<id> or the bare id; with --to, the tenant (id or slug).
        source: String,
        /// Restore the tenant named by SOURCE to this moment (RFC 3339, e.g.
        /// 2026-12-01T14:00:00Z).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
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
        /// In place: do not ask for confirmation (asked only on a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        start: Start,
    },
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Export a tenant (encrypted with its own key) and watch the operation.
    Create {
        /// Tenant id or slug.
        tenant: String,
        #[command(flatten)]
        start: Start,
    },
    /// List a tenant's exports.
    List {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Show an export.
    Show {
        /// exports/<id> or the bare id.
        name: String,
    },
    /// Download an export: verify the manifest's signature, the archive's checksums, decrypt,
    /// and write the SQL (restore it with `psql -f`). Nothing is written unless all checks
    /// pass.
    Get {
        /// exports/<id> or the bare id.
        name: String,
        /// Where to write the SQL (mode 0600).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The signing public key (PEM) to trust; without it the server's key is used.
        #[arg(long)]
        public_key: Option<std::path::PathBuf>,
    },
    /// Delete an export's objects (archive, manifest, signature); it stays listed as
    /// removed. Refused for an export under legal hold.
    Delete {
        /// exports/<id> or the bare id.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(channel: AuthChannel, cmd: Command) -> anyhow::Result<()> {
    let mut exports = ExportServiceClient::new(channel.clone());
    let mut ops = OperationServiceClient::new(channel);
    match cmd {
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
        Command::Restore {
            source,
            to,
            as_new,
            tier,
            cluster,
            display_name,
            yes,
            start,
        } => {
            let replaced = match &to {
                Some(t) => format!("tenant {source}'s data with its data as at {t}"),
                None => format!("the data of the tenant {source} was taken of with it"),
            };
            if as_new.is_none()
                && !yes
                && !crate::confirm(&format!(
                    "replace all of {replaced}? writes made since are lost"
                ))?
            {
                bail!("not restored");
            }
            let mode = if as_new.is_some() {
                pb::RestoreMode::AsNewTenant
            } else {
                pb::RestoreMode::InPlace
            };
            let (export, tenant) = match &to {
                Some(_) => (String::new(), source),
                None => (source, String::new()),
            };
            let op = exports
                .restore_tenant(pb::RestoreTenantRequest {
                    export,
                    tenant,
                    point_in_time: to.unwrap_or_default(),
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
            let mut pages = Pages::default();
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
                        "{:<46} {:<9} {:>12} bytes  snapshot {}{}",
                        e.name,
                        export_state_name(e.state),
                        e.size_bytes,
                        e.snapshot_time,
                        if e.backup_policy.is_empty() {
                            ""
                        } else {
                            "  scheduled"
                        }
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
        ExportCommand::Delete { name, yes } => {
            if !yes
                && !crate::confirm(&format!(
                    "delete the objects of export {name}? this cannot be undone"
                ))?
            {
                bail!("not deleted");
            }
            let e = exports
                .delete_export(pb::DeleteExportRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("{} removed at {} ({})", e.name, e.remove_time, e.removed_by);
        }
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
            // Decrypted tenant data: readable by its owner only.
            tenantd::secret_file::open_new(&partial)
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

pub fn print_export(e: &pb::Export) {
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
    if !e.backup_policy.is_empty() {
        println!("scheduled:   {} slot {}", e.backup_policy, e.slot_time);
    }
    if !e.remove_time.is_empty() {
        println!("removed:     {} ({})", e.remove_time, e.removed_by);
    }
    for t in &e.tables {
        println!("  {:<20} {:>12} rows", t.table, t.rows);
    }
}

fn export_state_name(s: i32) -> &'static str {
    match pb::ExportState::try_from(s) {
        Ok(pb::ExportState::Running) => "running",
        Ok(pb::ExportState::Complete) => "complete",
        Ok(pb::ExportState::Failed) => "failed",
        Ok(pb::ExportState::Deleted) => "deleted",
        Ok(pb::ExportState::Removing) => "removing",
        Ok(pb::ExportState::Removed) => "removed",
        _ => "unknown",
    }
}
