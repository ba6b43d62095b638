//! The WAF's custom rules: operator-written conditions on a request, evaluated by priority.
//! Pure decision logic: it reads request facts and returns a verdict, nothing else.
//!
//! Custom rules run first (by priority); then the managed rule set (`managed.rs`), unless a
//! custom rule allowed the request. Urlencoded, JSON and multipart request bodies are inspected
//! up to the site's body limit (`crate::body`), when the proxy buffered them.

pub mod managed;
pub mod transform;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderName;
use outpost_config::{WafAction, WafConditionConfig, WafRuleConfig};

use self::transform::Transform;
use crate::rate_limit::RequestFacts;

/// How much of a matched value the log keeps.
const MAX_LOGGED_VALUE: usize = 64;

#[derive(Debug, Clone)]
enum Target {
    Method,
    Path,
    Query,
    Args,
    Arg(String),
    Headers,
    Header(HeaderName),
    Cookies,
    Cookie(String),
    ClientIp,
    /// The body's text (as buffered, up to the body limit).
    Body,
    BodyArgs,
    BodyArg(String),
}

#[derive(Debug, Clone)]
enum Operator {
    Equals(Vec<String>),
    Prefix(Vec<String>),
    Contains(Vec<String>),
    Regex(regex::RegexSet),
    Cidr(Vec<ipnet::IpNet>),
    Gt(Vec<f64>),
    Lt(Vec<f64>),
    Eq(Vec<f64>),
}

#[derive(Debug, Clone)]
struct Condition {
    target: Target,
    operator: Operator,
    transforms: Vec<Transform>,
    negate: bool,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Arc<str>,
    pub action: WafAction,
    pub status: u16,
    pub body: Arc<str>,
    conditions: Vec<Condition>,
}

/// What matched, for the access log: where, and the value (truncated, secrets redacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: Arc<str>,
    pub action: WafAction,
    pub location: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Continue. `logged` lists detection-only hits.
    Pass { logged: Vec<Hit> },
    Block {
        hit: Hit,
        status: u16,
        body: Arc<str>,
        logged: Vec<Hit>,
    },
}

/// A site's compiled rules, sorted by priority, and its managed rule set.
#[derive(Default)]
pub struct Waf {
    rules: Vec<Rule>,
    managed: Option<managed::Managed>,
    body_limit: u64,
    body_oversize_blocks: bool,
    /// Some rule (or the managed set) looks at the body, so the proxy must buffer it.
    inspects_body: bool,
}

