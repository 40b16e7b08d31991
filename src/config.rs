//! Service configuration: where the registry is, which data-plane clusters exist, how the
//! workflow engine behaves, and which key provider seals secrets. Loaded from a TOML file
//! (`tenantd serve --config`) or built by `tenantd dev` for the embedded default.
//!
//! Connection URLs carry credentials: they are never logged (see [`redact_url`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::config::{AuthConfig, CertificateConfig, TokenConfig};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PostgreSQL URL of the control-plane registry database.
    pub registry_url: String,
    /// Data-plane PostgreSQL servers. The first one is the default placement.
    pub clusters: Vec<ClusterConfig>,
    #[serde(default)]
    pub workflow: WorkflowConfig,
    pub keys: KeysConfig,
    /// Where tenant artefacts (exports) are stored.
    pub objects: ObjectsConfig,
    /// Shared AWS client settings for the `aws_kms` key provider and the `s3` object store.
    #[serde(default)]
    pub aws: AwsConfig,
    #[serde(default)]
    pub deletion: DeletionConfig,
    /// Logins issued to applications (docs/credentials.md).
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// Who may call (docs/security.md).
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS for the gRPC server; with `client_ca_file`, client certificates too.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub server: ServerConfig,
    /// Connection pools and per-caller limits (docs/security.md, "Exhaustion").
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub grpc_web: GrpcWebConfig,
    #[serde(default)]
    pub tenant_schema: TenantSchemaConfig,
    /// Scheduled backups (docs/backups.md).
    #[serde(default)]
    pub backups: BackupsConfig,
    /// Physical backups and WAL archiving through pgBackRest (docs/pitr.md); off when absent.
    #[serde(default)]
    pub pitr: Option<PitrConfig>,
}

/// `[pitr]`: pgBackRest takes base backups of the clusters listed and archives their WAL
/// (their `archive_command` must be the one tenantd prints at start).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PitrConfig {
    /// The repository: base backups and archived WAL in a local or mounted directory; or,
    /// with `[pitr.s3]`, the path in the bucket (default `/tenantd`).
    #[serde(default)]
    pub repo_path: Option<PathBuf>,
    /// The repository in an S3 bucket instead of a directory.
    #[serde(default)]
    pub s3: Option<PitrS3>,
    /// pgBackRest's configuration, log, lock and spool directories.
    pub work_dir: PathBuf,
    /// When to take a full base backup: a 5-field cron expression in UTC.
    #[serde(default = "default_base_backup_schedule")]
    pub schedule: String,
    /// Full backups kept; archived WAL older than the oldest kept backup expires with it.
    #[serde(default = "default_retention_full")]
    pub retention_full: u32,
    /// The clusters backed up, by their `[[clusters]]` name, with their data directory and
    /// socket directory as pgBackRest on this host sees them.
    pub clusters: Vec<PitrCluster>,
}

