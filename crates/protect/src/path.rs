//! The request path as the origin will most likely understand it, so a protection rule on
//! `/admin` is not dodged by `//admin`, `/./admin`, `/x/../admin` or `/%61dmin`.
//!
//! Percent-escapes of unreserved characters are decoded (RFC 3986 §6.2.2.2), dot segments are
//! removed (§5.2.4), and runs of slashes are merged. Other escapes (`%2F`, `%00`...) are kept:
//! decoding them would change what the path means.

use std::borrow::Cow;

pub fn normalize(raw: &str) -> Cow<'_, str> {
    let suspicious = raw.contains('%') || raw.contains("//") || raw.contains("/.") || !raw.starts_with('/');
    if !suspicious {
        return Cow::Borrowed(raw);
    }
    let decoded = decode_unreserved(raw);
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    // Keep a trailing slash: `/admin/` and `/admin` may be different resources.
    if path.is_empty() || decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..") {
        path.push('/');
    }
    Cow::Owned(path)
}

fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                    i += 3;
                    continue;
                }
                // Keep reserved and control escapes, normalized to upper case.
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
                i += 3;
                continue;
            }
        }
        // `raw` is a valid URI path: ASCII only, so byte-wise copying is char-wise.
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn evasions_collapse_to_the_real_path() {
        for evasive in [
            "//admin/users",
            "/./admin/users",
            "/x/../admin/users",
            "/%61dmin/users",
            "/admin//users",
            "/%2e/admin/users",
        ] {
            assert_eq!(normalize(evasive), "/admin/users", "{evasive}");
        }
        assert_eq!(normalize("/../../etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn meaning_is_kept() {
        assert_eq!(normalize("/plain/path"), "/plain/path");
        assert_eq!(
            normalize("/a%2Fb"),
            "/a%2Fb",
            "an encoded slash is not a separator"
        );
        assert_eq!(normalize("/a%2fb%00"), "/a%2Fb%00");
        assert_eq!(normalize("/dir/"), "/dir/");
        assert_eq!(normalize("/dir/.."), "/");
        assert_eq!(normalize("/100%"), "/100%", "a stray percent sign stays");
        assert_eq!(normalize("*"), "/*");
    }
}
