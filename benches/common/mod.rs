//! What every benchmark starts from: tenantd in-process on the embedded default (a durable,
//! fsync-on PostgreSQL under a temporary state dir), and gRPC clients to it.

#[allow(dead_code)] // used by the benches that measure other tenants' latency
pub mod load;

use std::path::PathBuf;
use std::time::Duration;

use tenantd::auth::client::{AuthChannel, Bearer, with_token};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use sqlx::PgPool;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::api::pb::audit_service_client::AuditServiceClient;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::export_service_client::ExportServiceClient;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::dataplane::tables;
use tenantd::dev::DevStack;

pub struct Running {
    pub stack: DevStack,
    pub clients: Clients,
    /// tenantd's gRPC address (`http://…`), for benches that open connections of their own.
    #[allow(dead_code)] // each bench uses its own subset
    pub addr: String,
    token: String,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tenantd::server::ServerError>>,
}

/// Starts the embedded stack under a fresh temporary dir named after `name`, and tenantd.
#[allow(dead_code)] // the benches that tune nothing
pub async fn start(name: &str) -> anyhow::Result<Running> {
    start_tuned(name, |_| {}).await
}

/// [`start`], with `tune` changing the configuration tenantd starts with.
#[allow(dead_code)] // the benches that tune
pub async fn start_tuned(
    name: &str,
    tune: impl FnOnce(&mut tenantd::config::Config),
) -> anyhow::Result<Running> {
    start_with(name, false, tune).await
}

