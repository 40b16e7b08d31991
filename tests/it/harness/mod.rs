//! Test harness: two throwaway PostgreSQL clusters per test run (started once, stopped when
//! the test process exits), a fresh registry database per test, and tenantd either in-process
//! on 127.0.0.1:0 or as a real child process (for crash tests).
//!
//! - `clusters`: the clusters and superuser connections;
//! - `process`: tenantd as a child process;
//! - `aws`: the AWS emulator;
//! - `probes`: what the data plane holds for a tenant, and application-style connections.

mod aws;
mod clusters;
mod probes;
mod process;

pub use aws::*;
pub use clusters::*;
pub use probes::*;
pub use process::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::api::pb::audit_service_client::AuditServiceClient;
use tenantd::api::pb::backup_service_client::BackupServiceClient;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::export_service_client::ExportServiceClient;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::Role;
use tenantd::auth::client::{AuthChannel, Bearer, with_token};
use tenantd::config::{
    AuthConfig, ClusterConfig, Config, KeysConfig, ObjectsConfig, TenantSchemaConfig, TokenConfig,
    WorkflowConfig,
};
use tenantd::sql::Ident;

pub struct TestEnv {
    pub config: Config,
    pub dir: PathBuf,
    pub addr: String,
    /// Set when tenantd runs as a child process ([`TestEnv::spawn`]).
    pub process: Option<Process>,
    pub tenants: TenantServiceClient<AuthChannel>,
    pub ops: OperationServiceClient<AuthChannel>,
    pub exports: ExportServiceClient<AuthChannel>,
    pub deletions: DeletionServiceClient<AuthChannel>,
    pub audit: AuditServiceClient<AuthChannel>,
    pub fleet: FleetServiceClient<AuthChannel>,
    pub backups: BackupServiceClient<AuthChannel>,
    pub registry: PgPool,
    shutdown: CancellationToken,
}

impl TestEnv {
    /// A fresh registry and an in-process tenantd serving on 127.0.0.1:0, with the local key
    /// service and object store.
    pub async fn start() -> TestEnv {
        let (config, dir) = Self::config().await;
        Self::start_with(config, dir).await
    }

    /// Like [`TestEnv::start`], with AWS KMS and S3 (moto) instead of the local providers.
    pub async fn start_aws() -> TestEnv {
        let (config, dir) = Self::config_aws().await;
        Self::start_with(config, dir).await
    }

