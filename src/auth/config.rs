//! The `[auth]` section of the configuration: tokens and client certificates with their
//! roles. It lives with the authenticator that reads it, so the configuration module only
//! includes it and validation never needs to build an [`super::Authenticator`] there.

use serde::{Deserialize, Serialize};

use super::Role;

/// Why an `[auth]` section is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAuthConfig(pub String);

/// Callers and their roles. At least one way in is required.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens, by SHA-256 (`tenantd token new` makes one and prints its entry).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Client certificates (verified against `tls.client_ca_file`), by subject.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Calls without credentials act as an admin named `anonymous`. Only with a loopback
    /// `listen` address and no TLS: `tenantd dev --insecure-no-auth` sets it.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal: written to the audit log for every call made with the token.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token. The token itself is never in the configuration.
    pub sha256: String,
    /// Only for role `application`: the tenants it may reach, by label (`region=eu`,
    /// comma-separated pairs that must all match). Unset: every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// RFC 4514 subject of the client certificate, e.g. `CN=billing,O=Example Health`
    /// (tenantd logs the subject of a certificate it does not know).
    pub subject: String,
    pub name: String,
    pub role: Role,
    /// As for a token: only for role `application`, the tenants it may reach by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<String>,
}

impl AuthConfig {
    /// Checks every entry: names, token hashes, certificate subjects, no duplicates.
    pub fn validate(&self) -> Result<(), InvalidAuthConfig> {
        super::Authenticator::new(self).map(|_| ())
    }
}
