//! Backup commands: `backup policy set | get | list | delete`, `backup status TENANT`, and
//! `hold set | clear`.

use clap::{Args, Subcommand};

use tenantd::api::pb;
use tenantd::api::pb::backup_service_client::BackupServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::{Pages, status};

type Client = BackupServiceClient<AuthChannel>;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Backup policies: when to back up, how many backups to keep.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A tenant's backups: the newest, its age (the recovery point), the next one due,
    /// what the scheduler last did, and legal holds.
    Status {
        /// Tenant id or slug.
        tenant: String,
    },
}

/// Whom a policy is for: one tenant, or every tenant of a plan without its own.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Tenant id or slug.
    #[arg(long)]
    tenant: Option<String>,
    /// A plan: every tenant of it without a policy of its own.
    #[arg(long)]
    plan: Option<String>,
}

impl From<Target> for pb::PolicyTarget {
    fn from(t: Target) -> Self {
        use pb::policy_target::Target as T;
        pb::PolicyTarget {
            target: match (t.tenant, t.plan) {
                (Some(tenant), _) => Some(T::Tenant(tenant)),
                (None, Some(plan)) => Some(T::Plan(plan)),
                (None, None) => None,
            },
        }
    }
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy. A backup is kept when any keep rule keeps it; the newest
    /// is always kept.
    Set {
        #[command(flatten)]
        target: Target,
        /// 5-field cron expression in UTC ("0 2 * * *": daily at 02:00), or @hourly, @daily.
        #[arg(long)]
        schedule: String,
        /// Keep the newest N.
        #[arg(long, default_value_t = 0)]
        keep_last: i32,
        /// Keep every backup of the last N days.
        #[arg(long, default_value_t = 0)]
        keep_days: i32,
        /// Keep the newest backup of each of the last N months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: i32,
        /// Keep the newest backup of each of the last N years.
        #[arg(long, default_value_t = 0)]
        keep_yearly: i32,
        /// Prove the newest backup restorable on this schedule (cron in UTC): restore it into
        /// a scratch schema, compare it with its manifest, drop it.
        #[arg(long, default_value = "")]
        drill: String,
    },
    /// Show a policy.
    Get {
        #[command(flatten)]
        target: Target,
    },
    /// List every policy.
    List,
    /// Delete a policy: its schedule stops; backups already taken stay.
    Delete {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold on a tenant (all its exports) or on one export.
    Set {
        #[command(flatten)]
        target: HoldTarget,
        /// Why: a case or ticket reference.
        #[arg(long)]
        reason: String,
    },
    /// Clear a legal hold.
    Clear {
        #[command(flatten)]
        target: HoldTarget,
    },
}

/// What a hold is on.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct HoldTarget {
    /// Tenant id or slug.
    #[arg(long)]
    tenant: Option<String>,
    /// exports/<id> or the bare id.
    #[arg(long)]
    export: Option<String>,
}

impl From<HoldTarget> for pb::HoldTarget {
    fn from(t: HoldTarget) -> Self {
        use pb::hold_target::Target as T;
        pb::HoldTarget {
            target: match (t.tenant, t.export) {
                (Some(tenant), _) => Some(T::Tenant(tenant)),
                (None, Some(export)) => Some(T::Export(export)),
                (None, None) => None,
            },
        }
    }
}

pub async fn run(client: &mut Client, cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Policy(cmd) => policy(client, cmd).await,
        BackupCommand::Status { tenant } => {
            let s = client
                .get_backup_status(pb::GetBackupStatusRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            print_status(&s);
            Ok(())
        }
    }
}