/// `[pitr.s3]`: pgBackRest's repository in an S3 (or S3-compatible) bucket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PitrS3 {
    pub bucket: String,
    pub region: String,
    /// The endpoint host, e.g. `s3.eu-west-1.amazonaws.com` (default: that of `region`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default 443.
    #[serde(default)]
    pub port: Option<u16>,
    /// Path-style URLs (`https://host/bucket/…`), for S3-compatible services; default false
    /// (virtual-host style, as AWS wants).
    #[serde(default)]
    pub path_style: bool,
    /// Check the endpoint's certificate (default true; `ca_file` for a private CA).
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where the access key comes from: `auto` (the instance's role, default), `web-id`
    /// (EKS's web identity) or `shared` (a key in `credentials_file`).
    #[serde(default = "default_s3_key_type")]
    pub key_type: String,
    /// With `key_type = "shared"`: a file in the AWS credentials format (its `[default]`
    /// profile, or the first), mode 0600. The key is written into pgBackRest's configuration
    /// (mode 0600, its owner's), since the servers' `archive_command` reads it there.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

impl PitrConfig {
    /// A directory (`repo_path`), or a bucket (`[pitr.s3]`, `repo_path` then the path in it).
    fn validate_repository(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let Some(s3) = &self.s3 else {
            if self.repo_path.is_none() {
                return bad("pitr needs repo_path (a directory) or [pitr.s3] (a bucket)".into());
            }
            return Ok(());
        };
        let name_ok = |v: &str, extra: &str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
        };
        if !(3..=63).contains(&s3.bucket.len()) || !name_ok(&s3.bucket, ".-") {
            return bad(format!(
                "pitr.s3.bucket {:?} is not an S3 bucket name ([a-z0-9.-], 3 to 63)",
                s3.bucket
            ));
        }
        if !name_ok(&s3.region, "-") {
            return bad(format!("pitr.s3.region {:?} is not a region", s3.region));
        }
        if let Some(e) = &s3.endpoint
            && !name_ok(&e.to_ascii_lowercase(), ".-")
        {
            return bad(format!(
                "pitr.s3.endpoint {e:?} must be a host name or address (the port goes in \
                 pitr.s3.port)"
            ));
        }
        match (s3.key_type.as_str(), &s3.credentials_file) {
            ("auto" | "web-id", None) | ("shared", Some(_)) => Ok(()),
            ("shared", None) => bad("pitr.s3.key_type \"shared\" needs credentials_file".into()),
            ("auto" | "web-id", Some(_)) => {
                bad("pitr.s3.credentials_file is read only with key_type \"shared\"".into())
            }
            (other, _) => bad(format!(
                "pitr.s3.key_type {other:?}: expected \"auto\", \"web-id\" or \"shared\""
            )),
        }
    }
}

fn default_s3_key_type() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PitrCluster {
    pub name: String,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
}

fn default_base_backup_schedule() -> String {
    "0 1 * * *".into()
}

fn default_retention_full() -> u32 {
    2
}

/// Scheduled backups (docs/backups.md): every replica runs the scheduler; they share the
/// work without a leader.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsConfig {
    /// Whether this replica runs the scheduler.
    #[serde(default = "default_true")]
    pub scheduler: bool,
    /// How often the scheduler looks for due slots (under a minute: schedules may fire
    /// every minute).
    #[serde(default = "default_backup_tick_seconds")]
    pub tick_seconds: u64,
}

impl Default for BackupsConfig {
    fn default() -> Self {
        BackupsConfig {
            scheduler: true,
            tick_seconds: default_backup_tick_seconds(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_backup_tick_seconds() -> u64 {
    15
}

/// The tenant schema: the user's own migrations.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSchemaConfig {
    /// The directory of the tenant schema: `NNNN_name.sql` migrations and optional
    /// `NNNN_name.seed.sql` reference rows (docs/tenant-schema.md). Unset: the example schema
    /// that ships with tenantd (`examples/healthcare/`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Extensions a migration may create (`CREATE EXTENSION`); any other is refused.
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// gRPC-web for browser consoles: always translated on the gRPC port; which web origins may
/// call cross-origin is listed here (none by default).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcWebConfig {
    /// Exact origins, e.g. `https://console.example.com`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// Prometheus metrics (docs/operations.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (plain HTTP; keep it on an internal address). Unset:
    /// no metrics endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and private key of the server.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA certificates that sign client certificates. Set: clients may authenticate with
    /// a certificate (a token still works without one).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Limits on each call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED unread.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Longest a call may take before DEADLINE_EXCEEDED, whatever deadline the caller sent
    /// (a shorter `grpc-timeout` wins). For streams, the time to the first response.
    #[serde(default = "default_max_call_seconds")]
    pub max_call_seconds: u64,
    /// Serve plaintext gRPC on a non-loopback address (no `[tls]`): only behind something that
    /// terminates TLS for tenantd (a service mesh, a proxy on the same host). Without it such a
    /// listener is refused: bearer tokens and issued passwords would cross the network in
    /// clear.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

fn default_max_request_bytes() -> usize {
    64 * 1024
}

fn default_max_call_seconds() -> u64 {
    120
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_bytes: default_max_request_bytes(),
            max_call_seconds: default_max_call_seconds(),
            insecure_plaintext: false,
        }
    }
}

/// How many connections tenantd opens, and how much one caller may ask of a replica at once.
/// Every figure is per replica.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Registry connections for gRPC calls.
    #[serde(default = "default_registry_api_connections")]
    pub registry_api_connections: u32,
    /// Registry connections for workflow steps and background tasks.
    #[serde(default = "default_registry_workflow_connections")]
    pub registry_workflow_connections: u32,
    /// Registry connections for claims, heartbeats and step transitions only. Unset: twice
    /// `[workflow] workers`, plus one.
    #[serde(default)]
    pub registry_lease_connections: Option<u32>,
    /// Connections to each data-plane database.
    #[serde(default = "default_cluster_connections")]
    pub cluster_connections: u32,
    /// Calls one principal may have in progress at once, open streams included; past it,
    /// RESOURCE_EXHAUSTED. 0: no limit.
    #[serde(default = "default_calls_per_principal")]
    pub calls_per_principal: u32,
    /// Operation-starting calls (create, change tier, export, restore, delete, fleet
    /// migrations) one principal may make per minute, in bursts of up to as many; past it,
    /// RESOURCE_EXHAUSTED. 0: no limit.
    #[serde(default = "default_operation_starts_per_minute")]
    pub operation_starts_per_minute: u32,
}

fn default_registry_api_connections() -> u32 {
    16
}
fn default_registry_workflow_connections() -> u32 {
    8
}
fn default_cluster_connections() -> u32 {
    4
}
fn default_calls_per_principal() -> u32 {
    64
}
fn default_operation_starts_per_minute() -> u32 {
    120
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            registry_api_connections: default_registry_api_connections(),
            registry_workflow_connections: default_registry_workflow_connections(),
            registry_lease_connections: None,
            cluster_connections: default_cluster_connections(),
            calls_per_principal: default_calls_per_principal(),
            operation_starts_per_minute: default_operation_starts_per_minute(),
        }
    }
}

