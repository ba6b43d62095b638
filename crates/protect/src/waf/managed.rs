//! The managed rule set: signatures for SQL injection, cross-site scripting, path traversal,
//! command injection and known scanners, written for this project in the spirit of the OWASP
//! Core Rule Set (whose rules need a ModSecurity engine; no maintained Rust crate ships a rule
//! set, so the signatures live here).
//!
//! Values are normalized first (repeated URL decoding, HTML entities, SQL comments, case,
//! whitespace), then matched by one regex set per class. Each signature has a sensitivity level:
//! 1 holds high-confidence signatures only; 2 and 3 add broader ones.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderName;

use outpost_config::{ManagedWafConfig, WafAction, WafExclusionConfig, WafMode};
use regex::RegexSet;

use super::transform::Transform;
use super::Hit;
use crate::rate_limit::RequestFacts;
use crate::text;

/// (id, sensitivity level, pattern), written in lower case. Patterns run, ASCII-case-insensitive,
/// on normalized values.
type Signature = (&'static str, u8, &'static str);

#[rustfmt::skip]
const SQLI: &[Signature] = &[
    ("sqli-union", 1, r"\bunion\b(\s+(all|distinct))?\s*\(?\s*select\b"),
    ("sqli-tautology", 1, r#"['"`]\s*\)?\s*(or|and|\|\||&&)\s*\(?\s*['"`]?\s*\w*\s*['"`]?\s*(=|<>|!=|like|>|<)"#),
    ("sqli-numeric-tautology", 1, r"\b(or|and)\s+\(?\s*(\d+)\s*(=|<>|>|<)\s*\(?\s*\d+"),
    ("sqli-comment-tail", 1, r#"['"`]\s*\)?\s*(;\s*)?(--|#|/\*)"#),
    ("sqli-stacked", 1, r";\s*(drop|delete|insert|update|truncate|alter|create|exec|shutdown|declare)\b"),
    ("sqli-time", 1, r"\b(sleep|benchmark|pg_sleep)\s*\(|\bwaitfor\s+delay\b|\bdbms_pipe\.receive_message\b"),
    ("sqli-error-based", 1, r"\b(extractvalue|updatexml|exp\s*\(\s*~|floor\s*\(\s*rand|geometrycollection|polygon)\s*\("),
    ("sqli-schema", 1, r"\b(information_schema|pg_catalog|sysobjects|syscolumns|mysql\.user|sqlite_master|xp_cmdshell|sp_executesql)\b"),
    ("sqli-file", 1, r"\b(load_file\s*\(|into\s+(out|dump)file\b)"),
    ("sqli-boolean-call", 1, r#"['"\d)]\s*(and|or|xor|&&|\|\|)\s+\(*\s*(select|substring|substr|ascii|char|length|mid|ord|hex|if|elt|sleep|benchmark|gtid_subset|extractvalue|updatexml|exists|utl_inaddr\.\w+|dbms_\w+(\.\w+)?)\s*\("#),
    ("sqli-having", 1, r"\b(having|group\s+by\s+[\w,\s]{1,60}having)\s+\d+\s*(=|<|>)\s*\d+"),
    ("sqli-system-variable", 1, r"@@(version|datadir|hostname|basedir|servername)\b"),
    ("sqli-case-when", 1, r"\bcase\s+when\b[\s\S]{0,80}\bthen\b"),
    ("sqli-order-by-probe", 1, r"['\d\)]\s*order\s+by\s+\d+\s*(--|#|/\*|$)"),
    ("sqli-subquery", 2, r"\(\s*select\s"),
    ("sqli-select-from", 2, r"\bselect\b[\s\S]{1,100}\bfrom\b[\s\S]{1,100}\b(where|limit|group\s+by|order\s+by)\b"),
    ("sqli-functions", 2, r"\b(concat|concat_ws|group_concat|char|chr|ascii|substring|substr|hex|unhex|version|database|user)\s*\(\s*[\w'@]"),
    ("sqli-hex-literal", 3, r"\b0x[0-9a-f]{8,}\b"),
];

#[rustfmt::skip]
const XSS: &[Signature] = &[
    ("xss-script-tag", 1, r"<\s*/?\s*script\b"),
    ("xss-event-handler", 1, r"<[^>]*\bon[a-z]{3,20}\s*="),
    // Browsers ignore tabs and newlines inside the scheme (`jav&#x09;ascript:`); a space after
    // the colon is prose ("JavaScript: the good parts"), not a URL.
    ("xss-js-uri", 1, r"(j\s*a\s*v\s*a|v\s*b|l\s*i\s*v\s*e)\s*s\s*c\s*r\s*i\s*p\s*t\s*:[^\s]"),
    ("xss-attribute-break", 1, r#"['"][^'"<>]{0,40}\son[a-z]{3,20}\s*="#),
    ("xss-js-break", 1, r#"['"]\s*[-+*/;,)]\s*(alert|prompt|confirm|eval|fetch|import|settimeout|setinterval|string\.fromcharcode|atob|document\.write)\s*\("#),
    ("xss-encoded-tag", 1, r"\x{fffd}{1,3}\s*/?\s*script"),
    ("xss-dangerous-tag", 1, r"<\s*(iframe|object|embed|applet|base|meta|svg|math|frameset|isindex|style|link)\b"),
    ("xss-data-uri", 1, r"data\s*:\s*text/html"),
    ("xss-srcdoc-formaction", 1, r"\b(srcdoc|formaction|xlink:href)\s*="),
    ("xss-dom-sink", 2, r"\b(document\s*\.\s*(cookie|domain|write)|window\s*\.\s*location|\.innerhtml\s*=|eval\s*\(|settimeout\s*\(\s*['`])"),
    ("xss-css-expression", 2, r"expression\s*\(|-moz-binding|behavior\s*:"),
    ("xss-alert", 2, r"\b(alert|prompt|confirm)\s*(\(|`)"),
    ("xss-quote-break", 2, r#"['"]\s*[-+;]\s*\w+\s*\("#),
    ("xss-tag-attr", 3, r#"<\s*(img|video|audio|body|input|form|details|marquee|a)\b[^>]*\b(src|href|action|style)\s*="#),
];

#[rustfmt::skip]
const TRAVERSAL: &[Signature] = &[
    // Also overlong UTF-8 (`%c0%af`, decoded to U+FFFD) and IIS `%u` separators.
    ("traversal-dot-dot", 1, r"(^|[/\\=])\.{2,}([/\\]|\x{fffd}|%u[0-9a-f]{4})"),
    ("traversal-unix-files", 1, r"/(etc/(passwd|shadow|group|hosts|issue)|proc/(self|\d+)/|root/\.ssh)"),
    ("traversal-windows-files", 1, r"([/\\](boot|win|system)\.ini\b|windows[/\\]system32)"),
    ("traversal-file-uri", 1, r"\bfile\s*:\s*//"),
    ("traversal-null-byte", 1, r"\x00"),
    ("traversal-dotfiles", 2, r"/\.(git|svn|hg|env|aws|ssh|htpasswd|htaccess)(/|$)"),
];

#[rustfmt::skip]
const CMDI: &[Signature] = &[
    // A command after a separator; a bare command word ("cat food", "ls command") is prose.
    ("cmdi-chained", 1, r"([;&|`\n\r]|\$\()\s*(cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ping|nslookup|dig|rm|echo|python[23]?|perl|ruby|php|powershell|cmd|telnet|chmod|chown|kill|ps|ifconfig|ipconfig|net|sleep|touch|mkfifo|base64)\b"),
    ("cmdi-subshell", 1, r"\$\([^)]{1,200}\)|`[^`]{1,200}`"),
    ("cmdi-shell-path", 1, r"(/bin/(ba|z|da)?sh|/usr/bin/(env|perl|python)|cmd(\.exe)?\s+/c|powershell(\.exe)?\s+-)"),
    ("cmdi-reverse-shell", 1, r"\b(nc|ncat|netcat)\b[^\n]{0,40}\s-e\s|/dev/tcp/"),
    ("cmdi-glob-path", 1, r"(/[a-z]{0,4}[?*][a-z?*]{0,6}){2,}"),
    ("cmdi-shellshock", 1, r"\(\s*\)\s*\{[^}]{0,40}\}\s*;"),
    ("cmdi-php-exec", 1, r"\b(call_user_func(_array)?|invokefunction|shell_exec|passthru|proc_open|pcntl_exec)\b"),
    ("cmdi-ifs", 2, r"\$\{?ifs\}?"),
];

const SCANNER_UA: &[Signature] = &[(
    "scanner-user-agent",
    1,
    r"(sqlmap|nikto|nmap|masscan|acunetix|nessus|wpscan|dirbuster|gobuster|dirb\b|nuclei|zgrab|w3af|havij|netsparker|openvas|whatweb|fimap|commix|xsser|jaeles|arachni|skipfish|wfuzz|ffuf|feroxbuster)",
)];

#[rustfmt::skip]
const SCANNER_PATH: &[Signature] = &[
    ("scanner-probe-path", 1, r"/(\.git/|\.env$|\.env\.|\.aws/|\.ssh/|\.svn/|\.ds_store|\.vscode/|\.idea/|wp-config\.php|server-status|phpmyadmin|pma/|myadmin|(php)?info\.php|\.htpasswd|actuator/|eval-stdin\.php|docker-compose\.ya?ml|fuzz$)"),
    ("scanner-backup-file", 1, r"\.(bak|old|orig|save|swp|sql|sql\.gz|sql\.zip)$|~$"),
    ("scanner-named-probe", 1, r"(acunetix|nessus|netsparker|appscan|burpcollaborator|qualys)"),
];

/// Signatures of one or more classes compiled into one regex set, so a value is scanned once.
struct Set {
    /// (class, rule id) by pattern index.
    ids: Vec<(&'static str, &'static str)>,
    set: RegexSet,
}

type Classes<'a> = &'a [(&'static str, &'static [Signature])];

/// The signatures of `classes` at or under the sensitivity `level`, with their class.
fn chosen(classes: Classes<'_>, level: u8) -> Vec<(&'static str, &'static Signature)> {
    classes
        .iter()
        .flat_map(|(c, sigs)| sigs.iter().filter(|s| s.1 <= level).map(move |s| (*c, s)))
        .collect()
}

fn regex_set(chosen: &[(&'static str, &'static Signature)], multi_line: bool) -> Result<RegexSet, String> {
    // ASCII classes and word boundaries: values are ASCII in practice, and the Unicode
    // versions keep the regex engine off its fast DFA path. Letters match in either case, by
    // Unicode's simple case folding (so the Kelvin sign is a `k`, as lower-casing made it).
    let ascii = |p: &str| {
        p.replace(r"\b", r"(?-u:\b)")
            .replace(r"\w", "[0-9A-Za-z_]")
            .replace(r"\s", r"[\t\n\x0B\x0C\r ]")
            .replace(r"\d", "[0-9]")
    };
    regex::RegexSetBuilder::new(chosen.iter().map(|(_, s)| ascii(s.2)))
        .multi_line(multi_line)
        .case_insensitive(true)
        .dfa_size_limit(8 << 20)
        .build()
        .map_err(|e| format!("managed rule set: {e}"))
}

impl Set {
    fn build(classes: Classes<'_>, level: u8) -> Result<Self, String> {
        let chosen = chosen(classes, level);
        Ok(Self {
            set: regex_set(&chosen, false)?,
            ids: chosen.iter().map(|(c, s)| (*c, s.0)).collect(),
        })
    }

    /// Matches in pattern order, restricted to `class` when given.
    fn matches<'a>(
        &'a self,
        value: &str,
        class: Option<&'a str>,
    ) -> impl Iterator<Item = (&'static str, &'static str)> + 'a {
        // Almost every value is benign: the early-exit check is far cheaper than collecting
        // every matching pattern, which only a hit needs.
        let matched = if self.set.is_match(value) {
            self.set.matches(value).into_iter().collect()
        } else {
            Vec::new()
        };
        matched
            .into_iter()
            .map(|i| self.ids[i])
            .filter(move |(c, _)| class.is_none_or(|want| *c == want))
    }
}

const INJECTION: Classes<'static> = &[
    ("sqli", SQLI),
    ("xss", XSS),
    ("traversal", TRAVERSAL),
    ("cmdi", CMDI),
];
const SCANNER_AGENTS: Classes<'static> = &[("scanner", SCANNER_UA)];
const SCANNER_PATHS: Classes<'static> = &[("scanner", SCANNER_PATH)];

/// The compiled signatures of one sensitivity level. They depend on nothing else, so each
/// level is compiled once per process and shared by every site and every reload.
struct Signatures {
    injection: Set,
    scanner_ua: Set,
    scanner_path: Set,
    /// Every signature above, multi-line, for one pass over all of a request's values joined
    /// by line breaks. A match in a value is a match in the joined text too (`^`, `$` and
    /// `\b` see a line break where the value starts and ends), so when this pass finds
    /// nothing the request is clean; when it finds something, the values are scanned one by
    /// one for the exact hit. One pass instead of one per value: the regex engine's cost per
    /// call, not per byte, dominated on the short values of a request.
    any: RegexSet,
}

impl Signatures {
    fn of_level(level: u8) -> Result<Arc<Self>, String> {
        static COMPILED: Mutex<[Option<Arc<Signatures>>; 3]> = Mutex::new([None, None, None]);
        let mut compiled = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut compiled[usize::from(level.clamp(1, 3) - 1)];
        if let Some(signatures) = slot {
            return Ok(Arc::clone(signatures));
        }
        let every: Vec<_> = [INJECTION, SCANNER_AGENTS, SCANNER_PATHS]
            .iter()
            .flat_map(|classes| chosen(classes, level))
            .collect();
        let signatures = Arc::new(Self {
            injection: Set::build(INJECTION, level)?,
            scanner_ua: Set::build(SCANNER_AGENTS, level)?,
            scanner_path: Set::build(SCANNER_PATHS, level)?,
            any: regex_set(&every, true)?,
        });
        *slot = Some(Arc::clone(&signatures));
        Ok(signatures)
    }
}

pub struct Managed {
    action: WafAction,
    pub status: u16,
    signatures: Arc<Signatures>,
    exclusions: Vec<WafExclusionConfig>,
}

// Whitespace is not collapsed: a newline separates shell commands, and the patterns use \s.
// Comments are removed only for the SQL class (see `first_hit`): a `/*` in a shell path such as
// `rm -rf /tmp/*;wget ...` must not hide the rest from the other classes.
// Case is not folded either: the patterns match either case, which spares a copy of every value
// with a capital letter (every browser's User-Agent).
const NORMALIZE: [Transform; 2] = [Transform::UrlDecodeRepeat, Transform::HtmlEntityDecode];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where a value came from, built into a location string only for a hit.
#[derive(Clone, Copy)]
enum Place<'a> {
    Path,
    Arg(&'a str),
    BodyArg(&'a str),
    Header(&'a str),
    Cookie(&'a str),
}

impl Place<'_> {
    fn location(self) -> String {
        match self {
            Place::Path => "path".to_owned(),
            Place::Arg(name) => format!("arg:{name}"),
            Place::BodyArg(name) => format!("body_arg:{name}"),
            Place::Header(name) => format!("header:{name}"),
            Place::Cookie(name) => format!("cookie:{name}"),
        }
    }
}

impl Managed {
    /// None when the managed rules are off.
    pub fn compile(cfg: &ManagedWafConfig) -> Result<Option<Self>, String> {
        let action = match cfg.mode {
            WafMode::Off => return Ok(None),
            WafMode::Detect => WafAction::Log,
            WafMode::Block => WafAction::Block,
        };
        Ok(Some(Self {
            action,
            status: cfg.status,
            signatures: Signatures::of_level(cfg.sensitivity.clamp(1, 3))?,
            exclusions: cfg.exclusions.clone(),
        }))
    }

    pub fn rule_ids(&self) -> Vec<(Arc<str>, WafAction)> {
        let s = &*self.signatures;
        [&s.injection, &s.scanner_ua, &s.scanner_path]
            .iter()
            .flat_map(|set| set.ids.iter().map(|(_, id)| (Arc::from(*id), self.action)))
            .collect()
    }

    /// The first signature that matches, if any.
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Option<Hit> {
        let mut joined = String::with_capacity(512);
        self.each_value(facts, |_, value, _| {
            joined.push_str(value);
            joined.push('\n');
            // What `first_hit` looks behind must be in the joined text too.
            let (uncommented, unquoted) = uncovered(value);
            for variant in [uncommented.as_deref(), unquoted.as_deref()]
                .into_iter()
                .flatten()
            {
                joined.push_str(variant);
                joined.push('\n');
            }
            None
        });
        if !self.signatures.any.is_match(&joined) {
            return None;
        }
        self.each_value(facts, |place, value, sets| {
            sets.iter()
                .find_map(|set| self.first_hit(set, place, value, facts))
        })
    }

    /// Visits every value the signatures read, normalized, with the sets that apply to it,
    /// in the order hits are reported; stops at the first hit `visit` returns.
    fn each_value(
        &self,
        facts: &RequestFacts<'_>,
        mut visit: impl FnMut(Place<'_>, &str, &[&Set]) -> Option<Hit>,
    ) -> Option<Hit> {
        let s = &*self.signatures;
        let injection = &[&s.injection][..];
        // Scanners announce themselves in header names too (`Acunetix-Aspect`).
        for name in facts.headers.keys() {
            if let Some(hit) = visit(Place::Header(name.as_str()), name.as_str(), &[&s.scanner_ua]) {
                return Some(hit);
            }
        }
        for ua in facts.headers.get_all(http::header::USER_AGENT) {
            let ua = normalize(text(ua.as_bytes()));
            if let Some(hit) = visit(Place::Header("user-agent"), &ua, &[&s.scanner_ua, &s.injection]) {
                return Some(hit);
            }
        }
        let path = normalize(Cow::Borrowed(facts.path));
        if let Some(hit) = visit(Place::Path, &path, &[&s.scanner_path, &s.injection]) {
            return Some(hit);
        }
        // An argument's value, and its name when the name is odd: names are mostly plain
        // identifiers, only odd ones are worth a scan. Body arguments are query arguments by
        // other means.
        let mut arg = |place: Place<'_>, name: &str, value: &str| {
            visit(place, &normalize(Cow::Borrowed(value)), injection).or_else(|| {
                let plain = |b: u8| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b);
                if name.bytes().all(plain) {
                    None
                } else {
                    visit(place, &normalize(Cow::Borrowed(name)), injection)
                }
            })
        };
        for (name, value) in form_urlencoded::parse(facts.query.unwrap_or("").as_bytes()) {
            if let Some(hit) = arg(Place::Arg(&name), &name, &value) {
                return Some(hit);
            }
        }
        for (name, value) in facts.body.map_or(&[][..], |b| &b.args[..]) {
            if let Some(hit) = arg(Place::BodyArg(name), name, value) {
                return Some(hit);
            }
        }
        let mut hit = None;
        crate::for_each_cookie(facts.headers, |name, value| {
            hit = visit(Place::Cookie(name), &normalize(Cow::Borrowed(value)), injection);
            hit.is_some()
        });
        if hit.is_some() {
            return hit;
        }
        for header in [&http::header::REFERER, &X_FORWARDED_FOR, &X_FORWARDED_HOST] {
            for raw in facts.headers.get_all(header) {
                let value = normalize(text(raw.as_bytes()));
                if let Some(hit) = visit(Place::Header(header.as_str()), &value, injection) {
                    return Some(hit);
                }
            }
        }
        None
    }

    /// The first match of `set` in `value` that no exclusion covers, as a hit.
    fn first_hit(&self, set: &Set, place: Place<'_>, value: &str, facts: &RequestFacts<'_>) -> Option<Hit> {
        let allowed =
            |(class, id): &(&'static str, &'static str)| !self.excluded(class, id, place, facts.path);
        let mut found = set.matches(value, None).find(allowed);
        if found.is_none() {
            let (uncommented, unquoted) = uncovered(value);
            if let Some(uncommented) = uncommented {
                found = set.matches(&uncommented, Some("sqli")).find(allowed);
            }
            if let Some(unquoted) = unquoted.filter(|_| found.is_none()) {
                found = set.matches(&unquoted, Some("cmdi")).find(allowed);
            }
        }
        let (_, id) = found?;
        let location = place.location();
        Some(Hit {
            rule: Arc::from(id),
            action: self.action,
            value: super::loggable(&location, value),
            location,
        })
    }

    fn excluded(&self, class: &str, id: &str, place: Place<'_>, path: &str) -> bool {
        self.exclusions.iter().any(|ex| {
            (ex.rule == class || ex.rule == id)
                && ex.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
                && ex
                    .arg
                    .as_deref()
                    .is_none_or(|a| matches!(place, Place::Arg(name) | Place::BodyArg(name) if name == a))
        })
    }
}

/// What a value hides: SQL comments hide keywords (`union/**/select`, scanned for SQL
/// injection without them) and shell quoting hides commands (`c'a't`, scanned for command
/// injection without it).
fn uncovered(value: &str) -> (Option<Cow<'_, str>>, Option<String>) {
    if !HIDING.any_in(value) {
        return (None, None);
    }
    let uncommented = value
        .contains("/*")
        .then(|| Transform::RemoveComments.apply(Cow::Borrowed(value)));
    (uncommented, unquote_shell(value))
}

/// Bytes of a set, found in one pass over a value: the values scanned here are short, and
/// `str::contains` per byte of interest made a pass (and a call) for each.
struct ByteSet([bool; 256]);

impl ByteSet {
    const fn of(bytes: &[u8], non_ascii: bool) -> Self {
        let mut set = [false; 256];
        let mut i = 0;
        while i < bytes.len() {
            set[bytes[i] as usize] = true;
            i += 1;
        }
        let mut b = 128;
        while b < 256 {
            set[b] = non_ascii;
            b += 1;
        }
        Self(set)
    }

    /// No early exit: a load and an `or` a byte, where `any`'s branch per byte cost about
    /// twice that on the short values of a request.
    fn any_in(&self, value: &str) -> bool {
        value.bytes().fold(false, |found, b| found | self.0[b as usize])
    }
}

/// The bytes that make `normalize` change a value: what `NORMALIZE` decodes (`%`, `+`, `&`)
/// and the `\` of JavaScript escapes.
static NORMALIZED_BY: ByteSet = ByteSet::of(b"%+&\\", false);

/// The bytes of SQL comments and shell quoting, which `first_hit` looks behind. (memchr's
/// vector search costs more than this on values this short: its setup is per call.)
static HIDING: ByteSet = ByteSet::of(b"*'\"\\", false);

/// Borrows: most values need none of the transformations, and a copy per value per request
/// was a large part of the rule set's cost.
fn normalize(value: Cow<'_, str>) -> Cow<'_, str> {
    if !NORMALIZED_BY.any_in(&value) {
        return value;
    }
    let mut v = value;
    for t in NORMALIZE {
        v = t.apply(v);
    }
    // JavaScript string escapes of angle brackets, as reflected into inline scripts.
    if v.contains('\\') {
        let mut owned = v.into_owned();
        for (escaped, plain) in [
            ("\\u003c", "<"),
            ("\\u003C", "<"),
            ("\\u003e", ">"),
            ("\\u003E", ">"),
            ("\\x3c", "<"),
            ("\\x3C", "<"),
            ("\\x3e", ">"),
            ("\\x3E", ">"),
        ] {
            owned = owned.replace(escaped, plain);
        }
        v = Cow::Owned(owned);
    }
    v
}

/// Shell quoting tricks (`c'a't`, `w\hoami`) hide command names; the shell runs them anyway.
fn unquote_shell(value: &str) -> Option<String> {
    value
        .bytes()
        .any(|b| matches!(b, b'\'' | b'"' | b'\\'))
        .then(|| value.replace(['\'', '"', '\\'], ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_borrows_plain_values_and_decodes_the_rest() {
        let plain = "/Articles/2026/Some-Page_2.html?x=1;y=2";
        assert!(matches!(normalize(Cow::Borrowed(plain)), Cow::Borrowed(p) if p == plain));
        for (raw, want) in [
            ("%3Cscript%3E", "<script>"),
            ("a+b", "a b"),
            ("&lt;x", "<x"),
            ("\\x3cimg", "<img"),
            ("\\x3Cimg", "<img"),
            ("\\u003Cscript\\u003E", "<script>"),
        ] {
            assert_eq!(normalize(Cow::Borrowed(raw)), want, "{raw}");
        }
    }
}
