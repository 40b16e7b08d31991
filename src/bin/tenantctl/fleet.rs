//! `tenantctl fleet`: fleet migrations of the tenant schema (docs/rollouts.md): the fleet's
//! version, starting a rollout, following it, approving it past its canaries, listing its
//! targets, retrying one.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use tenantd::api::pb;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::operations::{op_state_name, print_operation};
use crate::status;
use crate::tenants::tier_name;

#[derive(Subcommand)]
pub enum FleetCommand {
    /// The fleet's tenant-schema version, the newest this tenantd knows, and how many tenants
    /// are at each version.
    Schema,
    /// Start a rollout of the tenant schema and follow it: canaries first, then (after
    /// `fleet resume`, or at once with --auto-continue) the rest in parallel.
    Migrate {
        /// Target version (default: the newest this tenantd knows).
        #[arg(long, default_value_t = 0)]
        to: i32,
        /// How many canary tenants to pick (default 1).
        #[arg(long, default_value_t = 0, conflicts_with = "canary")]
        canaries: u32,
        /// A canary tenant (id or slug); repeatable.
        #[arg(long)]
        canary: Vec<String>,
        /// Go on past the canaries without `fleet resume`.
        #[arg(long)]
        auto_continue: bool,
        /// Containers migrated at once (default 4, at most 8).
        #[arg(long, default_value_t = 0)]
        concurrency: u32,
        /// Stop once more than this many targets have failed.
        #[arg(long, default_value_t = 0)]
        max_failures: u32,
        /// How long a migration may wait for a lock in a container (default 5000).
        #[arg(long, default_value_t = 0)]
        lock_timeout_ms: u32,
        #[arg(long, default_value = "")]
        request_id: String,
        /// Print the operation and return without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Let a rollout waiting after its canaries go on, and follow it.
    Resume {
        /// The rollout: operations/<id> or the bare id.
        operation: String,
    },
    /// A rollout's progress and its targets (all, or those in one state).
    Status {
        /// The rollout: operations/<id> or the bare id.
        operation: String,
        /// pending, running, done, failed or skipped.
        #[arg(long)]
        state: Option<String>,
        /// Targets per request (all pages are printed).
        #[arg(long, default_value_t = 200)]
        page_size: i32,
    },
    /// Migrate one failed or skipped target again (tenant id or slug, or pool:<cluster>).
    Retry {
        /// The rollout: operations/<id> or the bare id.
        operation: String,
        /// The target: tenant id or slug, or pool:<cluster>.
        target: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
}

fn operation_name(s: &str) -> String {
    if s.starts_with("operations/") {
        s.to_owned()
    } else {
        format!("operations/{s}")
    }
}

fn target_state_name(s: i32) -> String {
    pb::rollout_target::State::try_from(s)
        .map(|s| s.as_str_name().to_lowercase())
        .unwrap_or_default()
}

pub async fn run(
    fleet: &mut FleetServiceClient<AuthChannel>,
    ops: &mut OperationServiceClient<AuthChannel>,
    cmd: FleetCommand,
) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Schema => {
            let f = fleet
                .get_fleet_schema(pb::GetFleetSchemaRequest {})
                .await
                .map_err(status)?
                .into_inner();
            println!("fleet version:   {}", f.version);
            println!("latest version:  {}", f.latest_version);
            for v in &f.tenants_by_version {
                println!("  v{:<4} {} tenants", v.version, v.tenants);
            }
        }
        FleetCommand::Migrate {
            to,
            canaries,
            canary,
            auto_continue,
            concurrency,
            max_failures,
            lock_timeout_ms,
            request_id,
            no_wait,
        } => {
            let to = if to != 0 {
                to
            } else {
                fleet
                    .get_fleet_schema(pb::GetFleetSchemaRequest {})
                    .await
                    .map_err(status)?
                    .into_inner()
                    .latest_version
            };
            let op = fleet
                .migrate_fleet(pb::MigrateFleetRequest {
                    target_version: to,
                    canary_count: canaries,
                    canary_tenants: canary,
                    auto_continue,
                    concurrency,
                    max_failures,
                    lock_timeout_ms,
                    request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            if no_wait {
                print_operation(&op);
            } else {
                follow(fleet, ops, &op.name).await?;
            }
        }
        FleetCommand::Resume { operation } => {
            let op = fleet
                .resume_rollout(pb::ResumeRolloutRequest {
                    name: operation_name(&operation),
                })
                .await
                .map_err(status)?
                .into_inner();
            follow(fleet, ops, &op.name).await?;
        }
        FleetCommand::Status {
            operation,
            state,
            page_size,
        } => {
            let state = match state.as_deref() {
                None => 0,
                Some(s) => match pb::rollout_target::State::from_str_name(&s.to_uppercase()) {
                    Some(s) => s as i32,
                    None => bail!("unknown state {s:?}: pending, running, done, failed, skipped"),
                },
            };
            let name = operation_name(&operation);
            let mut pages = crate::Pages::default();
            let mut header = true;
            while let Some(page_token) = pages.next() {
                let r = fleet
                    .list_rollout_targets(pb::ListRolloutTargetsRequest {
                        name: name.clone(),
                        state,
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                if header {
                    println!("{}", totals(&r));
                    println!(
                        "{:<36}  {:<8}  {:<8}  {:<7}  {:<8}  {:<5}  ERROR",
                        "TARGET", "TIER", "CLUSTER", "STATE", "VERSION", "TRIES"
                    );
                    header = false;
                }
                for t in &r.targets {
                    let name = if t.slug.is_empty() {
                        t.target.clone()
                    } else {
                        t.slug.clone()
                    };
                    let canary = if t.canary { " (canary)" } else { "" };
                    let version = match t.to_version {
                        0 => format!("{}", t.from_version),
                        to => format!("{}->{to}", t.from_version),
                    };
                    println!(
                        "{:<36}  {:<8}  {:<8}  {:<7}  {:<8}  {:<5}  {}",
                        format!("{name}{canary}"),
                        tier_name(t.tier),
                        t.cluster,
                        target_state_name(t.state),
                        version,
                        t.attempts,
                        t.error
                    );
                }
                pages.advance(r.next_page_token);
            }
        }
        FleetCommand::Retry {
            operation,
            target,
            request_id,
        } => {
            let op = fleet
                .retry_rollout_target(pb::RetryRolloutTargetRequest {
                    name: operation_name(&operation),
                    target,
                    request_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            follow(fleet, ops, &op.name).await?;
        }
    }
    Ok(())
}

fn totals(r: &pb::ListRolloutTargetsResponse) -> String {
    let total = r.pending + r.running + r.done + r.failed + r.skipped;
    format!(
        "to v{}: {} of {total} done, {} failed, {} skipped, {} running, {} pending",
        r.target_version, r.done, r.failed, r.skipped, r.running, r.pending
    )
}

/// Whether the rollout is parked at `approve`, waiting for ResumeRollout.
fn waiting_for_approval(op: &pb::Operation) -> bool {
    let m = op.metadata.clone().unwrap_or_default();
    !op.done
        && m.steps.iter().any(|s| {
            s.name == "approve"
                && s.state == pb::StepState::Pending as i32
                && !s.last_error.is_empty()
        })
        && m.steps
            .iter()
            .any(|s| s.name == "canary" && s.state == pb::StepState::Done as i32)
}

/// Shows the rollout's progress until it finishes or waits for approval.
async fn follow(
    fleet: &mut FleetServiceClient<AuthChannel>,
    ops: &mut OperationServiceClient<AuthChannel>,
    name: &str,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} containers  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let (op, r) = loop {
        let op = ops
            .get_operation(pb::GetOperationRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let r = fleet
            .list_rollout_targets(pb::ListRolloutTargetsRequest {
                name: name.to_owned(),
                state: pb::rollout_target::State::Failed as i32,
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let total = r.pending + r.running + r.done + r.failed + r.skipped;
        bar.set_length(total.max(1) as u64);
        bar.set_position((r.done + r.failed + r.skipped) as u64);
        let m = op.metadata.clone().unwrap_or_default();
        bar.set_message(format!(
            "{} failed, {} skipped  ({})",
            r.failed,
            r.skipped,
            op_state_name(m.state)
        ));
        if op.done || waiting_for_approval(&op) {
            break (op, r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    print_operation(&op);
    println!("{}", totals(&r));
    for t in &r.targets {
        let name = if t.slug.is_empty() {
            &t.target
        } else {
            &t.slug
        };
        println!("  failed: {name}: {}", t.error);
    }
    if waiting_for_approval(&op) {
        println!(
            "canaries migrated; check them, then: tenantctl fleet resume {}",
            op.name
        );
    }
    if let Some(pb::operation::Result::Error(e)) = &op.result {
        bail!("{} failed: {}", op.name, e.message);
    }
    Ok(())
}