/// Logins issued to applications (docs/credentials.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// How often each replica drops expired and revoked logins (and ends their sessions).
    #[serde(default = "default_reap_interval_seconds")]
    pub reap_interval_seconds: u64,
    /// The most sessions one issued login may hold at once.
    #[serde(default = "default_login_connection_limit")]
    pub connection_limit: u32,
    /// How long a statement of an issued login may run (0: no limit).
    #[serde(default = "default_statement_timeout_seconds")]
    pub statement_timeout_seconds: u64,
    /// How long an issued login's transaction may sit idle before the server ends the
    /// session (0: no limit). Bounds how long it can hold locks or a move's fence wait-out.
    #[serde(default = "default_idle_in_transaction_seconds")]
    pub idle_in_transaction_timeout_seconds: u64,
    /// Per plan (the tenant's `plan`), other values for any of the three limits above.
    #[serde(default)]
    pub plans: std::collections::BTreeMap<String, LoginLimits>,
}

/// A plan's own limits for its tenants' logins; what is unset is `[credentials]`'s.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginLimits {
    pub connection_limit: Option<u32>,
    pub statement_timeout_seconds: Option<u64>,
    pub idle_in_transaction_timeout_seconds: Option<u64>,
}

impl CredentialsConfig {
    /// The limits of logins issued to a tenant of `plan`.
    pub fn limits(&self, plan: &str) -> crate::dataplane::logins::Limits {
        let p = self.plans.get(plan).cloned().unwrap_or_default();
        crate::dataplane::logins::Limits {
            connections: p.connection_limit.unwrap_or(self.connection_limit),
            statement: Duration::from_secs(
                p.statement_timeout_seconds
                    .unwrap_or(self.statement_timeout_seconds),
            ),
            idle_in_transaction: Duration::from_secs(
                p.idle_in_transaction_timeout_seconds
                    .unwrap_or(self.idle_in_transaction_timeout_seconds),
            ),
        }
    }
}

fn default_statement_timeout_seconds() -> u64 {
    300
}

fn default_idle_in_transaction_seconds() -> u64 {
    60
}

fn default_reap_interval_seconds() -> u64 {
    10
}

