//! Other tenants' work while a benchmark runs an operation, and the p99 latencies it saw.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use tenantd::api::pb;

/// Other pool tenants' work while an operation runs: one transaction after another, each a read query
/// and a write as the pool application role. For each: when it ended, how long the read
/// query took, how long the whole transaction took (with its commit).
pub type Sample = (DateTime<Utc>, Duration, Duration);

pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    pub stop: CancellationToken,
}

/// A p99 and the number of samples it was taken over.
pub type P99 = (Duration, usize);

impl Load {
    pub fn start(pool: PgPool, tenants: Vec<Uuid>) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (s, st) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !st.is_cancelled() {
                let tenant = tenants[i % tenants.len()];
                i += 1;
                let started = Instant::now();
                let r: Result<Duration, sqlx::Error> = async {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SET LOCAL ROLE tenantd_pool_app")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                        .bind(tenant.to_string())
                        .execute(&mut *tx)
                        .await?;
                    let query = Instant::now();
                    sqlx::query(
                        "SELECT id, given_name, family_name FROM pool.patients
                         WHERE family_name = $1 ORDER BY given_name LIMIT 20",
                    )
                    .bind(format!("Family {}", i % 997))
                    .fetch_all(&mut *tx)
                    .await?;
                    let query = query.elapsed();
                    sqlx::query(
                        "INSERT INTO pool.audit_events (tenant_id, actor, action, entity)
                         VALUES ($1, 'bench', 'read', 'patient')",
                    )
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(query)
                }
                .await;
                match r {
                    Ok(query) => s
                        .lock()
                        .unwrap()
                        .push((Utc::now(), query, started.elapsed())),
                    Err(e) => {
                        assert!(st.is_cancelled(), "neighbour transaction failed: {e}");
                        return;
                    }
                }
            }
        });
        Load { samples, stop }
    }

    /// p99 of read queries and of whole transactions that ended in `[from, to]`.
    pub fn p99s(&self, (from, to): (DateTime<Utc>, DateTime<Utc>)) -> (P99, P99) {
        let samples = self.samples.lock().unwrap();
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|(at, _, _)| *at >= from && *at <= to)
            .collect();
        let p99 = |mut v: Vec<Duration>| -> P99 {
            v.sort();
            match v.len() {
                0 => (Duration::ZERO, 0),
                n => (v[((n as f64 - 1.0) * 0.99).round() as usize], n),
            }
        };
        (
            p99(window.iter().map(|s| s.1).collect()),
            p99(window.iter().map(|s| s.2).collect()),
        )
    }
}

pub fn step_window(
    op: &pb::Operation,
    name: &str,
) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let step = op
        .metadata
        .as_ref()
        .and_then(|m| m.steps.iter().find(|s| s.name == name))
        .ok_or_else(|| anyhow::anyhow!("no step {name}"))?;
    Ok((step.start_time.parse()?, step.end_time.parse()?))
}

pub fn span((a, b): (DateTime<Utc>, DateTime<Utc>)) -> Duration {
    (b - a).to_std().unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