    pub async fn start_with(config: Config, dir: PathBuf) -> TestEnv {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let run = tenantd::server::run(config.clone(), listener, shutdown.clone());
        // A start-up refusal must be seen, not only felt as a reset connection.
        tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("tenantd (in-process) stopped: {e}");
            }
        });
        Self::connected(config, dir, format!("http://{addr}"), None, shutdown).await
    }

    /// Every entry of one audit chain (a tenant's, or "" for entries about no tenant),
    /// fetched two at a time so that paging is exercised.
    pub async fn audit_events(&mut self, tenant: &str) -> Vec<pb::AuditEvent> {
        let audit = self.audit.clone();
        all_pages(|page_token| {
            let mut audit = audit.clone();
            async move {
                let page = audit
                    .list_audit_events(pb::ListAuditEventsRequest {
                        tenant: tenant.into(),
                        page_size: 2,
                        page_token,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (page.events, page.next_page_token)
            }
        })
        .await
    }

    /// Every target of a rollout, two per page so that paging is exercised.
    pub async fn rollout_targets(&mut self, op: &str) -> Vec<pb::RolloutTarget> {
        let fleet = self.fleet.clone();
        all_pages(|page_token| {
            let mut fleet = fleet.clone();
            async move {
                let page = fleet
                    .list_rollout_targets(pb::ListRolloutTargetsRequest {
                        name: op.into(),
                        state: 0,
                        page_size: 2,
                        page_token,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (page.targets, page.next_page_token)
            }
        })
        .await
    }

    /// GetTenant by id or slug; panics if it fails.
    pub async fn tenant(&mut self, tenant: &str) -> pb::Tenant {
        self.tenants
            .get_tenant(pb::GetTenantRequest {
                tenant: tenant.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The signing key's PEM, written to a file in the environment's directory (for
    /// tenantctl), and its DER.
    pub async fn signing_key(&mut self) -> (PathBuf, Vec<u8>) {
        let pem = self
            .exports
            .get_signing_key(pb::GetSigningKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .public_key_pem;
        let path = self.dir.join("signing.pem");
        std::fs::write(&path, &pem).unwrap();
        (path, tenantd::keys::public_key_from_pem(&pem).unwrap())
    }

    /// A fresh registry and tenantd as a child process with the given failpoints.
    pub async fn spawn(failpoints: &str) -> TestEnv {
        let (config, dir) = Self::config().await;
        Self::spawn_with(config, dir, failpoints).await
    }

    /// [`TestEnv::spawn`] with AWS KMS and S3 (moto).
    pub async fn spawn_aws(failpoints: &str) -> TestEnv {
        let (config, dir) = Self::config_aws().await;
        Self::spawn_with(config, dir, failpoints).await
    }

    pub async fn spawn_with(config: Config, dir: PathBuf, failpoints: &str) -> TestEnv {
        let process = Process::spawn(&config, &dir, failpoints);
        let addr = process.addr.clone();
        Self::connected(config, dir, addr, Some(process), CancellationToken::new()).await
    }

    async fn connected(
        config: Config,
        dir: PathBuf,
        addr: String,
        process: Option<Process>,
        shutdown: CancellationToken,
    ) -> TestEnv {
        let channel = as_admin(connect(&addr).await);
        let registry = PgPoolOptions::new()
            .max_connections(2)
            .connect(&config.registry_url)
            .await
            .unwrap();
        TestEnv {
            tenants: TenantServiceClient::new(channel.clone()),
            exports: ExportServiceClient::new(channel.clone()),
            deletions: DeletionServiceClient::new(channel.clone()),
            audit: AuditServiceClient::new(channel.clone()),
            fleet: FleetServiceClient::new(channel.clone()),
            backups: BackupServiceClient::new(channel.clone()),
            ops: OperationServiceClient::new(channel),
            config,
            dir,
            addr,
            process,
            registry,
            shutdown,
        }
    }

    /// A registry database of its own and a configuration naming both test clusters.
    pub async fn config() -> (Config, PathBuf) {
        let id = Uuid::new_v4().simple().to_string();
        let db = Ident::new(format!("reg_{id}")).unwrap();
        tenantd::registry::Registry::create_database_if_missing(
            &cluster_url("main", "postgres"),
            &db,
        )
        .await
        .unwrap();
        let dir = std::env::temp_dir().join(format!("tenantd-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            registry_url: cluster_url("main", db.as_str()),
            clusters: vec![
                ClusterConfig {
                    name: "main".into(),
                    admin_url: cluster_url("main", "postgres"),
                    public_host: None,
                    public_port: None,
                    shared_database: "tenants".into(),
                },
                ClusterConfig {
                    name: "second".into(),
                    admin_url: cluster_url("second", "postgres"),
                    public_host: None,
                    public_port: None,
                    shared_database: "tenants".into(),
                },
            ],
            workflow: WorkflowConfig {
                workers: 4,
                lease_ms: 1_500,
                backoff_ms: 100,
                max_backoff_ms: 1_000,
                max_failures: 5,
                poll_ms: 100,
                fence_wait_ms: 5_000,
                catch_up_ms: 60_000,
                copy_mb_per_s: 0,
            },
            keys: KeysConfig::Local {
                master_key_file: dir.join("master.key"),
            },
            objects: ObjectsConfig::Local {
                dir: dir.join("objects"),
            },
            aws: Default::default(),
            deletion: Default::default(),
            // Expired logins go within seconds, so tests see the reaper work.
            credentials: tenantd::config::CredentialsConfig {
                reap_interval_seconds: 2,
                ..Default::default()
            },
            auth: AuthConfig {
                tokens: ROLES
                    .iter()
                    .map(|&role| TokenConfig {
                        name: format!("it-{role}"),
                        role,
                        sha256: tenantd::auth::token_hash(&token(role)),
                        tenants: None,
                    })
                    .chain([TokenConfig {
                        name: EU_APPLICATION.into(),
                        role: Role::Application,
                        sha256: tenantd::auth::token_hash(&eu_application_token()),
                        tenants: Some(EU_SELECTOR.into()),
                    }])
                    .collect(),
                ..Default::default()
            },
            tls: None,
            server: Default::default(),
            limits: Default::default(),
            metrics: Default::default(),
            grpc_web: Default::default(),
            // The example schema, read from its directory as a user's would be.
            tenant_schema: TenantSchemaConfig {
                dir: Some(EXAMPLE_SCHEMA_DIR.into()),
                extensions: Vec::new(),
            },
            // Tests tick the scheduler themselves, with a clock they control (`replica`).
            backups: tenantd::config::BackupsConfig {
                scheduler: false,
                ..Default::default()
            },
            pitr: None,
        };
        (config, dir)
    }

    /// [`TestEnv::config`] with a third cluster, `archived`, backed up through pgBackRest
    /// for point-in-time restores (`[pitr]`).
    pub async fn config_pitr() -> (Config, PathBuf) {
        let (mut config, dir) = Self::config().await;
        let pitr = tokio::task::spawn_blocking(clusters::archived_pitr)
            .await
            .unwrap();
        config.clusters.push(ClusterConfig {
            name: "archived".into(),
            admin_url: cluster_url("archived", "postgres"),
            public_host: None,
            public_port: None,
            shared_database: "tenants".into(),
        });
        config.pitr = Some(pitr);
        (config, dir)
    }

    /// [`TestEnv::config`] with KMS and S3 on moto: keys under aliases and a bucket of this
    /// environment's own.
    pub async fn config_aws() -> (Config, PathBuf) {
        let (mut config, dir) = Self::config().await;
        let id = &Uuid::new_v4().simple().to_string()[..12];
        config.aws = aws_config(&dir);
        config.keys = KeysConfig::AwsKms {
            alias_prefix: format!("alias/it-{id}/"),
            service_key: format!("alias/it-{id}-service"),
            signing_key: format!("alias/it-{id}-signing"),
        };
        let bucket = format!("it-{id}");
        create_bucket(&config.aws, &bucket).await;
        config.objects = ObjectsConfig::S3 {
            bucket,
            prefix: "tenantd/".into(),
            endpoint_url: None,
            force_path_style: true,
        };
        (config, dir)
    }

    /// Replaces the tenantd child process (killing it if it still runs) by a new one on the
    /// same registry with `failpoints`. Clients connect lazily: the new process may be
    /// meant to crash before anyone talks to it.
    pub async fn restart(&mut self, failpoints: &str) {
        drop(self.process.take());
        let p = Process::spawn(&self.config, &self.dir, failpoints);
        let channel = Channel::from_shared(p.addr.clone()).unwrap().connect_lazy();
        self.talk_to(channel);
        self.addr = p.addr.clone();
        self.process = Some(p);
    }

    /// Talks to `p` (another tenantd process on this registry) from now on; the process the
    /// environment had is killed.
    pub async fn switch_to(&mut self, p: Process) {
        self.addr = p.addr.clone();
        self.process = Some(p);
        self.ready().await;
    }

    /// Waits for the operation and returns the tenant it resulted in; panics otherwise.
    pub async fn wait_tenant(&mut self, name: &str) -> (pb::Operation, pb::Tenant) {
        let done = self.wait(name).await;
        match &done.result {
            Some(pb::operation::Result::Tenant(t)) => {
                let t = t.clone();
                (done, t)
            }
            other => panic!("{name} did not end with a tenant: {other:?}"),
        }
    }

    /// Waits until the (restarted) process accepts connections, and talks to it from then on.
    pub async fn ready(&mut self) {
        let channel = connect(&self.addr).await;
        self.talk_to(channel);
    }

    /// Every client of the environment on `channel` (after a restart: the new process).
    fn talk_to(&mut self, channel: Channel) {
        let channel = as_admin(channel);
        self.audit = AuditServiceClient::new(channel.clone());
        self.fleet = FleetServiceClient::new(channel.clone());
        self.backups = BackupServiceClient::new(channel.clone());
        self.tenants = TenantServiceClient::new(channel.clone());
        self.exports = ExportServiceClient::new(channel.clone());
        self.deletions = DeletionServiceClient::new(channel.clone());
        self.ops = OperationServiceClient::new(channel);
    }

    /// The child process's exit code once it exits by itself (None if killed by a signal).
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.process
            .as_mut()
            .expect("tenantd runs as a child process")
            .wait_exit(Duration::from_secs(60))
    }

    pub async fn create(&mut self, slug: &str, tier: pb::Tier, cluster: &str) -> pb::Operation {
        self.tenants
            .create_tenant(pb::CreateTenantRequest {
                slug: slug.into(),
                display_name: format!("{slug} clinic"),
                plan: "standard".into(),
                tier: tier as i32,
                labels: [("env".to_owned(), "test".to_owned())].into(),
                cluster: cluster.into(),
                request_id: String::new(),
            })
            .await
            .expect("create tenant")
            .into_inner()
    }

    /// Waits for the operation to finish (up to 60 s) and returns it.
    pub async fn wait(&mut self, name: &str) -> pb::Operation {
        self.wait_long(name, Duration::from_secs(60)).await
    }

    /// [`TestEnv::wait`], for operations that take longer than a minute.
    pub async fn wait_long(&mut self, name: &str, within: Duration) -> pb::Operation {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            let reply = self
                .ops
                .wait_operation(pb::WaitOperationRequest {
                    name: name.into(),
                    timeout_seconds: 10,
                })
                .await;
            match reply {
                Ok(op) if op.get_ref().done => return op.into_inner(),
                Ok(op) => last = Some(op.into_inner()),
                // A freshly restarted process may not listen yet.
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("wait operation {name}: {e:?}"),
            }
            // What it was doing (and the last step error) says why it did not finish.
            assert!(
                Instant::now() < deadline,
                "operation {name} not done after {} s: {last:?}",
                within.as_secs()
            );
        }
    }

    /// Requests the operation's cancellation and waits until it is done.
    pub async fn cancel_and_wait(&mut self, name: &str) -> pb::Operation {
        self.ops
            .cancel_operation(pb::CancelOperationRequest { name: name.into() })
            .await
            .unwrap();
        self.wait(name).await
    }

    /// Returns once the operation's `step` is done (polling).
    pub async fn until_step_done(&mut self, name: &str, step: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let op = self
                .ops
                .get_operation(pb::GetOperationRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner();
            let steps = op.metadata.unwrap().steps;
            if steps
                .iter()
                .any(|s| s.name == step && s.state == pb::StepState::Done as i32)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {step} not done after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a tenant and waits until provisioning succeeded; returns the tenant.
    pub async fn provision(&mut self, slug: &str, tier: pb::Tier, cluster: &str) -> pb::Tenant {
        let op = self.create(slug, tier, cluster).await;
        let op = self.wait(&op.name).await;
        match op.result {
            Some(pb::operation::Result::Tenant(t)) => t,
            other => panic!("provisioning {slug} did not succeed: {other:?}"),
        }
    }

    /// The key service and object store this environment's tenantd uses.
    pub async fn keys(&self) -> std::sync::Arc<dyn tenantd::keys::KeyService> {
        // The in-process server may still be migrating the registry.
        let registry = tenantd::registry::Registry::connect(&self.config.registry_url)
            .await
            .unwrap();
        registry.migrate().await.unwrap();
        tenantd::server::key_service(&self.config, &self.registry)
            .await
            .unwrap()
    }

    /// Another replica's control service on this environment's registry, without workers or
    /// a gRPC server: what a test hands to `tenantd::scheduler::tick` with its own clock.
    pub async fn replica(&self) -> tenantd::service::Control {
        let deps = tenantd::server::context(self.config.clone()).await.unwrap();
        let events = tenantd::registry::events::OperationEvents::start(
            deps.registry.pool().clone(),
            self.shutdown.child_token(),
        );
        tenantd::service::Control::new(deps, events)
    }

    pub async fn objects(&self) -> std::sync::Arc<dyn tenantd::blobs::ObjectStore> {
        tenantd::server::object_store(&self.config).await.unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The real `tenantctl` with `args` (async: an in-process tenantd shares the test's runtime
/// and must keep serving): Ok(stdout) when it succeeds, else Err(stdout and stderr).
pub async fn tenantctl(args: &[&std::ffi::OsStr], token: Option<Role>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantctl"));
    cmd.env_remove("TENANTD_ADDR").env_remove("TENANTD_TOKEN");
    if let Some(role) = token {
        cmd.env("TENANTD_TOKEN", self::token(role));
    }
    let run = cmd.args(args).output().await.unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    if run.status.success() {
        Ok(out)
    } else {
        Err(out + &String::from_utf8_lossy(&run.stderr))
    }
}

/// Every item of a paged listing: `page(token)` returns one page and the next token ("" at
/// the end).
pub async fn all_pages<T, F, Fut>(mut page: F) -> Vec<T>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<T>, String)>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await;
        out.extend(items);
        if next.is_empty() {
            return out;
        }
        token = next;
    }
}

/// Every role, for tests that call as each.
pub const ROLES: [Role; 5] = [
    Role::Admin,
    Role::Billing,
    Role::Compliance,
    Role::Viewer,
    Role::Application,
];

/// tenantd's `tenant_isolation` policy as PostgreSQL 15 prints it: the tenant in the login's
/// name, else in `app.tenant_id`, each an InitPlan.
pub const POLICY_DEPARSED: &str = r#"(tenant_id = COALESCE((( SELECT "substring"((SESSION_USER)::text, '^tl?_([0-9a-f]{32})(_[0-9a-z]+)?$'::text) AS "substring"))::uuid, (( SELECT current_setting('app.tenant_id'::text, true) AS current_setting))::uuid))"#;

/// The principal of the application token limited to tenants labelled [`EU_SELECTOR`].
pub const EU_APPLICATION: &str = "it-application-eu";
pub const EU_SELECTOR: &str = "region=eu";

/// The bearer token of [`EU_APPLICATION`].
/// Tests whose outcome depends on keeping pace (an online move catching up with a writer at
/// full speed) and tests that load the machine in bursts (pgBackRest backing up and
/// restoring clusters of their own, a flood of 200 callers) run one at a time: on two
/// cores, two of them at once can leave a catch-up behind its writer for longer than the
/// test waits, or the registry's connections busy past a caller's wait.
static PACE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The id in an operation's name (`operations/<uuid>`).
pub fn operation_id(op: &pb::Operation) -> Uuid {
    op.name
        .strip_prefix("operations/")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not an operation name: {}", op.name))
}

pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    PACE.lock().await
}

pub fn eu_application_token() -> String {
    format!("tdt_{EU_APPLICATION}-token")
}

/// The test environment's bearer token for `role` (its hash is in every test configuration).
pub fn token(role: Role) -> String {
    format!("tdt_it-{role}-token")
}

/// `channel` calling as `role`.
pub fn as_role(channel: Channel, role: Role) -> AuthChannel {
    with_token(channel, Bearer::new(Some(&token(role))).unwrap())
}

/// `channel` calling as the admin: what the environment's clients do.
pub fn as_admin(channel: Channel) -> AuthChannel {
    as_role(channel, Role::Admin)
}

pub async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("tenantd at {addr} unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The field named by an INVALID_ARGUMENT status's BadRequest detail.
pub fn bad_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}
