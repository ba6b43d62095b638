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
                    let next = url_decode(Cow::Borrowed(&value)).into_owned();
                    if next == *value {
                        break;
                    }
                    value = Cow::Owned(next);
                }
                value
            }
            Self::Lowercase => {
                if value.chars().any(char::is_uppercase) {
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
        match rest[start + 2..].find("*/") {
            Some(end) => rest = &rest[start + 2 + end + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The entities attackers use to smuggle markup past filters: named ones for markup
/// characters and every numeric form. A full HTML5 entity table buys nothing here.
fn html_entity_decode(value: Cow<'_, str>) -> Cow<'_, str> {
    if !value.contains('&') {
        return value;
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = &*value;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let decoded = tail.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &tail[1..end];
            let ch = match entity {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "sol" => Some('/'),
                "colon" => Some(':'),
                "lpar" => Some('('),
                "rpar" => Some(')'),
                e => {
                    let num = e.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((ch, end + 1))
        });
        match decoded {
            Some((ch, len)) => {
                out.push(ch);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
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
        assert_eq!(
            t(Transform::NormalizeWhitespace, " union \t\n select  "),
            "union select"
        );
        assert_eq!(
            t(Transform::RemoveComments, "union/**/select/*x*/1"),
            "union select 1"
        );
        assert_eq!(t(Transform::RemoveComments, "a/* unterminated"), "a ");
    }
}
