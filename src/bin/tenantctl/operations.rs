//! Operation commands (`operation get | list | watch | cancel`), and following an operation
//! with a progress bar, which every command that starts one does.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use tenantd::api::pb;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::exports::print_export;
use crate::status;
use crate::tenants::{print_tenant, tier_name};

#[derive(Subcommand)]
pub enum OperationCommand {
    /// Show an operation: every step with its state, start, duration and attempts, and what
    /// the operation did.
    Get {
        /// operations/<id> or the bare id.
        name: String,
    },
    /// List operations, oldest first.
    List {
        /// Only this tenant's (id or slug).
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Follow an operation with a progress bar until it is done.
    Watch {
        /// operations/<id> or the bare id.
        name: String,
    },
    /// Ask an operation to stop: honoured at its next step boundary before its point of no
    /// return; what it did is undone.
    Cancel {
        /// operations/<id> or the bare id.
        name: String,
    },
}

pub async fn run(channel: AuthChannel, cmd: OperationCommand) -> anyhow::Result<()> {
    let mut ops = OperationServiceClient::new(channel);
    match cmd {
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
    }
    Ok(())
}

fn op_name(name: &str) -> String {
    if name.starts_with("operations/") {
        name.to_owned()
    } else {
        format!("operations/{name}")
    }
}

/// Prints a just-started operation, or watches it until it is done.
pub async fn finish(
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
pub async fn watch(
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
    // Drawn from the first update on, with the operation's own number of steps.
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut last = None;
    while let Some(op) = stream.message().await.map_err(status)? {
        let m = op.metadata.clone().unwrap_or_default();
        bar.set_length(m.steps.len() as u64);
        if last.is_none() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(120));
        }
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
            // Every step done, the operation not yet marked so.
            None if done == m.steps.len() && !op.done => "finishing".to_owned(),
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

pub fn print_operation(op: &pb::Operation) {
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
            format!(", {} attempts", s.attempts)
        } else {
            String::new()
        };
        println!("  {:<18} {state:<11}{}{retry}", s.name, step_times(s));
    }
    if let Some(pb::operation_metadata::Details::TierChange(t)) = &m.details {
        println!(
            "move:        {} on {} -> {} on {}",
            tier_name(t.source_tier),
            t.source_cluster,
            tier_name(t.target_tier),
            t.target_cluster
        );
        if t.online {
            match t.copy_mb_per_s {
                0 => println!("copy:        while the tenant wrote (online)"),
                mb => println!("copy:        while the tenant wrote (online), paced at {mb} MB/s"),
            }
            if t.catch_up_rounds > 0 {
                println!(
                    "catch-up:    {}, {} applied, {} bytes behind after the last",
                    crate::counted(t.catch_up_rounds as usize, "round", "rounds"),
                    crate::counted(t.catch_up_changes as usize, "change", "changes"),
                    t.lag_bytes
                );
                for r in &t.recent_rounds {
                    println!(
                        "  round {:>3}: {} changes in {} ms, {} bytes behind after it",
                        r.round, r.changes, r.elapsed_ms, r.lag_bytes
                    );
                }
                println!(
                    "WAL held:    at most {} bytes on the source (the move's replication slot)",
                    t.peak_retained_wal_bytes
                );
            }
            if !t.unfence_time.is_empty() {
                println!(
                    "fenced tail: {} changes; of the rows written during the copy {} verified before the fence, {} inside it",
                    t.tail_changes, t.verified_ahead_rows, t.verified_changed_rows
                );
            }
        } else if !t.fenced_copy_because.is_empty() {
            println!("copy:        fenced throughout: {}", t.fenced_copy_because);
        }
        if t.rows_copied > 0 {
            println!("rows copied: {} (verified)", t.rows_copied);
            // Per table, as the copy reported them.
            let copied = m
                .steps
                .iter()
                .find(|s| matches!(s.name.as_str(), "copy" | "tail") && !s.items.is_empty());
            if let Some(copy) = copied {
                for i in &copy.items {
                    println!("  {:<28} {:>12} rows", i.name, i.done);
                }
            }
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
        if !r.point_in_time.is_empty() {
            print_point_in_time(r, &m.steps);
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
                "key:         {} scheduled for destruction on {}",
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
/// When a step started and how long it took (or runs so far): "started 16:42:53.540Z,
/// 1.21 s".
fn step_times(s: &pb::Step) -> String {
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (at(&s.start_time), at(&s.end_time)) {
        (Some(a), Some(b)) => format!(
            "started {}, {:.2} s",
            a.format("%H:%M:%S%.3fZ"),
            (b - a).num_milliseconds() as f64 / 1000.0
        ),
        (Some(a), None) => format!("started {}", a.format("%H:%M:%S%.3fZ")),
        _ => String::new(),
    }
}

/// A restore to a point in time: the moment, what it came from, and its phases with the time
/// each took so far.
fn print_point_in_time(r: &pb::Restore, steps: &[pb::Step]) {
    let replayed = if r.replayed_to.is_empty() {
        String::new()
    } else {
        format!(", last commit replayed {}", r.replayed_to)
    };
    let backup = if r.base_backup.is_empty() {
        "?"
    } else {
        &r.base_backup
    };
    println!(
        "to:          {} (base backup {backup}{replayed})",
        r.point_in_time
    );
    // Each phase and the steps it spans.
    const PHASES: [(&str, &[&str]); 5] = [
        ("preflight", &["preflight"]),
        ("fetch backup", &["fetch_backup"]),
        ("replay WAL", &["replay"]),
        ("extract", &["extract"]),
        (
            "verify & swap",
            &[
                "verify", "prepare", "stage", "load", "index", "check", "migrate", "grant",
                "fence", "swap", "activate", "cleanup",
            ],
        ),
    ];
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let phases: Vec<String> = PHASES
        .iter()
        .map(|(phase, names)| {
            let spanned: Vec<&pb::Step> = steps
                .iter()
                .filter(|s| names.contains(&s.name.as_str()))
                .collect();
            let start = spanned.iter().filter_map(|s| at(&s.start_time)).min();
            let end = spanned.iter().filter_map(|s| at(&s.end_time)).max();
            let all_done = spanned
                .iter()
                .all(|s| s.state == pb::StepState::Done as i32);
            match (start, end) {
                (Some(a), Some(b)) if all_done => {
                    format!(
                        "{phase} {:.1} s",
                        (b - a).num_milliseconds() as f64 / 1000.0
                    )
                }
                (Some(_), _) => format!("{phase} running"),
                _ => format!("{phase} pending"),
            }
        })
        .collect();
    println!("phases:      {}", phases.join(" · "));
}

fn print_pause(fence_time: &str, unfence_time: &str, pause_ms: i64) {
    if !unfence_time.is_empty() && !fence_time.is_empty() {
        println!("write pause: {pause_ms} ms ({fence_time} -> {unfence_time})");
    } else if !fence_time.is_empty() {
        println!("writes fenced since {fence_time}");
    }
}

pub fn op_state_name(s: i32) -> &'static str {
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
