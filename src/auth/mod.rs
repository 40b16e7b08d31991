//! Who is calling, and what they may do (docs/security.md).
//!
//! Authentication: a bearer token (`authorization: Bearer tdt_…`) whose SHA-256 is listed in
//! `[[auth.tokens]]`, or a client certificate, verified against `[tls] client_ca_file`, whose
//! subject is listed in `[[auth.certificates]]`. Tokens are 256 random bits, so one unsalted
//! SHA-256 is enough to make the configuration useless to whoever reads it; the token itself is
//! never stored or logged.
//!
//! Authorization: [`access`] is the one table from gRPC method to the [`Permission`] it needs,
//! and [`Role::allows`] the one table from role to permissions. A method missing from the table
//! is refused to everyone, so a new RPC stays closed until someone decides who may call it.
//! [`layer`] applies both to every call before any handler runs.

pub mod client;
pub mod config;
pub mod layer;
pub mod limits;
pub mod refusals;

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

use config::{AuthConfig, InvalidAuthConfig};

/// What a caller is for. See docs/security.md for the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Billing systems: create tenants, change their tier, read, watch operations.
    Billing,
    /// Compliance staff: export, delete, deletion certificates, the audit log, read, watch.
    Compliance,
    /// Read-only consoles and dashboards.
    Viewer,
    /// The SaaS application itself: where a tenant lives and a login to it, nothing else.
    /// A token may be limited to the tenants whose labels match a selector.
    Application,
}

/// One kind of thing a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Registry reads: tenants, operations, export metadata, the signing key.
    Read,
    /// Where a tenant lives (ResolveTenant).
    Resolve,
    /// A short-lived login to a tenant's data (IssueCredentials).
    IssueCredentials,
    /// Ending a tenant's issued logins now (RevokeCredentials).
    RevokeCredentials,
    /// Waiting on and streaming an operation.
    Watch,
    Create,
    ChangeTier,
    /// Registry-only attributes (display name, plan, labels).
    Update,
    Cancel,
    /// Starting an export and reading one back (tenant data and its data key).
    Export,
    Restore,
    Delete,
    Certificates,
    Audit,
    /// Fleet migrations of the tenant schema: start, approve, retry.
    Migrate,
    /// Setting and deleting backup policies.
    Backups,
    /// Placing and clearing legal holds.
    LegalHold,
}

impl Role {
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Billing => matches!(p, Read | Resolve | Watch | Create | ChangeTier),
            // Watch too: compliance starts exports and deletions and must see them finish;
            // and it can end a tenant's logins in an incident, never obtain one.
            Role::Compliance => matches!(
                p,
                Read | Resolve
                    | Watch
                    | Export
                    | Delete
                    | Certificates
                    | Audit
                    | RevokeCredentials
                    | Backups
                    | LegalHold
            ),
            Role::Viewer => matches!(p, Read | Resolve),
            Role::Application => matches!(p, Resolve | IssueCredentials),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Billing => "billing",
            Role::Compliance => "compliance",
            Role::Viewer => "viewer",
            Role::Application => "application",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks: load balancers and kubelets probe without credentials.
    Public,
    /// Reflection: any authenticated caller (it describes the API, nothing else).
    Authenticated,
    Requires(Permission),
}