/// [`start_tuned`]; `pitr`: the embedded cluster archives its WAL through pgBackRest, as
/// `tenantd dev` does (docs/pitr.md).
pub async fn start_with(
    name: &str,
    pitr: bool,
    tune: impl FnOnce(&mut tenantd::config::Config),
) -> anyhow::Result<Running> {
    let state_dir =
        std::env::temp_dir().join(format!("tenantd-bench-{name}-{}", std::process::id()));
    let mut stack = tenantd::dev::start(&state_dir, 0, "127.0.0.1:0".parse()?, false, pitr).await?;
    tune(&mut stack.config);
    let token = tenantd::auth::new_token();
    stack.config.auth.tokens.push(tenantd::config::TokenConfig {
        name: "bench".into(),
        role: tenantd::auth::Role::Admin,
        sha256: tenantd::auth::token_hash(&token),
        tenants: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tenantd::server::run(
        stack.config.clone(),
        listener,
        shutdown.clone(),
    ));
    let channel = loop {
        match Channel::from_shared(addr.clone())?.connect().await {
            Ok(c) => break with_token(c, Bearer::new(Some(&token))?),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Ok(Running {
        addr,
        token,
        stack,
        clients: Clients {
            tenants: TenantServiceClient::new(channel.clone()),
            exports: ExportServiceClient::new(channel.clone()),
            deletions: DeletionServiceClient::new(channel.clone()),
            audit: AuditServiceClient::new(channel.clone()),
            fleet: FleetServiceClient::new(channel.clone()),
            ops: OperationServiceClient::new(channel),
        },
        state_dir,
        shutdown,
        server,
    })
}

impl Running {
    /// `channel` calling as the bench's admin.
    #[allow(dead_code)] // each bench uses its own subset
    pub fn with_token(&self, channel: Channel) -> anyhow::Result<AuthChannel> {
        Ok(with_token(channel, Bearer::new(Some(&self.token))?))
    }
}

/// The `p` quantile (0–1) of sorted durations.
#[allow(dead_code)] // each bench uses its own subset
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// The tenant size the data benchmarks use: 1,000,000 rows, or `TENANTD_BENCH_ROWS`.
#[allow(dead_code)]
pub fn rows() -> i64 {
    std::env::var("TENANTD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// gRPC clients to the running tenantd, and the calls benchmarks share.
#[derive(Clone)]
#[allow(dead_code)] // each bench uses its own subset
pub struct Clients {
    pub tenants: TenantServiceClient<AuthChannel>,
    pub ops: OperationServiceClient<AuthChannel>,
    pub exports: ExportServiceClient<AuthChannel>,
    pub deletions: DeletionServiceClient<AuthChannel>,
    pub audit: AuditServiceClient<AuthChannel>,
    pub fleet: FleetServiceClient<AuthChannel>,
}

#[allow(dead_code)] // each bench uses its own subset
impl Clients {
    pub async fn provision(&mut self, slug: &str, tier: pb::Tier) -> anyhow::Result<Uuid> {
        let op = self
            .tenants
            .create_tenant(pb::CreateTenantRequest {
                slug: slug.into(),
                tier: tier as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        let (_, tenant) = self.succeeded(op, "provisioning").await?;
        Ok(tenant.id.parse()?)
    }

    /// Waits for `op`; it must have succeeded with a tenant.
    pub async fn succeeded(
        &mut self,
        op: pb::Operation,
        what: &str,
    ) -> anyhow::Result<(pb::Operation, pb::Tenant)> {
        let op = self.wait(op.name).await?;
        match &op.result {
            Some(pb::operation::Result::Tenant(t)) => Ok((op.clone(), t.clone())),
            other => anyhow::bail!("{what} failed: {other:?}"),
        }
    }

    pub async fn placement(&mut self, tenant: Uuid) -> anyhow::Result<pb::Placement> {
        let t = self
            .tenants
            .get_tenant(pb::GetTenantRequest {
                tenant: tenant.to_string(),
            })
            .await?
            .into_inner();
        t.placement
            .ok_or_else(|| anyhow::anyhow!("tenant has no placement"))
    }

    pub async fn wait(&mut self, name: String) -> anyhow::Result<pb::Operation> {
        loop {
            let op = self
                .ops
                .wait_operation(pb::WaitOperationRequest {
                    name: name.clone(),
                    timeout_seconds: 60,
                })
                .await?
                .into_inner();
            if op.done {
                return Ok(op);
            }
        }
    }

    pub async fn change_tier(
        &mut self,
        tenant: Uuid,
        tier: pb::Tier,
    ) -> anyhow::Result<pb::Operation> {
        self.change_tier_paced(tenant, tier, 0).await
    }

    /// As [`Self::change_tier`], the online copy reading at most `mb_per_s` (0: unbounded).
    pub async fn change_tier_paced(
        &mut self,
        tenant: Uuid,
        tier: pb::Tier,
        mb_per_s: u32,
    ) -> anyhow::Result<pb::Operation> {
        let op = self
            .tenants
            .change_tier(pb::ChangeTierRequest {
                tenant: tenant.to_string(),
                tier: tier as i32,
                copy_mb_per_s: mb_per_s,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(self.succeeded(op, "tier change").await?.0)
    }

    /// Exports `tenant` and waits; the export.
    pub async fn export(&mut self, tenant: Uuid) -> anyhow::Result<pb::Export> {
        let op = self
            .exports
            .export_tenant(pb::ExportTenantRequest {
                tenant: tenant.to_string(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        let op = self.wait(op.name).await?;
        match op.result {
            Some(pb::operation::Result::Export(e)) => Ok(e),
            other => anyhow::bail!("export failed: {other:?}"),
        }
    }
}

impl Running {
    /// Stops tenantd and PostgreSQL and removes the state dir.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let _ = self.server.await;
        let stack = self.stack;
        tokio::task::spawn_blocking(move || drop(stack)).await?;
        let _ = std::fs::remove_dir_all(&self.state_dir);
        Ok(())
    }
}

/// A schema-tier tenant `slug` filled with about `rows` rows and analysed: its id, a pool on
/// the shared database, its schema and its rows' size in MB.
#[allow(dead_code)] // used by the benches that restore
pub async fn big_schema_tenant(
    running: &Running,
    slug: &str,
    rows: i64,
) -> anyhow::Result<(Uuid, PgPool, String, f64)> {
    let mut c = running.clients.clone();
    let tenant = c.provision(slug, pb::Tier::Schema).await?;
    let shared = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&running.stack.postgres.url("tenants"))
        .await?;
    println!("filling: {rows} rows");
    let schema = c.placement(tenant).await?.schema;
    fill(&shared, &schema, tenant, rows).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&shared).await?;
    let mb = tenant_megabytes(&shared, &schema, tenant).await?;
    Ok((tenant, shared, schema, mb))
}

/// Inserts about `rows` rows for `tenant` across the tenant tables in `schema`.
#[allow(dead_code)] // used by the benches that move data
pub async fn fill(pool: &PgPool, schema: &str, tenant: Uuid, rows: i64) -> anyhow::Result<()> {
    let patients = (rows / 10).max(1);
    let sql = format!(
        "INSERT INTO S.patients (tenant_id, mrn, given_name, family_name, birth_date, sex, email)
         SELECT $1, 'mrn-' || g, 'Given' || g, 'Family ' || (g % 997), date '1940-01-01' + g % 20000,
                (ARRAY['female','male','other','unknown'])[1 + g % 4], 'p' || g || '@example.org'
         FROM generate_series(1, {patients}) g;
         INSERT INTO S.encounters (tenant_id, patient_id, kind, started_at, reason)
         SELECT tenant_id, id, 'ambulatory', now() - interval '1 day', 'routine check-up'
         FROM S.patients WHERE tenant_id = $1;
         INSERT INTO S.observations (tenant_id, patient_id, encounter_id, code, value_numeric, unit, observed_at)
         SELECT e.tenant_id, e.patient_id, e.id, c, 60 + random() * 40, '/min', now()
         FROM S.encounters e, unnest(ARRAY['8867-4', '8310-5', '9279-1']) c WHERE e.tenant_id = $1;
         INSERT INTO S.clinical_notes (tenant_id, patient_id, encounter_id, author, body)
         SELECT tenant_id, patient_id, id, 'dr-who', repeat('Patient seen, stable. ', 8)
         FROM S.encounters WHERE tenant_id = $1;
         INSERT INTO S.appointments (tenant_id, patient_id, type_code, starts_at)
         SELECT tenant_id, id, 'follow-up', now() + interval '7 days' FROM S.patients WHERE tenant_id = $1;
         INSERT INTO S.audit_events (tenant_id, actor, action, entity, entity_id)
         SELECT tenant_id, 'dr-who', a, 'patient', id
         FROM S.patients, unnest(ARRAY['read', 'update', 'print']) a WHERE tenant_id = $1;"
    )
    .replace("S.", &format!("\"{schema}\"."));
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
            .bind(tenant)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The tenant's data volume: the bytes of its rows' text form, over every table.
#[allow(dead_code)]
pub async fn tenant_megabytes(pool: &PgPool, schema: &str, tenant: Uuid) -> anyhow::Result<f64> {
    let mut bytes = 0i64;
    for table in tables::names_in(pool, schema).await? {
        let q = format!(
            "SELECT coalesce(sum(octet_length(t::text)), 0)::bigint FROM \"{schema}\".{table} t WHERE tenant_id = $1"
        );
        let (b,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .fetch_one(pool)
            .await?;
        bytes += b;
    }
    Ok(bytes as f64 / 1e6)
}
