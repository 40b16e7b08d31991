//! Test harness: two throwaway PostgreSQL clusters per test run (started once, stopped when
//! the test process exits), a fresh registry database per test, and tenantd either in-process
//! on 127.0.0.1:0 or as a real child process (for crash tests).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::api::pb::audit_service_client::AuditServiceClient;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::export_service_client::ExportServiceClient;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::Role;
use tenantd::auth::client::{AuthChannel, Bearer, with_token};
use tenantd::config::{
    AuthConfig, AwsConfig, ClusterConfig, Config, KeysConfig, ObjectsConfig, TokenConfig,
    WorkflowConfig,
};
use tenantd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tenantd::sql::Ident;

pub struct Clusters {
    pub main: EmbeddedPostgres,
    pub second: EmbeddedPostgres,
}

/// The run's two clusters: `main` (registry, pool and schema tiers) and `second`.
pub fn clusters() -> &'static Clusters {
    static CLUSTERS: OnceLock<Clusters> = OnceLock::new();
    CLUSTERS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("tenantd-it-{}", std::process::id()));
        let start = |name: &str| {
            EmbeddedPostgres::start(&EmbeddedOptions {
                state_dir: base.join(name),
                port: 0,
                ephemeral: true,
            })
            .unwrap_or_else(|e| panic!("cannot start test cluster {name}: {e}"))
        };
        // Remove clusters left by earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("tenantd-it-")
                    && !PathBuf::from(format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Clusters {
            main: start("main"),
            second: start("second"),
        }
    })
}

pub fn cluster_url(cluster: &str, db: &str) -> String {
    let c = clusters();
    match cluster {
        "main" => c.main.url(db),
        "second" => c.second.url(db),
        other => panic!("no test cluster {other}"),
    }
}

/// A superuser pool on `db` of `cluster` (bypasses RLS: for setting up and inspecting).
pub async fn admin(cluster: &str, db: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster_url(cluster, db))
        .await
        .expect("admin connection")
}

