//! W3C Trace Context: keep the caller's trace id, start one when absent, and name this hop as
//! the parent of the origin's span.

use http::{HeaderName, HeaderValue};

/// The W3C Trace Context field: a name made once, not parsed from a string per request.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace of one request through this PoP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The span id this PoP uses for its hop; the origin sees it as parent-id.
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the trace of an incoming `traceparent`, or starts a new one.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        let span_id = nonzero_u64();
        if let Some((trace_id, sampled)) = value.and_then(|v| parse(v.as_bytes())) {
            return Self {
                trace_id,
                span_id,
                sampled,
            };
        }
        let trace_id = loop {
            let id = fastrand::u128(..);
            if id != 0 {
                break id;
            }
        };
        Self {
            trace_id,
            span_id,
            sampled: false,
        }
    }

    /// The trace id as 32 lowercase hex digits (the access log's `trace_id`).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_digits(&mut out, &self.trace_id.to_be_bytes());
        out
    }

    /// The `traceparent` sent to the origin.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.traceparent()).expect("hex digits and dashes are valid header bytes")
    }

    /// The `traceparent` value's bytes (version 00).
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_digits(&mut out[3..35], &self.trace_id.to_be_bytes());
        hex_digits(&mut out[36..52], &self.span_id.to_be_bytes());
        if self.sampled {
            out[54] = b'1';
        }
        out
    }
}

/// Writes `bytes` as lowercase hex into `dst` (two digits a byte). A byte at a time from the
/// big-endian bytes: shifting a u128 for every digit, as `{:032x}` does, costs several times
/// more (this runs for every request).
fn hex_digits(dst: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in dst.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// Parses `version-traceid-parentid-flags`; an all-zero id or a malformed field is invalid
/// and makes us start a new trace, as the spec requires.
fn parse(bytes: &[u8]) -> Option<(u128, bool)> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let lower_hex =
        |p: &str, n: usize| p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let parent_id = u64::from_str_radix(parent, 16).ok()?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace_id, sampled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_with_a_new_parent() {
        let incoming = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let ctx = TraceContext::from_header(Some(&incoming));
        assert_eq!(&ctx.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled);
        let out = ctx.header_value();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!out.contains("00f067aa0ba902b7"), "this hop is the new parent");
        assert!(out.ends_with("-01"));

        let ctx = TraceContext {
            trace_id: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            span_id: 0x00f0_67aa_0ba9_02b7,
            sampled: false,
        };
        assert_eq!(
            ctx.header_value(),
            "00-0123456789abcdeffedcba9876543210-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn starts_a_trace_when_absent_or_invalid() {
        for bad in [
            None,
            Some(HeaderValue::from_static(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )),
            Some(HeaderValue::from_static(
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            )),
            Some(HeaderValue::from_static("garbage")),
        ] {
            let ctx = TraceContext::from_header(bad.as_ref());
            assert_ne!(ctx.trace_id, 0);
            assert!(!ctx.sampled);
            assert_eq!(ctx.header_value().len(), 55);
        }
    }
}