/// The access policy: gRPC path (`/package.Service/Method`) → what it needs. `None`: not a
/// method this table knows, refused to everyone.
pub fn access(path: &str) -> Option<Access> {
    use Permission::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    const TENANTS: &str = "tenantd.v1.TenantService";
    const OPERATIONS: &str = "tenantd.v1.OperationService";
    const EXPORTS: &str = "tenantd.v1.ExportService";
    const DELETIONS: &str = "tenantd.v1.DeletionService";
    const AUDIT: &str = "tenantd.v1.AuditService";
    const FLEET: &str = "tenantd.v1.FleetService";
    const BACKUPS: &str = "tenantd.v1.BackupService";
    let permission = match (service, method) {
        ("grpc.health.v1.Health", _) => return Some(Access::Public),
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            return Some(Access::Authenticated);
        }
        (TENANTS, "CreateTenant") => Create,
        (TENANTS, "GetTenant" | "ListTenants") => Read,
        (TENANTS, "ResolveTenant") => Resolve,
        (TENANTS, "IssueCredentials") => IssueCredentials,
        (TENANTS, "RevokeCredentials") => RevokeCredentials,
        (TENANTS, "UpdateTenant") => Update,
        (TENANTS, "ChangeTier") => ChangeTier,
        (OPERATIONS, "GetOperation" | "ListOperations") => Read,
        (OPERATIONS, "WaitOperation" | "WatchOperation") => Watch,
        (OPERATIONS, "CancelOperation") => Cancel,
        (EXPORTS, "ExportTenant" | "ReadExport") => Export,
        (EXPORTS, "GetExport" | "ListExports" | "GetSigningKey") => Read,
        (EXPORTS, "RestoreTenant") => Restore,
        // Removing a backup destroys tenant data, as a deletion does.
        (EXPORTS, "DeleteExport") => Delete,
        (BACKUPS, "SetBackupPolicy" | "DeleteBackupPolicy") => Backups,
        (BACKUPS, "GetBackupPolicy" | "ListBackupPolicies" | "GetBackupStatus") => Read,
        (BACKUPS, "SetLegalHold" | "ClearLegalHold") => LegalHold,
        (DELETIONS, "DeleteTenant") => Delete,
        (DELETIONS, "GetDeletionCertificate" | "ListDeletionCertificates") => Certificates,
        (AUDIT, "ListAuditEvents" | "VerifyAuditLog") => Audit,
        (FLEET, "GetFleetSchema" | "ListRolloutTargets") => Read,
        (FLEET, "MigrateFleet" | "ResumeRollout" | "RetryRolloutTarget") => Migrate,
        _ => return None,
    };
    Some(Access::Requires(permission))
}

/// Whether a call of `path` starts an operation (and counts against
/// `[limits] operation_starts_per_minute`).
pub fn starts_operation(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    matches!(
        (service, method),
        ("tenantd.v1.TenantService", "CreateTenant" | "ChangeTier")
            | ("tenantd.v1.ExportService", "ExportTenant" | "RestoreTenant")
            | ("tenantd.v1.DeletionService", "DeleteTenant")
            | (
                "tenantd.v1.FleetService",
                "MigrateFleet" | "ResumeRollout" | "RetryRolloutTarget"
            )
    )
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Token,
    Certificate,
    /// `allow_unauthenticated` (loopback development only).
    Nobody,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub via: Via,
    /// The tenants it may reach, when its token or certificate is limited to some.
    pub tenants: Option<LabelSelector>,
}

