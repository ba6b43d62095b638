//! Range requests answered from a stored complete response (RFC 9110 §14). One range per
//! request: a multi-range request gets the whole representation (200), which §14.2 allows.

use http::header::{self, HeaderMap};

use crate::freshness::header_time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) Range: answer 200 with the whole body.
    Full,
    /// 206 with `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

pub fn answer(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if !if_range_matches(if_range.trim(), stored) {
            return RangeAnswer::Full;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), parse(first), parse(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, Some(s), None) if last.trim().is_empty() => (s, len.saturating_sub(1)),
        (false, Some(s), Some(e)) if e >= s => (s, e.min(len.saturating_sub(1))),
        _ => return RangeAnswer::Full,
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial { start, end }
}

/// If-Range: a strong ETag equal to the stored one, or a date equal to Last-Modified.
fn if_range_matches(value: &str, stored: &HeaderMap) -> bool {
    if value.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|etag| !etag.starts_with("W/") && etag == value);
    }
    match (
        httpdate::parse_http_date(value).ok(),
        header_time(stored, header::LAST_MODIFIED),
    ) {
        (Some(d), Some(lm)) => crate::freshness::to_secs(d) == lm,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(range: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, range.parse().unwrap());
        h
    }

    #[test]
    fn single_ranges() {
        let s = HeaderMap::new();
        assert_eq!(
            answer(&req("bytes=0-4"), &s, 10),
            RangeAnswer::Partial { start: 0, end: 4 }
        );
        assert_eq!(
            answer(&req("bytes=5-"), &s, 10),
            RangeAnswer::Partial { start: 5, end: 9 }
        );
        assert_eq!(
            answer(&req("bytes=-3"), &s, 10),
            RangeAnswer::Partial { start: 7, end: 9 }
        );
        assert_eq!(
            answer(&req("bytes=8-100"), &s, 10),
            RangeAnswer::Partial { start: 8, end: 9 }
        );
        assert_eq!(answer(&req("bytes=10-"), &s, 10), RangeAnswer::Unsatisfiable);
        assert_eq!(answer(&req("bytes=0-1,4-5"), &s, 10), RangeAnswer::Full);
        assert_eq!(answer(&req("items=0-1"), &s, 10), RangeAnswer::Full);
    }

    #[test]
    fn if_range_mismatch_gets_everything() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, "\"v1\"".parse().unwrap());
        let mut r = req("bytes=0-1");
        r.insert(header::IF_RANGE, "\"v2\"".parse().unwrap());
        assert_eq!(answer(&r, &stored, 10), RangeAnswer::Full);
        r.insert(header::IF_RANGE, "\"v1\"".parse().unwrap());
        assert_eq!(answer(&r, &stored, 10), RangeAnswer::Partial { start: 0, end: 1 });
    }
}
