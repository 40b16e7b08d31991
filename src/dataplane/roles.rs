//! Data-plane roles. Roles are cluster-wide, so creation tolerates a concurrent creator.
//! Tenant roles are group roles that never log in; the passwords of issued logins
//! ([`super::logins`]) are sent only as SCRAM-SHA-256 verifiers computed here, so the
//! cleartext never reaches the server (nor its statement log).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Cluster, DataPlaneError};
use crate::sql::{Ident, Statement};

/// Attributes every application role has: it can never own, bypass RLS or escalate.
pub(super) const SAFE_ATTRIBUTES: &str =
    " NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";

/// Creates `role` if missing, as a group role with safe attributes (NOLOGIN: applications log
/// in with issued logins that are its members, [`super::logins`]); an existing one that logs
/// in or has unsafe attributes (made by an older build) is set back to that. A role already
/// so is left untouched, so repeating this writes nothing.
pub async fn ensure_role(cluster: &Cluster, role: &Ident) -> Result<(), DataPlaneError> {
    // Some(true): exists with safe NOLOGIN attributes; Some(false): exists otherwise.
    let safe: Option<bool> = sqlx::query_scalar(
        "SELECT NOT (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls
                     OR rolcanlogin OR NOT rolinherit)
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role.as_str())
    .fetch_optional(cluster.admin())
    .await
    .map_err(|e| cluster.err(e))?;
    match safe {
        Some(true) => Ok(()),
        Some(false) => {
            cluster
                .exec(
                    cluster.admin(),
                    Statement::new("ALTER ROLE ")
                        .ident(role)
                        .push(SAFE_ATTRIBUTES)
                        .push(" NOLOGIN PASSWORD NULL"),
                )
                .await
        }
        None => {
            let created = cluster
                .exec(
                    cluster.admin(),
                    Statement::new("CREATE ROLE ")
                        .ident(role)
                        .push(" NOLOGIN")
                        .push(SAFE_ATTRIBUTES),
                )
                .await;
            super::converged(created)
        }
    }
}

pub async fn role_exists(cluster: &Cluster, role: &Ident) -> Result<bool, DataPlaneError> {
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role.as_str())
            .fetch_one(cluster.admin())
            .await
            .map_err(|e| cluster.err(e))?;
    Ok(exists)
}

/// Drops `role` after removing its privileges in those of `databases` that still exist (they
/// would block the drop).
pub async fn drop_role(
    cluster: &Cluster,
    role: &Ident,
    databases: &[&Ident],
) -> Result<(), DataPlaneError> {
    if !role_exists(cluster, role).await? {
        return Ok(());
    }
    for db in databases {
        if !cluster.database_exists(db).await? {
            continue;
        }
        cluster
            .exec(
                &cluster.database(db),
                Statement::new("DROP OWNED BY ").ident(role),
            )
            .await?;
    }
    drop_role_anywhere(cluster, role).await
}

/// `DROP ROLE`, and if the role still owns something somewhere (a large object or a table in
/// a database the caller did not know of), `DROP OWNED` in every database that takes
/// connections, then `DROP ROLE` again: an object planted outside its container never leaves a
/// role undroppable or a deletion stuck. Idempotent.
pub(super) async fn drop_role_anywhere(
    cluster: &Cluster,
    role: &Ident,
) -> Result<(), DataPlaneError> {
    match drop_role_and_what_it_owns(cluster, role).await {
        Err(e) if dropped_meanwhile(&e) => Ok(()),
        other => other,
    }
}

async fn drop_role_and_what_it_owns(cluster: &Cluster, role: &Ident) -> Result<(), DataPlaneError> {
    let drop = || Statement::new("DROP ROLE IF EXISTS ").ident(role);
    match cluster.exec(cluster.admin(), drop()).await {
        Err(DataPlaneError::Sql { source, .. })
            if crate::sqlstate::classify(&source) == crate::sqlstate::Class::StillReferenced =>
        {
            let databases: Vec<(String,)> = sqlx::query_as(
                "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY 1",
            )
            .fetch_all(cluster.admin())
            .await
            .map_err(|e| cluster.err(e))?;
            for db in super::idents(databases)? {
                let Some(mut conn) = cluster.connect_once(&db).await? else {
                    continue;
                };
                sqlx::query(Statement::new("DROP OWNED BY ").ident(role).into_sql())
                    .execute(&mut conn)
                    .await
                    .map_err(|e| cluster.err(e))?;
            }
            cluster.exec(cluster.admin(), drop()).await
        }
        other => other,
    }
}

