//! Tenant domain types and the validation of everything a caller may say about a tenant.
//! Values of these types are valid by construction; the registry and the data plane rely on it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use crate::sql::Ident;

/// Isolation tier. The order is the promotion order: pool → schema → database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Pool,
    Schema,
    Database,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Pool, Tier::Schema, Tier::Database];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Pool => "pool",
            Tier::Schema => "schema",
            Tier::Database => "database",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Error::invalid("tier", format!("unknown tier {s:?}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    Provisioning,
    Active,
    /// Provisioning failed and was compensated; nothing of the tenant is left in the data
    /// plane and its slug is free.
    Failed,
    /// A deletion fenced the tenant and may have removed part of its data: never routed
    /// again; only a deletion may run on it (a failed one is requested again).
    Deleting,
    /// Deleted, with a signed certificate: the registry keeps this tombstone (id, slug, tier,
    /// key id), no tenant data; the slug is free.
    Deleted,
}

impl TenantState {
    pub const ALL: [TenantState; 5] = [
        TenantState::Provisioning,
        TenantState::Active,
        TenantState::Failed,
        TenantState::Deleting,
        TenantState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Provisioning => "provisioning",
            TenantState::Active => "active",
            TenantState::Failed => "failed",
            TenantState::Deleting => "deleting",
            TenantState::Deleted => "deleted",
        }
    }
}

impl FromStr for TenantState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TenantState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Error::invalid("state", format!("unknown tenant state {s:?}")))
    }
}

/// `^[a-z][a-z0-9-]{2,62}$`: safe in URLs, DNS labels and log lines. Never used as an SQL
/// identifier: containers are named after the tenant id (see [`ContainerNames`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut chars = s.chars();
        let first_ok = matches!(chars.next(), Some('a'..='z'));
        let rest_ok = chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'));
        if s.is_empty() {
            return Err(Error::invalid("slug", "must not be empty"));
        }
        if !(3..=63).contains(&s.len()) {
            return Err(Error::invalid(
                "slug",
                format!("must be 3 to 63 characters, got {}", s.chars().count()),
            ));
        }
        if !first_ok || !rest_ok {
            return Err(Error::invalid(
                "slug",
                "must match ^[a-z][a-z0-9-]{2,62}$ (lower-case letters, digits and '-', starting with a letter)",
            ));
        }
        Ok(Slug(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 256;
pub const MAX_TEXT_LEN: usize = 200;

/// Free text a caller names a tenant with (display name, plan): printable, bounded.
pub fn text_field(field: &str, value: &str, required: bool) -> Result<String, Error> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_TEXT_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// Labels in the Kubernetes style: keys `[a-z][a-z0-9_./-]*`, bounded keys, values and count.
pub fn labels(input: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    if input.len() > MAX_LABELS {
        return Err(Error::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels, got {}", input.len()),
        ));
    }
    for (k, v) in input {
        let mut chars = k.chars();
        let key_ok = matches!(chars.next(), Some('a'..='z'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '/' | '-'))
            && k.len() <= MAX_LABEL_KEY_LEN;
        if !key_ok {
            return Err(Error::invalid(
                "labels",
                format!(
                    "label key {:?} must be 1-{MAX_LABEL_KEY_LEN} characters of a-z, 0-9, _ . / -, starting with a letter",
                    truncate(k)
                ),
            ));
        }
        if v.chars().count() > MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(Error::invalid(
                "labels",
                format!(
                    "value of label {k:?} must be at most {MAX_LABEL_VALUE_LEN} printable characters"
                ),
            ));
        }
    }
    Ok(input.clone())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Names of a tenant's data-plane objects, derived from its id alone so that every step can
/// recompute them after a crash, and so that a slug never reaches SQL.
#[derive(Debug, Clone)]
pub struct ContainerNames {
    /// `t_<32 hex>`: the tenant's schema (schema tier), database (database tier) and role.
    pub own: Ident,
}

impl ContainerNames {
    pub fn for_tenant(id: Uuid) -> Self {
        ContainerNames {
            own: Ident::new(format!("t_{}", id.simple())).expect("uuid-derived name is valid"),
        }
    }
}

/// The tenant as the registry knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub display_name: String,
    pub plan: String,
    pub labels: BTreeMap<String, String>,
    pub tier: Tier,
    pub state: TenantState,
    pub placement: Placement,
    pub schema_version: i32,
    pub routing_epoch: i64,
    /// The tenant's key in the key service; `None` until provisioning (or the key backfill)
    /// created it.
    pub key_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    /// FAILED_PRECONDITION unless the tenant is active (routable, movable).
    pub fn ensure_active(&self) -> Result<(), Error> {
        if self.state == TenantState::Active {
            return Ok(());
        }
        Err(Error::FailedPrecondition {
            reason: format!(
                "tenant {} is {}, not active",
                self.slug,
                self.state.as_str()
            ),
            operation: None,
        })
    }
}

/// Where a tenant's data lives. Database/schema/role are empty until provisioning reserves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub cluster: String,
    pub database: Option<String>,
    pub schema: Option<String>,
    pub role: Option<String>,
}

/// A validated CreateTenant request.
#[derive(Debug, Clone, Serialize)]
pub struct NewTenant {
    pub slug: Slug,
    pub display_name: String,
    pub plan: String,
    pub tier: Tier,
    pub labels: BTreeMap<String, String>,
    /// Requested cluster; `None` means the configured default.
    pub cluster: Option<String>,
}

/// How a caller names a tenant: by id or by slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRef {
    Id(Uuid),
    Slug(Slug),
}

impl TenantRef {
    pub fn parse(field: &str, s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::invalid(field, "must name a tenant by id or slug"));
        }
        if let Ok(id) = Uuid::parse_str(s) {
            return Ok(TenantRef::Id(id));
        }
        Slug::parse(s)
            .map(TenantRef::Slug)
            .map_err(|_| Error::invalid(field, "must be a tenant id (uuid) or a valid slug"))
    }
}

impl fmt::Display for TenantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantRef::Id(id) => write!(f, "{id}"),
            TenantRef::Slug(s) => f.write_str(s.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["abc", "acme-health", "a12", &format!("a{}", "b".repeat(62))] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "1abc",
            "-abc",
            "Acme",
            "a_b_c",
            "a\"; drop schema x; --",
            "abc ",
            "ábc",
            &"a".repeat(64),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        let mut m = BTreeMap::new();
        m.insert("env".to_owned(), "prod".to_owned());
        assert!(labels(&m).is_ok());
        m.insert("Bad Key".to_owned(), "x".to_owned());
        assert!(labels(&m).is_err());
        let big: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels(&big).is_err());
        let mut long = BTreeMap::new();
        long.insert("k".to_owned(), "v".repeat(257));
        assert!(labels(&long).is_err());
    }

    #[test]
    fn container_names_come_from_the_id() {
        let id = Uuid::parse_str("6f1c2c8e-0000-4000-8000-00000000000a").unwrap();
        assert_eq!(
            ContainerNames::for_tenant(id).own.as_str(),
            "t_6f1c2c8e00004000800000000000000a"
        );
    }
}
