//! `tenantctl credentials` (a short-lived login to a tenant, printed as a URI, environment
//! variables or JSON), `tenantctl connect` (psql with a fresh one) and
//! `tenantctl revoke-credentials`.

use clap::{Subcommand, ValueEnum};

use tenantd::api::pb;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::status;

#[derive(Subcommand)]
pub enum Command {
    /// Issue a short-lived login to a tenant, bound to it by the database. The password is
    /// shown once; tenantd keeps no copy.
    Credentials {
        /// Tenant id or slug.
        tenant: String,
        /// How long the login is valid: 60s to 24h (e.g. 90s, 15m, 2h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        #[arg(long, value_enum, default_value = "uri")]
        format: Format,
    },
    /// Run psql as a fresh short-lived login to a tenant (arguments after `--` go to psql).
    Connect {
        /// Tenant id or slug.
        tenant: String,
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// The psql to run.
        #[arg(long, default_value = "psql")]
        psql: String,
        /// Arguments for psql, after `--` (e.g. -- -c 'SELECT 1').
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
    /// End every login issued for a tenant now (their sessions are terminated).
    RevokeCredentials {
        /// Tenant id or slug.
        tenant: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A libpq connection URI.
    Uri,
    /// PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD, as shell `export` lines.
    Env,
    /// Everything IssueCredentials returned, as JSON.
    Json,
}

/// `90`, `90s`, `15m`, `2h` → seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m or h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(n.saturating_mul(scale))
}

async fn issue(
    tenants: &mut TenantServiceClient<AuthChannel>,
    tenant: String,
    ttl: u64,
) -> anyhow::Result<pb::Credentials> {
    Ok(tenants
        .issue_credentials(pb::IssueCredentialsRequest {
            tenant,
            ttl_seconds: i64::try_from(ttl).unwrap_or(i64::MAX),
        })
        .await
        .map_err(status)?
        .into_inner())
}

/// libpq's environment for `c` (the password among them).
fn libpq_env(c: &pb::Credentials) -> Vec<(&'static str, String)> {
    let route = c.route.clone().unwrap_or_default();
    vec![
        ("PGHOST", route.host),
        ("PGPORT", route.port.to_string()),
        ("PGDATABASE", route.database),
        ("PGUSER", c.username.clone()),
        ("PGPASSWORD", c.password.clone()),
    ]
}

pub async fn run(channel: AuthChannel, cmd: Command) -> anyhow::Result<()> {
    let mut tenants = TenantServiceClient::new(channel);
    match cmd {
        Command::Credentials {
            tenant,
            ttl,
            format,
        } => {
            let c = issue(&mut tenants, tenant, ttl).await?;
            eprintln!("login {} valid until {}", c.username, c.expire_time);
            match format {
                Format::Uri => println!("{}", c.connection_uri),
                Format::Env => {
                    for (k, v) in libpq_env(&c) {
                        println!("export {k}='{v}'");
                    }
                }
                Format::Json => {
                    let route = c.route.clone().unwrap_or_default();
                    let json = serde_json::json!({
                        "username": c.username,
                        "password": c.password,
                        "expire_time": c.expire_time,
                        "connection_uri": c.connection_uri,
                        "route": {
                            "tenant_id": route.tenant_id,
                            "tier": crate::tenants::tier_name(route.tier),
                            "cluster": route.cluster,
                            "host": route.host,
                            "port": route.port,
                            "database": route.database,
                            "schema": route.schema,
                            "role": route.role,
                            "session_settings": route.session_settings,
                            "routing_epoch": route.routing_epoch,
                        },
                    });
                    println!("{}", serde_json::to_string_pretty(&json)?);
                }
            }
        }
        Command::Connect {
            tenant,
            ttl,
            psql,
            psql_args,
        } => {
            let c = issue(&mut tenants, tenant, ttl).await?;
            eprintln!(
                "connecting as {} (valid until {})",
                c.username, c.expire_time
            );
            // The password travels in the environment, never on a command line others see.
            let mut command = std::process::Command::new(&psql);
            command.envs(libpq_env(&c)).args(&psql_args);
            use std::os::unix::process::CommandExt;
            let e = command.exec();
            anyhow::bail!("cannot run {psql}: {e}");
        }
        Command::RevokeCredentials { tenant } => {
            let r = tenants
                .revoke_credentials(pb::RevokeCredentialsRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            println!("{} login(s) revoked", r.revoked);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttls_take_seconds_minutes_and_hours() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("2h"), Ok(7200));
        assert!(parse_ttl("1d").is_err());
        assert!(parse_ttl("m").is_err());
    }
}
