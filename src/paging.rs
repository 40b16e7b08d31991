//! Opaque page tokens (AIP-158): a keyset cursor plus a fingerprint of the request's filter,
//! so a token used with a different filter is refused instead of returning a wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// `c`: the keyset position of the last item returned (e.g. `(create_time, id)`, or an
/// audit entry's `seq`); `f`: the filter it was returned for.
#[derive(Serialize, Deserialize)]
struct Token<C> {
    c: C,
    f: String,
}

pub fn page_size(requested: i32) -> Result<i64, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n => Ok((n as i64).min(MAX_PAGE_SIZE)),
    }
}

pub fn encode<C: Serialize>(cursor: C, filter: &str) -> String {
    let json = serde_json::to_vec(&Token {
        c: cursor,
        f: filter.to_owned(),
    })
    .expect("token serialises");
    B64.encode(json)
}

pub fn decode<C: DeserializeOwned>(token: &str, filter: &str) -> Result<Option<C>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "not a page token from a previous response");
    let bytes = B64.decode(token).map_err(|_| bad())?;
    let t: Token<C> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.f != filter {
        return Err(Error::invalid(
            "page_token",
            "was issued for a different filter",
        ));
    }
    Ok(Some(t.c))
}

/// Cuts a page fetched with `limit + 1` rows down to `limit` and, when there was more, returns
/// the token for the next page (empty on the last page).
pub fn finish<T, C: Serialize>(
    mut items: Vec<T>,
    limit: i64,
    filter: &str,
    cursor: impl Fn(&T) -> C,
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
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn round_trips_and_checks_the_filter() {
        let c = (Utc::now(), Uuid::new_v4());
        let tok = encode(c, "tier=pool");
        assert_eq!(decode(&tok, "tier=pool").unwrap(), Some(c));
        assert!(decode::<(DateTime<Utc>, Uuid)>(&tok, "tier=schema").is_err());
        assert!(decode::<(DateTime<Utc>, Uuid)>("garbage!", "").is_err());
        assert_eq!(decode::<i64>("", "x").unwrap(), None);
        assert!(decode::<i64>(&tok, "tier=pool").is_err());
        assert!(page_size(-1).is_err());
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
    }
}