async fn policy(client: &mut Client, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set {
            target,
            schedule,
            keep_last,
            keep_days,
            keep_monthly,
            keep_yearly,
            drill,
        } => {
            let p = client
                .set_backup_policy(pb::SetBackupPolicyRequest {
                    target: Some(target.into()),
                    schedule,
                    keep_last,
                    keep_days,
                    keep_monthly,
                    keep_yearly,
                    drill,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_policy(&p);
        }
        PolicyCommand::Get { target } => {
            let p = client
                .get_backup_policy(pb::GetBackupPolicyRequest {
                    target: Some(target.into()),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_policy(&p);
        }
        PolicyCommand::List => {
            let mut pages = Pages::default();
            while let Some(page_token) = pages.next() {
                let page = client
                    .list_backup_policies(pb::ListBackupPoliciesRequest {
                        page_size: 100,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for p in &page.policies {
                    println!(
                        "{:<54} {:<44} {:<16} {}",
                        p.name,
                        whom(p),
                        p.schedule,
                        keeps(p)
                    );
                }
                pages.advance(page.next_page_token);
            }
        }
        PolicyCommand::Delete { target } => {
            let p = client
                .delete_backup_policy(pb::DeleteBackupPolicyRequest {
                    target: Some(target.into()),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("deleted {} ({}); its backups stay", p.name, whom(&p));
        }
    }
    Ok(())
}

pub async fn hold(client: &mut Client, cmd: HoldCommand) -> anyhow::Result<()> {
    let h = match cmd {
        HoldCommand::Set { target, reason } => client
            .set_legal_hold(pb::SetLegalHoldRequest {
                target: Some(target.into()),
                reason,
            })
            .await
            .map_err(status)?
            .into_inner(),
        HoldCommand::Clear { target } => client
            .clear_legal_hold(pb::ClearLegalHoldRequest {
                target: Some(target.into()),
            })
            .await
            .map_err(status)?
            .into_inner(),
    };
    let on = if h.export.is_empty() {
        format!("tenant {}", h.tenant_id)
    } else {
        h.export.clone()
    };
    if h.clear_time.is_empty() {
        println!(
            "legal hold on {on} since {} by {}: {}",
            h.set_time, h.set_by, h.reason
        );
    } else {
        println!(
            "legal hold on {on} cleared at {} by {} (was: {}, set by {})",
            h.clear_time, h.cleared_by, h.reason, h.set_by
        );
    }
    Ok(())
}

fn whom(p: &pb::BackupPolicy) -> String {
    if p.plan.is_empty() {
        format!("tenant {}", p.tenant_id)
    } else {
        format!("plan {:?}", p.plan)
    }
}

fn keeps(p: &pb::BackupPolicy) -> String {
    let rules = [
        (p.keep_last, "last"),
        (p.keep_days, "days"),
        (p.keep_monthly, "monthly"),
        (p.keep_yearly, "yearly"),
    ];
    let set: Vec<String> = rules
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{what} {n}"))
        .collect();
    format!("keep {}", set.join(", "))
}

fn print_policy(p: &pb::BackupPolicy) {
    println!("policy:     {}", p.name);
    println!("for:        {}", whom(p));
    println!(
        "schedule:   {} (UTC), in effect since {}",
        p.schedule, p.effective_time
    );
    println!("retention:  {}", keeps(p));
    if !p.drill.is_empty() {
        println!("drills:     {} (UTC)", p.drill);
    }
}

fn print_status(s: &pb::BackupStatus) {
    println!("tenant:           {}", s.tenant_id);
    match &s.policy {
        Some(p) => println!("policy:           {} ({}, {})", p.name, whom(p), p.schedule),
        None => println!("policy:           none (no scheduled backups)"),
    }
    if s.newest_export.is_empty() {
        println!("newest backup:    none");
    } else {
        println!(
            "newest backup:    {} from {} (recovery point {} s old)",
            s.newest_export, s.newest_snapshot_time, s.recovery_point_age_seconds
        );
    }
    if !s.next_due_time.is_empty() {
        println!("next due:         {}", s.next_due_time);
    }
    if !s.last_slot_time.is_empty() {
        if s.last_operation.is_empty() {
            println!(
                "last slot:        {} waiting: tenant busy on {} tick(s) ({})",
                s.last_slot_time, s.busy_ticks, s.busy_reason
            );
        } else {
            println!(
                "last slot:        {} -> {}",
                s.last_slot_time, s.last_operation
            );
        }
    }
    if !s.next_drill_time.is_empty() {
        println!("next drill:       {}", s.next_drill_time);
    }
    if let Some(d) = &s.last_drill {
        if d.passed {
            println!(
                "last drill:       passed at {} ({})",
                d.finish_time, d.export
            );
        } else {
            println!(
                "last drill:       FAILED at {} ({}): {}",
                d.finish_time, d.operation, d.error
            );
        }
    }
    for h in &s.legal_holds {
        let on = if h.export.is_empty() {
            "tenant"
        } else {
            &h.export
        };
        println!(
            "legal hold:       on {on} since {} by {}: {}",
            h.set_time, h.set_by, h.reason
        );
    }
}
