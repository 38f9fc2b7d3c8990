//! List paging: sizes with a default and a maximum, and opaque tokens that hold the last key
//! of the previous page (keyset paging, so pages stay correct while rows come and go).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Status;

use crate::error::invalid_field;

/// The page size when a request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page size a request may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size a request asks for, checked: 0 means [`DEFAULT_PAGE_SIZE`].
pub fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > 0 && (n as usize) <= MAX_PAGE_SIZE => Ok(n as usize),
        n => Err(invalid_field(
            "page_size",
            format!("must be 0 (the default, {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}, got {n}"),
        )),
    }
}

/// Encodes the key after which the next page starts, bound to the list's `scope` (its
/// tenant and filters) so that a token cannot be replayed against another list.
pub fn encode_token(scope: &str, last_key: &str) -> String {
    let raw = serde_json::json!({ "s": scope, "k": last_key });
    URL_SAFE_NO_PAD.encode(raw.to_string())
}

/// Ends a page. The store was asked for `limit + 1` rows: when it found more than `limit`,
/// `rows` is cut to `limit` and the answer is the token of the next page, made from the last
/// kept row's key; otherwise the list is over and the answer is the empty token.
pub fn next_page_token<T>(rows: &mut Vec<T>, limit: usize, scope: &str, key: impl FnOnce(&T) -> String) -> String {
    if rows.len() <= limit {
        return String::new();
    }
    rows.truncate(limit);
    rows.last().map(|row| encode_token(scope, &key(row))).unwrap_or_default()
}

/// Decodes a page token: `None` for the first page, the last key otherwise.
pub fn decode_token(scope: &str, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        invalid_field(
            "page_token",
            "is not a token returned by this list with the same filters; pass next_page_token unchanged",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if value.get("s").and_then(|s| s.as_str()) != Some(scope) {
        return Err(bad());
    }
    value.get("k").and_then(|k| k.as_str()).map(|k| Some(k.to_owned())).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(page_size(0).ok(), Some(50));
        assert_eq!(page_size(1000).ok(), Some(1000));
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens() {
        let t = encode_token("t1", "abc");
        assert_eq!(decode_token("t1", &t).ok(), Some(Some("abc".to_owned())));
        assert!(decode_token("t2", &t).is_err());
        assert!(decode_token("t1", "garbage!").is_err());
        assert_eq!(decode_token("t1", "").ok(), Some(None));
    }

    #[test]
    fn next_page() {
        // One row more than the page: cut, and the token continues after the last kept row.
        let mut rows = vec![1, 2, 3];
        let token = next_page_token(&mut rows, 2, "s", |n| n.to_string());
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode_token("s", &token).ok(), Some(Some("2".to_owned())));
        // A full last page or a short one: no more pages.
        let mut rows = vec![1, 2];
        assert_eq!(next_page_token(&mut rows, 2, "s", |n| n.to_string()), "");
        assert_eq!(rows, [1, 2]);
        let mut rows: Vec<i32> = vec![];
        assert_eq!(next_page_token(&mut rows, 2, "s", |n| n.to_string()), "");
        // A page of zero rows cannot continue anywhere.
        let mut rows = vec![1];
        assert_eq!(next_page_token(&mut rows, 0, "s", |n| n.to_string()), "");
    }
}