/// 42704 naming the role: another session (a deletion, another replica's reaper) dropped it
/// between our check and our statement. Dropping is what we wanted: done.
pub(super) fn dropped_meanwhile(e: &DataPlaneError) -> bool {
    matches!(e, DataPlaneError::Sql { source, .. }
        if crate::sqlstate::code(source).as_deref() == Some("42704"))
}

/// Takes `database` away from a role that lives on: CONNECT and its per-database settings.
/// (Privileges on objects inside go with the container.) Idempotent.
pub async fn revoke_database(
    cluster: &Cluster,
    role: &Ident,
    database: &Ident,
) -> Result<(), DataPlaneError> {
    if !role_exists(cluster, role).await? || !cluster.database_exists(database).await? {
        return Ok(());
    }
    cluster
        .exec_serialised(
            cluster.admin(),
            &Cluster::database_acl_lock(database),
            Statement::new("REVOKE CONNECT ON DATABASE ")
                .ident(database)
                .push(" FROM ")
                .ident(role),
        )
        .await?;
    cluster
        .exec(
            cluster.admin(),
            Statement::new("ALTER ROLE ")
                .ident(role)
                .push(" IN DATABASE ")
                .ident(database)
                .push(" RESET ALL"),
        )
        .await
}

/// Per-database settings for the role: its search_path and its tenant id, so a session of the
/// tenant's own role passes the RLS policies without setting anything.
pub async fn set_role_defaults(
    cluster: &Cluster,
    role: &Ident,
    database: &Ident,
    schema: &Ident,
    tenant_id: uuid::Uuid,
) -> Result<(), DataPlaneError> {
    let base = || {
        Statement::new("ALTER ROLE ")
            .ident(role)
            .push(" IN DATABASE ")
            .ident(database)
    };
    cluster
        .exec(
            cluster.admin(),
            base().push(" SET search_path TO ").ident(schema),
        )
        .await?;
    cluster
        .exec(
            cluster.admin(),
            base()
                .push(" SET app.tenant_id TO ")
                .literal(&tenant_id.to_string())?,
        )
        .await
}

/// A random password for a login role: 32 characters from [A-Za-z0-9].
pub fn generate_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677).
pub fn scram_verifier(password: &str) -> String {
    const ITERATIONS: u32 = 4096;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
    let hmac = |key: &[u8], msg: &[u8]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        m.update(msg);
        m.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// The application role's whole access to a container: the role itself, CONNECT on the
/// database, USAGE on the schema and DML on the tenant tables. Idempotent.
pub async fn grant_access(cluster: &Cluster, c: &super::Container) -> Result<(), DataPlaneError> {
    ensure_role(cluster, &c.role).await?;
    let (can_connect,): (bool,) =
        sqlx::query_as("SELECT has_database_privilege($1, $2, 'CONNECT')")
            .bind(c.role.as_str())
            .bind(c.database.as_str())
            .fetch_one(cluster.admin())
            .await
            .map_err(|e| cluster.err(e))?;
    if !can_connect {
        cluster
            .exec_serialised(
                cluster.admin(),
                &Cluster::database_acl_lock(&c.database),
                Statement::new("GRANT CONNECT ON DATABASE ")
                    .ident(&c.database)
                    .push(" TO ")
                    .ident(&c.role),
            )
            .await?;
    }
    super::catalog::grant_tables(cluster, &cluster.database(&c.database), &c.schema, &c.role).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgres_format() {
        let v = scram_verifier("pw");
        let re = v.strip_prefix("SCRAM-SHA-256$4096:").unwrap();
        let (salt, keys) = re.split_once('$').unwrap();
        assert_eq!(B64.decode(salt).unwrap().len(), 16);
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(B64.decode(stored).unwrap().len(), 32);
        assert_eq!(B64.decode(server).unwrap().len(), 32);
        assert_ne!(scram_verifier("pw"), v, "salted");
    }

    #[test]
    fn passwords_are_long_and_alphanumeric() {
        let p = generate_password();
        assert_eq!(p.len(), 32);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
