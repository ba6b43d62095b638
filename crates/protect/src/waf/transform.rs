//! Value transformations applied before a WAF condition matches, so encodings and padding
//! that a browser or origin would undo do not hide an attack.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    UrlDecode,
    /// Decodes until the value stops changing (at most 5 rounds): `%2527` hides `'` twice.
    UrlDecodeRepeat,
    Lowercase,
    NormalizeWhitespace,
    /// Replaces `/* ... */` comments (SQL and C style) with a space.
    RemoveComments,
    HtmlEntityDecode,
}

impl Transform {
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "url_decode" => Self::UrlDecode,
            "url_decode_repeat" => Self::UrlDecodeRepeat,
            "lowercase" => Self::Lowercase,
            "normalize_whitespace" => Self::NormalizeWhitespace,
            "remove_comments" => Self::RemoveComments,
            "html_entity_decode" => Self::HtmlEntityDecode,
            other => return Err(format!("unknown transform \"{other}\"")),
        })
    }

    pub fn apply<'a>(self, value: Cow<'a, str>) -> Cow<'a, str> {
        match self {
            Self::UrlDecode => url_decode(value),
            Self::UrlDecodeRepeat => {
                let mut value = value;
                for _ in 0..5 {
                    if !value.contains('%') && !value.contains('+') {
                        break;
                    }
                    let next = url_decode(Cow::Borrowed(&value)).into_owned();
                    if next == *value {
                        break;
                    }
                    value = Cow::Owned(next);
                }
                value
            }
            Self::Lowercase => {
                // Nearly every value is ASCII: a byte scan, not a Unicode case lookup per char.
                if value.is_ascii() {
                    if value.bytes().any(|b| b.is_ascii_uppercase()) {
                        Cow::Owned(value.to_ascii_lowercase())
                    } else {
                        value
                    }
                } else if value.chars().any(char::is_uppercase) {
                    Cow::Owned(value.to_lowercase())
                } else {
                    value
                }
            }
            Self::NormalizeWhitespace => {
                let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
                if collapsed == *value {
                    value
                } else {
                    Cow::Owned(collapsed)
                }
            }
            Self::RemoveComments => remove_comments(value),
            Self::HtmlEntityDecode => html_entity_decode(value),
        }
    }
}

fn url_decode(value: Cow<'_, str>) -> Cow<'_, str> {
    if !value.contains('%') && !value.contains('+') {
        return value;
    }
    let plus_as_space = value.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&plus_as_space)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

fn remove_comments(value: Cow<'_, str>) -> Cow<'_, str> {
    if !value.contains("/*") {
        return value;
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = &*value;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        out.push(' ');
        let body_and_rest = &rest[start + 2..];
        let (body, after) = match body_and_rest.find("*/") {
            Some(end) => (&body_and_rest[..end], &body_and_rest[end + 2..]),
            None => (body_and_rest, ""),
        };
        // MySQL executes `/*! ... */` (optionally `/*!50000 ... */`): keep what it would run.
        if let Some(code) = body.strip_prefix('!') {
            let code = code.trim_start_matches(|c: char| c.is_ascii_digit());
            out.push_str(code);
            out.push(' ');
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The entities attackers use to smuggle markup past filters: named ones for markup and
/// spacing characters and every numeric form, with or without the closing `;` and with any
/// number of leading zeros, as browsers accept them. A full HTML5 entity table buys nothing.
fn html_entity_decode(value: Cow<'_, str>) -> Cow<'_, str> {
    // An `&` is common in values (query strings in a Referer); an entity is not.
    if !value.split('&').skip(1).any(|tail| decode_entity(tail).is_some()) {
        return value;
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = &*value;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp + 1..];
        match decode_entity(tail) {
            Some((ch, used)) => {
                out.push(ch);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Decodes the entity at the start of `tail` (after the `&`): the character and bytes used.
fn decode_entity(tail: &str) -> Option<(char, usize)> {
    if let Some(num) = tail.strip_prefix('#') {
        let (hex, digits_at) = match num.strip_prefix(['x', 'X']) {
            Some(_) => (true, 2),
            None => (false, 1),
        };
        let digits: &str = {
            let body = &tail[digits_at..];
            let len = body
                .find(|c: char| {
                    if hex {
                        !c.is_ascii_hexdigit()
                    } else {
                        !c.is_ascii_digit()
                    }
                })
                .unwrap_or(body.len());
            &body[..len]
        };
        if digits.is_empty() {
            return None;
        }
        let significant = digits.trim_start_matches('0');
        let code = if significant.is_empty() {
            0
        } else if significant.len() > 8 {
            return None;
        } else {
            u32::from_str_radix(significant, if hex { 16 } else { 10 }).ok()?
        };
        let mut used = digits_at + digits.len();
        if tail[used..].starts_with(';') {
            used += 1;
        }
        return Some((char::from_u32(code).unwrap_or('\u{fffd}'), used));
    }
    const NAMED: [(&str, char); 12] = [
        ("lt", '<'),
        ("gt", '>'),
        ("amp", '&'),
        ("quot", '"'),
        ("apos", '\''),
        ("sol", '/'),
        ("colon", ':'),
        ("lpar", '('),
        ("rpar", ')'),
        ("Tab", '\t'),
        ("NewLine", '\n'),
        ("nbsp", ' '),
    ];
    let end = tail.find(';').filter(|&e| e <= 10)?;
    let name = &tail[..end];
    NAMED.iter().find(|(n, _)| *n == name).map(|&(_, c)| (c, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tr: Transform, input: &str) -> String {
        tr.apply(Cow::Borrowed(input)).into_owned()
    }

    #[test]
    fn decodings() {
        assert_eq!(t(Transform::UrlDecode, "a%27+OR+1%3D1"), "a' OR 1=1");
        assert_eq!(t(Transform::UrlDecode, "%2527"), "%27");
        assert_eq!(t(Transform::UrlDecodeRepeat, "%252527"), "'");
        assert_eq!(
            t(
                Transform::HtmlEntityDecode,
                "&lt;script&gt;&#x61;&#108;ert&lpar;1&rpar;"
            ),
            "<script>alert(1)"
        );
        assert_eq!(
            t(Transform::HtmlEntityDecode, "fish & chips &unknown;"),
            "fish & chips &unknown;"
        );
    }

    #[test]
    fn normalisations() {
        assert_eq!(t(Transform::Lowercase, "SeLeCt"), "select");
        assert_eq!(t(Transform::Lowercase, "ÉCOLE Ünïcode"), "école ünïcode");
        assert_eq!(
            t(Transform::NormalizeWhitespace, " union \t\n select  "),
            "union select"
        );
        assert_eq!(
            t(Transform::RemoveComments, "union/**/select/*x*/1"),
            "union select 1"
        );
        assert_eq!(t(Transform::RemoveComments, "a/* unterminated"), "a ");
        assert_eq!(
            t(
                Transform::NormalizeWhitespace,
                &t(Transform::RemoveComments, "1 /*!50000UNION*/ /*!SELECT*/ pw")
            ),
            "1 UNION SELECT pw",
            "MySQL executable comments keep their code"
        );
    }
}
