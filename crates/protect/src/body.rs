//! Request bodies as the WAF sees them: the buffered bytes (at most the site's body limit) of
//! an urlencoded, JSON or multipart body, parsed into named arguments.
//!
//! Parsing is bounded by the buffer: nothing here allocates more than a small multiple of the
//! bytes given. A body cut at the limit, or one that does not parse, is still inspected: its
//! arguments as far as they go (urlencoded, multipart), or every JSON string found in it.

/// Deepest JSON nesting walked as a tree; deeper documents are scanned as a flat list of strings.
const MAX_JSON_DEPTH: usize = 32;
/// Most multipart parts looked at.
const MAX_PARTS: usize = 256;

/// The body types the WAF parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
    /// With its boundary.
    Multipart(String),
}

impl BodyKind {
    /// The kind named by a Content-Type value, if the WAF parses it.
    pub fn from_content_type(value: &[u8]) -> Option<Self> {
        let value = std::str::from_utf8(value).ok()?;
        let mut params = value.split(';');
        let media = params.next()?.trim().to_ascii_lowercase();
        match media.as_str() {
            "application/x-www-form-urlencoded" => Some(Self::Form),
            "application/json" => Some(Self::Json),
            m if m.starts_with("application/") && m.ends_with("+json") => Some(Self::Json),
            "multipart/form-data" => params.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"').to_owned())
                    .filter(|b| !b.is_empty() && b.len() <= 70)
                    .map(Self::Multipart)
            }),
            _ => None,
        }
    }
}

/// A parsed body: its text and its arguments, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestBody {
    /// The buffered bytes as text (invalid UTF-8 replaced).
    pub text: String,
    /// (name, value): form fields; multipart parts (a file part's value is its file name; file
    /// contents are not inspected); JSON strings, numbers and booleans by dotted path
    /// (`user.tags` for every element of an array), whose member names are inspected as
    /// argument names. JSON that does not parse yields its string literals, named `""`.
    pub args: Vec<(String, String)>,
    /// The body was longer than the buffer: only its beginning is here.
    pub truncated: bool,
}

impl RequestBody {
    pub fn parse(kind: &BodyKind, bytes: &[u8], truncated: bool) -> Self {
        let args = match kind {
            BodyKind::Form => form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            BodyKind::Json => json_args(bytes),
            BodyKind::Multipart(boundary) => multipart_args(bytes, boundary),
        };
        Self {
            text: String::from_utf8_lossy(bytes).into_owned(),
            args,
            truncated,
        }
    }
}

fn json_args(bytes: &[u8]) -> Vec<(String, String)> {
    let mut args = Vec::new();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if walk_json(&value, String::new(), 0, &mut args) {
            return args;
        }
        args.clear();
    }
    // Cut at the limit, malformed, or nested too deep: every string literal still counts.
    json_strings(bytes)
        .into_iter()
        .map(|s| (String::new(), s))
        .collect()
}

/// False when the document nests deeper than the bound.
fn walk_json(value: &serde_json::Value, path: String, depth: usize, out: &mut Vec<(String, String)>) -> bool {
    use serde_json::Value;
    if depth > MAX_JSON_DEPTH {
        return false;
    }
    match value {
        Value::Null => true,
        Value::Bool(b) => {
            out.push((path, b.to_string()));
            true
        }
        Value::Number(n) => {
            out.push((path, n.to_string()));
            true
        }
        Value::String(s) => {
            out.push((path, s.clone()));
            true
        }
        Value::Array(items) => items
            .iter()
            .all(|item| walk_json(item, path.clone(), depth + 1, out)),
        Value::Object(members) => members.iter().all(|(key, item)| {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            walk_json(item, child, depth + 1, out)
        }),
    }
}

/// Every complete string literal in (possibly cut or malformed) JSON text, unescaped.
fn json_strings(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if i >= bytes.len() {
            // Cut inside a string: keep what there is.
            out.push(String::from_utf8_lossy(&bytes[start + 1..]).into_owned());
            break;
        }
        let literal = &bytes[start..=i];
        out.push(
            serde_json::from_slice::<String>(literal)
                .unwrap_or_else(|_| String::from_utf8_lossy(&literal[1..literal.len() - 1]).into_owned()),
        );
        i += 1;
    }
    out
}

/// Fields of a multipart/form-data body (RFC 7578): `name` → value, or → file name for files.
fn multipart_args(bytes: &[u8], boundary: &str) -> Vec<(String, String)> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut args = Vec::new();
    let mut rest = match find(bytes, delimiter) {
        Some(at) => &bytes[at + delimiter.len()..],
        None => return args,
    };
    for _ in 0..MAX_PARTS {
        if rest.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let content = &rest[head_end + 4..];
        let (content, next) = match find(content, delimiter) {
            Some(at) => (&content[..at], Some(&content[at + delimiter.len()..])),
            None => (content, None),
        };
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let (name, filename) = disposition(&head);
        match filename {
            Some(filename) => args.push((name, filename)),
            None => args.push((name, String::from_utf8_lossy(content).into_owned())),
        }
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    args
}

/// `name` and `filename` of a part's Content-Disposition header.
fn disposition(head: &str) -> (String, Option<String>) {
    let mut name = String::new();
    let mut filename = None;
    for line in head.split("\r\n") {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !field.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for param in value.split(';').skip(1) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = v,
                "filename" => filename = Some(v),
                _ => {}
            }
        }
    }
    (name, filename)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            BodyKind::from_content_type(b"application/x-www-form-urlencoded; charset=utf-8"),
            Some(BodyKind::Form)
        );
        assert_eq!(
            BodyKind::from_content_type(b"Application/JSON"),
            Some(BodyKind::Json)
        );
        assert_eq!(
            BodyKind::from_content_type(b"application/vnd.api+json"),
            Some(BodyKind::Json)
        );
        assert_eq!(
            BodyKind::from_content_type(b"multipart/form-data; boundary=\"abc\""),
            Some(BodyKind::Multipart("abc".into()))
        );
        assert_eq!(BodyKind::from_content_type(b"multipart/form-data"), None);
        assert_eq!(BodyKind::from_content_type(b"text/plain"), None);
    }

    #[test]
    fn json_by_dotted_path() {
        let body = RequestBody::parse(
            &BodyKind::Json,
            br#"{"user":{"name":"a'b","tags":["x","y"]},"n":1,"ok":true}"#,
            false,
        );
        assert_eq!(
            body.args,
            [
                ("n", "1"),
                ("ok", "true"),
                ("user.name", "a'b"),
                ("user.tags", "x"),
                ("user.tags", "y"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn cut_or_deep_json_is_scanned_as_strings() {
        let cut = RequestBody::parse(&BodyKind::Json, br#"{"a":"x\"y","b":"<scr"#, true);
        let values: Vec<&str> = cut.args.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["a", "x\"y", "b", "<scr"]);
        let deep = format!("{}\"deep\"{}", "[".repeat(100), "]".repeat(100));
        let body = RequestBody::parse(&BodyKind::Json, deep.as_bytes(), false);
        assert_eq!(body.args, [(String::new(), "deep".to_owned())]);
    }

    #[test]
    fn multipart_fields_and_file_names() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"../../etc/passwd\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\x00\x01binary\r\n--XyZ--\r\n";
        let parsed = RequestBody::parse(&BodyKind::Multipart("XyZ".into()), body, false);
        assert_eq!(
            parsed.args,
            [("title", "hello"), ("upload", "../../etc/passwd")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }
}
