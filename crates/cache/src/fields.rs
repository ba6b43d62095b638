//! Stored header fields in one compact buffer, and back.
//!
//! A `HeaderMap` costs about a kilobyte per object at rest, so objects keep their fields as
//! one exact-size buffer and rebuild a map for each response they answer. That rebuild runs on
//! cache hits (the edge keeps ready maps only for popular objects), so the encoding is made for
//! it: the field count first (the map is sized once), well-known names as one-byte codes (no
//! name parsing or classification), lengths instead of delimiters (no scanning). Values are
//! slices of the buffer, not copies. The same buffer is the header section of disk-tier files,
//! so it is also decoded from bytes that may be damaged: decoding checks every length and value
//! and fails as a whole.
//!
//! Layout: u16 field count, then per field: a name code (0 = a literal name follows as its
//! length and bytes; n > 0 = `KNOWN[n - 1]`), value length, value bytes. Lengths are u16, or
//! 0xFFFF and a u32 for the rare field of 64 KiB or more (little-endian).
//!
//! Dates are the largest values of a typical response (Date and Last-Modified: 29 bytes each,
//! a third of the buffer), so a date in the one form RFC 9110 §5.6.7 asks senders to use
//! (IMF-fixdate) is kept as its seconds since 1970: the name code with `DATE_FLAG` set, then a
//! u32, no length. It is stored that way only when formatting the seconds gives back the exact
//! text, so what a client receives is what the origin sent. This takes a typical 1 KiB object's
//! buffer from the 160-byte allocator size class to the 112-byte one; the cost is formatting
//! the dates again where a hit rebuilds the fields (`decode`), about 100 ns each.

