use http::{HeaderMap, Method};
use outpost_config::{WafAction, WafConditionConfig, WafRuleConfig};

use super::*;

fn compile(rules: &[WafRuleConfig]) -> Result<Waf, String> {
    Waf::compile(rules, &outpost_config::ManagedWafConfig::default())
}

fn cond(target: &str, operator: &str, values: &[&str], transforms: &[&str]) -> WafConditionConfig {
    WafConditionConfig {
        target: target.into(),
        operator: operator.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        transforms: transforms.iter().map(|v| v.to_string()).collect(),
        negate: false,
    }
}

fn rule(id: &str, priority: u32, action: WafAction, conditions: Vec<WafConditionConfig>) -> WafRuleConfig {
    WafRuleConfig {
        id: id.into(),
        priority,
        action,
        status: 403,
        body: None,
        conditions,
    }
}

struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    ip: IpAddr,
}

fn req(method: Method, target: &str, headers: &[(&str, &str)], ip: &str) -> Req {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    Req {
        method,
        path,
        query,
        headers: h,
        ip: ip.parse().unwrap(),
    }
}

fn eval(waf: &Waf, r: &Req) -> Verdict {
    waf.evaluate(&RequestFacts {
        client_ip: r.ip,
        method: &r.method,
        path: &r.path,
        query: r.query.as_deref(),
        headers: &r.headers,
        body: None,
    })
}

fn blocked_by(v: &Verdict) -> Option<(&str, &str, &str)> {
    match v {
        Verdict::Block { hit, .. } => Some((&hit.rule, &hit.location, &hit.value)),
        Verdict::Pass { .. } => None,
    }
}

#[test]
fn every_operator_on_its_targets() {
    let waf = compile(&[
        rule(
            "m",
            1,
            WafAction::Block,
            vec![cond("method", "equals", &["TRACE"], &[])],
        ),
        rule(
            "p",
            2,
            WafAction::Block,
            vec![cond("path", "prefix", &["/wp-admin"], &[])],
        ),
        rule(
            "a",
            3,
            WafAction::Block,
            vec![cond(
                "arg:q",
                "contains",
                &["<script"],
                &["url_decode", "lowercase"],
            )],
        ),
        rule(
            "r",
            4,
            WafAction::Block,
            vec![cond("header:user-agent", "regex", &["(?i)sqlmap|nikto"], &[])],
        ),
        rule(
            "ip",
            5,
            WafAction::Block,
            vec![cond("client_ip", "cidr", &["203.0.113.0/24"], &[])],
        ),
        rule(
            "n",
            6,
            WafAction::Block,
            vec![cond("arg:page", "gt", &["1000"], &[])],
        ),
        rule(
            "c",
            7,
            WafAction::Block,
            vec![cond("cookie:role", "equals", &["admin"], &[])],
        ),
    ])
    .unwrap();
    let ok = "192.0.2.1";
    assert_eq!(
        blocked_by(&eval(&waf, &req(Method::TRACE, "/", &[], ok)))
            .unwrap()
            .0,
        "m"
    );
    assert_eq!(
        blocked_by(&eval(&waf, &req(Method::GET, "/wp-admin/x.php", &[], ok)))
            .unwrap()
            .0,
        "p"
    );
    let xss = eval(&waf, &req(Method::GET, "/search?q=%3CSCRIPT%3Ealert(1)", &[], ok));
    assert_eq!(blocked_by(&xss), Some(("a", "arg:q", "<script>alert(1)")));
    assert_eq!(
        blocked_by(&eval(
            &waf,
            &req(Method::GET, "/", &[("user-agent", "sqlmap/1.7")], ok)
        ))
        .unwrap()
        .0,
        "r"
    );
    assert_eq!(
        blocked_by(&eval(&waf, &req(Method::GET, "/", &[], "203.0.113.50")))
            .unwrap()
            .0,
        "ip"
    );
    assert_eq!(
        blocked_by(&eval(&waf, &req(Method::GET, "/list?page=5000", &[], ok)))
            .unwrap()
            .0,
        "n"
    );
    let cookie = eval(&waf, &req(Method::GET, "/", &[("cookie", "a=1; role=admin")], ok));
    assert_eq!(
        blocked_by(&cookie),
        Some(("c", "cookie:role", "[redacted]")),
        "cookie values never reach the log"
    );
    // Benign traffic that merely looks similar passes.
    for benign in [
        req(
            Method::GET,
            "/search?q=script+writing+tips",
            &[("user-agent", "Mozilla/5.0")],
            ok,
        ),
        req(Method::GET, "/list?page=12", &[], ok),
        req(Method::GET, "/wp-content/a.css", &[("cookie", "role=user")], ok),
    ] {
        assert_eq!(eval(&waf, &benign), Verdict::Pass { logged: vec![] });
    }
}