impl Waf {
    pub fn compile(
        configs: &[WafRuleConfig],
        managed_cfg: &outpost_config::ManagedWafConfig,
    ) -> Result<Self, String> {
        let managed = managed::Managed::compile(managed_cfg)?;
        let mut ordered: Vec<&WafRuleConfig> = configs.iter().collect();
        ordered.sort_by_key(|r| r.priority);
        let rules = ordered
            .into_iter()
            .map(|cfg| {
                let conditions = cfg
                    .conditions
                    .iter()
                    .map(compile_condition)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("waf_rule \"{}\": {e}", cfg.id))?;
                let body = cfg
                    .body
                    .clone()
                    .unwrap_or_else(|| format!("request blocked by rule {}\n", cfg.id));
                Ok(Rule {
                    id: cfg.id.as_str().into(),
                    action: cfg.action,
                    status: cfg.status,
                    body: body.into(),
                    conditions,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let inspects_body = managed.is_some()
            || rules.iter().any(|r| {
                r.conditions
                    .iter()
                    .any(|c| matches!(c.target, Target::Body | Target::BodyArgs | Target::BodyArg(_)))
            });
        Ok(Self {
            rules,
            managed,
            body_limit: managed_cfg.body_limit,
            body_oversize_blocks: managed_cfg.body_oversize == outpost_config::WafBodyOversize::Block,
            inspects_body,
        })
    }

    /// How many body bytes to buffer for inspection; None when no rule looks at bodies.
    pub fn body_limit(&self) -> Option<u64> {
        self.inspects_body.then_some(self.body_limit)
    }

    /// A body over the limit is refused (413) rather than inspected in part.
    pub fn body_oversize_blocks(&self) -> bool {
        self.body_oversize_blocks
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.managed.is_none()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Verdict {
        let mut logged = Vec::new();
        for rule in &self.rules {
            let Some((location, value)) = rule_matches(rule, facts) else {
                continue;
            };
            let hit = Hit {
                rule: rule.id.clone(),
                action: rule.action,
                value: loggable(&location, &value),
                location,
            };
            match rule.action {
                WafAction::Allow => return Verdict::Pass { logged },
                WafAction::Log => logged.push(hit),
                WafAction::Block => {
                    return Verdict::Block {
                        hit,
                        status: rule.status,
                        body: rule.body.clone(),
                        logged,
                    };
                }
            }
        }
        if let Some(managed) = &self.managed {
            if let Some(hit) = managed.evaluate(facts) {
                if hit.action == WafAction::Block {
                    return Verdict::Block {
                        hit,
                        status: managed.status,
                        body: Arc::from("request blocked by the WAF\n"),
                        logged,
                    };
                }
                logged.push(hit);
            }
        }
        Verdict::Pass { logged }
    }

    /// Ids and actions of every rule that can hit, for pre-resolving metrics.
    pub fn rule_ids(&self) -> Vec<(Arc<str>, WafAction)> {
        let mut ids: Vec<(Arc<str>, WafAction)> =
            self.rules.iter().map(|r| (r.id.clone(), r.action)).collect();
        if let Some(m) = &self.managed {
            ids.extend(m.rule_ids());
        }
        ids
    }
}

fn compile_condition(cfg: &WafConditionConfig) -> Result<Condition, String> {
    let target = match cfg.target.as_str() {
        "method" => Target::Method,
        "path" => Target::Path,
        "query" => Target::Query,
        "args" => Target::Args,
        "headers" => Target::Headers,
        "cookies" => Target::Cookies,
        "client_ip" => Target::ClientIp,
        "body" => Target::Body,
        "body_args" => Target::BodyArgs,
        t => {
            if let Some(name) = t.strip_prefix("arg:") {
                Target::Arg(name.to_owned())
            } else if let Some(name) = t.strip_prefix("header:") {
                Target::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{t}: {e}"))?)
            } else if let Some(name) = t.strip_prefix("cookie:") {
                Target::Cookie(name.to_owned())
            } else if let Some(name) = t.strip_prefix("body_arg:") {
                Target::BodyArg(name.to_owned())
            } else {
                return Err(format!("unknown target \"{t}\""));
            }
        }
    };
    let numbers = || -> Result<Vec<f64>, String> {
        cfg.values
            .iter()
            .map(|v| v.parse::<f64>().map_err(|_| format!("\"{v}\" is not a number")))
            .collect()
    };
    let operator = match cfg.operator.as_str() {
        "equals" => Operator::Equals(cfg.values.clone()),
        "prefix" => Operator::Prefix(cfg.values.clone()),
        "contains" => Operator::Contains(cfg.values.clone()),
        "regex" => Operator::Regex(regex::RegexSet::new(&cfg.values).map_err(|e| e.to_string())?),
        "cidr" => Operator::Cidr(
            cfg.values
                .iter()
                .map(|v| {
                    v.parse::<ipnet::IpNet>()
                        .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| format!("\"{v}\" is not an address or network"))
                })
                .collect::<Result<_, _>>()?,
        ),
        "gt" => Operator::Gt(numbers()?),
        "lt" => Operator::Lt(numbers()?),
        "eq" => Operator::Eq(numbers()?),
        other => return Err(format!("unknown operator \"{other}\"")),
    };
    let transforms = cfg
        .transforms
        .iter()
        .map(|t| Transform::parse(t))
        .collect::<Result<_, _>>()?;
    Ok(Condition {
        target,
        operator,
        transforms,
        negate: cfg.negate,
    })
}

/// All conditions must match; returns where the first non-negated one matched.
fn rule_matches(rule: &Rule, facts: &RequestFacts<'_>) -> Option<(String, String)> {
    let mut first: Option<(String, String)> = None;
    for cond in &rule.conditions {
        let found = condition_match(cond, facts);
        match (found, cond.negate) {
            (Some(hit), false) => {
                first.get_or_insert(hit);
            }
            (None, true) => {}
            _ => return None,
        }
    }
    first.or_else(|| Some(("request".to_owned(), String::new())))
}

/// The first item of the condition's target that its operator matches.
fn condition_match(cond: &Condition, facts: &RequestFacts<'_>) -> Option<(String, String)> {
    if let (Target::ClientIp, Operator::Cidr(nets)) = (&cond.target, &cond.operator) {
        return nets
            .iter()
            .any(|n| n.contains(&facts.client_ip))
            .then(|| ("client_ip".to_owned(), facts.client_ip.to_string()));
    }
    let mut result = None;
    for_each_item(&cond.target, facts, &mut |location, raw| {
        let mut value = Cow::Borrowed(raw);
        for t in &cond.transforms {
            value = t.apply(value);
        }
        if operator_matches(&cond.operator, &value) {
            result = Some((location(), value.into_owned()));
            return true;
        }
        false
    });
    result
}

fn operator_matches(op: &Operator, value: &str) -> bool {
    match op {
        Operator::Equals(vs) => vs.iter().any(|v| v == value),
        Operator::Prefix(vs) => vs.iter().any(|v| value.starts_with(v.as_str())),
        Operator::Contains(vs) => vs.iter().any(|v| value.contains(v.as_str())),
        Operator::Regex(set) => set.is_match(value),
        Operator::Cidr(nets) => value
            .parse::<IpAddr>()
            .is_ok_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        Operator::Gt(ns) => value
            .trim()
            .parse::<f64>()
            .is_ok_and(|x| ns.iter().any(|n| x > *n)),
        Operator::Lt(ns) => value
            .trim()
            .parse::<f64>()
            .is_ok_and(|x| ns.iter().any(|n| x < *n)),
        Operator::Eq(ns) => value.trim().parse::<f64>().is_ok_and(|x| ns.contains(&x)),
    }
}

/// Calls `visit(location, value)` for every value of `target` until it returns true.
fn for_each_item(
    target: &Target,
    facts: &RequestFacts<'_>,
    visit: &mut dyn FnMut(&dyn Fn() -> String, &str) -> bool,
) {
    match target {
        Target::Method => {
            visit(&|| "method".into(), facts.method.as_str());
        }
        Target::Path => {
            visit(&|| "path".into(), facts.path);
        }
        Target::Query => {
            visit(&|| "query".into(), facts.query.unwrap_or(""));
        }
        Target::ClientIp => {
            visit(&|| "client_ip".into(), &facts.client_ip.to_string());
        }
        Target::Args | Target::Arg(_) => {
            for (name, value) in form_urlencoded::parse(facts.query.unwrap_or("").as_bytes()) {
                if let Target::Arg(wanted) = target {
                    if *wanted != name {
                        continue;
                    }
                }
                if visit(&|| format!("arg:{name}"), &value) {
                    return;
                }
            }
        }
        Target::Body => {
            if let Some(body) = facts.body {
                visit(&|| "body".into(), &body.text);
            }
        }
        Target::BodyArgs | Target::BodyArg(_) => {
            for (name, value) in facts.body.map_or(&[][..], |b| &b.args[..]) {
                if let Target::BodyArg(wanted) = target {
                    if wanted != name {
                        continue;
                    }
                }
                if visit(&|| format!("body_arg:{name}"), value) {
                    return;
                }
            }
        }
        Target::Headers | Target::Header(_) => {
            for (name, value) in facts.headers {
                if let Target::Header(wanted) = target {
                    if wanted != name {
                        continue;
                    }
                }
                let value = crate::text(value.as_bytes());
                if visit(&|| format!("header:{name}"), &value) {
                    return;
                }
            }
        }
        Target::Cookies | Target::Cookie(_) => {
            crate::for_each_cookie(facts.headers, |name, value| {
                let wanted = match target {
                    Target::Cookie(wanted) => wanted == name,
                    _ => true,
                };
                wanted && visit(&|| format!("cookie:{name}"), value)
            });
        }
    }
}

/// Never log credentials; keep the rest short.
pub(crate) fn loggable(location: &str, value: &str) -> String {
    let secret = location.starts_with("cookie:")
        || matches!(
            location,
            "header:authorization" | "header:cookie" | "header:proxy-authorization"
        );
    if secret {
        return "[redacted]".to_owned();
    }
    let mut end = value.len().min(MAX_LOGGED_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

#[cfg(test)]
mod tests;
