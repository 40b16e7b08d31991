//! Logins issued to applications ([`crate::credentials`]): which login role exists on which
//! cluster for which tenant, issued at which routing epoch, until when, and whether it was
//! revoked. Never a password. A row goes once its role is dropped.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::Error;
use crate::registry::Registry;

/// A login about to be created.
#[derive(Debug, Clone)]
pub struct NewLogin<'a> {
    pub username: &'a str,
    pub tenant_id: Uuid,
    pub cluster: &'a str,
    pub routing_epoch: i64,
    pub issued_by: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// A login the registry knows: its name and cluster.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoginRow {
    pub username: String,
    pub cluster: String,
}

impl Registry {
    /// Records `login` if its tenant is still active at the routing epoch it was issued for
    /// (false otherwise: the tenant moved or is going). Recorded before the role is created,
    /// so no issued role exists that the registry does not know.
    pub async fn record_login(&self, login: &NewLogin<'_>) -> Result<bool, Error> {
        let recorded = sqlx::query(
            "INSERT INTO issued_logins
                 (username, tenant_id, cluster, routing_epoch, issued_by, expires_at)
             SELECT $1, id, $3, routing_epoch, $5, $6 FROM tenants
             WHERE id = $2 AND state = 'active' AND routing_epoch = $4",
        )
        .bind(login.username)
        .bind(login.tenant_id)
        .bind(login.cluster)
        .bind(login.routing_epoch)
        .bind(login.issued_by)
        .bind(login.expires_at)
        .execute(self.pool())
        .await?;
        Ok(recorded.rows_affected() == 1)
    }

    /// Whether `username` may still be handed out once its role exists: not revoked, and its
    /// tenant still active at the epoch it was issued at. A tier change's switch, a deletion
    /// or RevokeCredentials that came in between says no.
    pub async fn login_still_valid(&self, username: &str) -> Result<bool, Error> {
        let valid: Option<bool> = sqlx::query_scalar(
            "SELECT l.revoked_at IS NULL AND t.state = 'active'
                    AND t.routing_epoch = l.routing_epoch
             FROM issued_logins l JOIN tenants t ON t.id = l.tenant_id
             WHERE l.username = $1",
        )
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        Ok(valid.unwrap_or(false))
    }

    /// Marks the tenant's logins revoked (only those issued before `before_epoch`, if given)
    /// and returns every revoked one not yet dropped.
    pub async fn revoke_logins(
        &self,
        tenant_id: Uuid,
        before_epoch: Option<i64>,
    ) -> Result<Vec<LoginRow>, Error> {
        Ok(sqlx::query_as(
            "UPDATE issued_logins SET revoked_at = coalesce(revoked_at, now())
             WHERE tenant_id = $1 AND ($2::bigint IS NULL OR routing_epoch < $2)
             RETURNING username, cluster",
        )
        .bind(tenant_id)
        .bind(before_epoch)
        .fetch_all(self.pool())
        .await?)
    }

    /// Forgets a login whose role is gone.
    pub async fn forget_login<'e>(
        exec: impl sqlx::PgExecutor<'e>,
        username: &str,
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM issued_logins WHERE username = $1")
            .bind(username)
            .execute(exec)
            .await?;
        Ok(())
    }

    /// Claims one login that is due to go (expired or revoked), locked in `tx` so that
    /// another replica's reaper skips it; `None` when none is due. `skip`: logins this pass
    /// already failed to drop (their cluster is down), so they do not block the others.
    pub async fn claim_due_login(
        tx: &mut Transaction<'_, Postgres>,
        skip: &[String],
    ) -> Result<Option<LoginRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT username, cluster FROM issued_logins
             WHERE least(expires_at, revoked_at) <= now() AND username <> ALL($1)
             ORDER BY least(expires_at, revoked_at)
             LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(skip)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// Marks one login revoked (its creation failed half-way): the reaper drops whatever of
    /// it exists.
    pub async fn revoke_login(&self, username: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE issued_logins SET revoked_at = coalesce(revoked_at, now()) WHERE username = $1",
        )
        .bind(username)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// How many logins of the tenant the registry knows (revoked ones not yet dropped too).
    pub async fn count_logins(&self, tenant_id: Uuid) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM issued_logins WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(self.pool())
                .await?,
        )
    }
}
