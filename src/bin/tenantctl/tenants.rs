//! Tenant commands: create, change-tier, get, list, resolve, delete.

use std::collections::HashMap;

use anyhow::Context as _;
use clap::Subcommand;

use tenantd::api::pb;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::operations::finish;
use crate::{Pages, Start, TierArg, parse_label, status};

#[derive(Subcommand)]
pub enum Command {
    /// Provision a tenant and watch the operation until it is done.
    Create {
        /// The tenant's name in URLs and commands: a lowercase letter, then lowercase
        /// letters, digits and '-'.
        slug: String,
        /// Where its rows live: shared pool tables, a schema of its own, or a database of
        /// its own.
        #[arg(long, value_enum)]
        tier: TierArg,
        /// A name for people (default: the slug).
        #[arg(long, default_value = "")]
        display_name: String,
        /// The billing plan; a backup policy may be set per plan.
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
        /// The tier to move to.
        #[arg(long, value_enum)]
        tier: TierArg,
        /// Cluster to move to (default: the tenant's current cluster).
        #[arg(long, default_value = "")]
        cluster: String,
        /// Read at most this many MB a second from the source while the tenant keeps
        /// writing, to spare the tenants sharing the cluster (default: the service's
        /// `[workflow] copy_mb_per_s`, unbounded unless set).
        #[arg(long, value_name = "MB_PER_S", default_value_t = 0)]
        pace: u32,
        #[command(flatten)]
        start: Start,
    },
    /// Show a tenant (by id or slug; a deleted tenant's slug shows its tombstone).
    Get {
        /// Tenant id or slug.
        tenant: String,
    },
    /// List tenants, deleted ones included.
    List {
        /// Only this tier's.
        #[arg(long, value_enum)]
        tier: Option<TierArg>,
        /// Tenants per request (all pages are printed).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
    },
    /// Show how an application connects to a tenant.
    Resolve {
        /// Tenant id or slug.
        tenant: String,
    },
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
        /// Do not ask for confirmation (asked only on a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        start: Start,
    },
}

pub async fn run(channel: AuthChannel, cmd: Command) -> anyhow::Result<()> {
    let mut tenants = TenantServiceClient::new(channel.clone());
    let mut ops = OperationServiceClient::new(channel.clone());
    match cmd {
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
            pace,
            start,
        } => {
            let op = tenants
                .change_tier(pb::ChangeTierRequest {
                    tenant,
                    tier: pb::Tier::from(tier) as i32,
                    cluster,
                    request_id: start.request_id,
                    copy_mb_per_s: pace,
                })
                .await
                .map_err(status)?
                .into_inner();
            finish(&mut ops, op, start.no_wait).await?;
        }
        Command::Get { tenant } => {
            let t = tenants
                .get_tenant(pb::GetTenantRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            print_tenant(&t);
        }
        Command::List { tier, page_size } => {
            let mut pages = Pages::default();
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
            // Tenant roles never log in: an application asks for a short-lived login.
            println!("login:       tenantctl credentials {}", r.tenant_id);
        }
        Command::Delete {
            tenant,
            reason,
            requested_by,
            ticket,
            final_export,
            key_pending_days,
            certificate_out,
            yes,
            start,
        } => {
            if !yes
                && !crate::confirm(&format!(
                    "delete tenant {tenant} everywhere: its rows, its container, its objects \
                     and its key (its exports become unreadable)? this cannot be undone"
                ))?
            {
                anyhow::bail!("not deleted");
            }
            let op = DeletionServiceClient::new(channel)
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
    }
    Ok(())
}

pub fn print_tenant(t: &pb::Tenant) {
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

pub fn tier_name(t: i32) -> &'static str {
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
