//! Credentials for applications, and the tenant role they reach the data through.
//!
//! A tenant's role (`t_<id>` in the schema and database tiers; the shared `tenantd_pool_app`
//! in the pool) holds the container's grants and never logs in. An application asks for a
//! login ([`issue`]): a new login role of its own, a member of the tenant's role, valid for a
//! TTL of 60 s to 24 h, with the container's search path and tenant id as its defaults and a
//! name that binds its sessions to the tenant ([`crate::dataplane::logins`]). The password is
//! returned once and never stored; the registry keeps the login's name, cluster, routing
//! epoch and expiry ([`crate::registry::logins`]).
//!
//! Lifecycle:
//! - issuing records the login first (only while the tenant is active at the routing epoch
//!   read), then creates the role, then checks the record again: a tier change that switched,
//!   a deletion or a revocation in between makes it drop the role and answer ABORTED or
//!   FAILED_PRECONDITION, so no login outlives the placement it was issued for;
//! - [`revoke`] ends logins now (RevokeCredentials; a tier change's cleanup, for the logins
//!   issued before its switch; a deletion, for all of them, found by name on every cluster);
//! - [`reap`] runs on every replica: it drops expired and revoked logins, ending their
//!   sessions, so their number stays bounded by what was issued in the last TTL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::Context;
use crate::dataplane::{Cluster, Container, backend, isolation, logins, roles};
use crate::error::Error;
use crate::registry::Registry;
use crate::registry::logins::{LoginRow, NewLogin};
use crate::sql::Ident;
use crate::tenant::{Tenant, TenantState};
use crate::workflow::StepError;

/// The TTLs a login may be issued for, and the one it gets when the request names none.
pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// How long securing a container before issuing may wait for its migration lock.
const SECURE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Grants the container's application role its access (a tenant's own role gets its search
/// path and tenant id in the container's database; it never logs in itself).
pub async fn grant(cluster: &Cluster, c: &Container) -> Result<(), StepError> {
    grant_staged(cluster, c, &c.schema).await
}

/// Like [`grant`] for a copy of a container staged under another schema name that will be
/// renamed to `live_schema` (a restore): the access goes to the staged copy, the role's
/// search_path names `live_schema`.
pub async fn grant_staged(
    cluster: &Cluster,
    staged: &Container,
    live_schema: &Ident,
) -> Result<(), StepError> {
    Ok(backend(staged.tier)
        .grant(cluster, staged, live_schema)
        .await?)
}

/// A login just issued. `password` is the only copy: it goes to the caller and nowhere else.
pub struct Issued {
    pub username: String,
    pub password: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Checks a requested TTL (`None`: the default).
pub fn ttl(seconds: Option<u64>) -> Result<Duration, Error> {
    let Some(seconds) = seconds else {
        return Ok(DEFAULT_TTL);
    };
    let ttl = Duration::from_secs(seconds);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(Error::invalid(
            "ttl_seconds",
            format!(
                "must be {} to {} seconds (0: {}), got {seconds}",
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs(),
                DEFAULT_TTL.as_secs()
            ),
        ));
    }
    Ok(ttl)
}

/// Issues a login to `tenant` where it lives now, on behalf of `issued_by` (see the module
/// doc for the order of things).
pub async fn issue(
    deps: &Context,
    tenant: &Tenant,
    ttl: Duration,
    issued_by: &str,
) -> Result<Issued, Error> {
    tenant.ensure_active()?;
    let c = Container::from_placement(tenant.id, tenant.tier, &tenant.placement)?;
    let cluster = deps.dataplane.cluster(&c.cluster)?;
    // The policy that binds the login to the tenant must be the current one before a login
    // relies on it (a container no migration touched since an upgrade).
    isolation::secure(
        cluster,
        &cluster.database(&c.database),
        &c.schema,
        SECURE_LOCK_TIMEOUT,
    )
    .await?;
    let username = logins::new_name(tenant.id);
    let expires_at = DateTime::<Utc>::from_timestamp(
        Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        0,
    )
    .ok_or_else(|| Error::Internal("expiry out of range".into()))?;
    let recorded = deps
        .registry
        .record_login(&NewLogin {
            username: username.as_str(),
            tenant_id: tenant.id,
            cluster: &c.cluster,
            routing_epoch: tenant.routing_epoch,
            issued_by,
            expires_at,
        })
        .await?;
    if !recorded {
        return Err(changed(deps, tenant.id).await);
    }
    let password = roles::generate_password();
    let verifier = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || roles::scram_verifier(&password))
            .await
            .map_err(|e| Error::Internal(format!("verifier: {e}")))?
    };
    let limits = deps.config.credentials.limits(&tenant.plan);
    if let Err(e) = logins::create(cluster, &c, &username, &verifier, expires_at, &limits).await {
        // The reaper drops whatever of it a lost reply left behind.
        deps.registry.revoke_login(username.as_str()).await?;
        return Err(e.into());
    }
    if !deps.registry.login_still_valid(username.as_str()).await? {
        logins::remove(cluster, &username).await?;
        Registry::forget_login(deps.registry.pool(), username.as_str()).await?;
        return Err(changed(deps, tenant.id).await);
    }
    tracing::info!(tenant_id = %tenant.id, login = %username.as_str(), %expires_at,
        "login issued");
    Ok(Issued {
        username: username.as_str().to_owned(),
        password,
        expires_at,
    })
}

