//! Opaque page tokens (AIP-158): a keyset cursor plus a fingerprint of the request's filter,
//! so a token used with a different filter is refused instead of returning a wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

#[derive(Serialize, Deserialize)]
struct Token {
    t: DateTime<Utc>,
    i: Uuid,
    f: String,
}

pub fn page_size(requested: i32) -> Result<i64, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n => Ok((n as i64).min(MAX_PAGE_SIZE)),
    }
}

pub fn encode(cursor: (DateTime<Utc>, Uuid), filter: &str) -> String {
    let json = serde_json::to_vec(&Token {
        t: cursor.0,
        i: cursor.1,
        f: filter.to_owned(),
    })
    .expect("token serialises");
    B64.encode(json)
}

pub fn decode(token: &str, filter: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "not a page token from a previous response");
    let bytes = B64.decode(token).map_err(|_| bad())?;
    let t: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.f != filter {
        return Err(Error::invalid(
            "page_token",
            "was issued for a different filter",
        ));
    }
    Ok(Some((t.t, t.i)))
}

/// Cuts a page fetched with `limit + 1` rows down to `limit` and, when there was more, returns
/// the token for the next page (empty on the last page).
pub fn finish<T>(
    mut items: Vec<T>,
    limit: i64,
    filter: &str,
    cursor: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> (Vec<T>, String) {
    if items.len() as i64 <= limit {
        return (items, String::new());
    }
    items.truncate(limit as usize);
    let next = items.last().map(|last| encode(cursor(last), filter));
    (items, next.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_filter() {
        let c = (Utc::now(), Uuid::new_v4());
        let tok = encode(c, "tier=pool");
        assert_eq!(decode(&tok, "tier=pool").unwrap(), Some(c));
        assert!(decode(&tok, "tier=schema").is_err());
        assert!(decode("garbage!", "").is_err());
        assert_eq!(decode("", "x").unwrap(), None);
        assert!(page_size(-1).is_err());
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
    }
}
