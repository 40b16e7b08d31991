//! Logins issued to applications: short-lived login roles, each a member of one tenant's
//! role, created and dropped on the data plane ([`crate::credentials`] decides when).
//!
//! A login's name says whose it is: `tl_<tenant id, 32 hex>_<random>`. The tenant policy
//! binds a session to the tenant in its login's name ([`super::isolation::POLICY_USING`]), so
//! whatever the session sets, it reaches only that tenant's rows; a deletion finds every login
//! of the tenant on a cluster by the name alone. `VALID UNTIL` makes the server refuse the
//! login once it expires; its role defaults (search path, `app.tenant_id`) put a plain
//! `psql "$uri"` session in the tenant's container. The password reaches the server only as
//! a SCRAM verifier ([`super::roles::scram_verifier`]).

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::{Cluster, Container, DataPlaneError, roles};
use crate::sql::{Ident, Statement};

/// The prefix of every issued login's name.
pub const PREFIX: &str = "tl_";

/// The start of every login name issued to `tenant_id`.
pub fn prefix_of(tenant_id: Uuid) -> String {
    format!("{PREFIX}{}_", tenant_id.simple())
}

/// A new login name for `tenant_id`: the tenant's id and 12 random characters of [0-9a-z].
pub fn new_name(tenant_id: Uuid) -> Ident {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    Ident::new(format!("{}{suffix}", prefix_of(tenant_id))).expect("a valid role name")
}

/// The tenant an issued login's name belongs to, if it is one.
pub fn tenant_of(login: &str) -> Option<Uuid> {
    let rest = login.strip_prefix(PREFIX)?;
    let (hex, suffix) = rest.split_once('_')?;
    let ok = hex.len() == 32
        && !suffix.is_empty()
        && suffix
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
    if !ok {
        return None;
    }
    Uuid::try_parse(hex).ok()
}

/// What one login may hold: sessions at once, and how long a statement may run and a
/// transaction may sit idle (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections: u32,
    pub statement: std::time::Duration,
    pub idle_in_transaction: std::time::Duration,
}

/// Creates `login` for the tenant of `c`: a member of `c`'s role, valid until `valid_until`,
/// with `password_verifier` and `limits`, and the container's search path and tenant id as
/// its defaults in the container's database. One transaction: the login exists with all of
/// it or not at all.
pub async fn create(
    cluster: &Cluster,
    c: &Container,
    login: &Ident,
    password_verifier: &str,
    valid_until: DateTime<Utc>,
    limits: &Limits,
) -> Result<(), DataPlaneError> {
    let until = valid_until.to_rfc3339_opts(SecondsFormat::Secs, true);
    let in_db = || {
        Statement::new("ALTER ROLE ")
            .ident(login)
            .push(" IN DATABASE ")
            .ident(&c.database)
    };
    let role = || Statement::new("ALTER ROLE ").ident(login);
    let statements = vec![
        Statement::new("CREATE ROLE ")
            .ident(login)
            .push(" LOGIN")
            .push(roles::SAFE_ATTRIBUTES)
            .push(" PASSWORD ")
            .literal(password_verifier)?
            .push(" VALID UNTIL ")
            .literal(&until)?
            .push(" CONNECTION LIMIT ")
            .integer(limits.connections.into())
            .push(" IN ROLE ")
            .ident(&c.role),
        // Everywhere: one session cannot hold a transaction (and the locks and the fence
        // wait-out it implies) open for long.
        role()
            .push(" SET idle_in_transaction_session_timeout TO ")
            .literal(&format!("{}ms", limits.idle_in_transaction.as_millis()))?,
        role()
            .push(" SET statement_timeout TO ")
            .literal(&format!("{}ms", limits.statement.as_millis()))?,
        in_db().push(" SET search_path TO ").ident(&c.schema),
        in_db()
            .push(" SET app.tenant_id TO ")
            .literal(&c.tenant_id.to_string())?,
    ];
    let err = |e| cluster.err(e);
    let mut tx = cluster.admin().begin().await.map_err(err)?;
    for stmt in statements {
        sqlx::query(stmt.into_sql())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

/// Drops `login` and ends its sessions: first it can no longer log in, then its sessions are
/// terminated, then the role goes (with whatever it came to own, in any database). Idempotent.
pub async fn remove(cluster: &Cluster, login: &Ident) -> Result<(), DataPlaneError> {
    if !roles::role_exists(cluster, login).await? {
        return Ok(());
    }
    match cluster
        .exec(
            cluster.admin(),
            Statement::new("ALTER ROLE ").ident(login).push(" NOLOGIN"),
        )
        .await
    {
        Err(e) if roles::dropped_meanwhile(&e) => return Ok(()),
        other => other?,
    }
    // Waits up to a second for each session to go.
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity
         WHERE usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind(login.as_str())
    .execute(cluster.admin())
    .await
    .map_err(|e| cluster.err(e))?;
    roles::drop_role_anywhere(cluster, login).await
}

/// Every issued login of `tenant_id` on `cluster`, found by name (also one the registry lost
/// track of).
pub async fn of_tenant(cluster: &Cluster, tenant_id: Uuid) -> Result<Vec<Ident>, DataPlaneError> {
    named(cluster, &prefix_of(tenant_id), None).await
}

/// Issued logins on `cluster` whose validity ended before `before`, found by name and
/// `VALID UNTIL`: what the reaper drops even when the registry has no row for it.
pub async fn expired(
    cluster: &Cluster,
    before: DateTime<Utc>,
) -> Result<Vec<Ident>, DataPlaneError> {
    let all = named(cluster, PREFIX, Some(before)).await?;
    Ok(all
        .into_iter()
        .filter(|n| tenant_of(n.as_str()).is_some())
        .collect())
}

/// Roles whose name starts with `prefix` (and, with `expired_before`, whose validity ended
/// before then).
async fn named(
    cluster: &Cluster,
    prefix: &str,
    expired_before: Option<DateTime<Utc>>,
) -> Result<Vec<Ident>, DataPlaneError> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT rolname::text FROM pg_roles
         WHERE starts_with(rolname, $1) AND ($2::timestamptz IS NULL OR rolvaliduntil < $2)
         ORDER BY 1",
    )
    .bind(prefix)
    .bind(expired_before)
    .fetch_all(cluster.admin())
    .await
    .map_err(|e| cluster.err(e))?;
    super::idents(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_tenant_and_nothing_else_parses() {
        let id = Uuid::new_v4();
        let a = new_name(id);
        assert_eq!(tenant_of(a.as_str()), Some(id));
        assert_ne!(a.as_str(), new_name(id).as_str());
        assert!(a.as_str().len() <= crate::sql::MAX_IDENT_LEN);
        let own = format!("t_{}", id.simple());
        for bad in [own.as_str(), "tl_", "tl_abc_def", "tenantd_pool_app"] {
            assert_eq!(tenant_of(bad), None, "{bad}");
        }
        assert_eq!(tenant_of(&format!("tl_{}_", id.simple())), None);
        assert_eq!(tenant_of(&format!("tl_{}_X", id.simple())), None);
    }
}