/// Why a login could not be handed out: the tenant is no longer active
/// (FAILED_PRECONDITION), or it moved or its logins were revoked meanwhile (ABORTED: retry).
async fn changed(deps: &Context, tenant_id: Uuid) -> Error {
    match deps
        .registry
        .get_tenant(&crate::tenant::TenantRef::Id(tenant_id))
        .await
    {
        Ok(t) if t.state != TenantState::Active => t.ensure_active().unwrap_err(),
        Ok(t) => Error::Aborted(format!(
            "tenant {} moved or had its credentials revoked while a login was issued; retry",
            t.slug
        )),
        Err(e) => e,
    }
}

/// Which of a tenant's logins [`revoke`] ends.
#[derive(Debug, Clone, Copy)]
pub enum Revoke {
    /// Every one, also those only the clusters know (a deletion, RevokeCredentials).
    All,
    /// Those issued before the routing epoch: for placements the tenant has left.
    IssuedBefore(i64),
}

/// Ends the tenant's logins `which` now: each can no longer log in, its sessions are
/// terminated and its role dropped. Returns how many were dropped. Idempotent.
pub async fn revoke(deps: &Context, tenant_id: Uuid, which: Revoke) -> Result<usize, Error> {
    let before = match which {
        Revoke::All => None,
        Revoke::IssuedBefore(epoch) => Some(epoch),
    };
    let mut dropped = 0;
    for row in deps.registry.revoke_logins(tenant_id, before).await? {
        remove_recorded(deps, &row).await?;
        Registry::forget_login(deps.registry.pool(), &row.username).await?;
        dropped += 1;
    }
    if let Revoke::All = which {
        for cluster in deps.dataplane.clusters() {
            for login in logins::of_tenant(cluster, tenant_id).await? {
                logins::remove(cluster, &login).await?;
                dropped += 1;
            }
        }
    }
    if dropped > 0 {
        tracing::info!(%tenant_id, logins = dropped, "logins revoked");
    }
    Ok(dropped)
}

/// Drops the role of a login the registry records (its sessions ended). A cluster no longer
/// configured has no role left to drop.
async fn remove_recorded(deps: &Context, row: &LoginRow) -> Result<(), Error> {
    let login = Ident::new(row.username.clone()).map_err(crate::dataplane::DataPlaneError::from)?;
    if let Ok(cluster) = deps.dataplane.cluster(&row.cluster) {
        logins::remove(cluster, &login).await?;
    }
    Ok(())
}

/// Drops expired and revoked logins every `credentials.reap_interval_seconds` until
/// `shutdown`. Replicas share the work: each claims a login with SKIP LOCKED.
pub async fn reap(deps: Context, shutdown: CancellationToken) {
    let every = Duration::from_secs(deps.config.credentials.reap_interval_seconds);
    loop {
        if let Err(e) = reap_once(&deps).await {
            tracing::warn!(error = %e, "login reaper: will try again");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass of the reaper: every due login the registry knows, then any expired login role a
/// cluster still has that the registry lost track of. Returns how many went.
pub async fn reap_once(deps: &Context) -> Result<usize, Error> {
    let (mut reaped, mut failed) = (0, Vec::new());
    loop {
        let mut tx = deps.registry.pool().begin().await?;
        let Some(row) = Registry::claim_due_login(&mut tx, &failed).await? else {
            break;
        };
        if let Err(e) = remove_recorded(deps, &row).await {
            tracing::warn!(error = %e, login = %row.username, "login not dropped yet");
            failed.push(row.username);
            continue;
        }
        Registry::forget_login(&mut *tx, &row.username).await?;
        tx.commit().await?;
        reaped += 1;
    }
    let now = Utc::now();
    for cluster in deps.dataplane.clusters() {
        let expired = match logins::expired(cluster, now).await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, cluster = %cluster.name, "expired logins not listed");
                continue;
            }
        };
        for login in expired {
            logins::remove(cluster, &login).await?;
            Registry::forget_login(deps.registry.pool(), login.as_str()).await?;
            reaped += 1;
        }
    }
    if reaped > 0 {
        tracing::info!(logins = reaped, "expired and revoked logins dropped");
    }
    Ok(reaped)
}
