//! Credentials for applications: issuing a login to a tenant and revoking a tenant's logins
//! ([`crate::credentials`] does the work; this is what the RPCs mean).

use std::time::Duration;

use super::{Control, Route};
use crate::auth::Principal;
use crate::credentials::{self, Issued, Revoke};
use crate::error::Result;
use crate::tenant::TenantRef;

impl Control {
    /// A new login to the tenant for `principal` (who must be allowed to reach it), valid for
    /// `ttl`, with the route it reaches.
    pub async fn issue_credentials(
        &self,
        principal: &Principal,
        r: &TenantRef,
        ttl: Duration,
    ) -> Result<(Issued, Route)> {
        let tenant = self.registry().get_tenant(r).await?;
        principal.may_reach(&tenant)?;
        let issued = credentials::issue(&self.deps, &tenant, ttl, &principal.name).await?;
        Ok((issued, self.route(tenant)?))
    }

    /// Ends every login issued for the tenant now; returns how many.
    pub async fn revoke_credentials(&self, principal: &Principal, r: &TenantRef) -> Result<usize> {
        let tenant = self.registry().get_tenant(r).await?;
        principal.may_reach(&tenant)?;
        credentials::revoke(&self.deps, tenant.id, Revoke::All).await
    }
}

/// A libpq connection URI for `user` at `route` (a socket directory as host goes in the
/// query, as libpq wants it).
pub fn connection_uri(user: &str, password: &str, route: &Route) -> String {
    let database = route
        .tenant
        .placement
        .database
        .as_deref()
        .unwrap_or_default();
    let (user, password, database) = (encode(user), encode(password), encode(database));
    let port = route.port;
    if route.host.starts_with('/') {
        let host = encode(&route.host);
        return format!("postgresql://{user}:{password}@/{database}?host={host}&port={port}");
    }
    let host = if route.host.contains(':') {
        format!("[{}]", route.host)
    } else {
        route.host.clone()
    };
    format!("postgresql://{user}:{password}@{host}:{port}/{database}")
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn only_unreserved_characters_pass_unencoded() {
        assert_eq!(encode("tl_ab-c.d~"), "tl_ab-c.d~");
        assert_eq!(encode("/tmp/pg sock"), "%2Ftmp%2Fpg%20sock");
        assert_eq!(encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