use std::time::{Duration, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Names with a one-byte code. Append only: codes are stored on disk.
const KNOWN_COUNT: usize = 32;
const KNOWN: [HeaderName; KNOWN_COUNT] = [
    header::DATE,
    header::SERVER,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::LAST_MODIFIED,
    header::ETAG,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::ACCEPT_RANGES,
    header::VARY,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::CONTENT_DISPOSITION,
    header::CONTENT_RANGE,
    header::LOCATION,
    header::AGE,
    header::PRAGMA,
    header::LINK,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::STRICT_TRANSPORT_SECURITY,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
    header::CONTENT_SECURITY_POLICY,
    header::REFERRER_POLICY,
    header::WARNING,
    header::X_XSS_PROTECTION,
    header::TRANSFER_ENCODING,
    header::ALLOW,
    header::RETRY_AFTER,
];

/// Set on a name code whose value is kept as a date (see the module's comment).
const DATE_FLAG: u8 = 0x80;

// Every name code stays clear of the flag.
const _: () = assert!(KNOWN_COUNT < DATE_FLAG as usize);

/// Fields whose value is a date.
const DATE_NAMES: [HeaderName; 3] = [header::DATE, header::LAST_MODIFIED, header::EXPIRES];

/// Fields added to every stored response on its way out (Age, Cache-Status, Via): the
/// decoded map is sized for them too.
const ROOM_FOR_ADDED: usize = 3;

/// The fields of `headers` as one exact-size buffer.
pub fn encode(headers: &HeaderMap) -> Box<[u8]> {
    let mut len = 2;
    let mut count: u16 = 0;
    // A map of more than 65,535 fields (never reaches here: hyper's limits are far lower) keeps
    // its first 65,535.
    for (name, value) in headers.iter().take(usize::from(u16::MAX)) {
        count += 1;
        // Parsed again in the writing pass: this runs once per stored response, and the exact
        // size keeps the buffer in the smallest size class (shrinking a bigger one in place
        // would keep its block).
        if as_date(name, value).is_some() {
            len += 1 + 4;
            continue;
        }
        len += 1 + len_size(value.len()) + value.len();
        if code_of(name).is_none() {
            len += len_size(name.as_str().len()) + name.as_str().len();
        }
    }
    let mut buf = Vec::with_capacity(len);
    buf.put_u16_le(count);
    for (name, value) in headers.iter().take(usize::from(count)) {
        if let (Some(code), Some(secs)) = (code_of(name), as_date(name, value)) {
            buf.put_u8(code | DATE_FLAG);
            buf.put_u32_le(secs);
            continue;
        }
        match code_of(name) {
            Some(code) => buf.put_u8(code),
            None => {
                buf.put_u8(0);
                put_len(&mut buf, name.as_str().len());
                buf.extend_from_slice(name.as_str().as_bytes());
            }
        }
        put_len(&mut buf, value.len());
        buf.extend_from_slice(value.as_bytes());
    }
    debug_assert_eq!(buf.len(), len);
    buf.into_boxed_slice()
}

/// Every stored field (copied out of `block` once: the values share the copy).
pub fn decode(block: &[u8]) -> HeaderMap {
    decode_filtered(&Bytes::copy_from_slice(block), |_| true).unwrap_or_default()
}

/// The stored fields a client sees: Surrogate-Control and Outpost-CDN-Cache-Control are
/// addressed to this cache. The values are slices of `block`.
pub fn decode_for_client(block: &Bytes) -> HeaderMap {
    decode_filtered(block, |name| !crate::directives::is_for_this_cache_only(name)).unwrap_or_default()
}

/// Every stored field, or None when the buffer is not a valid encoding (a damaged file).
pub fn try_decode(block: &[u8]) -> Option<HeaderMap> {
    decode_filtered(&Bytes::copy_from_slice(block), |_| true)
}

fn decode_filtered(block: &Bytes, keep: impl Fn(&HeaderName) -> bool) -> Option<HeaderMap> {
    let mut at = 2;
    let count = usize::from(u16::from_le_bytes(block.get(..2)?.try_into().ok()?));
    let mut map = HeaderMap::with_capacity(count + ROOM_FOR_ADDED);
    for _ in 0..count {
        let code = *block.get(at)?;
        at += 1;
        if code & DATE_FLAG != 0 {
            let name = KNOWN.get(usize::from(code & !DATE_FLAG).checked_sub(1)?)?;
            if !DATE_NAMES.contains(name) {
                return None;
            }
            let secs = u32::from_le_bytes(block.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            if keep(name) {
                map.append(name.clone(), date_value(secs)?);
            }
            continue;
        }
        let name = if code == 0 {
            let len = read_len(block, &mut at)?;
            let name = HeaderName::from_bytes(block.get(at..at + len)?).ok()?;
            at += len;
            name
        } else {
            KNOWN.get(usize::from(code) - 1)?.clone()
        };
        let len = read_len(block, &mut at)?;
        if at + len > block.len() {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(block.slice(at..at + len)).ok()?;
        at += len;
        if keep(&name) {
            map.append(name, value);
        }
    }
    (at == block.len()).then_some(map)
}

/// The value's seconds since 1970, where it is a date field in IMF-fixdate that formats back to
/// exactly the same text.
fn as_date(name: &HeaderName, value: &HeaderValue) -> Option<u32> {
    if !DATE_NAMES.contains(name) {
        return None;
    }
    let text = value.to_str().ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    let secs = u32::try_from(time.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    (httpdate::fmt_http_date(time) == text).then_some(secs)
}

fn date_value(secs: u32) -> Option<HeaderValue> {
    let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(u64::from(secs)));
    HeaderValue::try_from(text).ok()
}

fn code_of(name: &HeaderName) -> Option<u8> {
    KNOWN
        .iter()
        .position(|k| k == name)
        .and_then(|i| u8::try_from(i + 1).ok())
}

/// Lengths below 65,535 take two bytes; longer ones (an origin may send a huge field) are
/// marked by 0xFFFF and follow as four.
fn put_len(buf: &mut Vec<u8>, len: usize) {
    match u16::try_from(len) {
        Ok(short) if short < u16::MAX => buf.put_u16_le(short),
        _ => {
            buf.put_u16_le(u16::MAX);
            buf.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
        }
    }
}

fn len_size(len: usize) -> usize {
    if len < usize::from(u16::MAX) {
        2
    } else {
        6
    }
}

fn read_len(block: &[u8], at: &mut usize) -> Option<usize> {
    let short = u16::from_le_bytes(block.get(*at..*at + 2)?.try_into().ok()?);
    *at += 2;
    if short < u16::MAX {
        return Some(usize::from(short));
    }
    let long = u32::from_le_bytes(block.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    usize::try_from(long).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::tests_support::headers as h;

    fn encoded(headers: &HeaderMap) -> Bytes {
        Bytes::from(encode(headers))
    }

    #[test]
    fn fields_survive_known_and_literal_names_repeats_and_empty_values() {
        let headers = h(&[
            ("etag", "\"a\""),
            ("x-two", "1"),
            ("x-two", "2"),
            ("empty", ""),
            ("content-type", "text/html; charset=utf-8"),
            ("surrogate-control", "max-age=60"),
        ]);
        let block = encoded(&headers);
        assert_eq!(decode(&block), headers);
        assert_eq!(try_decode(&block), Some(headers.clone()));
        let client = decode_for_client(&block);
        assert!(!client.contains_key("surrogate-control"));
        assert_eq!(client.len(), headers.len() - 1);
    }

    #[test]
    fn a_field_longer_than_64_kib_survives() {
        let long = "v".repeat(70_000);
        let headers = h(&[("x-huge", &long), ("etag", "\"a\"")]);
        let block = encoded(&headers);
        assert_eq!(try_decode(&block), Some(headers));
        assert_eq!(block.len(), 2 + (1 + 2 + 6) + 6 + 70_000 + (1 + 2 + 3));
    }

    #[test]
    fn known_names_cost_one_byte() {
        let block = encoded(&h(&[("content-type", "a")]));
        assert_eq!(block.len(), 2 + 1 + 2 + 1);
    }

    #[test]
    fn dates_in_the_preferred_form_take_five_bytes_and_come_back_as_sent() {
        let headers = h(&[
            ("date", "Sun, 06 Dec 2026 01:15:22 GMT"),
            ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("expires", "Sun, 07 Feb 2106 06:28:15 GMT"),
        ]);
        let block = encoded(&headers);
        assert_eq!(block.len(), 2 + 3 * (1 + 4));
        assert_eq!(decode(&block), headers);
        assert_eq!(try_decode(&block), Some(headers));
    }

    #[test]
    fn every_date_in_range_comes_back_as_sent() {
        for secs in (0..=u64::from(u32::MAX)).step_by(4_294_967 * 7 + 13) {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            let headers = h(&[("last-modified", &text)]);
            let block = encoded(&headers);
            assert_eq!(block.len(), 2 + 1 + 4, "{text}");
            assert_eq!(decode(&block), headers, "{text}");
        }
    }

    #[test]
    fn a_typical_origin_response_fits_the_112_byte_allocator_size_class() {
        // nginx's fields for a static file with a Cache-Control added (docs/architecture.md,
        // "Cache memory"); Connection is hop-by-hop and never stored.
        let block = encode(&h(&[
            ("server", "nginx/1.22.1"),
            ("date", "Sun, 06 Dec 2026 01:15:22 GMT"),
            ("content-type", "application/octet-stream"),
            ("content-length", "1024"),
            ("last-modified", "Sat, 05 Dec 2026 16:50:08 GMT"),
            ("etag", "\"6b1440c0-400\""),
            ("cache-control", "max-age=3600"),
            ("accept-ranges", "bytes"),
        ]));
        assert!(block.len() <= 112, "{} bytes", block.len());
    }

    #[test]
    fn dates_in_other_forms_or_out_of_range_are_kept_as_text() {
        for value in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 dec 2026 01:15:22 gmt",
            "Sun, 06 Dec 2026 01:15:22 GMT ",
            "Sun, 07 Feb 2106 06:28:16 GMT",
            "0",
            "",
        ] {
            let headers = h(&[("expires", value), ("date", value)]);
            let block = encoded(&headers);
            assert_eq!(block.len(), 2 + 2 * (1 + 2 + value.len()), "{value:?}");
            assert_eq!(decode(&block), headers, "{value:?}");
        }
    }

    #[test]
    fn the_date_form_is_refused_for_a_field_that_is_not_a_date() {
        let mut block = encoded(&h(&[("etag", "\"abcd\"")])).to_vec();
        block[2] |= DATE_FLAG;
        block.truncate(2 + 1 + 4);
        assert_eq!(try_decode(&Bytes::from(block)), None);
    }

    #[test]
    fn damaged_buffers_are_refused_not_misread() {
        let block = encoded(&h(&[
            ("date", "Sun, 06 Dec 2026 01:15:22 GMT"),
            ("etag", "\"a\""),
            ("x-custom", "v"),
        ]));
        for cut in 0..block.len() {
            assert_eq!(try_decode(&block.slice(..cut)), None, "cut at {cut}");
        }
        let mut bad = block.to_vec();
        bad[2] = 200; // an unknown name code
        assert_eq!(try_decode(&Bytes::from(bad)), None);
        let mut bad = block.to_vec();
        let last = bad.len() - 1;
        bad[last] = b'\n'; // not a valid value byte
        assert_eq!(try_decode(&Bytes::from(bad)), None);
    }
}
