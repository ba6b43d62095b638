//! Conditional requests both ways: clients' own validators answered from a stored response
//! (RFC 9110 §13), the cache's validators sent to the origin (RFC 9111 §4.3.1), and a 304's
//! header fields folded into the stored response (§3.2, §4.3.4).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::freshness::header_time;

/// Whether the client's conditional request is satisfied by what it already has, so the answer
/// is 304 (If-None-Match wins over If-Modified-Since, as RFC 9110 §13.2.2 orders them).
pub fn client_has_current(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return request
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|candidate| {
                let c = candidate.trim();
                c == "*" || weak_eq(c, etag)
            });
    }
    let Some(since) = header_time(request, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = header_time(stored, header::LAST_MODIFIED).or_else(|| header_time(stored, header::DATE));
    modified.is_some_and(|m| m <= since)
}

/// Weak comparison: `W/"x"` equals `"x"`.
fn weak_eq(a: &str, b: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    strip(a) == strip(b)
}

/// The validators the cache sends to the origin to revalidate a stored response.
pub fn validators(stored: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(header::ETAG) {
        out.push((header::IF_NONE_MATCH, etag.clone()));
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        out.push((header::IF_MODIFIED_SINCE, lm.clone()));
    }
    out
}

/// The stored header fields updated from a 304 (or a HEAD response): every field the new
/// response carries replaces the stored ones of that name, except those that describe the
/// stored body (its length, framing, encoding, digest and entity tag): a 304 has no body of
/// its own. The stored Age and Date go whether or not the update has them: they said how old
/// the stored response was when it arrived, and freshness now counts from the update, which
/// without an Age of its own is new (RFC 9111 §4.2.3) and without a Date of its own was made
/// when it arrived. The caller computes freshness from the merged fields (a missing Date is
/// then the receipt time, to the sub-second) and dates the result with
/// [`crate::freshness::stamp_date`] before storing it (RFC 9110 §6.6.1).
pub fn merge(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    merged.remove(header::AGE);
    merged.remove(header::DATE);
    for name in update.keys() {
        if matches!(
            *name,
            header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::CONTENT_RANGE
                | header::CONTENT_ENCODING
                | header::ETAG
                | header::CONNECTION
        ) || name == "content-md5"
        {
            continue;
        }
        merged.remove(name);
        for v in update.get_all(name) {
            merged.append(name.clone(), v.clone());
        }
    }
    merged
}

/// The fields of a 304 sent to a client from a stored response (RFC 9110 §15.4.5): those a
/// 200 would carry, minus the ones that describe the body.
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut h = stored.clone();
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::TRANSFER_ENCODING,
    ] {
        h.remove(name);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::object::tests_support::headers as h;

    #[test]
    fn if_none_match_weak_and_lists() {
        let stored = h(&[("etag", "\"abc\"")]);
        assert!(client_has_current(
            &h(&[("if-none-match", "\"x\", W/\"abc\"")]),
            &stored
        ));
        assert!(!client_has_current(&h(&[("if-none-match", "\"x\"")]), &stored));
        assert!(client_has_current(&h(&[("if-none-match", "*")]), &stored));
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let stored = h(&[
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("etag", "\"a\""),
        ]);
        assert!(client_has_current(
            &h(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]),
            &stored
        ));
        assert!(!client_has_current(
            &h(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &stored
        ));
        assert!(!client_has_current(
            &h(&[
                ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT"),
                ("if-none-match", "\"b\"")
            ]),
            &stored
        ));
    }

    #[test]
    fn merge_keeps_length_and_replaces_the_rest() {
        let stored = h(&[
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("x-a", "1"),
        ]);
        let update = h(&[
            ("content-length", "0"),
            ("cache-control", "max-age=60"),
            ("x-b", "2"),
        ]);
        let m = merge(&stored, &update);
        assert_eq!(m["content-length"], "5");
        assert_eq!(m["cache-control"], "max-age=60");
        assert_eq!(m["x-a"], "1");
        assert_eq!(m["x-b"], "2");
    }

    #[test]
    fn merge_takes_the_age_of_the_update_not_the_stored_one() {
        let stored = h(&[("cache-control", "max-age=10"), ("age", "20")]);
        assert!(!merge(&stored, &h(&[("etag", "\"a\"")])).contains_key("age"));
        assert_eq!(merge(&stored, &h(&[("age", "3")]))["age"], "3");
    }

    #[test]
    fn merge_takes_the_date_of_the_update_not_the_stored_one() {
        let stored = h(&[
            ("cache-control", "max-age=10"),
            ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(!merge(&stored, &h(&[("etag", "\"a\"")])).contains_key("date"));
        let update = h(&[("date", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        assert_eq!(merge(&stored, &update)["date"], "Tue, 02 Jan 2024 00:00:00 GMT");
    }
}
