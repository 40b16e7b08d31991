//! The tenant schema's versions as the registry keeps them (`tenant_schema_versions`,
//! append-only): the first replica to start with a version records its text; every later one
//! must bring the same bytes or refuse to start, and all of them migrate with the registry's
//! text, so a replica with an older directory still applies what the fleet runs.

use crate::error::Error;
use crate::registry::Registry;
use crate::tenant_schema::{Migration, TenantSchema};

#[derive(sqlx::FromRow)]
struct VersionRow {
    version: i32,
    name: String,
    sql: String,
    sha256: String,
    seed: Option<String>,
    seed_sha256: Option<String>,
}

impl Registry {
    /// Records the versions of `files` the registry does not hold yet and checks the others
    /// byte for byte; returns every version the registry holds. A file that differs from the
    /// registry's text for its version is FAILED_PRECONDITION naming the file: a version never
    /// changes, a change is a new version.
    pub async fn adopt_tenant_schema(&self, files: &TenantSchema) -> Result<TenantSchema, Error> {
        let mut tx = self.pool().begin().await?;
        // Replicas starting at once record a new version once.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tenantd:tenant-schema', 0))")
            .execute(&mut *tx)
            .await?;
        let stored: Vec<VersionRow> = sqlx::query_as(
            "SELECT version, name, sql, sha256, seed, seed_sha256
             FROM tenant_schema_versions ORDER BY version",
        )
        .fetch_all(&mut *tx)
        .await?;
        for m in files.migrations() {
            match stored.iter().find(|r| r.version == m.version) {
                Some(r) => check_same(r, m)?,
                None => {
                    sqlx::query(
                        "INSERT INTO tenant_schema_versions
                             (version, name, sql, sha256, seed, seed_sha256)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(m.version)
                    .bind(&m.name)
                    .bind(&m.sql)
                    .bind(m.sha256())
                    .bind(&m.seed)
                    .bind(m.seed_sha256())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        self.tenant_schema().await
    }

    /// Every version the registry holds.
    pub async fn tenant_schema(&self) -> Result<TenantSchema, Error> {
        let all: Vec<VersionRow> = sqlx::query_as(
            "SELECT version, name, sql, sha256, seed, seed_sha256
             FROM tenant_schema_versions ORDER BY version",
        )
        .fetch_all(self.pool())
        .await?;
        let migrations = all
            .into_iter()
            .map(|r| Migration {
                version: r.version,
                name: r.name,
                sql: r.sql,
                seed: r.seed,
            })
            .collect();
        TenantSchema::new(migrations)
            .map_err(|e| Error::Internal(format!("the registry's tenant schema is not dense: {e}")))
    }

    /// The newest version the registry holds (0 before any replica started).
    pub async fn latest_tenant_schema_version(&self) -> Result<i32, Error> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tenant_schema_versions")
                .fetch_one(self.pool())
                .await?,
        )
    }
}

fn check_same(stored: &VersionRow, file: &Migration) -> Result<(), Error> {
    let differs = |what: &str, registry: &str, file_sum: &str| Error::FailedPrecondition {
        reason: format!(
            "tenant schema: {what} differs from version {} the registry holds \
             (sha256 {file_sum}, registry {registry}); a version never changes once recorded: \
             restore the file, and put the change in a new version",
            stored.version
        ),
        operation: None,
    };
    let name = file.file_name();
    if stored.name != file.name {
        return Err(Error::FailedPrecondition {
            reason: format!(
                "tenant schema: {name} is version {} of the registry, which it knows as {:04}_{}.sql",
                stored.version, stored.version, stored.name
            ),
            operation: None,
        });
    }
    if stored.sha256 != file.sha256() || stored.sql != file.sql {
        return Err(differs(&name, &stored.sha256, &file.sha256()));
    }
    if stored.seed_sha256 != file.seed_sha256() || stored.seed != file.seed {
        let seed = format!("{:04}_{}.seed.sql", file.version, file.name);
        let registry = stored.seed_sha256.as_deref().unwrap_or("none");
        let ours = file.seed_sha256().unwrap_or_else(|| "none".into());
        return Err(differs(&seed, registry, &ours));
    }
    Ok(())
}
