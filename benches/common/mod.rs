//! What every benchmark starts from: tenantd in-process on the embedded default (a durable,
//! fsync-on PostgreSQL under a temporary state dir), and gRPC clients to it.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::dev::DevStack;

pub struct Running {
    pub stack: DevStack,
    pub tenants: TenantServiceClient<Channel>,
    pub ops: OperationServiceClient<Channel>,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tenantd::server::ServerError>>,
}

/// Starts the embedded stack under a fresh temporary dir named after `name`, and tenantd.
pub async fn start(name: &str) -> anyhow::Result<Running> {
    let state_dir =
        std::env::temp_dir().join(format!("tenantd-bench-{name}-{}", std::process::id()));
    let stack = tenantd::dev::start(&state_dir, 0, "127.0.0.1:0".parse()?, false).await?;
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
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Ok(Running {
        stack,
        tenants: TenantServiceClient::new(channel.clone()),
        ops: OperationServiceClient::new(channel),
        state_dir,
        shutdown,
        server,
    })
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
