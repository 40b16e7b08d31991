//! Proto ⇄ domain basics every service shares: times, tiers, resource names. Each service's
//! own conversions (requests validated by TryFrom, so a handler only ever passes valid domain
//! values on) live beside it in its API file.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::pb;
use crate::error::Error;
use crate::tenant::Tier;

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_default()
}

pub fn tier_from(field: &str, v: i32, required: bool) -> Result<Option<Tier>, Error> {
    match pb::Tier::try_from(v) {
        Ok(pb::Tier::Pool) => Ok(Some(Tier::Pool)),
        Ok(pb::Tier::Schema) => Ok(Some(Tier::Schema)),
        Ok(pb::Tier::Database) => Ok(Some(Tier::Database)),
        Ok(pb::Tier::Unspecified) if !required => Ok(None),
        Ok(pb::Tier::Unspecified) => Err(Error::invalid(
            field,
            "is required: pool, schema or database",
        )),
        Err(_) => Err(Error::invalid(field, format!("unknown tier {v}"))),
    }
}

pub fn tier_to(t: Tier) -> pb::Tier {
    match t {
        Tier::Pool => pb::Tier::Pool,
        Tier::Schema => pb::Tier::Schema,
        Tier::Database => pb::Tier::Database,
    }
}

/// The id in a resource name `{collection}/{uuid}` (AIP-122), or in a bare uuid, for
/// operators typing ids.
pub fn resource_id(field: &str, name: &str, collection: &str) -> Result<Uuid, Error> {
    let id = name
        .strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(name);
    Uuid::parse_str(id).map_err(|_| {
        Error::invalid(
            field,
            format!("must be {collection}/{{uuid}} as returned by the API"),
        )
    })
}
