//! `tenantctl audit`: list a tenant's audit entries, verify the hash chains.

use clap::Subcommand;

use tenantd::api::pb;
use tenantd::api::pb::audit_service_client::AuditServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::status;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// A tenant's audit entries, oldest first (no tenant: entries about no tenant, such as
    /// refused calls).
    List {
        /// Tenant id or slug.
        tenant: Option<String>,
        /// Entries per page; every page is printed.
        #[arg(long, default_value_t = 200)]
        page_size: i32,
    },
    /// Recompute the hash chains (every chain, or one tenant's) and name each entry altered
    /// or removed. Exits non-zero if any is.
    Verify {
        /// Only this tenant's chain (id or slug).
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub async fn run(
    audit: &mut AuditServiceClient<AuthChannel>,
    cmd: AuditCommand,
) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List { tenant, page_size } => {
            let tenant = tenant.unwrap_or_default();
            println!(
                "{:>5}  {:<27}  {:<16}  {:<10}  {:<42}  {:<19}  DETAIL",
                "SEQ", "TIME", "PRINCIPAL", "ROLE", "METHOD", "RESULT"
            );
            let mut pages = crate::Pages::default();
            while let Some(page_token) = pages.next() {
                let r = audit
                    .list_audit_events(pb::ListAuditEventsRequest {
                        tenant: tenant.clone(),
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for e in &r.events {
                    let method = e.method.rsplit('/').next().unwrap_or(&e.method);
                    let request = if e.request_id.is_empty() {
                        String::new()
                    } else {
                        format!(" (request {})", e.request_id)
                    };
                    println!(
                        "{:>5}  {:<27}  {:<16}  {:<10}  {:<42}  {:<19}  {}{request}",
                        e.seq,
                        e.time,
                        e.principal,
                        e.role,
                        format!("{method} {}", e.target),
                        e.code,
                        e.detail
                    );
                }
                pages.advance(r.next_page_token);
            }
        }
        AuditCommand::Verify { tenant } => {
            let r = audit
                .verify_audit_log(pb::VerifyAuditLogRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            for p in &r.problems {
                let chain = if p.tenant_id.is_empty() {
                    "no tenant"
                } else {
                    &p.tenant_id
                };
                println!("{chain}: {}", p.detail);
            }
            if !r.problems.is_empty() {
                anyhow::bail!(
                    "audit log damaged: {} problem(s) in {} chain(s) of {} entries",
                    r.problems.len(),
                    r.chains,
                    r.events
                );
            }
            println!(
                "audit log intact: {} chain(s), {} entries",
                r.chains, r.events
            );
        }
    }
    Ok(())
}
