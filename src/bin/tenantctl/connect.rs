//! How tenantctl reaches tenantd: the address, TLS (a CA to trust, a client certificate) and
//! the bearer token. The token comes from `--token`/`TENANTD_TOKEN`, a file
//! (`--token-file`/`TENANTD_TOKEN_FILE`), or else `.tenantd/admin.token`, where `tenantd dev`
//! keeps its generated admin token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use tenantd::auth::client::{AuthChannel, Bearer, with_token};

#[derive(Args)]
pub struct Connection {
    /// tenantd gRPC address (https:// for TLS).
    #[arg(
        long,
        env = "TENANTD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Bearer token.
    #[arg(long, env = "TENANTD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "TENANTD_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for the server (https:// addresses).
    #[arg(long, env = "TENANTD_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    #[arg(
        long,
        env = "TENANTD_CLIENT_CERT",
        requires = "client_key",
        global = true
    )]
    client_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "TENANTD_CLIENT_KEY",
        requires = "client_cert",
        global = true
    )]
    client_key: Option<PathBuf>,
}

/// Where `tenantd dev` (run from this directory with its default state dir) keeps its token.
const DEV_TOKEN: &str = ".tenantd/admin.token";

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl Connection {
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let file = match &self.token_file {
            Some(f) => f.clone(),
            None if Path::new(DEV_TOKEN).exists() => PathBuf::from(DEV_TOKEN),
            None => return Ok(None),
        };
        let t = String::from_utf8(read(&file)?)
            .with_context(|| format!("{} is not text", file.display()))?;
        Ok(Some(t.trim().to_owned()))
    }

    pub async fn channel(&self) -> anyhow::Result<AuthChannel> {
        let mut endpoint =
            Channel::from_shared(self.addr.clone())?.connect_timeout(Duration::from_secs(5));
        if self.addr.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach tenantd at {}", self.addr))?;
        let bearer = Bearer::new(self.token()?.as_deref())?;
        Ok(with_token(channel, bearer))
    }
}