#[test]
fn priorities_allow_log_and_negation() {
    let mut allow = rule(
        "office",
        1,
        WafAction::Allow,
        vec![cond("client_ip", "cidr", &["198.51.100.0/24"], &[])],
    );
    allow.priority = 1;
    let mut admin = rule(
        "admin-only",
        10,
        WafAction::Block,
        vec![cond("path", "prefix", &["/admin"], &[])],
    );
    admin.status = 404;
    admin.body = Some("not here\n".into());
    let watch = rule(
        "watch",
        5,
        WafAction::Log,
        vec![cond("path", "contains", &["admin"], &[])],
    );
    let mut no_ua = cond("header:user-agent", "regex", &[".+"], &[]);
    no_ua.negate = true;
    let bots = rule("no-ua", 20, WafAction::Block, vec![no_ua]);
    // File order differs from priority order on purpose.
    let waf = compile(&[admin, bots, watch, allow]).unwrap();

    let from_office = eval(&waf, &req(Method::GET, "/admin", &[], "198.51.100.9"));
    assert_eq!(
        from_office,
        Verdict::Pass { logged: vec![] },
        "allow stops evaluation before any other rule"
    );
    match eval(
        &waf,
        &req(Method::GET, "/admin", &[("user-agent", "x")], "192.0.2.1"),
    ) {
        Verdict::Block {
            hit,
            status,
            body,
            logged,
        } => {
            assert_eq!((&*hit.rule, status, &*body), ("admin-only", 404, "not here\n"));
            assert_eq!(logged.len(), 1, "the log-only rule ran first and was recorded");
            assert_eq!(&*logged[0].rule, "watch");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        blocked_by(&eval(&waf, &req(Method::GET, "/", &[], "192.0.2.1")))
            .unwrap()
            .0,
        "no-ua"
    );
    assert!(matches!(
        eval(
            &waf,
            &req(Method::GET, "/", &[("user-agent", "curl")], "192.0.2.1")
        ),
        Verdict::Pass { .. }
    ));
}

#[test]
fn conditions_are_anded_and_values_ored() {
    let waf = compile(&[rule(
        "post-login",
        1,
        WafAction::Block,
        vec![
            cond("method", "equals", &["POST", "PUT"], &[]),
            cond("path", "equals", &["/login"], &[]),
        ],
    )])
    .unwrap();
    assert!(blocked_by(&eval(&waf, &req(Method::PUT, "/login", &[], "192.0.2.1"))).is_some());
    assert!(blocked_by(&eval(&waf, &req(Method::GET, "/login", &[], "192.0.2.1"))).is_none());
    assert!(blocked_by(&eval(&waf, &req(Method::POST, "/logout", &[], "192.0.2.1"))).is_none());
}

#[test]
fn long_values_are_truncated_in_hits() {
    let waf = compile(&[rule(
        "big",
        1,
        WafAction::Block,
        vec![cond("query", "contains", &["x"], &[])],
    )])
    .unwrap();
    let long = format!("/?{}", "x".repeat(500));
    let verdict = eval(&waf, &req(Method::GET, &long, &[], "192.0.2.1"));
    let (_, _, value) = blocked_by(&verdict).unwrap();
    assert_eq!(value.len(), 64);
}

#[test]
fn bad_rules_are_refused_with_their_id() {
    let err = compile(&[rule(
        "broken",
        1,
        WafAction::Block,
        vec![cond("path", "regex", &["(unclosed"], &[])],
    )])
    .err()
    .expect("the rule must be refused");
    assert!(err.contains("waf_rule \"broken\""), "{err}");
}

#[test]
fn managed_rules_detect_block_and_honour_exclusions() {
    use outpost_config::{ManagedWafConfig, WafExclusionConfig, WafMode};
    let sqli = req(
        Method::GET,
        "/search?q=1%27%20union%20select%20password%20from%20users--",
        &[],
        "192.0.2.1",
    );
    let block = Waf::compile(
        &[],
        &ManagedWafConfig {
            mode: WafMode::Block,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        blocked_by(&eval(&block, &sqli)).map(|b| (b.0.to_owned(), b.1.to_owned())),
        Some(("sqli-union".to_owned(), "arg:q".to_owned()))
    );
    let detect = Waf::compile(
        &[],
        &ManagedWafConfig {
            mode: WafMode::Detect,
            ..Default::default()
        },
    )
    .unwrap();
    match eval(&detect, &sqli) {
        Verdict::Pass { logged } => assert_eq!(&*logged[0].rule, "sqli-union"),
        other => panic!("{other:?}"),
    }
    let excluded = ManagedWafConfig {
        mode: WafMode::Block,
        exclusions: vec![WafExclusionConfig {
            rule: "sqli".into(),
            path_prefix: Some("/search".into()),
            arg: Some("q".into()),
        }],
        ..Default::default()
    };
    let waf = Waf::compile(&[], &excluded).unwrap();
    assert!(
        blocked_by(&eval(&waf, &sqli)).is_none(),
        "excluded for q under /search"
    );
    let elsewhere = req(
        Method::GET,
        "/other?q=1%27%20union%20select%201--",
        &[],
        "192.0.2.1",
    );
    assert!(
        blocked_by(&eval(&waf, &elsewhere)).is_some(),
        "still active on other paths"
    );
    // A custom allow rule skips the managed rules too.
    let allow = rule(
        "trusted",
        1,
        WafAction::Allow,
        vec![cond("client_ip", "cidr", &["192.0.2.0/24"], &[])],
    );
    let waf = Waf::compile(
        &[allow],
        &ManagedWafConfig {
            mode: WafMode::Block,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(blocked_by(&eval(&waf, &sqli)).is_none());
}

#[test]
fn managed_rules_find_scanners_in_header_names_and_agents_and_name_where() {
    use outpost_config::{ManagedWafConfig, WafExclusionConfig, WafMode};
    let block = ManagedWafConfig {
        mode: WafMode::Block,
        ..Default::default()
    };
    let waf = Waf::compile(&[], &block).unwrap();
    let browser = [
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
        ("accept", "text/html"),
        ("referer", "https://example.com/a?b=c"),
        ("cookie", "session=abc; theme=dark"),
    ];
    assert!(blocked_by(&eval(
        &waf,
        &req(Method::GET, "/index.html?page=2", &browser, "192.0.2.1")
    ))
    .is_none());

    // The scanner's own header is found among benign ones and named in the hit.
    let mut headers = browser.to_vec();
    headers.insert(2, ("acunetix-aspect", "enabled"));
    let scan = req(Method::GET, "/index.html", &headers, "192.0.2.1");
    assert_eq!(
        blocked_by(&eval(&waf, &scan)).map(|b| (b.0, b.1)),
        Some(("scanner-user-agent", "header:acunetix-aspect"))
    );
    for (agent, rule, why) in [
        (
            "Mozilla/5.0 (compatible; NI%6BTO/2.5)",
            "scanner-user-agent",
            "a scanner's agent, in any case and percent-encoded",
        ),
        (
            "x' UNION Select password FROM users--",
            "sqli-union",
            "an injection in the agent",
        ),
    ] {
        let r = req(Method::GET, "/", &[("user-agent", agent)], "192.0.2.1");
        assert_eq!(
            blocked_by(&eval(&waf, &r)).map(|b| (b.0, b.1)),
            Some((rule, "header:user-agent")),
            "{why}"
        );
    }

    let excluded = Waf::compile(
        &[],
        &ManagedWafConfig {
            exclusions: vec![WafExclusionConfig {
                rule: "scanner-user-agent".into(),
                path_prefix: Some("/index".into()),
                arg: None,
            }],
            ..block
        },
    )
    .unwrap();
    assert!(
        blocked_by(&eval(&excluded, &scan)).is_none(),
        "excluded under /index"
    );
}

#[test]
fn managed_rules_find_what_sits_at_a_values_edges_or_behind_comments_and_quotes() {
    use outpost_config::{ManagedWafConfig, WafMode};
    // A request's values are first scanned together; a signature anchored at the start or
    // end of a value must still fire when that value sits between others.
    let waf = Waf::compile(
        &[],
        &ManagedWafConfig {
            mode: WafMode::Block,
            ..Default::default()
        },
    )
    .unwrap();
    let ua = [("user-agent", "Mozilla/5.0"), ("accept", "*/*")];
    for (target, headers, rule, location) in [
        (
            "/a?x=1&file=..%2F..%2Fsecret&y=2",
            &ua[..],
            "traversal-dot-dot",
            "arg:file",
        ),
        (
            "/a?x=1&id=1%27%20order%20by%203&y=2",
            &ua[..],
            "sqli-order-by-probe",
            "arg:id",
        ),
        ("/backup/site.sql?x=1", &ua[..], "scanner-backup-file", "path"),
        (
            "/a?x=1",
            &[
                ("user-agent", "Mozilla/5.0"),
                ("cookie", "a=1; q=1 union/**/select pw; b=2"),
            ][..],
            "sqli-union",
            "cookie:q",
        ),
        (
            "/a?cmd=x%3Bc%27a%27t%20notes.txt&y=2",
            &ua[..],
            "cmdi-chained",
            "arg:cmd",
        ),
    ] {
        let r = req(Method::GET, target, headers, "192.0.2.1");
        assert_eq!(
            blocked_by(&eval(&waf, &r)).map(|b| (b.0, b.1)),
            Some((rule, location)),
            "{target}"
        );
    }
}

fn eval_body(waf: &Waf, r: &Req, body: &crate::body::RequestBody) -> Verdict {
    waf.evaluate(&RequestFacts {
        client_ip: r.ip,
        method: &r.method,
        path: &r.path,
        query: r.query.as_deref(),
        headers: &r.headers,
        body: Some(body),
    })
}

#[test]
fn body_targets_and_body_args_in_the_managed_set() {
    use crate::body::{BodyKind, RequestBody};
    let json = RequestBody::parse(
        &BodyKind::Json,
        br#"{"user":{"bio":"<script>x</script>","role":"admin"}}"#,
        false,
    );
    let r = req(Method::POST, "/api/profile", &[], "192.0.2.1");

    let waf = compile(&[rule(
        "no-admins",
        1,
        WafAction::Block,
        vec![cond("body_arg:user.role", "equals", &["admin"], &[])],
    )])
    .unwrap();
    assert_eq!(waf.body_limit(), Some(64 * 1024), "a body rule asks for the body");
    assert_eq!(
        blocked_by(&eval_body(&waf, &r, &json)),
        Some(("no-admins", "body_arg:user.role", "admin"))
    );
    assert_eq!(blocked_by(&eval(&waf, &r)), None, "no body, no match");
    let raw = compile(&[rule(
        "raw",
        1,
        WafAction::Block,
        vec![cond("body", "contains", &["\"role\""], &[])],
    )])
    .unwrap();
    assert_eq!(blocked_by(&eval_body(&raw, &r, &json)).map(|b| b.1), Some("body"));
    let headers_only = compile(&[rule(
        "h",
        1,
        WafAction::Block,
        vec![cond("header:x", "equals", &["1"], &[])],
    )])
    .unwrap();
    assert_eq!(
        headers_only.body_limit(),
        None,
        "no rule needs the body: stream it"
    );

    let managed = |exclusions| {
        Waf::compile(
            &[],
            &outpost_config::ManagedWafConfig {
                mode: outpost_config::WafMode::Block,
                exclusions,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let waf = managed(vec![]);
    assert_eq!(
        blocked_by(&eval_body(&waf, &r, &json)).map(|b| (b.0, b.1)),
        Some(("xss-script-tag", "body_arg:user.bio"))
    );
    let waf = managed(vec![outpost_config::WafExclusionConfig {
        rule: "xss".into(),
        path_prefix: None,
        arg: Some("user.bio".into()),
    }]);
    assert_eq!(
        blocked_by(&eval_body(&waf, &r, &json)),
        None,
        "exclusions by argument name cover body arguments"
    );
}