pub async fn admin_conn(cluster: &str, db: &str) -> PgConnection {
    PgConnection::connect(&cluster_url(cluster, db))
        .await
        .expect("admin connection")
}

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
        tokio::spawn(tenantd::server::run(
            config.clone(),
            listener,
            shutdown.clone(),
        ));
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
            },
            keys: KeysConfig::Local {
                master_key_file: dir.join("master.key"),
            },
            objects: ObjectsConfig::Local {
                dir: dir.join("objects"),
            },
            aws: Default::default(),
            deletion: Default::default(),
            auth: AuthConfig {
                tokens: ROLES
                    .iter()
                    .map(|&role| TokenConfig {
                        name: format!("it-{role}"),
                        role,
                        sha256: tenantd::auth::token_hash(&token(role)),
                    })
                    .collect(),
                ..Default::default()
            },
            tls: None,
            server: Default::default(),
            metrics: Default::default(),
            grpc_web: Default::default(),
        };
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
        let deadline = Instant::now() + Duration::from_secs(60);
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
                Ok(_) => {}
                // A freshly restarted process may not listen yet.
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("wait operation {name}: {e:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "operation {name} not done after 60 s"
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

    pub fn master_key(&self) -> PathBuf {
        match &self.config.keys {
            KeysConfig::Local { master_key_file } => master_key_file.clone(),
            KeysConfig::AwsKms { .. } => panic!("this environment uses AWS KMS"),
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
pub const ROLES: [Role; 4] = [Role::Admin, Role::Billing, Role::Compliance, Role::Viewer];

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

/// A moto_server (AWS emulator) for the test run, on loopback, stopped with the test process.
/// The command is `$TENANTD_MOTO_SERVER`, else the pinned one scripts/setup installs into
/// `target/moto`, else `moto_server` from the PATH.
pub fn moto() -> &'static str {
    static MOTO: OnceLock<String> = OnceLock::new();
    MOTO.get_or_init(|| {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto");
        let (program, pythonpath) = match std::env::var("TENANTD_MOTO_SERVER") {
            Ok(p) => (p, None),
            Err(_) if pinned.join("bin/moto_server").exists() => (
                pinned.join("bin/moto_server").display().to_string(),
                Some(pinned.clone()),
            ),
            Err(_) => ("moto_server".to_owned(), None),
        };
        let mut cmd = Command::new(&program);
        if let Some(dir) = pythonpath {
            cmd.env("PYTHONPATH", dir);
        }
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The spawning thread must outlive the child (PDEATHSIG follows the thread), so a
        // thread of its own spawns it and waits for it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        });
        rx.recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start {program} (run scripts/setup): {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// AWS settings pointing at moto, with a throwaway credentials file in `dir`.
pub fn aws_config(dir: &std::path::Path) -> AwsConfig {
    let credentials = dir.join("aws-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto().to_owned()),
        profile: None,
        credentials_file: Some(credentials),
    }
}

pub async fn create_bucket(aws: &AwsConfig, bucket: &str) {
    let sdk = tenantd::aws::sdk_config(aws).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(bucket).send().await.unwrap();
}

/// tenantd as a child process on `port`, with the given failpoints.
pub struct Process {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `config` as TOML for `tenantd serve`, listening on `port`.
pub fn write_config(config: &Config, dir: &std::path::Path, port: u16) -> PathBuf {
    let mut config = config.clone();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let path = dir.join(format!("tenantd-{port}.toml"));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

impl Process {
    pub fn spawn(config: &Config, dir: &std::path::Path, failpoints: &str) -> Process {
        Self::spawn_env(config, dir, failpoints, &[])
    }

    /// [`Process::spawn`] with more environment variables (`TENANTD_LOG_FORMAT`, `OTEL_*`);
    /// the log is in [`Process::log`].
    pub fn spawn_env(
        config: &Config,
        dir: &std::path::Path,
        failpoints: &str,
        env: &[(&str, &str)],
    ) -> Process {
        let port = free_port();
        let path = write_config(config, dir, port);
        let log_path = dir.join(format!("tenantd-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tenantd"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("TENANTD_FAILPOINTS", failpoints)
            .envs(env.iter().copied())
            .env("TENANTD_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tenantd");
        Process {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            log: log_path,
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the data plane holds for one tenant: schemas named after it, databases, roles.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    pub schemas: i64,
    pub databases: i64,
    pub roles: i64,
    pub pool_rows: i64,
}

pub async fn footprint(tenant_id: &str, cluster: &str) -> Footprint {
    let id = Uuid::parse_str(tenant_id).unwrap();
    let own = format!("t_{}", id.simple());
    let admin_db = admin(cluster, "postgres").await;
    let (databases,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&own)
            .fetch_one(&admin_db)
            .await
            .unwrap();
    let (roles,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&own)
        .fetch_one(&admin_db)
        .await
        .unwrap();
    let (has_shared,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenants')")
            .fetch_one(&admin_db)
            .await
            .unwrap();
    let (mut schemas, mut pool_rows) = (0, 0);
    if has_shared {
        let shared = admin(cluster, "tenants").await;
        schemas =
            sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                .bind(&own)
                .fetch_one(&shared)
                .await
                .unwrap()
                .0;
        let (pool_exists,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'pool' AND tablename = 'appointment_types')",
        )
        .fetch_one(&shared)
        .await
        .unwrap();
        if pool_exists {
            for table in tenantd::dataplane::catalog::TABLES {
                let q = format!("SELECT count(*) FROM pool.{table} WHERE tenant_id = $1");
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
                    .bind(id)
                    .fetch_one(&shared)
                    .await
                    .unwrap();
                pool_rows += n;
            }
        }
    }
    Footprint {
        schemas,
        databases,
        roles,
        pool_rows,
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

/// Where a tenant's tables are, as the test sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub cluster: String,
    pub database: String,
    pub schema: String,
}

impl Place {
    pub fn of(t: &pb::Tenant) -> Place {
        let p = t.placement.clone().expect("placed tenant");
        Place {
            cluster: p.cluster,
            database: p.database,
            schema: p.schema,
        }
    }

    pub fn pool(cluster: &str) -> Place {
        Place {
            cluster: cluster.into(),
            database: "tenants".into(),
            schema: "pool".into(),
        }
    }
}

/// Fills every tenant table for `tenant` at `place` with `n` patients' worth of rows (with
/// NULLs, quotes, tabs, newlines and non-ASCII text), as the superuser.
pub async fn fill(place: &Place, tenant: Uuid, n: i32) {
    let pool = admin(&place.cluster, &place.database).await;
    let sql = "
        INSERT INTO S.patients (tenant_id, mrn, given_name, family_name, birth_date, sex, email)
        SELECT $1, 'mrn-' || g, 'Given' || g, 'Family''s ' || g, date '1950-01-01' + g,
               (ARRAY['female','male','other','unknown'])[1 + g % 4],
               CASE WHEN g % 3 = 0 THEN NULL ELSE 'p' || g || '@example.org' END
        FROM generate_series(1, $2) g;
        INSERT INTO S.encounters (tenant_id, patient_id, kind, started_at, reason)
        SELECT tenant_id, id, 'ambulatory', now() - interval '1 day', E'tab\\there, newline\\n, quote \"'
        FROM S.patients WHERE tenant_id = $1;
        INSERT INTO S.observations (tenant_id, patient_id, encounter_id, code, value_numeric, unit, observed_at)
        SELECT tenant_id, patient_id, id, '8867-4', 72.5, '/min', now() FROM S.encounters WHERE tenant_id = $1;
        INSERT INTO S.clinical_notes (tenant_id, patient_id, author, body)
        SELECT tenant_id, id, 'dr-who', repeat('note ', 50) || 'ünïcödé ✓' FROM S.patients WHERE tenant_id = $1;
        INSERT INTO S.appointments (tenant_id, patient_id, type_code, starts_at)
        SELECT tenant_id, id, 'follow-up', now() + interval '7 days' FROM S.patients WHERE tenant_id = $1;
        INSERT INTO S.audit_events (tenant_id, actor, action, entity, details)
        SELECT $1, 'dr-who', 'read', 'patient', jsonb_build_object('n', g) FROM generate_series(1, $2) g;";
    let sql = sql.replace("S.", &format!("\"{}\".", place.schema));
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let q = sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned())).bind(tenant);
        let q = if stmt.contains("$2") { q.bind(n) } else { q };
        q.execute(&pool).await.unwrap();
    }
}

/// Every row of `tenant` at `place`, per table in catalog order, as sorted text.
pub async fn snapshot(place: &Place, tenant: Uuid) -> Vec<(String, Vec<String>)> {
    let pool = admin(&place.cluster, &place.database).await;
    let mut out = Vec::new();
    for table in tenantd::dataplane::catalog::TABLES {
        let q = format!(
            "SELECT t::text FROM \"{}\".{table} t WHERE tenant_id = $1 ORDER BY 1",
            place.schema
        );
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .fetch_all(&pool)
            .await
            .unwrap();
        out.push((table.to_string(), rows.into_iter().map(|r| r.0).collect()));
    }
    out
}

/// Connects to a tenant the way an application does: ResolveTenant, then the route's host,
/// port, database and role, then the route's session settings. Schema and database tenants
/// log in with their own role's password (unsealed from the registry as an application's
/// secret store would hand it out); pool tenants with a login role that is a member of the
/// pool role, as an application's own role would be.
#[derive(Clone)]
pub struct AppConnector {
    pub tenants: TenantServiceClient<AuthChannel>,
    pub registry: PgPool,
    pub master_key: PathBuf,
}

pub const POOL_LOGIN: &str = "it_pool_app_login";

impl AppConnector {
    pub fn new(env: &TestEnv) -> Self {
        AppConnector {
            tenants: env.tenants.clone(),
            registry: env.registry.clone(),
            master_key: env.master_key(),
        }
    }

    /// A session for `tenant` and the routing epoch it was resolved at.
    pub async fn connect(&mut self, tenant: Uuid) -> Result<(PgConnection, i64), String> {
        use sqlx::ConnectOptions;
        let route = self
            .tenants
            .resolve_tenant(pb::ResolveTenantRequest {
                tenant: tenant.to_string(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let (user, password) = if route.tier == pb::Tier::Pool as i32 {
            ensure_pool_login(&route.cluster).await;
            (POOL_LOGIN.to_owned(), POOL_LOGIN.to_owned())
        } else {
            let (key_id, ciphertext): (String, Vec<u8>) = sqlx::query_as(
                "SELECT key_id, sealed FROM tenant_credentials WHERE tenant_id = $1 AND role_name = $2",
            )
            .bind(tenant)
            .bind(&route.role)
            .fetch_one(&self.registry)
            .await
            .map_err(|e| e.to_string())?;
            let keys = tenantd::keys::local::LocalKeys::open_or_create(&self.master_key).unwrap();
            let password = keys
                .open(
                    &tenantd::keys::Sealed { key_id, ciphertext },
                    &tenantd::credentials::credential_context(tenant, &route.role),
                )
                .map_err(|e| e.to_string())?;
            (route.role.clone(), String::from_utf8(password).unwrap())
        };
        let mut conn = sqlx::postgres::PgConnectOptions::new()
            .host(&route.host)
            .port(route.port as u16)
            .database(&route.database)
            .username(&user)
            .password(&password)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        for (name, value) in &route.session_settings {
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(name)
                .bind(value)
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok((conn, route.routing_epoch))
    }
}

/// The test's pool login role on `cluster` (created once; concurrent tests race safely).
async fn ensure_pool_login(cluster: &str) {
    let pool = admin(cluster, "postgres").await;
    let sql = format!(
        "DO $$ BEGIN
           CREATE ROLE {POOL_LOGIN} LOGIN PASSWORD '{POOL_LOGIN}' IN ROLE tenantd_pool_app;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    // The shared database is closed to PUBLIC; the pool role's CONNECT covers its members.
}

pub fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}
