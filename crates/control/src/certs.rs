//! Uploaded certificates: checks that the PEM holds a certificate and a key, and reads the
//! leaf's expiry (notAfter) so the API can show it.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Checks a certificate chain and key in PEM; returns the leaf's notAfter in unix ms when it
/// can be read.
pub fn check_pem(cert_pem: &str, key_pem: &str) -> Result<Option<i64>, String> {
    let mut certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes());
    let leaf = match certs.next() {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(format!("cert_pem: not a PEM certificate: {e}")),
        None => return Err("cert_pem: no CERTIFICATE block found".into()),
    };
    for c in certs {
        c.map_err(|e| format!("cert_pem: bad certificate in the chain: {e}"))?;
    }
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("key_pem: no private key found (PKCS#8, PKCS#1 or SEC1 PEM): {e}"))?;
    Ok(not_after(&leaf))
}

/// Reads one DER TLV: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Certificate ::= SEQUENCE { tbs SEQUENCE { [0] version?, serial, sigAlg, issuer, validity
/// SEQUENCE { notBefore, notAfter }, ... } ... }
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        let (_, _, after) = tlv(rest)?;
        rest = after;
    }
    let (_, validity, _) = tlv(rest)?;
    let (_, _, after) = tlv(validity)?;
    let (tag, time, _) = tlv(after)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

fn parse_time(tag: u8, s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let (month, day, hour, min, sec) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + hour * 3600 + min * 60 + sec) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_to_unix_ms() {
        assert_eq!(parse_time(0x17, "700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, "20000301000000Z"), Some(951_868_800_000));
        assert_eq!(parse_time(0x17, "garbage"), None);
    }

    #[test]
    fn garbage_pem_is_refused_with_the_field() {
        assert!(check_pem("nope", "nope").unwrap_err().starts_with("cert_pem"));
    }
}