fn default_login_connection_limit() -> u32 {
    20
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            reap_interval_seconds: default_reap_interval_seconds(),
            connection_limit: default_login_connection_limit(),
            statement_timeout_seconds: default_statement_timeout_seconds(),
            idle_in_transaction_timeout_seconds: default_idle_in_transaction_seconds(),
            plans: Default::default(),
        }
    }
}

/// Tenant deletion (docs/deletion.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionConfig {
    /// Days a deleted tenant's key stays pending deletion before the key service destroys
    /// it (7–30, the AWS KMS window); a request may ask for another value in that range.
    #[serde(default = "default_key_pending_days")]
    pub key_pending_days: u32,
    /// How long the data-plane clusters' physical backups and WAL archives are kept: the
    /// deletion certificate states the date by which the deleted rows are gone from them too.
    #[serde(default = "default_backup_retention_days")]
    pub backup_retention_days: u32,
}

/// The key deletion window AWS KMS accepts, in days.
pub const KEY_PENDING_DAYS: std::ops::RangeInclusive<u32> = 7..=30;

fn default_key_pending_days() -> u32 {
    30
}

fn default_backup_retention_days() -> u32 {
    35
}

impl Default for DeletionConfig {
    fn default() -> Self {
        DeletionConfig {
            key_pending_days: default_key_pending_days(),
            backup_retention_days: default_backup_retention_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Registry name of the cluster: `[a-z][a-z0-9-]*`.
    pub name: String,
    /// Administrative URL (a role with CREATEDB and CREATEROLE). The database in the URL is
    /// used for cluster-wide statements (CREATE DATABASE, CREATE ROLE).
    pub admin_url: String,
    /// Host and port that applications use to reach the cluster (returned by ResolveTenant).
    /// Defaults to the host and port of `admin_url`.
    #[serde(default)]
    pub public_host: Option<String>,
    #[serde(default)]
    pub public_port: Option<u16>,
    /// Database holding the pool tables and the schema-tier schemas.
    #[serde(default = "default_shared_database")]
    pub shared_database: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    /// Operations one replica runs at once.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How long a claimed operation stays owned without a heartbeat.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// First retry delay; doubles per failure up to `max_backoff_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Retryable failures of one operation before it is treated as fatal.
    #[serde(default = "default_max_failures")]
    pub max_failures: i32,
    /// How often an idle worker looks for work when no notification arrives.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How long a write fence waits for application transactions that began before it
    /// (tier changes). Past it the move is rolled back and the fence lifted.
    #[serde(default = "default_fence_wait_ms")]
    pub fence_wait_ms: u64,
    /// How long a tier change may spend applying the changes a tenant makes while it is
    /// copied, before it fences (docs/tier-changes.md). A tenant that writes faster than they
    /// apply gets its move rolled back after this.
    #[serde(default = "default_catch_up_ms")]
    pub catch_up_ms: u64,
    /// What an online tier change reads from its source at most, MB (10⁶ bytes) a second,
    /// unless the request says; 0: unbounded (docs/tier-changes.md, "Pacing").
    #[serde(default)]
    pub copy_mb_per_s: u32,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig {
            workers: default_workers(),
            lease_ms: default_lease_ms(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_failures: default_max_failures(),
            poll_ms: default_poll_ms(),
            fence_wait_ms: default_fence_wait_ms(),
            catch_up_ms: default_catch_up_ms(),
            copy_mb_per_s: 0,
        }
    }
}

impl WorkflowConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn fence_wait(&self) -> Duration {
        Duration::from_millis(self.fence_wait_ms)
    }
    pub fn catch_up(&self) -> Duration {
        Duration::from_millis(self.catch_up_ms)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeysConfig {
    /// Secrets sealed with AES-256-GCM under a 32-byte master key kept in a file (mode 0600);
    /// tenant keys and the signing key live in the registry, wrapped by that master key.
    Local { master_key_file: PathBuf },
    /// AWS KMS (or a KMS-compatible service at `aws.endpoint_url`).
    AwsKms {
        /// Tenant keys get the alias `<alias_prefix><tenant id>`.
        #[serde(default = "default_alias_prefix")]
        alias_prefix: String,
        /// Symmetric key (id, ARN or alias) that seals data-plane credentials. Created with
        /// this alias on first start if the alias does not exist.
        #[serde(default = "default_service_key")]
        service_key: String,
        /// Asymmetric ECC_NIST_P256 key (id, ARN or alias) that signs export manifests and
        /// deletion proofs. Created with this alias on first start if it does not exist.
        #[serde(default = "default_signing_key")]
        signing_key: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectsConfig {
    /// Objects as files under a local directory.
    Local { dir: PathBuf },
    /// An S3 bucket (or an S3-compatible service at `endpoint_url`).
    S3 {
        bucket: String,
        /// Key prefix for everything tenantd stores, e.g. `tenantd/` (optional).
        #[serde(default)]
        prefix: String,
        /// Overrides `aws.endpoint_url` for S3 only.
        #[serde(default)]
        endpoint_url: Option<String>,
        /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible
        /// services and emulators.
        #[serde(default)]
        force_path_style: bool,
    },
}

/// AWS client settings. Credentials come from the standard chain (environment, web
/// identity, ECS/EC2 roles, the shared files); `credentials_file` and `profile` narrow it to
/// one shared-credentials file, e.g. a key pair for an S3-compatible service. Secrets never
/// go in this file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint of a KMS/S3-compatible service instead of AWS (e.g. `http://127.0.0.1:5000`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

fn default_alias_prefix() -> String {
    "alias/tenantd/".to_owned()
}
fn default_service_key() -> String {
    "alias/tenantd-service".to_owned()
}
fn default_signing_key() -> String {
    "alias/tenantd-signing".to_owned()
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:50051".parse().expect("valid address")
}
fn default_shared_database() -> String {
    "tenants".to_owned()
}
fn default_workers() -> usize {
    4
}
fn default_lease_ms() -> u64 {
    15_000
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_max_failures() -> i32 {
    10
}
fn default_poll_ms() -> u64 {
    1_000
}

fn default_catch_up_ms() -> u64 {
    30 * 60 * 1000
}
fn default_fence_wait_ms() -> u64 {
    30_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The registry pool sizes `[limits]` and `[workflow]` imply.
    pub fn registry_pools(&self) -> crate::registry::PoolSizes {
        let l = &self.limits;
        crate::registry::PoolSizes {
            api: l.registry_api_connections,
            workflow: l.registry_workflow_connections,
            leases: l
                .registry_lease_connections
                .unwrap_or(2 * self.workflow.workers as u32 + 1),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, &|name| std::env::var(name).ok()).map_err(|message| {
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses configuration text, with `${NAME}` in string values taken from `lookup`
    /// ([`expand_env`]). Not validated.
    pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        expand_env(&mut value, lookup)?;
        value.try_into().map_err(|e| e.to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.clusters.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one cluster is required".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clusters {
            let mut chars = c.name.chars();
            let ok = matches!(chars.next(), Some('a'..='z'))
                && chars.all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '-'))
                && c.name.len() <= 63;
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "cluster name {:?} must match [a-z][a-z0-9-]*",
                    c.name
                )));
            }
            if !seen.insert(&c.name) {
                return Err(ConfigError::Invalid(format!(
                    "cluster {:?} is listed twice",
                    c.name
                )));
            }
            crate::sql::Ident::new(c.shared_database.clone())
                .map_err(|e| ConfigError::Invalid(format!("cluster {}: {e}", c.name)))?;
        }
        if let Some(pitr) = &self.pitr {
            crate::backup::Schedule::parse("pitr.schedule", &pitr.schedule)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !(1..=100).contains(&pitr.retention_full) {
                return Err(ConfigError::Invalid(format!(
                    "pitr.retention_full must be 1 to 100, got {}",
                    pitr.retention_full
                )));
            }
            pitr.validate_repository()?;
            for c in &pitr.clusters {
                if !self.clusters.iter().any(|k| k.name == c.name) {
                    return Err(ConfigError::Invalid(format!(
                        "pitr.clusters names {:?}, which is not a configured cluster",
                        c.name
                    )));
                }
            }
        }
        if !(1..=59).contains(&self.backups.tick_seconds) {
            return Err(ConfigError::Invalid(format!(
                "backups.tick_seconds must be 1 to 59 (schedules may fire every minute), got {}",
                self.backups.tick_seconds
            )));
        }
        if !(1..=3600).contains(&self.credentials.reap_interval_seconds) {
            return Err(ConfigError::Invalid(format!(
                "credentials.reap_interval_seconds must be 1 to 3600, got {}",
                self.credentials.reap_interval_seconds
            )));
        }
        let plans = self.credentials.plans.iter();
        for (at, limit) in
            std::iter::once(("credentials".to_owned(), self.credentials.connection_limit)).chain(
                plans.filter_map(|(name, p)| {
                    p.connection_limit
                        .map(|l| (format!("credentials.plans.{name}"), l))
                }),
            )
        {
            if !(1..=10_000).contains(&limit) {
                return Err(ConfigError::Invalid(format!(
                    "{at}.connection_limit must be 1 to 10000, got {limit}"
                )));
            }
        }
        if !KEY_PENDING_DAYS.contains(&self.deletion.key_pending_days) {
            return Err(ConfigError::Invalid(format!(
                "deletion.key_pending_days must be 7 to 30, got {}",
                self.deletion.key_pending_days
            )));
        }
        self.validate_access()?;
        if self.workflow.workers == 0 {
            return Err(ConfigError::Invalid("workflow.workers must be > 0".into()));
        }
        Ok(())
    }

    fn validate_access(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        self.auth
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let a = &self.auth;
        if a.tokens.is_empty() && a.certificates.is_empty() && !a.allow_unauthenticated {
            return invalid(
                "no way in: list [[auth.tokens]] (tenantd token new) or [[auth.certificates]]",
            );
        }
        if a.allow_unauthenticated && (!self.listen.ip().is_loopback() || self.tls.is_some()) {
            return invalid(
                "auth.allow_unauthenticated needs a loopback listen address and no TLS: \
                 it is for one developer's machine",
            );
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.server.insecure_plaintext
        {
            return Err(ConfigError::Invalid(format!(
                "listen {} is not a loopback address and [tls] is not set: tokens and issued \
                 passwords would cross the network in clear. Set [tls], or [server] \
                 insecure_plaintext = true if something in front terminates TLS for tenantd",
                self.listen
            )));
        }
        let client_ca = self.tls.as_ref().and_then(|t| t.client_ca_file.as_ref());
        if !a.certificates.is_empty() && client_ca.is_none() {
            return invalid("auth.certificates needs tls.client_ca_file to verify them");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.max_request_bytes) {
            return invalid("server.max_request_bytes must be 1 KiB to 16 MiB");
        }
        for origin in &self.grpc_web.allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin != "*"
                && http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "grpc_web.allowed_origins: {origin:?} must be an exact origin such as \
                     https://console.example.com (no wildcard, no path)"
                )));
            }
        }
        if self.server.max_call_seconds == 0 {
            return invalid("server.max_call_seconds must be > 0");
        }
        Ok(())
    }

    pub fn default_cluster(&self) -> &str {
        &self.clusters[0].name
    }

    /// The PostgreSQL URLs (by what they are for) that reach a server over the network
    /// without verifying it (`sslmode` other than `verify-full` or `verify-ca`): whoever sits
    /// on that network could read the rows tenantd copies and the passwords it sets.
    /// Loopback and Unix sockets are exempt.
    pub fn unverified_urls(&self) -> Vec<String> {
        use sqlx::postgres::{PgConnectOptions, PgSslMode};
        let named = std::iter::once(("registry_url".to_owned(), &self.registry_url)).chain(
            self.clusters
                .iter()
                .map(|c| (format!("cluster {} admin_url", c.name), &c.admin_url)),
        );
        named
            .filter(|(_, url)| {
                let Ok(o) = url.parse::<PgConnectOptions>() else {
                    return false;
                };
                let host = o.get_host();
                let local = o.get_socket().is_some()
                    || host.starts_with('/')
                    || host == "localhost"
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                !local
                    && !matches!(
                        o.get_ssl_mode(),
                        PgSslMode::VerifyFull | PgSslMode::VerifyCa
                    )
            })
            .map(|(name, _)| name)
            .collect()
    }
}

