//! `tenantctl schema`: the tenant schema's versions as the registry recorded them, so an
//! operator can compare them with the files (`sha256sum my-schema/*.sql`).

use clap::Subcommand;

use tenantd::api::pb;
use tenantd::api::pb::fleet_service_client::FleetServiceClient;
use tenantd::auth::client::AuthChannel;

use crate::status;

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Every version: its file and seed with their sha256, and how many tenants are at it;
    /// `*` marks the fleet's version (what new tenants get).
    List,
}

pub async fn run(
    fleet: &mut FleetServiceClient<AuthChannel>,
    cmd: SchemaCommand,
) -> anyhow::Result<()> {
    match cmd {
        SchemaCommand::List => {
            let f = fleet
                .get_fleet_schema(pb::GetFleetSchemaRequest {})
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "fleet at version {} of {} (roll out newer ones with `tenantctl fleet migrate`)",
                f.version, f.latest_version
            );
            println!("  VERSION  TENANTS  {:<44}  SHA256", "FILE");
            for v in &f.versions {
                let mark = if v.version == f.version { '*' } else { ' ' };
                println!(
                    "{mark} {:>7}  {:>7}  {:<44}  {}",
                    v.version, v.tenants, v.file, v.sha256
                );
                if !v.seed_sha256.is_empty() {
                    let seed = v.file.replace(".sql", ".seed.sql");
                    println!("  {:>7}  {:>7}  {seed:<44}  {}", "", "", v.seed_sha256);
                }
            }
            if !f.advice.is_empty() {
                println!("advice (what database linters would report; nothing is refused):");
                for a in &f.advice {
                    println!("  {} {}: {}", a.lint, a.object, a.detail);
                }
            }
        }
    }
    Ok(())
}
