//! The managed rule set: signatures for SQL injection, cross-site scripting, path traversal,
//! command injection and known scanners, written for this project in the spirit of the OWASP
//! Core Rule Set (whose rules need a ModSecurity engine; no maintained Rust crate ships a rule
//! set, so the signatures live here).
//!
//! Values are normalized first (repeated URL decoding, HTML entities, SQL comments, case,
//! whitespace), then matched by one regex set per class. Each signature has a sensitivity level:
//! 1 holds high-confidence signatures only; 2 and 3 add broader ones.

use std::borrow::Cow;
use std::sync::Arc;

use outpost_config::{ManagedWafConfig, WafAction, WafExclusionConfig, WafMode};
use regex::RegexSet;

use super::transform::Transform;
use super::Hit;
use crate::rate_limit::RequestFacts;

/// (id, sensitivity level, pattern). Patterns run on normalized, lower-cased values.
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

struct Class {
    name: &'static str,
    ids: Vec<&'static str>,
    set: RegexSet,
}

impl Class {
    fn build(name: &'static str, sigs: &[Signature], level: u8) -> Result<Self, String> {
        let chosen: Vec<&Signature> = sigs.iter().filter(|s| s.1 <= level).collect();
        let set = RegexSet::new(chosen.iter().map(|s| s.2)).map_err(|e| format!("managed rule set: {e}"))?;
        Ok(Self {
            name,
            ids: chosen.iter().map(|s| s.0).collect(),
            set,
        })
    }

    fn first_match(&self, value: &str) -> Option<&'static str> {
        self.set.matches(value).iter().next().map(|i| self.ids[i])
    }
}

pub struct Managed {
    action: WafAction,
    pub status: u16,
    injection: Vec<Class>,
    scanner_ua: Class,
    scanner_path: Class,
    exclusions: Vec<WafExclusionConfig>,
}

// Whitespace is not collapsed: a newline separates shell commands, and the patterns use \s.
// Comments are removed only for the SQL class (in `check`): a `/*` in a shell path such as
// `rm -rf /tmp/*;wget ...` must not hide the rest from the other classes.
const NORMALIZE: [Transform; 3] = [
    Transform::UrlDecodeRepeat,
    Transform::HtmlEntityDecode,
    Transform::Lowercase,
];

impl Managed {
    /// None when the managed rules are off.
    pub fn compile(cfg: &ManagedWafConfig) -> Result<Option<Self>, String> {
        let action = match cfg.mode {
            WafMode::Off => return Ok(None),
            WafMode::Detect => WafAction::Log,
            WafMode::Block => WafAction::Block,
        };
        let level = cfg.sensitivity.clamp(1, 3);
        Ok(Some(Self {
            action,
            status: cfg.status,
            injection: vec![
                Class::build("sqli", SQLI, level)?,
                Class::build("xss", XSS, level)?,
                Class::build("traversal", TRAVERSAL, level)?,
                Class::build("cmdi", CMDI, level)?,
            ],
            scanner_ua: Class::build("scanner", SCANNER_UA, level)?,
            scanner_path: Class::build("scanner", SCANNER_PATH, level)?,
            exclusions: cfg.exclusions.clone(),
        }))
    }

    pub fn rule_ids(&self) -> Vec<(Arc<str>, WafAction)> {
        self.injection
            .iter()
            .chain([&self.scanner_ua, &self.scanner_path])
            .flat_map(|c| c.ids.iter().map(|id| (Arc::from(*id), self.action)))
            .collect()
    }

    /// The first signature that matches, if any.
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Option<Hit> {
        let ua = facts
            .headers
            .get(http::header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_lowercase());
        if let Some(ua) = &ua {
            if let Some(hit) = self.check(&self.scanner_ua, "header:user-agent", ua, facts) {
                return Some(hit);
            }
        }
        for name in facts.headers.keys() {
            if let Some(hit) = self.check(&self.scanner_ua, &format!("header:{name}"), name.as_str(), facts) {
                return Some(hit);
            }
        }
        let path = normalize(facts.path);
        if let Some(hit) = self.check(&self.scanner_path, "path", &path, facts) {
            return Some(hit);
        }
        for class in &self.injection {
            // The path: traversal and injections hidden in path segments.
            if let Some(hit) = self.check(class, "path", &path, facts) {
                return Some(hit);
            }
        }
        for (name, value) in form_urlencoded::parse(facts.query.unwrap_or("").as_bytes()) {
            let location = format!("arg:{name}");
            let value = normalize(&value);
            let name_norm = normalize(&name);
            for class in &self.injection {
                if let Some(hit) = self.check(class, &location, &value, facts) {
                    return Some(hit);
                }
                if let Some(hit) = self.check(class, &location, &name_norm, facts) {
                    return Some(hit);
                }
            }
        }
        for header in [
            http::header::COOKIE,
            http::header::REFERER,
            http::header::USER_AGENT,
            http::HeaderName::from_static("x-forwarded-for"),
            http::HeaderName::from_static("x-forwarded-host"),
        ] {
            for raw in facts.headers.get_all(&header) {
                let raw = String::from_utf8_lossy(raw.as_bytes());
                let values: Vec<(String, &str)> = if header == http::header::COOKIE {
                    raw.split(';')
                        .filter_map(|p| p.trim().split_once('='))
                        .map(|(k, v)| (format!("cookie:{k}"), v))
                        .collect()
                } else {
                    vec![(format!("header:{header}"), &*raw)]
                };
                for (location, value) in values {
                    let value = normalize(value);
                    for class in &self.injection {
                        if let Some(hit) = self.check(class, &location, &value, facts) {
                            return Some(hit);
                        }
                    }
                }
            }
        }
        None
    }

    fn check(&self, class: &Class, location: &str, value: &str, facts: &RequestFacts<'_>) -> Option<Hit> {
        let uncommented;
        let value = if class.name == "sqli" && value.contains("/*") {
            uncommented = Transform::RemoveComments.apply(Cow::Borrowed(value)).into_owned();
            uncommented.as_str()
        } else {
            value
        };
        let id = class.first_match(value).or_else(|| {
            let unquoted = (class.name == "cmdi").then(|| unquote_shell(value)).flatten()?;
            class.first_match(&unquoted)
        })?;
        if self.excluded(class.name, id, location, facts.path) {
            return None;
        }
        Some(Hit {
            rule: Arc::from(id),
            action: self.action,
            location: location.to_owned(),
            value: super::loggable(location, value),
        })
    }

    fn excluded(&self, class: &str, id: &str, location: &str, path: &str) -> bool {
        self.exclusions.iter().any(|ex| {
            (ex.rule == class || ex.rule == id)
                && ex.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
                && ex
                    .arg
                    .as_deref()
                    .is_none_or(|a| location.strip_prefix("arg:") == Some(a))
        })
    }
}

fn normalize(value: &str) -> String {
    let mut v = Cow::Borrowed(value);
    for t in NORMALIZE {
        v = t.apply(v);
    }
    let mut v = v.into_owned();
    // JavaScript string escapes of angle brackets, as reflected into inline scripts.
    if v.contains('\\') {
        for (escaped, plain) in [("\\u003c", "<"), ("\\u003e", ">"), ("\\x3c", "<"), ("\\x3e", ">")] {
            v = v.replace(escaped, plain);
        }
    }
    v
}

/// Shell quoting tricks (`c'a't`, `w\\hoami`) hide command names; the shell runs them anyway.
fn unquote_shell(value: &str) -> Option<String> {
    value
        .contains(['\'', '"', '\\'])
        .then(|| value.replace(['\'', '"', '\\'], ""))
}
