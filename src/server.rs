//! Wires the service together and runs it until `shutdown`: registry (migrated), data plane,
//! key provider, workflow workers and the gRPC server with health and reflection.
//! `tenantd serve`, `tenantd dev` and the tests all call [`run`].

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::audit::AuditApi;
use crate::api::backups::BackupApi;
use crate::api::deletions::DeletionApi;
use crate::api::exports::ExportApi;
use crate::api::fleet::FleetApi;
use crate::api::operations::OperationApi;
use crate::api::pb;
use crate::api::tenants::TenantApi;
use crate::auth::Authenticator;
use crate::auth::layer::AdmissionLayer;
use crate::blobs::ObjectStore;
use crate::blobs::local::LocalDir;
use crate::blobs::s3::S3Store;
use crate::config::{Config, GrpcWebConfig, KeysConfig, ObjectsConfig, TlsConfig};
use crate::context::Context;
use crate::dataplane::{DataPlane, conventions};
use crate::keys::KeyService;
use crate::keys::aws::AwsKms;
use crate::keys::local::{LocalKeys, LocalKms};
use crate::registry::Registry;
use crate::registry::clusters::ClusterRow;
use crate::registry::events::OperationEvents;
use crate::service::Control;
use crate::tenant_schema::TenantSchema;
use tower_http::cors::{AllowOrigin, CorsLayer};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Registry(#[from] crate::error::Error),
    #[error("keys: {0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("objects: {0}")]
    Objects(#[from] crate::blobs::BlobError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds the shared context: connects and migrates the registry, registers the clusters.
pub async fn context(config: Config) -> Result<Context, ServerError> {
    config
        .validate()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    for url in config.unverified_urls() {
        tracing::warn!(
            "{url} reaches PostgreSQL over the network without verifying the server: add ?sslmode=verify-full&sslrootcert=… (docs/security.md, TLS)"
        );
    }
    let registry = Registry::connect_with(&config.registry_url, config.registry_pools()).await?;
    registry.migrate().await?;
    let files = match &config.tenant_schema.dir {
        Some(dir) => TenantSchema::from_dir(dir).map_err(|e| ServerError::Config(e.to_string()))?,
        None => {
            tracing::info!(
                "tenant schema: the built-in example (examples/healthcare); set [tenant_schema] dir for yours"
            );
            TenantSchema::example()
        }
    };
    let dataplane = DataPlane::with_connections(
        &config.clusters,
        Arc::new(files.clone()),
        config.limits.cluster_connections,
    )
    .map_err(ServerError::Config)?;
    // Versions the registry does not hold yet are tried in a throwaway container first: one
    // that breaks a convention never reaches a tenant, nor the registry.
    if files.latest() > registry.latest_tenant_schema_version().await? {
        let cluster = dataplane
            .cluster(config.default_cluster())
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let advice = conventions::check(cluster, &files, &config.tenant_schema.extensions)
            .await
            .map_err(|e| ServerError::Config(e.to_string()))?;
        for a in advice {
            tracing::warn!(lint = a.lint, object = %a.object,
                "tenant schema advice (not refused): {}", a.detail);
        }
    }
    // A file that differs from what the registry recorded for its version stops this replica.
    let tenant_schema = Arc::new(
        registry
            .adopt_tenant_schema(&files)
            .await
            .map_err(|e| ServerError::Config(e.to_string()))?,
    );
    let latest = tenant_schema.latest();
    let version = registry.init_schema_version(latest).await?;
    if version < latest {
        tracing::info!(
            fleet = version,
            latest,
            "the fleet's tenant schema is behind this build: MigrateFleet moves it forward"
        );
    }
    let keys = key_service(&config, registry.pool()).await?;
    let objects = object_store(&config).await?;
    // Migrate with the registry's versions (more than the files, if another replica added some).
    dataplane.grow_tenant_schema((*tenant_schema).clone());
    for c in dataplane.clusters() {
        registry
            .sync_cluster(&ClusterRow {
                name: c.name.clone(),
                host: c.public_host.clone(),
                port: c.public_port.into(),
                shared_database: c.shared_database.as_str().to_owned(),
            })
            .await?;
    }
    let pitr =
        config
            .pitr
            .as_ref()
            .and_then(|p| match crate::pitr::configure(p, &config.clusters) {
                Ok(pgbackrest) => Some(Arc::new(crate::pitr::Pitr::new(pgbackrest, &p.work_dir))),
                Err(e) => {
                    tracing::warn!(error = %e, "point-in-time restore is off");
                    None
                }
            });
    Ok(Context {
        registry,
        dataplane: Arc::new(dataplane),
        keys,
        objects,
        config: Arc::new(config),
        pitr,
    })
}

async fn close_maintenance_databases(deps: Context) {
    let registry_at: Option<sqlx::postgres::PgConnectOptions> =
        deps.config.registry_url.parse().ok();
    for c in deps.dataplane.clusters() {
        let registry_db = registry_at
            .as_ref()
            .filter(|r| c.serves(r))
            .and_then(|r| r.get_database());
        if let Err(e) = c.close_maintenance_databases(registry_db).await {
            tracing::warn!(cluster = %c.name, error = %e,
                "maintenance databases not closed to PUBLIC yet; will try at next start");
        }
    }
}

/// The key service the configuration names. The local one keeps its keys in the registry.
pub async fn key_service(
    config: &Config,
    registry: &sqlx::PgPool,
) -> Result<Arc<dyn KeyService>, ServerError> {
    Ok(match &config.keys {
        KeysConfig::Local { master_key_file } => Arc::new(LocalKms::new(
            LocalKeys::open_or_create(master_key_file)?,
            registry.clone(),
        )),
        KeysConfig::AwsKms {
            alias_prefix,
            service_key,
            signing_key,
        } => {
            let sdk = crate::aws::sdk_config(&config.aws).await;
            Arc::new(AwsKms::connect(&sdk, alias_prefix, service_key, signing_key).await?)
        }
    })
}

/// The object store the configuration names.
pub async fn object_store(config: &Config) -> Result<Arc<dyn ObjectStore>, ServerError> {
    Ok(match &config.objects {
        ObjectsConfig::Local { dir } => Arc::new(LocalDir::open(dir)?),
        ObjectsConfig::S3 {
            bucket,
            prefix,
            endpoint_url,
            force_path_style,
        } => {
            let sdk = crate::aws::sdk_config(&config.aws).await;
            Arc::new(
                S3Store::connect(
                    &sdk,
                    bucket,
                    prefix,
                    endpoint_url.as_deref(),
                    *force_path_style,
                )
                .await?,
            )
        }
    })
}

/// The services whose health tenantd reports; "" is the server as a whole.
const SERVICES: &[&str] = &[
    "",
    <pb::tenant_service_server::TenantServiceServer<TenantApi> as NamedService>::NAME,
    <pb::operation_service_server::OperationServiceServer<OperationApi> as NamedService>::NAME,
    <pb::export_service_server::ExportServiceServer<ExportApi> as NamedService>::NAME,
    <pb::deletion_service_server::DeletionServiceServer<DeletionApi> as NamedService>::NAME,
    <pb::audit_service_server::AuditServiceServer<AuditApi> as NamedService>::NAME,
    <pb::fleet_service_server::FleetServiceServer<FleetApi> as NamedService>::NAME,
    <pb::backup_service_server::BackupServiceServer<BackupApi> as NamedService>::NAME,
];

/// How often health is checked against the registry, and how long one check may take.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps gRPC health true to what tenantd can do: SERVING while the registry answers,
/// NOT_SERVING while it does not (every RPC needs it), and NOT_SERVING from the moment
/// shutdown begins, so that load balancers stop sending calls while running ones finish.
/// The check has a connection of its own: a flood of calls filling the pools must not
/// make a healthy replica look dead, and health watchers never touch the registry.
async fn report_health(health: HealthReporter, registry: Registry, shutdown: CancellationToken) {
    let mut last = Some(ServingStatus::Serving);
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        let status = if shutdown.is_cancelled() {
            ServingStatus::NotServing
        } else {
            let ping = async {
                if conn.is_none() {
                    conn = Some(registry.dedicated_connection().await?);
                }
                let c = conn.as_mut().expect("connected above");
                sqlx::query("SELECT 1").execute(c).await?;
                Ok::<_, crate::error::Error>(())
            };
            let answer = tokio::time::timeout(HEALTH_TIMEOUT, ping).await;
            if !matches!(answer, Ok(Ok(()))) {
                conn = None;
            }
            match answer {
                Ok(Ok(())) => ServingStatus::Serving,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "registry unreachable: reporting NOT_SERVING");
                    ServingStatus::NotServing
                }
                Err(_) => {
                    tracing::warn!("registry did not answer: reporting NOT_SERVING");
                    ServingStatus::NotServing
                }
            }
        };
        if last != Some(status) {
            for name in SERVICES {
                health.set_service_status(name, status).await;
            }
            last = Some(status);
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// CORS for gRPC-web: only the configured origins, only POST, the headers a gRPC-web client
/// sends (the bearer token among them) and the status headers it must read. No cookies:
/// credentials travel in `authorization`.
fn cors(web: &GrpcWebConfig) -> Result<CorsLayer, ServerError> {
    let origins = web
        .allowed_origins
        .iter()
        .map(|o| {
            http::HeaderValue::from_str(o)
                .map_err(|_| ServerError::Config(format!("grpc_web origin {o:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = http::HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("grpc-timeout"),
            header("x-grpc-web"),
            header("x-user-agent"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 3600)))
}

/// The server's identity and, with `client_ca_file`, the CA its clients' certificates must
/// chain to. Client certificates stay optional at the TLS layer: a caller with a token needs
/// none, and admission refuses a caller with neither.
fn tls_config(tls: &TlsConfig) -> Result<ServerTlsConfig, ServerError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    };
    let mut c = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert_file)?,
        read(&tls.key_file)?,
    ));
    if let Some(ca) = &tls.client_ca_file {
        c = c
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(c)
}

/// Configures pgBackRest for the `[pitr]` clusters and starts their base-backup schedule;
/// says which `archive_command` each cluster must run. A machine without pgBackRest runs on,
/// without point-in-time restores, saying so.
fn start_pitr(
    pitr: &crate::config::PitrConfig,
    deps: &Context,
    registry: &Registry,
    shutdown: &CancellationToken,
) {
    let Some(handle) = &deps.pitr else {
        return; // off, said when the context was made
    };
    let pgbackrest = handle.pgbackrest.clone();
    for c in &pitr.clusters {
        tracing::info!(cluster = %c.name, archive_command = %pgbackrest.archive_command(&c.name),
            "point-in-time restore: WAL archived through pgBackRest");
    }
    let Ok(schedule) = crate::backup::Schedule::parse("pitr.schedule", &pitr.schedule) else {
        return; // refused by Config::validate
    };
    let replica = format!(
        "{}/{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "tenantd".into()),
        std::process::id()
    );
    tokio::spawn(crate::pitr::schedule::run(
        pgbackrest,
        registry.clone(),
        pitr.clusters.iter().map(|c| c.name.clone()).collect(),
        schedule,
        replica,
        shutdown.child_token(),
    ));
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let deps = context(config).await?;
    let (config, registry) = (deps.config.clone(), deps.registry.clone());
    let events = OperationEvents::start(deps.registry.pool().clone(), shutdown.child_token());
    let workers = crate::workflow::engine::start(
        deps.clone(),
        events.clone(),
        std::sync::Arc::new(crate::workflows::Dispatcher),
        shutdown.clone(),
    );
    // Tenants from before per-tenant keys get theirs, as workflows like any other change.
    if let Err(e) = crate::workflows::key_backfill::enqueue_backfill(&deps).await {
        tracing::warn!(error = %e, "key backfill not enqueued; will retry at next start");
    }
    // Tenant logins reach only tenant databases: the maintenance databases (and the
    // registry's, if it lives on a data-plane cluster) are closed to PUBLIC. In the
    // background: a cluster that is down must not hold up start-up.
    tokio::spawn(close_maintenance_databases(deps.clone()));
    // Keys whose deletion is due are destroyed on their date, read or not.
    tokio::spawn(crate::keys::sweep(
        deps.keys.clone(),
        shutdown.child_token(),
    ));
    // Expired and revoked logins go, on every replica (they share the work).
    tokio::spawn(crate::credentials::reap(
        deps.clone(),
        shutdown.child_token(),
    ));
    // Physical backups and WAL archiving through pgBackRest, when configured.
    if let Some(pitr) = &config.pitr {
        start_pitr(pitr, &deps, &registry, &shutdown);
    }
    let control = Control::new(deps, events);
    // Scheduled backups: every replica ticks; request ids keep them from doubling up.
    if config.backups.scheduler {
        tokio::spawn(crate::scheduler::run(
            control.clone(),
            std::time::Duration::from_secs(config.backups.tick_seconds),
            shutdown.child_token(),
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    // The registry has just been migrated: serving from the start.
    for name in SERVICES {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    tokio::spawn(report_health(health, registry.clone(), shutdown.clone()));
    // v1 and v1alpha: grpcurl and other clients still differ in which they ask for.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServerError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServerError::Config(format!("reflection: {e}")))?;

    let admission = AdmissionLayer::new(
        Authenticator::new(&config.auth).map_err(|e| ServerError::Config(e.to_string()))?,
        crate::auth::refusals::Refusals::start(registry.for_api()),
        crate::auth::limits::Limits::new(&config.limits),
        Duration::from_secs(config.server.max_call_seconds),
    );
    let max = config.server.max_request_bytes;
    // Stated, not left to library defaults: headers (the token among them) are at most
    // 16 KiB per request, and one connection runs at most 200 calls at once.
    // HTTP/1.1 too, for gRPC-web from browsers.
    let mut builder = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_max_header_list_size(16 * 1024)
        .max_concurrent_streams(200);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls)?)?;
    }

    if let Some(at) = config.metrics.listen {
        let metrics = TcpListener::bind(at)
            .await
            .map_err(|e| ServerError::Config(format!("metrics: cannot listen on {at}: {e}")))?;
        tokio::spawn(crate::metrics::serve(
            metrics,
            registry.clone(),
            shutdown.clone(),
        ));
    }

    let addr = listener.local_addr().ok();
    // TCP_NODELAY: small gRPC replies must not wait out Nagle and the peer's delayed ACK
    // (a 40 ms stall per round trip otherwise).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    tracing::info!(addr = ?addr, "serving gRPC");
    // Outermost first: CORS answers preflights, gRPC-web becomes gRPC, then admission.
    builder
        .layer(cors(&config.grpc_web)?)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(admission)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::tenant_service_server::TenantServiceServer::new(TenantApi::new(control.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::operation_service_server::OperationServiceServer::new(OperationApi::new(
                control.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::export_service_server::ExportServiceServer::new(ExportApi::new(control.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::deletion_service_server::DeletionServiceServer::new(DeletionApi::new(
                control.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::audit_service_server::AuditServiceServer::new(AuditApi::new(control.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::fleet_service_server::FleetServiceServer::new(FleetApi::new(control.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::backup_service_server::BackupServiceServer::new(BackupApi::new(control))
                .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;
    tracing::info!("gRPC server stopped; waiting for workers");
    let _ = workers.await;
    Ok(())
}