/// A URL with its password replaced, for logs and errors.
/// Replaces `${NAME}` in every string value with the environment variable NAME, so that
/// secrets (registry and cluster URLs with passwords) come from a secret store through the
/// environment while the file itself holds none (deploy/kubernetes). Done on parsed values,
/// so a secret's characters can never change the TOML's structure. An unset variable is an
/// error naming it; the value is never part of an error.
pub fn expand_env(
    value: &mut toml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {:?}", redact_url(s)))?;
                let name = &after[..end];
                let valid = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(format!("${{{name}}}: variable names are [A-Z0-9_]+"));
                }
                let v = lookup(name).ok_or_else(|| {
                    format!("environment variable {name} (named in the configuration) is not set")
                })?;
                out.push_str(&v);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(items) => {
            for v in items {
                expand_env(v, lookup)?;
            }
        }
        toml::Value::Table(t) => {
            for (_, v) in t.iter_mut() {
                expand_env(v, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn expands_environment_variables_in_string_values_only() {
        let mut v: toml::Value = toml::from_str(
            r#"
            url = "postgres://app:${PG_PASSWORD}@db/${DB}"
            list = ["${DB}"]
            n = 3
            [t]
            plain = "no variables"
            "#,
        )
        .unwrap();
        let env = |name: &str| match name {
            "PG_PASSWORD" => Some("p\"a'ss]\n".to_owned()),
            "DB" => Some("registry".to_owned()),
            _ => None,
        };
        expand_env(&mut v, &env).unwrap();
        assert_eq!(
            v["url"].as_str(),
            Some("postgres://app:p\"a'ss]\n@db/registry")
        );
        assert_eq!(v["list"][0].as_str(), Some("registry"));
        assert_eq!(v["t"]["plain"].as_str(), Some("no variables"));
        let mut missing: toml::Value = toml::from_str(r#"x = "${NOPE}""#).unwrap();
        let e = expand_env(&mut missing, &env).unwrap_err();
        assert!(e.contains("NOPE") && e.contains("not set"), "{e}");
        let mut bad: toml::Value = toml::from_str(r#"x = "${lower}""#).unwrap();
        assert!(expand_env(&mut bad, &env).is_err());
        let mut open: toml::Value = toml::from_str(r#"x = "${OPEN""#).unwrap();
        assert!(expand_env(&mut open, &env).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://admin:s3cret@db:5432/x"),
            "postgres://admin:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c: Config = toml::from_str(include_str!("../deploy/tenantd.toml")).unwrap();
        c.validate().unwrap();
        assert!(
            c.unverified_urls().is_empty(),
            "the example verifies every server: {:?}",
            c.unverified_urls()
        );
        assert_eq!(c.clusters.len(), 2);
        assert_eq!(c.default_cluster(), "main");
        assert_eq!(c.deletion.key_pending_days, 30);
        let mut short = c.clone();
        short.deletion.key_pending_days = 6;
        assert!(short.validate().is_err(), "AWS KMS takes 7 to 30 days");
    }

    #[test]
    fn urls_to_the_network_that_do_not_verify_the_server_are_named() {
        let mut c: Config =
            toml::from_str(include_str!("../deploy/tenantd.toml")).expect("the example");
        c.registry_url = "postgres://r:pw@registry.internal/r?sslmode=require".into();
        c.clusters[0].admin_url = "postgres://a@127.0.0.1:5432/postgres".into();
        c.clusters[1].admin_url = "postgres://a@pg.internal/postgres".into();
        assert_eq!(
            c.unverified_urls(),
            ["registry_url", "cluster dedicated-1 admin_url"]
        );
        c.clusters[1].admin_url =
            "postgres://a@pg.internal/postgres?sslmode=verify-ca&sslrootcert=/ca.crt".into();
        c.registry_url = "postgres://r@localhost/r".into();
        assert!(c.unverified_urls().is_empty());
    }

    #[test]
    fn parses_a_full_config() {
        let c: Config = toml::from_str(
            r#"
            registry_url = "postgres://r@localhost/registry"
            [[clusters]]
            name = "main"
            admin_url = "postgres://a@localhost/postgres"
            [keys]
            provider = "local"
            master_key_file = "/tmp/k"
            [objects]
            provider = "local"
            dir = "/tmp/objects"
            [[auth.tokens]]
            name = "ops"
            role = "admin"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let refused = |change: &dyn Fn(&mut Config), why: &str| {
            let mut bad = c.clone();
            change(&mut bad);
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        refused(&|c| c.auth.tokens.clear(), "no way in");
        refused(&|c| c.auth.tokens[0].sha256 = "abc".into(), "64 hex digits");
        refused(&|c| c.auth.tokens[0].name = "a b".into(), "must be 1 to 64");
        refused(
            &|c| c.auth.tokens.push(c.auth.tokens[0].clone()),
            "listed twice",
        );
        refused(
            &|c| {
                c.listen = "0.0.0.0:50051".parse().unwrap();
                c.auth.allow_unauthenticated = true;
            },
            "loopback listen address",
        );
        refused(
            &|c| {
                c.auth.certificates.push(CertificateConfig {
                    subject: "CN=x".into(),
                    name: "x".into(),
                    role: Role::Viewer,
                    tenants: None,
                })
            },
            "tls.client_ca_file",
        );
        refused(
            &|c| {
                c.auth.tokens.push(TokenConfig {
                    name: "console".into(),
                    role: Role::Viewer,
                    sha256: "0".repeat(64),
                    tenants: Some("region=eu".into()),
                })
            },
            "only role \"application\"",
        );
        refused(
            &|c| {
                c.auth.tokens.push(TokenConfig {
                    name: "app".into(),
                    role: Role::Application,
                    sha256: "0".repeat(64),
                    tenants: Some("region".into()),
                })
            },
            "not key=value",
        );
        refused(
            &|c| c.credentials.reap_interval_seconds = 0,
            "reap_interval_seconds",
        );
        refused(
            &|c| c.listen = "0.0.0.0:50051".parse().unwrap(),
            "[tls] is not set",
        );
        let mut behind_a_proxy = c.clone();
        behind_a_proxy.listen = "0.0.0.0:50051".parse().unwrap();
        behind_a_proxy.server.insecure_plaintext = true;
        behind_a_proxy.validate().unwrap();
        refused(&|c| c.server.max_request_bytes = 10, "max_request_bytes");
        for origin in ["*", "console.example.com", "https://console.example.com/"] {
            refused(
                &|c| c.grpc_web.allowed_origins = vec![origin.into()],
                "exact origin",
            );
        }
        let mut dev = c.clone();
        dev.listen = "127.0.0.1:50051".parse().unwrap();
        dev.auth.tokens.clear();
        dev.auth.allow_unauthenticated = true;
        dev.validate().unwrap();
        assert_eq!(c.default_cluster(), "main");
        assert_eq!(c.clusters[0].shared_database, "tenants");
        assert_eq!(c.workflow.workers, 4);
    }

    #[test]
    fn parses_aws_providers() {
        let c: Config = toml::from_str(
            r#"
            registry_url = "postgres://r@localhost/registry"
            [[clusters]]
            name = "main"
            admin_url = "postgres://a@localhost/postgres"
            [keys]
            provider = "aws_kms"
            [objects]
            provider = "s3"
            bucket = "exports"
            prefix = "tenantd/"
            force_path_style = true
            [aws]
            region = "eu-central-1"
            endpoint_url = "http://127.0.0.1:5000"
            "#,
        )
        .unwrap();
        match &c.keys {
            KeysConfig::AwsKms { alias_prefix, .. } => assert_eq!(alias_prefix, "alias/tenantd/"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.objects,
            ObjectsConfig::S3 {
                force_path_style: true,
                ..
            }
        ));
        assert_eq!(c.aws.region.as_deref(), Some("eu-central-1"));
        // What the test harness writes for `tenantd serve` reads back the same.
        let again: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(format!("{again:?}"), format!("{c:?}"));
    }
}
