//! A tenant's own login password: created once, sealed by the key provider and kept in the
//! registry, then reused by every container of the tenant that has its own role (a tier
//! change to another cluster recreates the role there with the same password, so the
//! application's credential survives the move). Provisioning, tier changes and restores
//! grant through here; the password itself is only ever handed to PostgreSQL as a SCRAM
//! verifier.

use uuid::Uuid;

use crate::context::Context;
use crate::dataplane::{Cluster, Container, backend, roles};
use crate::keys::EncryptionContext;
use crate::sql::Ident;
use crate::workflow::{StepError, StepResultExt};

/// The encryption context binding a sealed login password to its tenant and role.
pub fn credential_context(tenant_id: Uuid, role: &str) -> EncryptionContext {
    [
        ("purpose".to_owned(), "postgres-login".to_owned()),
        ("tenant_id".to_owned(), tenant_id.to_string()),
        ("role".to_owned(), role.to_owned()),
    ]
    .into()
}

/// Grants the container's application role its access; a tier with its own login role gets
/// the tenant's password ([`verifier`]).
pub async fn grant(deps: &Context, cluster: &Cluster, c: &Container) -> Result<(), StepError> {
    grant_staged(deps, cluster, c, &c.schema).await
}

/// Like [`grant`] for a copy of a container staged under another schema name that will be
/// renamed to `live_schema` (a restore): the access goes to the staged copy, the role's
/// search_path names `live_schema`.
pub async fn grant_staged(
    deps: &Context,
    cluster: &Cluster,
    staged: &Container,
    live_schema: &Ident,
) -> Result<(), StepError> {
    let tier = backend(staged.tier);
    let verifier = if tier.own_login_role() {
        Some(verifier(deps, staged.tenant_id, staged.role.as_str()).await?)
    } else {
        None
    };
    Ok(tier
        .grant(cluster, staged, live_schema, verifier.as_deref())
        .await?)
}

/// A SCRAM verifier for the tenant's password for `role`: the stored one if there is one,
/// else a new random password, sealed and stored before its verifier is handed out (so a
/// crash in between leaves a stored credential the next attempt reuses).
pub async fn verifier(deps: &Context, tenant_id: Uuid, role: &str) -> Result<String, StepError> {
    let context = credential_context(tenant_id, role);
    if let Some(sealed) = deps.registry.get_credential(tenant_id, role).await? {
        let password = deps.keys.open(&sealed, &context).await.retryable()?;
        let password = String::from_utf8(password)
            .map_err(|_| StepError::internal("stored credential is not UTF-8"))?;
        return Ok(roles::scram_verifier(&password));
    }
    let password = roles::generate_password();
    let sealed = deps
        .keys
        .seal(password.as_bytes(), &context)
        .await
        .retryable()?;
    deps.registry
        .put_credential(tenant_id, role, &sealed)
        .await?;
    Ok(roles::scram_verifier(&password))
}