impl Principal {
    /// Refuses (PERMISSION_DENIED) a tenant outside the principal's selector.
    pub fn may_reach(&self, tenant: &crate::tenant::Tenant) -> Result<(), crate::error::Error> {
        match &self.tenants {
            Some(selector) if !selector.matches(&tenant.labels) => {
                Err(crate::error::Error::PermissionDenied(format!(
                    "{} may reach only tenants labelled {selector}; tenant {} is not",
                    self.name, tenant.slug
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Tenants by label: `key=value` pairs, comma-separated, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, String)>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            let ok = |t: &str| {
                !t.is_empty()
                    && t.len() <= 63
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            };
            if !ok(k) || !ok(v) {
                return Err(format!(
                    "{part:?}: keys and values are 1 to 63 of [A-Za-z0-9._/-]"
                ));
            }
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(LabelSelector(pairs))
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// The selector an `[auth]` entry names, checked: only application principals can be
/// limited (the other roles' calls are not scoped to one tenant each).
fn selector(
    what: &str,
    name: &str,
    role: Role,
    tenants: &Option<String>,
) -> Result<Option<LabelSelector>, InvalidAuthConfig> {
    let Some(s) = tenants else {
        return Ok(None);
    };
    if role != Role::Application {
        return Err(InvalidAuthConfig(format!(
            "{what} {name:?}: only role \"application\" can be limited to tenants"
        )));
    }
    LabelSelector::parse(s)
        .map(Some)
        .map_err(|m| InvalidAuthConfig(format!("{what} {name:?}: tenants: {m}")))
}

/// Who called which method: put in every request's extensions by the [`layer`], read by the
/// audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// `/package.Service/Method`.
    pub method: String,
}

/// Why a call was refused before reaching a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated(&'static str),
    Forbidden {
        principal: Principal,
        method: String,
    },
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(why) => Status::unauthenticated(format!(
                "{why}: send `authorization: Bearer <token>` or a client certificate"
            )),
            Denied::Forbidden { principal, method } => Status::permission_denied(format!(
                "{} (role {}) may not call {method}",
                principal.name, principal.role
            )),
        }
    }
}

/// The credentials tenantd accepts, built once from the configuration.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<[u8; 32], Principal>,
    subjects: HashMap<String, Principal>,
    anonymous: Option<Principal>,
}

const BEARER: &str = "Bearer ";
/// Prefix of generated tokens: makes a leaked one recognisable to secret scanners.
pub const TOKEN_PREFIX: &str = "tdt_";

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, InvalidAuthConfig> {
        let invalid = InvalidAuthConfig;
        let mut auth = Authenticator::default();
        for t in &config.tokens {
            check_name(&t.name).map_err(|m| invalid(format!("auth.tokens: {m}")))?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut hash).map_err(|_| {
                invalid(format!(
                    "auth.tokens {:?}: sha256 must be 64 hex digits (tenantd token new prints it)",
                    t.name
                ))
            })?;
            let principal = Principal {
                name: t.name.clone(),
                role: t.role,
                via: Via::Token,
                tenants: selector("auth.tokens", &t.name, t.role, &t.tenants)?,
            };
            if auth.tokens.insert(hash, principal).is_some() {
                return Err(invalid(format!(
                    "auth.tokens {:?}: the same token is listed twice",
                    t.name
                )));
            }
        }
        for c in &config.certificates {
            check_name(&c.name).map_err(|m| invalid(format!("auth.certificates: {m}")))?;
            if c.subject.is_empty() || c.subject.len() > 1024 {
                return Err(invalid(format!(
                    "auth.certificates {:?}: subject must be 1 to 1024 characters",
                    c.name
                )));
            }
            let principal = Principal {
                name: c.name.clone(),
                role: c.role,
                via: Via::Certificate,
                tenants: selector("auth.certificates", &c.name, c.role, &c.tenants)?,
            };
            if auth.subjects.insert(c.subject.clone(), principal).is_some() {
                return Err(invalid(format!(
                    "auth.certificates: subject {:?} is listed twice",
                    c.subject
                )));
            }
        }
        if config.allow_unauthenticated {
            auth.anonymous = Some(Principal {
                name: "anonymous".into(),
                role: Role::Admin,
                via: Via::Nobody,
                tenants: None,
            });
        }
        Ok(auth)
    }

    /// Who sent a request with these headers over a connection with these verified client
    /// certificates. A token, when sent, must be valid: a bad token is never excused by a
    /// certificate or by `allow_unauthenticated`.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        client_subject: Option<&str>,
    ) -> Result<Principal, Denied> {
        if let Some(value) = authorization {
            let token = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.strip_prefix(BEARER))
                .ok_or(Denied::Unauthenticated(
                    "authorization is not a bearer token",
                ))?;
            return self
                .tokens
                .get(&token_digest(token.trim()))
                .cloned()
                .ok_or(Denied::Unauthenticated("unknown bearer token"));
        }
        if let Some(subject) = client_subject {
            return match self.subjects.get(subject) {
                Some(p) => Ok(p.clone()),
                None => {
                    tracing::warn!(
                        subject,
                        "client certificate subject is not in auth.certificates"
                    );
                    Err(Denied::Unauthenticated(
                        "client certificate subject is not authorised",
                    ))
                }
            };
        }
        self.anonymous
            .clone()
            .ok_or(Denied::Unauthenticated("no credentials"))
    }

    /// Authenticates, then checks the policy for `path`.
    pub fn admit(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
        client_subject: Option<&str>,
    ) -> Result<Option<Principal>, Denied> {
        let access = access(path);
        if access == Some(Access::Public) {
            return Ok(None);
        }
        let principal = self.authenticate(authorization, client_subject)?;
        let allowed = match access {
            Some(Access::Public | Access::Authenticated) => true,
            Some(Access::Requires(p)) => principal.role.allows(p),
            None => false,
        };
        if allowed {
            Ok(Some(principal))
        } else {
            Err(Denied::Forbidden {
                principal,
                method: path.to_owned(),
            })
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1 to 64 of [A-Za-z0-9._@-] (it is written to the audit log)"
        ))
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The hex SHA-256 that `[[auth.tokens]] sha256` lists for `token`.
pub fn token_hash(token: &str) -> String {
    hex::encode(token_digest(token))
}

/// A new bearer token: 256 random bits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", B64.encode(bytes))
}

/// The subject of a DER client certificate in RFC 4514 form (`CN=billing,O=Example`): the
/// string `[[auth.certificates]] subject` must equal.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.subject.to_string())
}

#[cfg(test)]
mod tests {
    use super::config::{AuthConfig, TokenConfig};
    use super::*;

