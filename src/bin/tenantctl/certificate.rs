//! `tenantctl certificate`: fetch and list deletion certificates, and verify one offline with
//! the signing public key alone.

use anyhow::Context as _;
use clap::Subcommand;

use tenantd::api::pb;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::status;

#[derive(Subcommand)]
pub enum CertificateCommand {
    /// Fetch a certificate (deletion-certificates/<id>, or the deleted tenant's id or slug)
    /// and write its signed document to FILE (or stdout).
    Get {
        /// deletion-certificates/<id>, or the deleted tenant's id or slug.
        name: String,
        /// Where to write the signed document (default: stdout).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// List every deletion certificate.
    List,
    /// Verify a certificate offline: no service needed, only the signing public key (PEM,
    /// from `tenantctl signing-key`). Exits non-zero unless the document is intact and
    /// signed by that key.
    Verify {
        /// The certificate document (from `certificate get` or `delete --certificate-out`).
        file: std::path::PathBuf,
        /// The signing public key (PEM) to trust.
        #[arg(long)]
        public_key: std::path::PathBuf,
    },
}

pub async fn run(
    deletions: &mut DeletionServiceClient<AuthChannel>,
    cmd: CertificateCommand,
) -> anyhow::Result<()> {
    match cmd {
        CertificateCommand::Get { name, out } => {
            let c = deletions
                .get_deletion_certificate(pb::GetDeletionCertificateRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            match out {
                Some(out) => {
                    std::fs::write(&out, &c.document)
                        .with_context(|| format!("writing {}", out.display()))?;
                    println!(
                        "{} written to {} (sha256 {})",
                        c.name,
                        out.display(),
                        c.sha256
                    );
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&c.document)?;
                }
            }
        }
        CertificateCommand::List => {
            println!("{:<58}  {:<24}  {:<36}  ISSUED", "NAME", "SLUG", "TENANT");
            let mut pages = crate::Pages::default();
            while let Some(page_token) = pages.next() {
                let r = deletions
                    .list_deletion_certificates(pb::ListDeletionCertificatesRequest {
                        page_size: 100,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for c in &r.certificates {
                    println!(
                        "{:<58}  {:<24}  {:<36}  {}",
                        c.name, c.tenant_slug, c.tenant_id, c.issue_time
                    );
                }
                pages.advance(r.next_page_token);
            }
        }
        CertificateCommand::Verify { file, public_key } => verify(&file, &public_key)?,
    }
    Ok(())
}

/// `certificate verify`: offline, with the public key alone.
pub fn verify(file: &std::path::Path, public_key: &std::path::Path) -> anyhow::Result<()> {
    let document = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let pem = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    let spki = tenantd::keys::public_key_from_pem(&pem)?;
    let c = tenantd::certificate::verify(&document, &spki)
        .with_context(|| format!("{} does NOT verify", file.display()))?;
    let e = &c.evidence;
    let v = &c.verification;
    println!(
        "certificate {} verified: intact and signed by key {}",
        c.certificate_id, c.signing_key_id
    );
    println!(
        "tenant:      {} ({}), {} tier on {}",
        c.tenant.slug, c.tenant.id, c.tenant.tier, c.tenant.cluster
    );
    println!(
        "requested:   by {} at {}: {} [{}]",
        c.request.requested_by, c.request.requested_at, c.request.reason, c.request.ticket
    );
    println!(
        "deleted:     {} rows in {}; {} dropped",
        e.rows_deleted.iter().map(|t| t.rows).sum::<u64>(),
        crate::counted(e.rows_deleted.len(), "table", "tables"),
        crate::counted(e.dropped.len(), "container or role", "containers or roles")
    );
    println!(
        "objects:     {} ({} bytes) under {}, keys sha256 {}",
        e.objects.deleted, e.objects.bytes, e.objects.prefix, e.objects.keys_sha256
    );
    println!(
        "key:         {} {} until {}",
        e.key.key_id, e.key.state, e.key.deletion_date
    );
    println!(
        "verified:    at {} (completed {}): {}, {}, {} listed, key {}",
        v.verified_at,
        c.completed_at,
        crate::counted(v.tables.len(), "table", "tables"),
        crate::counted(v.catalog.len(), "catalog check", "catalog checks"),
        crate::counted(v.objects.objects_listed as usize, "object", "objects"),
        v.key.state
    );
    for s in &c.scope {
        println!("scope:       {s}");
    }
    Ok(())
}
