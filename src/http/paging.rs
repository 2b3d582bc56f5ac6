//! Paging of the list routes, as the audit pages: `limit` (default 100, at most 1000) and
//! `after`, the `next` of the previous page. `next` is an opaque string: the key of the last
//! item (an id, a name, a grant's topic-user-access), as JSON in base64url. Callers pass it
//! back untouched; its content may change between versions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

use super::json;
use crate::error::{Error, Result};
use crate::paging::{Page, PageOf};

pub(super) const DEFAULT_LIMIT: usize = 100;
pub(super) const MAX_LIMIT: usize = 1000;

/// The page a route's `after` and `limit` ask for; 400 `invalid_query` for a limit out of
/// range or a cursor this route did not give.
pub(super) fn page_of<K: DeserializeOwned>(
    after: Option<String>,
    limit: Option<usize>,
) -> Result<PageOf<K>> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after = after.map(|cursor| decode(&cursor)).transpose()?;
    Ok(PageOf { after, limit })
}

/// The cursor of a route that pages by something else than `limit` (its own limits).
pub(super) fn cursor<K: DeserializeOwned>(after: Option<String>) -> Result<Option<K>> {
    after.map(|c| decode(&c)).transpose()
}

fn decode<K: DeserializeOwned>(cursor: &str) -> Result<K> {
    let bad = || Error::InvalidQuery(format!("after {cursor:?} is not a cursor of this list"));
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

fn encode<K: Serialize>(key: &K) -> Result<String> {
    let bytes = serde_json::to_vec(key).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// `{"<field>": [...], "next": <cursor or null>}`, 200.
pub(super) fn page_body<K: Serialize, T: Serialize>(
    field: &str,
    page: Page<K, T>,
) -> Result<Response> {
    let items = serde_json::to_value(&page.items).map_err(|e| Error::Internal(e.to_string()))?;
    let next = page.next.as_ref().map(encode).transpose()?;
    let mut body = serde_json::Map::new();
    body.insert(field.to_string(), items);
    body.insert("next".to_string(), next.into());
    Ok(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_comes_back_as_the_key_it_was() {
        let key = ("orders".to_string(), "erin".to_string());
        let cursor = encode(&key).expect("encoded");
        assert!(cursor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)));
        let page: PageOf<(String, String)> = page_of(Some(cursor), Some(2)).expect("parsed");
        assert_eq!(page.after, Some(key));
    }

    #[test]
    fn a_bad_cursor_or_limit_is_invalid_query() {
        for (after, limit) in [
            (None, Some(0)),
            (None, Some(1001)),
            (Some("%%".to_string()), None),
            (Some(encode(&7).expect("encoded")), None),
        ] {
            let page = page_of::<String>(after, limit);
            assert!(matches!(page, Err(Error::InvalidQuery(_))), "{page:?}");
        }
    }
}