    fn auth(tokens: &[(&str, Role, &str)]) -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: tokens
                .iter()
                .map(|(name, role, token)| TokenConfig {
                    name: (*name).into(),
                    role: *role,
                    sha256: token_hash(token),
                    tenants: None,
                })
                .collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn tokens_authenticate_by_hash_and_roles_gate_methods() {
        let a = auth(&[
            ("ops", Role::Admin, "tdt_a"),
            ("bill", Role::Billing, "tdt_b"),
        ]);
        let create = "/tenantd.v1.TenantService/CreateTenant";
        let delete = "/tenantd.v1.DeletionService/DeleteTenant";
        assert_eq!(
            a.admit(create, Some(b"Bearer tdt_b"), None)
                .unwrap()
                .unwrap()
                .name,
            "bill"
        );
        assert!(matches!(
            a.admit(delete, Some(b"Bearer tdt_b"), None),
            Err(Denied::Forbidden { .. })
        ));
        assert!(a.admit(delete, Some(b"Bearer tdt_a"), None).is_ok());
        for bad in [
            &b"Bearer tdt_c"[..],
            b"tdt_a",
            b"Basic tdt_a",
            b"Bearer \xff",
        ] {
            assert!(matches!(
                a.admit(create, Some(bad), None),
                Err(Denied::Unauthenticated(_))
            ));
        }
        assert!(matches!(
            a.admit(create, None, None),
            Err(Denied::Unauthenticated(_))
        ));
        // Health is public; an unknown method is refused even to an admin.
        assert_eq!(
            a.admit("/grpc.health.v1.Health/Check", None, None),
            Ok(None)
        );
        assert!(matches!(
            a.admit(
                "/tenantd.v1.TenantService/DropEverything",
                Some(b"Bearer tdt_a"),
                None
            ),
            Err(Denied::Forbidden { .. })
        ));
    }

    #[test]
    fn a_bad_token_is_not_excused_by_a_certificate() {
        let mut a = auth(&[]);
        a.subjects.insert(
            "CN=console".into(),
            Principal {
                name: "console".into(),
                role: Role::Viewer,
                via: Via::Certificate,
                tenants: None,
            },
        );
        let get = "/tenantd.v1.TenantService/GetTenant";
        assert!(a.admit(get, None, Some("CN=console")).is_ok());
        assert!(
            a.admit(get, Some(b"Bearer nope"), Some("CN=console"))
                .is_err()
        );
        assert!(a.admit(get, None, Some("CN=other")).is_err());
    }

    #[test]
    fn certificate_subjects_print_as_rfc_4514() {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "billing-system");
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Health");
        let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        // rcgen encodes CN before O; RFC 4514 (like `openssl x509 -subject -nameopt
        // RFC2253`) prints the last RDN first. Certificates issued with O before CN print
        // as "CN=…,O=…".
        assert_eq!(
            certificate_subject(cert.der()).as_deref(),
            Some("O=Example Health,CN=billing-system")
        );
        assert_eq!(certificate_subject(b"not a certificate"), None);
    }

    #[test]
    fn applications_resolve_and_log_in_and_selectors_limit_them_by_label() {
        use Permission::*;
        // Only its two calls: nothing that reads the registry or changes anything.
        assert!(Role::Application.allows(Resolve) && Role::Application.allows(IssueCredentials));
        for p in [
            Read,
            RevokeCredentials,
            Watch,
            Create,
            Update,
            Export,
            Delete,
            Audit,
        ] {
            assert!(!Role::Application.allows(p), "{p:?}");
        }
        assert!(Role::Viewer.allows(Resolve) && !Role::Viewer.allows(IssueCredentials));

        let s = LabelSelector::parse("region=eu, tier=gold").unwrap();
        assert_eq!(s.to_string(), "region=eu,tier=gold");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert!(s.matches(&labels(&[("region", "eu"), ("tier", "gold"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("region", "eu")])));
        assert!(!s.matches(&labels(&[("region", "us"), ("tier", "gold")])));
        for bad in ["", "region", "=eu", "region=", "a=b,,c=d", "k=v w"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
        let limited = |role| {
            Authenticator::new(&AuthConfig {
                tokens: vec![TokenConfig {
                    name: "app".into(),
                    role,
                    sha256: token_hash("tdt_x"),
                    tenants: Some("region=eu".into()),
                }],
                ..Default::default()
            })
        };
        assert!(limited(Role::Application).is_ok());
        assert!(limited(Role::Admin).is_err());
    }

    #[test]
    fn new_tokens_are_distinct_and_hash_to_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert_eq!(token_hash(&a).len(), 64);
    }
}
