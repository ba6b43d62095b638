//! Turning text (or a config built in code) into a validated config with a stable hash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toml_edit::ImDocument;

use crate::error::{ConfigError, ConfigErrors};
use crate::locate::{line_column, path_at, path_for_syntax_error, span_of};
use crate::model::*;
use crate::path::{FieldPath, Segment};
use crate::validate::{validate, Issue};

/// A config that passed validation, with where it came from and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file path, or a description such as `"<command line>"`.
    pub source: String,
    /// Lowercase hex SHA-256 of the config's canonical JSON form: equal configs hash equally,
    /// however they were written, so it identifies what is running.
    pub hash: String,
}

/// Reads, parses and validates a config file. Relative paths in it (certificates, origin TLS
/// files, `pop.state_dir`, a file `log.access_log`) are resolved against the file's directory,
/// so the result does not depend on the working directory.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::unlocated(&file, "", format!("cannot read config file: {e}")))?;
    parse_str(&text, &file, Some(path.parent().unwrap_or(Path::new(""))))
}

/// Parses and validates config text. `file_name` is used in errors and as the source;
/// `base_dir`, when given, is what relative paths are resolved against.
pub fn parse_str(text: &str, file_name: &str, base_dir: Option<&Path>) -> Result<LoadedConfig, ConfigErrors> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        let (line, column) = line_column(text, offset);
        ConfigError {
            file: file_name.to_owned(),
            line: Some(line),
            column: Some(column),
            field: path_for_syntax_error(text, offset).to_string(),
            reason: one_line(e.message()),
        }
    })?;
    let mut config: Config =
        toml::from_str(text).map_err(|e| deserialize_error(&e, text, &doc, file_name))?;
    if let Some(base) = base_dir {
        resolve_paths(&mut config, base);
    }
    let issues = validate(&config);
    if !issues.is_empty() {
        return Err(locate_issues(issues, file_name, Some((text, &doc))));
    }
    finish(config, file_name)
}

/// Validates a config built in code. Errors carry field paths but no lines.
pub fn from_config(config: Config, source: &str) -> Result<LoadedConfig, ConfigErrors> {
    let issues = validate(&config);
    if !issues.is_empty() {
        return Err(locate_issues(issues, source, None));
    }
    finish(config, source)
}

/// The config behind `outpost edge --listen ADDR --origin URL`: one plain listener `main`, one site
/// `default` for every host, one pool `default` with that one origin, the admin listener on
/// `admin` (none when `None`), and defaults for everything else. Not validated: pass it to
/// [`from_config`], which for instance rejects a non-loopback `admin` without a token.
pub fn quick_start(listen: SocketAddr, origin_url: &str, admin: Option<SocketAddr>) -> Config {
    // Built through serde so the pool gets exactly the defaults a file would.
    let pool: PoolConfig = serde_json::from_value(serde_json::json!({
        "name": "default",
        "origin": [{ "url": origin_url }],
    }))
    .expect("a pool with a name and one origin URL always deserializes");
    Config {
        version: None,
        pop: PopConfig::default(),
        admin: AdminConfig {
            listen: admin,
            token: None,
        },
        log: LogConfig::default(),
        limits: Limits::default(),
        timeouts: ClientTimeouts::default(),
        client_ip: ClientIpConfig::default(),
        listeners: vec![ListenerConfig {
            name: "main".to_owned(),
            address: listen,
            tls: None,
            proxy_protocol: false,
        }],
        certificates: Vec::new(),
        sites: vec![SiteConfig {
            name: "default".to_owned(),
            hosts: vec!["*".to_owned()],
            pool: "default".to_owned(),
            listeners: Vec::new(),
            rate_limits: Vec::new(),
            waf_rules: Vec::new(),
            waf: ManagedWafConfig::default(),
            cache: SiteCacheConfig::default(),
            forwarded_headers: Default::default(),
        }],
        pools: vec![pool],
        cache: CacheConfig::default(),
    }
}

fn finish(config: Config, source: &str) -> Result<LoadedConfig, ConfigErrors> {
    // JSON field order is the structs' declaration order, so this encoding is canonical.
    // Validation rejected sub-millisecond durations; what can still fail is a non-UTF-8 path.
    let json = serde_json::to_vec(&config).map_err(|e| {
        ConfigError::unlocated(source, "", format!("cannot encode the config to hash it: {e}"))
    })?;
    let hash = hex::encode(Sha256::digest(&json));
    Ok(LoadedConfig {
        config,
        source: source.to_owned(),
        hash,
    })
}

fn deserialize_error(
    error: &toml::de::Error,
    text: &str,
    doc: &ImDocument<&str>,
    file: &str,
) -> ConfigErrors {
    let mut reason = one_line(error.message());
    let (line, column, mut path) = match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (Some(line), Some(column), path_at(doc, span.start))
        }
        None => (None, None, FieldPath::root()),
    };
    // serde reports a missing field on the table that lacks it; name the field itself.
    if let Some(missing) = reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        path = path.key(missing);
    }
    // The most common slip: `[pool]` where every pool needs its own `[[pool]]`.
    if reason == "invalid type: map, expected a sequence" {
        if let Some(Segment::Key(name)) = path.segments().last() {
            reason = format!("{reason}; write [[{name}]] with double brackets, once per entry");
        }
    }
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        field: path.to_string(),
        reason,
    }
    .into()
}

/// toml's messages can span lines; errors are shown one per line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn locate_issues(issues: Vec<Issue>, file: &str, source: Option<(&str, &ImDocument<&str>)>) -> ConfigErrors {
    let mut errors: Vec<ConfigError> = issues
        .into_iter()
        .map(|issue| {
            let position = source.and_then(|(text, doc)| {
                let span = span_of(doc, issue.anchor.as_ref().unwrap_or(&issue.field))?;
                Some(line_column(text, span.start))
            });
            ConfigError {
                file: file.to_owned(),
                line: position.map(|(line, _)| line),
                column: position.map(|(_, column)| column),
                field: issue.field.to_string(),
                reason: issue.reason,
            }
        })
        .collect();
    // Read top to bottom, like the file; errors with no position last.
    errors.sort_by_key(|error| (error.line.is_none(), error.line, error.column));
    ConfigErrors(errors)
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let resolve = |path: &mut PathBuf| {
        // An empty path is left alone so validation still reports it as empty.
        if !path.as_os_str().is_empty() && path.is_relative() {
            *path = base.join(&*path);
        }
    };
    if let Some(dir) = &mut config.pop.state_dir {
        resolve(dir);
    }
    if let Some(dir) = &mut config.cache.dir {
        resolve(dir);
    }
    let log = &mut config.log.access_log;
    if !matches!(log.as_str(), "stdout" | "off") && !log.trim().is_empty() {
        let mut path = PathBuf::from(&*log);
        resolve(&mut path);
        if let Some(resolved) = path.to_str() {
            *log = resolved.to_owned();
        }
    }
    for certificate in &mut config.certificates {
        resolve(&mut certificate.cert);
        resolve(&mut certificate.key);
    }
    for tls in config.pools.iter_mut().filter_map(|pool| pool.tls.as_mut()) {
        for file in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
            .into_iter()
            .flatten()
        {
            resolve(file);
        }
    }
}
