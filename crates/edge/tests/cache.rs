//! The cache against RFC 9111 / RFC 5861, rule by rule, through the real proxy stack: a PoP on
//! loopback in front of a scripted origin that counts what reaches it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// How the scripted origin answers one path. `{n}` in the body becomes the hit count.
#[derive(Clone, Default)]
struct Route {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
    /// Answer 304 when the request's If-None-Match carries this ETag.
    etag_304: Option<&'static str>,
    /// The 304's fields, when they are not `headers`.
    headers_304: Option<Vec<(&'static str, String)>>,
}

fn route(status: u16, headers: &[(&'static str, &str)], body: &str) -> Route {
    Route {
        status,
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        body: body.to_owned(),
        ..Default::default()
    }
}

/// A 200 route whose answers carry `etag`, and that answers 304 to a request naming it.
fn validated_route(cache_control: &str, etag: &'static str, body: &str) -> Route {
    let mut r = route(200, &[("cache-control", cache_control), ("etag", etag)], body);
    r.etag_304 = Some(etag);
    r
}

#[derive(Clone, Default)]
struct Scripted {
    addr: Option<SocketAddr>,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// Requests being answered now, and the most at once.
    busy: Arc<Mutex<(usize, usize)>>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Scripted {
    async fn start() -> Self {
        Self::start_dated(true).await
    }

    /// An origin whose responses carry a Date only where a route sets one (hyper adds one
    /// to every response otherwise).
    async fn start_without_date() -> Self {
        Self::start_dated(false).await
    }

    async fn start_dated(auto_date: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = Self {
            addr: Some(listener.local_addr().unwrap()),
            ..Default::default()
        };
        let shared = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.answer(req).await) }
                    });
                    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http1().auto_date_header(auto_date);
                    builder.http2().auto_date_header(auto_date);
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        me
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    fn set(&self, path: &str, r: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), r);
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn last_request(&self, path: &str) -> HeaderMap {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .unwrap_or_default()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let route_key = req.uri().path().to_owned();
        let n = {
            let mut hits = self.hits.lock().unwrap();
            let n = hits.entry(route_key.clone()).or_default();
            *n += 1;
            *n
        };
        self.seen
            .lock()
            .unwrap()
            .push((route_key.clone(), req.headers().clone()));
        let r = self.routes.lock().unwrap().get(&route_key).cloned();
        let Some(r) = r else {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::from(format!("no route {path}"))))
                .unwrap();
        };
        if !r.delay.is_zero() {
            {
                let mut b = self.busy.lock().unwrap();
                b.0 += 1;
                b.1 = b.1.max(b.0);
            }
            tokio::time::sleep(r.delay).await;
            self.busy.lock().unwrap().0 -= 1;
        }
        let inm = req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut b = Response::builder();
        let status = match r.etag_304 {
            Some(tag) if inm.contains(tag) => 304,
            _ => r.status,
        };
        b = b.status(status);
        let headers = match &r.headers_304 {
            Some(h) if status == 304 => h,
            _ => &r.headers,
        };
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let body = if status == 304 {
            String::new()
        } else {
            r.body.replace("{n}", &n.to_string())
        };
        b.body(Full::new(Bytes::from(body))).unwrap()
    }
}

async fn pop(origin: &Scripted, site_cache: &str) -> (TempDir, outpost_edge::Edge, SocketAddr) {
    pop_with(origin, "", site_cache).await
}

async fn pop_with(
    origin: &Scripted,
    top: &str,
    site_cache: &str,
) -> (TempDir, outpost_edge::Edge, SocketAddr) {
    let dir = TempDir::new("cache");
    let mut toml = pop_config(top, "", &[(origin.url(), false)]);
    toml.push_str(&format!("[site.cache]\n{site_cache}\n"));
    // [site.cache] must follow the [[site]] table: move it there.
    let toml = toml.replacen("[[pool]]", &format!("[site.cache]\n{site_cache}\n[[pool]]"), 1);
    let toml = toml
        .rsplit_once("[site.cache]")
        .map(|(a, _)| a.to_owned())
        .unwrap_or(toml);
    let edge = start_edge(&dir, &toml).await;
    let addr = edge.listener_addr("http").unwrap();
    (dir, edge, addr)
}

async fn req(addr: SocketAddr, method: http::Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "www.test");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        http1_client().request(b.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("timed out")
    .expect("request failed");
    collect(resp).await
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    req(addr, http::Method::GET, path, &[]).await
}

fn cache_status(a: &Answer) -> String {
    a.headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Fails unless `a` came from the cache (`what` names the case in the message).
#[track_caller]
fn assert_hit(a: &Answer, what: &str) {
    let status = cache_status(a);
    assert!(status.starts_with("Outpost; hit"), "{what}: {status}");
}

#[tokio::test]
async fn fresh_responses_are_served_from_cache_with_age() {
    let o = Scripted::start().await;
    o.set("/a", route(200, &[("cache-control", "max-age=60")], "a{n}"));
    o.set(
        "/s",
        route(200, &[("cache-control", "max-age=0, s-maxage=60")], "s{n}"),
    );
    let d = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    o.set("/e", route(200, &[("expires", d.as_str())], "e{n}"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    for path in ["/a", "/s", "/e"] {
        let first = get(addr, path).await;
        assert!(
            cache_status(&first).contains("fwd=miss; stored"),
            "{path}: {}",
            cache_status(&first)
        );
        let second = get(addr, path).await;
        assert_eq!(second.body, first.body, "{path}");
        assert_hit(&second, path);
        assert!(
            second.headers.contains_key("age"),
            "{path}: a cached response carries Age"
        );
        assert_eq!(o.hits(path), 1, "{path}: the origin saw one request");
    }
}

#[tokio::test]
async fn cache_everything_overrides_the_origin_but_never_shares_an_authorized_answer() {
    let o = Scripted::start().await;
    o.set(
        "/private",
        route(200, &[("cache-control", "private, max-age=60")], "p{n}"),
    );
    o.set("/bare", route(200, &[], "b{n}"));
    // An API that answers each user with their own data and no cache headers.
    o.set("/me", route(200, &[], "me{n}"));
    let (_dir, _edge, addr) = pop(&o, "cache_everything = true\ndefault_ttl = \"1m\"").await;
    for path in ["/private", "/bare"] {
        let first = get(addr, path).await;
        let second = get(addr, path).await;
        assert_eq!(second.body, first.body, "{path}");
        assert_hit(&second, path);
        assert_eq!(o.hits(path), 1, "{path}");
    }
    let as_user = |credentials: &'static str| async move {
        req(addr, http::Method::GET, "/me", &[("authorization", credentials)]).await
    };
    let alice = as_user("Bearer alice").await;
    let bob = as_user("Bearer bob").await;
    assert_eq!(alice.body, "me1");
    assert_eq!(bob.body, "me2", "bob got alice's answer");
    let anonymous = get(addr, "/me").await;
    assert_eq!(anonymous.body, "me3", "an authorized answer was stored");
}

/// RFC 9213: `CDN-Cache-Control` (and Outpost's own `Outpost-CDN-Cache-Control` before it)
/// governs the PoP in place of Cache-Control and Expires, which are left to the caches
/// downstream; a field that is not a valid Structured Field dictionary is ignored.
#[tokio::test]
async fn cdn_cache_control_governs_the_pop_and_cache_control_the_browsers() {
    let o = Scripted::start().await;
    // Browsers must not store it, the PoP keeps it a minute.
    o.set(
        "/cdn-longer",
        route(
            200,
            &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")],
            "a{n}",
        ),
    );
    // Browsers may keep it a minute, the PoP must not store it; nor does an Expires count.
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    o.set(
        "/cdn-no-store",
        route(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("expires", later.as_str()),
                ("cdn-cache-control", "no-store"),
            ],
            "b{n}",
        ),
    );
    // Outpost's own field comes first on the target list, and stays at the PoP.
    o.set(
        "/own-field",
        route(
            200,
            &[
                ("cdn-cache-control", "no-store"),
                ("outpost-cdn-cache-control", "max-age=60"),
            ],
            "c{n}",
        ),
    );
    // Outpost's own no-store: not stored, and the field is kept from the client all the same.
    o.set(
        "/own-no-store",
        route(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("outpost-cdn-cache-control", "no-store"),
            ],
            "f{n}",
        ),
    );
    // An Expires beside a targeted field does not count: no lifetime, so revalidate each time.
    o.set(
        "/expires-ignored",
        route(
            200,
            &[
                ("expires", later.as_str()),
                ("cdn-cache-control", "must-revalidate"),
            ],
            "g{n}",
        ),
    );
    // Not a Structured Field dictionary (an unterminated string): ignored, Cache-Control rules.
    o.set(
        "/invalid",
        route(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60, x=\""),
            ],
            "d{n}",
        ),
    );
    // `none` (RFC 9213 §3.1): not empty, so it stands in for Cache-Control's no-store; with
    // a Last-Modified the PoP gives the response a heuristic lifetime.
    o.set(
        "/none",
        route(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "none"),
                ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ],
            "e{n}",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;

    for path in ["/cdn-longer", "/own-field", "/none"] {
        let first = get(addr, path).await;
        assert!(
            !first.headers.contains_key("outpost-cdn-cache-control"),
            "{path}: Outpost's own field is not forwarded on a miss"
        );
        let second = get(addr, path).await;
        assert_hit(&second, path);
        assert_eq!(second.body, first.body, "{path}");
        assert_eq!(o.hits(path), 1, "{path}: the origin saw one request");
    }
    let hit = get(addr, "/cdn-longer").await;
    assert_eq!(
        hit.headers.get("cache-control").unwrap(),
        "no-store",
        "Cache-Control reaches the browser as the origin sent it"
    );
    assert_eq!(
        hit.headers.get("cdn-cache-control").unwrap(),
        "max-age=60",
        "CDN-Cache-Control is forwarded for CDN caches downstream"
    );
    let own = get(addr, "/own-field").await;
    assert!(
        !own.headers.contains_key("outpost-cdn-cache-control"),
        "Outpost's own field is not forwarded"
    );
    assert_eq!(own.headers.get("cdn-cache-control").unwrap(), "no-store");

    for path in ["/cdn-no-store", "/invalid", "/own-no-store"] {
        let a = get(addr, path).await;
        assert!(!a.headers.contains_key("outpost-cdn-cache-control"), "{path}");
        assert!(
            cache_status(&a).contains("detail="),
            "{path}: {}",
            cache_status(&a)
        );
        get(addr, path).await;
        assert_eq!(o.hits(path), 2, "{path}: not stored");
    }
    get(addr, "/expires-ignored").await;
    let again = get(addr, "/expires-ignored").await;
    assert!(!cache_status(&again).contains("hit"), "{}", cache_status(&again));
    assert_eq!(o.hits("/expires-ignored"), 2, "stale at once: revalidated");
    // Where the cache takes no part (an unsafe method), the field stays at the PoP too.
    let post = req(addr, http::Method::POST, "/own-field", &[]).await;
    assert_eq!(post.status, 200);
    assert!(!post.headers.contains_key("outpost-cdn-cache-control"));
}

#[tokio::test]
async fn what_a_shared_cache_must_not_store_reaches_the_origin_every_time() {
    let o = Scripted::start().await;
    o.set(
        "/no-store",
        route(200, &[("cache-control", "max-age=60, no-store")], "x"),
    );
    o.set(
        "/private",
        route(200, &[("cache-control", "max-age=60, private")], "x"),
    );
    o.set(
        "/cookie",
        route(
            200,
            &[
                ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
                ("set-cookie", "a=b"),
            ],
            "x",
        ),
    );
    o.set(
        "/vary-star",
        route(200, &[("cache-control", "max-age=60"), ("vary", "*")], "x"),
    );
    o.set("/post", route(200, &[("cache-control", "max-age=60")], "x"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    for path in ["/no-store", "/private", "/cookie", "/vary-star"] {
        let a = get(addr, path).await;
        assert!(
            cache_status(&a).contains("detail="),
            "{path}: {}",
            cache_status(&a)
        );
        get(addr, path).await;
        assert_eq!(o.hits(path), 2, "{path}");
    }
    let auth = [("authorization", "Bearer x")];
    req(addr, http::Method::GET, "/post", &auth).await;
    req(addr, http::Method::GET, "/post", &auth).await;
    assert_eq!(
        o.hits("/post"),
        2,
        "a request with Authorization is not stored without public/s-maxage"
    );
}

#[tokio::test]
async fn a_response_setting_a_cookie_is_stored_only_when_the_origin_shares_it() {
    let o = Scripted::start().await;
    let shared = [("cache-control", "max-age=60"), ("set-cookie", "a=b")];
    o.set("/shared", route(200, &shared, "x"));
    o.set(
        "/private-field",
        route(
            200,
            &[
                ("cache-control", "max-age=60, private=\"set-cookie\""),
                ("set-cookie", "a=b"),
            ],
            "x",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    get(addr, "/shared").await;
    let hit = get(addr, "/shared").await;
    assert_hit(&hit, "");
    assert_eq!(
        hit.headers["set-cookie"], "a=b",
        "RFC 9111 §7.3: the stored cookie is replayed"
    );
    assert_eq!(o.hits("/shared"), 1);

    let first = get(addr, "/private-field").await;
    assert_eq!(
        first.headers["set-cookie"], "a=b",
        "the fetching client gets its cookie"
    );
    let hit = get(addr, "/private-field").await;
    assert_hit(&hit, "");
    assert!(
        !hit.headers.contains_key("set-cookie"),
        "private=\"set-cookie\" keeps the cookie out of the stored copy"
    );
    assert_eq!(o.hits("/private-field"), 1);

    let never = Scripted::start().await;
    never.set("/shared", route(200, &shared, "x"));
    let (_dir2, _edge2, addr2) = pop(&never, "store_set_cookie = false").await;
    for _ in 0..2 {
        let a = get(addr2, "/shared").await;
        assert_eq!(a.headers["set-cookie"], "a=b");
        assert!(
            cache_status(&a).contains("detail=set-cookie"),
            "{}",
            cache_status(&a)
        );
    }
    assert_eq!(
        never.hits("/shared"),
        2,
        "store_set_cookie = false stores no cookie"
    );
}

#[tokio::test]
async fn authorization_is_cached_when_the_origin_says_shared() {
    let o = Scripted::start().await;
    o.set("/shared", route(200, &[("cache-control", "s-maxage=60")], "x"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    let auth = [("authorization", "Bearer x")];
    req(addr, http::Method::GET, "/shared", &auth).await;
    req(addr, http::Method::GET, "/shared", &auth).await;
    assert_eq!(o.hits("/shared"), 1);
}

#[tokio::test]
async fn no_cache_revalidates_every_time_with_the_stored_validator() {
    let o = Scripted::start().await;
    o.set("/nc", validated_route("no-cache", "\"v1\"", "body{n}"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    assert_eq!(get(addr, "/nc").await.body, "body1");
    let again = get(addr, "/nc").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, "body1", "the 304 let the stored body answer");
    assert!(
        cache_status(&again).contains("fwd-status=304"),
        "{}",
        cache_status(&again)
    );
    assert_eq!(o.hits("/nc"), 2);
    assert_eq!(o.last_request("/nc")["if-none-match"], "\"v1\"");
}

#[tokio::test]
async fn a_revalidated_response_is_as_old_as_the_304_not_as_the_stored_response() {
    let o = Scripted::start().await;
    let mut r = validated_route("max-age=10", "\"v1\"", "aged{n}");
    r.headers.push(("age", "20".to_owned()));
    // Like most origins, the 304 carries no Age: it is new.
    r.headers_304 = Some(vec![
        ("cache-control", "max-age=10".to_owned()),
        ("etag", "\"v1\"".to_owned()),
    ]);
    o.set("/aged", r);
    let (_dir, _edge, addr) = pop(&o, "").await;
    let stored = get(addr, "/aged").await;
    assert!(
        cache_status(&stored).contains("stored"),
        "{}",
        cache_status(&stored)
    );
    let revalidated = get(addr, "/aged").await;
    assert!(
        cache_status(&revalidated).contains("fwd-status=304"),
        "stale on arrival (Age 20 > max-age 10): {}",
        cache_status(&revalidated)
    );
    let again = get(addr, "/aged").await;
    assert_hit(&again, "fresh for 10 s after the 304");
    assert_eq!(again.body, "aged1");
    assert_eq!(o.hits("/aged"), 2);
}

#[tokio::test]
async fn a_304_without_date_is_dated_when_it_arrives_not_when_the_stored_response_was() {
    let o = Scripted::start_without_date().await;
    let mut r = validated_route("max-age=2", "\"v1\"", "dated{n}");
    r.headers
        .push(("date", httpdate::fmt_http_date(std::time::SystemTime::now())));
    // Neither Date nor Age: the 304 is new, and the cache must date it itself (RFC 9110
    // §6.6.1), not leave the stored response's Date on the refreshed one.
    r.headers_304 = Some(vec![
        ("cache-control", "max-age=2".to_owned()),
        ("etag", "\"v1\"".to_owned()),
    ]);
    o.set("/dated", r);
    let (_dir, _edge, addr) = pop(&o, "").await;
    let stored = get(addr, "/dated").await;
    assert!(
        cache_status(&stored).contains("stored"),
        "{}",
        cache_status(&stored)
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let revalidated = get(addr, "/dated").await;
    assert!(
        cache_status(&revalidated).contains("fwd-status=304"),
        "stale after 2.1 s: {}",
        cache_status(&revalidated)
    );
    let before = std::time::SystemTime::now() - Duration::from_secs(2);
    let again = get(addr, "/dated").await;
    assert_hit(&again, "fresh for 2 s after the 304");
    assert_eq!(again.body, "dated1");
    assert_eq!(o.hits("/dated"), 2);
    let date = httpdate::parse_http_date(again.headers["date"].to_str().unwrap()).unwrap();
    assert!(date >= before, "the refreshed response kept the old Date");
    assert!(
        again.headers["age"].to_str().unwrap().parse::<u64>().unwrap() <= 1,
        "{:?}",
        again.headers["age"]
    );
}

#[tokio::test]
async fn a_response_stored_without_date_keeps_the_date_of_its_arrival() {
    let o = Scripted::start_without_date().await;
    o.set("/undated", route(200, &[("cache-control", "max-age=60")], "u{n}"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    let stored = get(addr, "/undated").await;
    assert!(
        cache_status(&stored).contains("stored"),
        "{}",
        cache_status(&stored)
    );
    let dated = stored.headers["date"].clone();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let hit = get(addr, "/undated").await;
    assert_hit(&hit, "max-age=60");
    assert_eq!(
        hit.headers["date"], dated,
        "a hit carries the Date the response was stored with, not the time of the hit"
    );
    let age: u64 = hit.headers["age"].to_str().unwrap().parse().unwrap();
    assert!((2..=4).contains(&age), "Age {age}");
}

#[tokio::test]
async fn a_304_is_stored_only_if_the_merged_response_may_be_and_under_its_new_vary() {
    let o = Scripted::start().await;
    let month_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 86_400);
    let month_ago = httpdate::fmt_http_date(month_ago);
    // Last-Modified a month ago: without the max-age, the merged response would be
    // heuristically fresh for a day.
    for (path, says) in [("/no-store", "no-store"), ("/private", "private")] {
        let mut r = validated_route("max-age=1", "\"v1\"", "body{n}");
        r.headers.push(("last-modified", month_ago.clone()));
        r.headers_304 = Some(vec![
            ("cache-control", says.to_owned()),
            ("etag", "\"v1\"".to_owned()),
        ]);
        o.set(path, r);
    }
    let mut r = validated_route("max-age=1", "\"v1\"", "lang{n}");
    r.headers_304 = Some(vec![
        ("cache-control", "max-age=600".to_owned()),
        ("etag", "\"v1\"".to_owned()),
        ("vary", "accept-language".to_owned()),
    ]);
    o.set("/vary", r);
    let (_dir, _edge, addr) = pop(&o, "").await;
    for path in ["/no-store", "/private", "/vary"] {
        get(addr, path).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;

    for (path, says) in [("/no-store", "no-store"), ("/private", "private")] {
        let revalidated = get(addr, path).await;
        assert!(
            cache_status(&revalidated).contains("fwd-status=304"),
            "{path}: {}",
            cache_status(&revalidated)
        );
        assert_eq!(
            revalidated.body, "body1",
            "{path}: this client gets the validated body"
        );
        assert_eq!(revalidated.headers["cache-control"], says, "{path}");
        let after = get(addr, path).await;
        assert!(
            !cache_status(&after).contains("hit"),
            "{path}: {}",
            cache_status(&after)
        );
        assert_eq!(o.hits(path), 3, "{path}: the stored copy is gone");
    }

    let lang = |l: &'static str| [("accept-language", l)];
    let en = req(addr, http::Method::GET, "/vary", &lang("en")).await;
    assert!(
        cache_status(&en).contains("fwd-status=304"),
        "{}",
        cache_status(&en)
    );
    assert_hit(&req(addr, http::Method::GET, "/vary", &lang("en")).await, "en");
    let fr = req(addr, http::Method::GET, "/vary", &lang("fr")).await;
    assert!(!cache_status(&fr).contains("hit"), "{}", cache_status(&fr));
    assert_eq!(o.hits("/vary"), 3, "fr is not the variant the 304 refreshed");
}

#[tokio::test]
async fn vary_keeps_a_variant_per_request_value() {
    let o = Scripted::start().await;
    o.set(
        "/v",
        route(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            "v{n}",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let a = req(addr, http::Method::GET, "/v", &en).await;
    let b = req(addr, http::Method::GET, "/v", &fr).await;
    assert_ne!(a.body, b.body);
    assert_eq!(req(addr, http::Method::GET, "/v", &en).await.body, a.body);
    assert_eq!(req(addr, http::Method::GET, "/v", &fr).await.body, b.body);
    assert_eq!(o.hits("/v"), 2);
}

#[tokio::test]
async fn head_range_and_conditional_requests_are_answered_from_a_stored_get() {
    let o = Scripted::start().await;
    o.set(
        "/r",
        route(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"e1\"")],
            "0123456789",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    get(addr, "/r").await;
    let head = req(addr, http::Method::HEAD, "/r", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-length"], "10");
    assert!(head.body.is_empty());
    let range = req(addr, http::Method::GET, "/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.body, "2345");
    assert_eq!(range.headers["content-range"], "bytes 2-5/10");
    let bad = req(addr, http::Method::GET, "/r", &[("range", "bytes=20-")]).await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let cond = req(addr, http::Method::GET, "/r", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cond.headers["etag"], "\"e1\"");
    assert_eq!(o.hits("/r"), 1, "all of it from the one stored response");
}

#[tokio::test]
async fn successful_unsafe_methods_invalidate_the_target_and_its_location() {
    let o = Scripted::start().await;
    o.set("/doc", route(200, &[("cache-control", "max-age=60")], "doc{n}"));
    o.set(
        "/other",
        route(200, &[("cache-control", "max-age=60")], "other{n}"),
    );
    o.set("/form", route(201, &[("location", "/other")], "created"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    get(addr, "/doc").await;
    get(addr, "/other").await;
    req(addr, http::Method::POST, "/doc", &[]).await;
    assert_eq!(get(addr, "/doc").await.body, "doc3", "POST /doc invalidated /doc");
    req(addr, http::Method::POST, "/form", &[]).await;
    assert_eq!(
        get(addr, "/other").await.body,
        "other2",
        "Location: /other was invalidated"
    );
    // A Location on another host is not (RFC 9111 §4.4: one site must not be able to empty
    // another's cache entries), though this PoP caches that host too.
    o.set(
        "/away",
        route(201, &[("location", "http://elsewhere.test/other")], "created"),
    );
    let elsewhere = |path: &'static str| async move {
        req(addr, http::Method::GET, path, &[("host", "elsewhere.test")]).await
    };
    let stored = elsewhere("/other").await;
    req(addr, http::Method::POST, "/away", &[]).await;
    let again = elsewhere("/other").await;
    assert_eq!(
        again.body, stored.body,
        "Location on another host invalidated its entry"
    );
    assert_hit(&again, "");
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_once_and_refreshes_in_the_background() {
    let o = Scripted::start().await;
    o.set(
        "/swr",
        route(
            200,
            &[("cache-control", "max-age=1, stale-while-revalidate=60")],
            "swr{n}",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    assert_eq!(get(addr, "/swr").await.body, "swr1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let stale = get(addr, "/swr").await;
    assert_eq!(stale.body, "swr1", "served stale at once");
    assert!(
        cache_status(&stale).contains("stale-while-revalidate"),
        "{}",
        cache_status(&stale)
    );
    assert!(
        eventually(Duration::from_secs(5), || o.hits("/swr") == 2).await,
        "refreshed in the background"
    );
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            get(addr, "/swr").await.body == "swr2"
        })
        .await,
        "the refreshed response replaced the stale one"
    );
    assert_eq!(o.hits("/swr"), 2);
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails_or_is_gone() {
    let o = Scripted::start().await;
    o.set(
        "/sie",
        route(200, &[("cache-control", "max-age=1, stale-if-error=60")], "good"),
    );
    o.set(
        "/strict",
        route(
            200,
            &[("cache-control", "max-age=1, must-revalidate, stale-if-error=60")],
            "good",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    get(addr, "/sie").await;
    get(addr, "/strict").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    o.set("/sie", route(500, &[], "broken"));
    o.set("/strict", route(500, &[], "broken"));
    let a = get(addr, "/sie").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "good"));
    assert!(cache_status(&a).contains("stale-if-error"));
    let strict = get(addr, "/strict").await;
    assert_eq!(
        strict.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "must-revalidate forbids serving stale"
    );
}

#[tokio::test]
async fn site_grace_serves_stale_when_the_origin_is_unreachable() {
    // An origin address nobody listens on once the scripted origin's answer is stored.
    let o = Scripted::start().await;
    o.set("/g", route(200, &[("cache-control", "max-age=1")], "kept"));
    let (dir, edge, addr) = pop(&o, "stale_if_error = \"1m\"").await;
    get(addr, "/g").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Point the pool at a closed port: the origin is down.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = std::fs::read_to_string(dir.path("edge.toml"))
        .unwrap()
        .replace(&o.url(), &format!("http://{closed}"));
    write_config(&dir, &toml);
    edge.reload().await.unwrap();
    let a = get(addr, "/g").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "kept"));
}

#[tokio::test]
async fn request_directives_only_if_cached_max_age_and_max_stale() {
    let o = Scripted::start().await;
    o.set("/d", route(200, &[("cache-control", "max-age=1")], "d{n}"));
    let (_dir, _edge, addr) = pop(&o, "").await;
    let miss = req(
        addr,
        http::Method::GET,
        "/d",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(miss.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(o.hits("/d"), 0);
    get(addr, "/d").await;
    let again = req(addr, http::Method::GET, "/d", &[("cache-control", "max-age=0")]).await;
    assert_eq!(again.body, "d2", "max-age=0 sent the request to the origin");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let stale = req(
        addr,
        http::Method::GET,
        "/d",
        &[("cache-control", "max-stale=60")],
    )
    .await;
    assert_eq!(stale.body, "d2", "max-stale accepts the stale response");
    assert_eq!(o.hits("/d"), 2);
}

#[tokio::test]
async fn a_thousand_concurrent_misses_reach_the_origin_once() {
    let o = Scripted::start().await;
    let mut r = route(200, &[("cache-control", "max-age=60")], "collapsed");
    r.delay = Duration::from_millis(500);
    o.set("/hot", r);
    let (_dir, edge, addr) = pop(&o, "").await;
    let client = http1_client();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            send(&client, addr, "www.test", http::Method::GET, "/hot", Bytes::new()).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "collapsed"));
    }
    assert_eq!(o.hits("/hot"), 1);
    let m = metrics(&edge).await;
    let collapsed = metric_value(&m, "outpost_cache_collapsed_total", &[("site", "site")]).unwrap_or(0.0);
    assert!(
        collapsed >= 900.0,
        "most requests collapsed onto the first: {collapsed}"
    );
}

#[tokio::test]
async fn uncacheable_answers_release_waiters_instead_of_serialising_them() {
    let o = Scripted::start().await;
    let mut r = route(200, &[("cache-control", "no-store")], "private");
    r.delay = Duration::from_millis(300);
    o.set("/u", r);
    let (_dir, _edge, addr) = pop(&o, "").await;
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/u").await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(o.hits("/u"), 20, "each request got its own answer");
    // Serialised behind one another, the origin would never see two at once.
    let most = o.busy.lock().unwrap().1;
    assert!(most >= 10, "the origin answered at most {most} at once");
}

#[tokio::test]
async fn purge_by_url_prefix_tag_and_site_and_soft_purge_revalidates() {
    let o = Scripted::start().await;
    for (path, tags) in [("/p/1", "t1"), ("/p/2", "t2"), ("/q/1", "t1 t3"), ("/q/2", "t4")] {
        let mut r = route(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"x\""),
                ("surrogate-key", tags),
            ],
            "{n}",
        );
        r.etag_304 = Some("\"x\"");
        o.set(path, r);
    }
    let (_dir, edge, addr) = pop(&o, "").await;
    let purge = |json: &str| {
        let req: outpost_cache::PurgeRequest = serde_json::from_str(json).unwrap();
        edge.shared().purge(req).unwrap()
    };
    for p in ["/p/1", "/p/2", "/q/1", "/q/2"] {
        get(addr, p).await;
    }
    purge(r#"{"url": "http://www.test/p/2"}"#);
    assert_eq!(get(addr, "/p/2").await.body, "2", "url purge");
    purge(r#"{"tag": "t3"}"#);
    assert_eq!(get(addr, "/q/1").await.body, "2", "tag purge");
    assert_eq!(get(addr, "/p/1").await.body, "1", "other tags untouched");
    purge(r#"{"prefix": "http://www.test/p/"}"#);
    assert_eq!(get(addr, "/p/1").await.body, "2", "prefix purge");
    purge(r#"{"site": "site", "soft": true}"#);
    let soft = get(addr, "/q/2").await;
    assert_eq!(
        soft.body, "1",
        "a soft purge keeps the object: the origin said 304"
    );
    assert!(
        cache_status(&soft).contains("fwd-status=304"),
        "{}",
        cache_status(&soft)
    );
    assert_eq!(o.hits("/q/2"), 2);
    assert_eq!(o.last_request("/q/2")["if-none-match"], "\"x\"");
}

#[tokio::test]
async fn a_purge_covers_objects_that_were_being_fetched_when_it_arrived() {
    let o = Scripted::start().await;
    let mut r = route(200, &[("cache-control", "max-age=600")], "v{n}");
    r.delay = Duration::from_millis(600);
    o.set("/slow", r);
    let (_dir, edge, addr) = pop(&o, "").await;
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    assert!(eventually(Duration::from_secs(2), || o.hits("/slow") == 1).await);
    let req: outpost_cache::PurgeRequest =
        serde_json::from_str(r#"{"url": "http://www.test/slow"}"#).unwrap();
    edge.shared().purge(req).unwrap();
    // Starts after the purge returned: must not get v1, neither by joining the fetch in flight
    // nor from the cache once that fetch lands.
    let after = get(addr, "/slow").await;
    assert_eq!(in_flight.await.unwrap().body, "v1");
    assert_eq!(after.body, "v2");
    assert_eq!(get(addr, "/slow").await.body, "v2");
}

#[tokio::test]
async fn admin_purge_endpoint_validates_and_counts() {
    let o = Scripted::start().await;
    o.set("/a", route(200, &[("cache-control", "max-age=600")], "{n}"));
    let (_dir, edge, addr) = pop(&o, "").await;
    get(addr, "/a").await;
    let admin = edge.admin_addr().unwrap();
    let post = |body: &'static str| async move {
        let req = Request::post(format!("http://{admin}/purge"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        collect(http1_client().request(req).await.unwrap()).await
    };
    let ok = post(r#"{"url": "http://www.test/a"}"#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert!(ok.body.contains("\"url\""), "{}", ok.body);
    assert_eq!(get(addr, "/a").await.body, "2");
    let bad = post(r#"{"url": "http://www.test/a", "tag": "x"}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("exactly one"), "{}", bad.body);
    let garbage = post("{not json").await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    let m = metrics(&edge).await;
    assert_eq!(
        metric_value(&m, "outpost_cache_purges_total", &[("kind", "url")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn cache_metrics_count_what_the_cache_did() {
    let o = Scripted::start().await;
    o.set("/hit", route(200, &[("cache-control", "max-age=60")], "hit-body"));
    o.set("/validated", validated_route("max-age=1", "\"v1\"", "validated"));
    o.set(
        "/replaced",
        route(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"r{n}\"")],
            "r{n}",
        ),
    );
    o.set(
        "/sie",
        route(200, &[("cache-control", "max-age=1, stale-if-error=60")], "good"),
    );
    let (_dir, edge, addr) = pop(&o, "").await;
    for path in ["/hit", "/hit", "/hit", "/validated", "/replaced", "/sie"] {
        assert_eq!(get(addr, path).await.status, StatusCode::OK, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    o.set("/sie", route(500, &[], ""));
    assert_eq!(get(addr, "/validated").await.body, "validated");
    assert_eq!(get(addr, "/replaced").await.body, "r2");
    assert_eq!(
        get(addr, "/sie").await.body,
        "good",
        "served stale on the origin's error"
    );

    let m = metrics(&edge).await;
    let by_result = |metric, result| metric_value(&m, metric, &[("site", "site"), ("result", result)]);
    let requests = |result| by_result("outpost_cache_requests_total", result);
    assert_eq!(requests("miss"), Some(4.0), "{m}");
    assert_eq!(requests("hit"), Some(2.0));
    assert_eq!(requests("stale_if_error"), Some(1.0));
    let revalidations = |result| by_result("outpost_cache_revalidations_total", result);
    assert_eq!(revalidations("not_modified"), Some(1.0), "{m}");
    assert_eq!(revalidations("replaced"), Some(1.0));
    // Body bytes that came from the origin: the 304 and the 500 brought none.
    let fetched = ["hit-body", "validated", "r1", "r2", "good"]
        .iter()
        .map(|b| b.len())
        .sum::<usize>();
    assert_eq!(
        metric_value(&m, "outpost_origin_bytes_total", &[("site", "site")]),
        Some(fetched as f64)
    );
    let origin_requests = ["/hit", "/validated", "/replaced", "/sie"]
        .iter()
        .map(|p| o.hits(p))
        .sum::<usize>();
    assert_eq!(origin_requests, 7);
    assert_eq!(
        metric_value(
            &m,
            "outpost_upstream_duration_seconds_count",
            &[("pool", "p"), ("origin", &o.url())]
        ),
        Some(origin_requests as f64)
    );

    let admin = edge.admin_addr().unwrap();
    let purge = Request::post(format!("http://{admin}/purge"))
        .body(Full::new(Bytes::from(r#"{"prefix": "http://www.test/"}"#)))
        .unwrap();
    assert_eq!(
        collect(http1_client().request(purge).await.unwrap()).await.status,
        StatusCode::OK
    );
    let m = metrics(&edge).await;
    assert_eq!(
        metric_value(&m, "outpost_cache_purges_total", &[("kind", "prefix")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "outpost_cache_purge_duration_seconds_count", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn objects_over_the_size_limit_and_broken_bodies_are_not_stored() {
    let o = Scripted::start().await;
    o.set(
        "/big",
        route(200, &[("cache-control", "max-age=600")], &"x".repeat(4096)),
    );
    let (_dir, _edge, addr) = pop(&o, "max_object_size = \"1KiB\"").await;
    assert_eq!(get(addr, "/big").await.body.len(), 4096);
    assert_eq!(get(addr, "/big").await.body.len(), 4096);
    assert_eq!(o.hits("/big"), 2);

    // An origin that promises 100 bytes and hangs up after 10.
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = raw.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 100\r\n\r\n0123456789",
                )
                .await;
        }
    });
    let broken = Scripted {
        addr: Some(raw_addr),
        ..Default::default()
    };
    let (_dir2, _edge2, addr2) = pop(&broken, "").await;
    let client = http1_client();
    let r = Request::get(format!("http://{addr2}/t"))
        .header("host", "www.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    if let Ok(resp) = client.request(r).await {
        assert!(
            resp.into_body().collect().await.is_err(),
            "a truncated body ends in an error"
        );
    }
    let r = Request::get(format!("http://{addr2}/t"))
        .header("host", "www.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let _ = client.request(r).await;
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the truncated response was not stored"
    );
}

#[tokio::test]
async fn a_client_leaving_an_oversized_chunked_fill_stops_the_origin_fetch() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 512;
    // A cacheable response of 32 MiB without Content-Length: nothing rules it out before the
    // fill has read past the size limit.
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let cut_off = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let flag = cut_off.clone();
    tokio::spawn(async move {
        let (mut s, _) = raw.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut ok = s.write_all(head.as_bytes()).await.is_ok();
        let chunk = format!("{CHUNK:x}\r\n{}\r\n", "x".repeat(CHUNK));
        for _ in 0..CHUNKS {
            if !ok {
                break;
            }
            ok = s.write_all(chunk.as_bytes()).await.is_ok();
        }
        ok = ok && s.write_all(b"0\r\n\r\n").await.is_ok();
        flag.store(!ok, Ordering::SeqCst);
        let _ = done_tx.send(());
    });
    let origin = Scripted {
        addr: Some(raw_addr),
        ..Default::default()
    };
    let (_dir, _edge, addr) = pop(&origin, "max_object_size = \"1MiB\"").await;

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /huge HTTP/1.1\r\nhost: www.test\r\n\r\n")
        .await
        .unwrap();
    let mut read = 0;
    let mut buf = vec![0u8; CHUNK];
    while read < 2 * CHUNK {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "the PoP closed after {read} bytes");
        read += n;
    }
    drop(client);

    tokio::time::timeout(Duration::from_secs(10), done_rx)
        .await
        .expect("the origin is still being read from after the client left")
        .unwrap();
    assert!(
        cut_off.load(Ordering::SeqCst),
        "the PoP fetched the whole body for nobody"
    );
}

#[tokio::test]
async fn cache_key_policy_sorts_and_ignores_query_parameters() {
    let o = Scripted::start().await;
    o.set("/k", route(200, &[("cache-control", "max-age=600")], "{n}"));
    let (_dir, _edge, addr) = pop(&o, "query = \"sort\"\nignore_params = [\"utm_*\"]").await;
    get(addr, "/k?b=1&a=2").await;
    assert_eq!(get(addr, "/k?a=2&b=1&utm_source=mail").await.body, "1");
    assert_eq!(get(addr, "/k?a=3").await.body, "2");
}

#[tokio::test]
async fn cache_key_policy_adds_named_headers_and_cookies() {
    let o = Scripted::start().await;
    o.set("/k", route(200, &[("cache-control", "max-age=600")], "{n}"));
    let (_dir, _edge, addr) = pop(&o, "key_headers = [\"x-device\"]\nkey_cookies = [\"lang\"]").await;
    let with = |headers: &'static [(&'static str, &'static str)]| async move {
        req(addr, http::Method::GET, "/k", headers).await.body
    };
    assert_eq!(with(&[("x-device", "mobile")]).await, "1");
    assert_eq!(with(&[("x-device", "mobile")]).await, "1");
    assert_eq!(
        with(&[("x-device", "desktop")]).await,
        "2",
        "another header value, another entry"
    );
    assert_eq!(with(&[("cookie", "lang=en")]).await, "3");
    assert_eq!(
        with(&[("cookie", "session=abc; lang=en")]).await,
        "3",
        "other cookies are not in the key"
    );
    assert_eq!(with(&[("cookie", "lang=fr")]).await, "4");
    assert_eq!(o.hits("/k"), 4);
}

#[tokio::test]
async fn site_ttls_give_a_lifetime_to_silent_responses_and_override_the_origins() {
    let o = Scripted::start().await;
    // No freshness information and no validator: not storable by the RFC alone.
    o.set("/silent", route(200, &[], "{n}"));
    let (_dir, _edge, addr) = pop(&o, "default_ttl = \"1m\"").await;
    get(addr, "/silent").await;
    let second = get(addr, "/silent").await;
    assert_hit(&second, "");
    assert_eq!(o.hits("/silent"), 1, "default_ttl stored it");

    let o = Scripted::start().await;
    o.set("/long", route(200, &[("cache-control", "max-age=3600")], "{n}"));
    let (_dir, _edge, addr) = pop(&o, "ttl = \"1s\"").await;
    get(addr, "/long").await;
    assert_eq!(get(addr, "/long").await.body, "1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        get(addr, "/long").await.body,
        "2",
        "ttl cut the origin's hour to a second"
    );
}

#[tokio::test]
async fn memory_stays_within_its_budget() {
    let o = Scripted::start().await;
    o.set(
        "/obj",
        route(200, &[("cache-control", "max-age=600")], &"y".repeat(8 * 1024)),
    );
    let (_dir, edge, addr) = pop_with(&o, "[cache]\nmemory = \"512KiB\"", "").await;
    for i in 0..300 {
        get(addr, &format!("/obj?i={i}")).await;
    }
    // The sweeper publishes the tiers' sizes once a second.
    let mut published = false;
    let mut bytes = 0.0;
    for _ in 0..50 {
        let m = metrics(&edge).await;
        bytes = metric_value(&m, "outpost_cache_bytes", &[("tier", "memory")]).unwrap_or(0.0);
        let evictions =
            metric_value(&m, "outpost_cache_evictions_total", &[("tier", "memory")]).unwrap_or(0.0);
        if bytes > 0.0 && evictions > 0.0 {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "evictions are counted");
    assert!(
        bytes <= 512.0 * 1024.0,
        "memory tier holds {bytes} bytes for a 512 KiB budget"
    );
}

#[tokio::test]
async fn a_restarted_pop_answers_warm_objects_from_its_disk_tier() {
    let o = Scripted::start().await;
    o.set(
        "/warm",
        route(
            200,
            &[("cache-control", "max-age=600"), ("etag", "\"w\"")],
            "warm{n}",
        ),
    );
    let disk = TempDir::new("disk-tier");
    let top = format!(
        "[cache]\nmemory = \"1MiB\"\ndisk = \"16MiB\"\ndir = \"{}\"",
        disk.path("cache").display()
    );
    {
        let (_dir, edge, addr) = pop_with(&o, &top, "").await;
        assert_eq!(get(addr, "/warm").await.body, "warm1");
        let mut written = false;
        for _ in 0..50 {
            let m = metrics(&edge).await;
            if metric_value(&m, "outpost_cache_objects", &[("tier", "disk")]).unwrap_or(0.0) >= 1.0 {
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(written, "the object reached the disk tier");
    }
    // A new PoP on the same directory: the index is rebuilt from the files' heads in the
    // background (requests before that miss); the tier's size says when it is done.
    let (_dir, edge, addr) = pop_with(&o, &top, "").await;
    let mut indexed = false;
    for _ in 0..50 {
        let m = metrics(&edge).await;
        if metric_value(&m, "outpost_cache_objects", &[("tier", "disk")]).unwrap_or(0.0) >= 1.0 {
            indexed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(indexed, "the disk index was rebuilt");
    let a = get(addr, "/warm").await;
    assert_hit(&a, "");
    let warm = a;
    assert_eq!(warm.body, "warm1");
    assert_eq!(warm.headers["etag"], "\"w\"");
    assert_eq!(o.hits("/warm"), 1, "the origin was not asked again");
}

#[tokio::test]
async fn under_load_no_response_from_before_a_purge_is_served_after_it_returns() {
    let o = Scripted::start().await;
    let mut r = route(200, &[("cache-control", "max-age=600")], "{n}");
    r.delay = Duration::from_millis(20);
    o.set("/busy", r);
    let (_dir, edge, addr) = pop(&o, "").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients that keep fetching /busy, each remembering when it started and what it got.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let a = send(
                    &client,
                    addr,
                    "www.test",
                    http::Method::GET,
                    "/busy",
                    Bytes::new(),
                )
                .await;
                seen.push((started, a.body.parse::<usize>().unwrap()));
            }
            seen
        }));
    }
    let mut purges = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Every origin answer counted before the purge call is from before it.
        let before = o.hits("/busy");
        let req: outpost_cache::PurgeRequest =
            serde_json::from_str(r#"{"prefix": "http://www.test/"}"#).unwrap();
        edge.shared().purge(req).unwrap();
        purges.push((std::time::Instant::now(), before));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut checked = 0;
    for c in clients {
        for (started, n) in c.await.unwrap() {
            for (returned, before) in &purges {
                if started > *returned {
                    assert!(
                        n > *before,
                        "a request started after a purge got answer {n}, from before it"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0, "requests ran after the purges");
    assert!(
        o.hits("/busy") >= 6,
        "every purge made the next requests go to the origin"
    );
}

#[tokio::test]
async fn a_range_request_on_a_miss_fills_the_whole_object_and_gets_its_range() {
    let o = Scripted::start().await;
    o.set(
        "/video",
        route(200, &[("cache-control", "max-age=600")], "0123456789abcdef"),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    let first = req(addr, http::Method::GET, "/video", &[("range", "bytes=4-9")]).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(first.body, "456789");
    assert_eq!(first.headers["content-range"], "bytes 4-9/16");
    assert!(
        !o.last_request("/video").contains_key("range"),
        "the cache fetched the whole object"
    );
    let whole = get(addr, "/video").await;
    assert_eq!(whole.body, "0123456789abcdef");
    assert_hit(&whole, "");
    assert_eq!(o.hits("/video"), 1);
}

#[tokio::test]
async fn a_head_miss_fills_the_cache_with_a_get() {
    let o = Scripted::start().await;
    o.set(
        "/h",
        route(
            200,
            &[("cache-control", "max-age=600"), ("etag", "\"h\"")],
            "0123456789",
        ),
    );
    let (_dir, _edge, addr) = pop(&o, "").await;
    let head = req(addr, http::Method::HEAD, "/h", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-length"], "10");
    assert!(head.body.is_empty());
    let get = get(addr, "/h").await;
    assert_eq!(get.body, "0123456789");
    assert_hit(&get, "");
    assert_eq!(o.hits("/h"), 1, "one GET to the origin answered both");
}

/// A body of `len` letters in a pattern that repeats only every few thousand bytes, so that
/// bytes out of place or from another body show.
fn patterned(len: usize, seed: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + i / 251 + seed) % 26) as u8))
        .collect()
}

/// Reads one response with a Content-Length from `s` (`buf` carries bytes read past it).
async fn read_sized_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    (head, body)
}

/// Bytes waiting in the pipes this process has open (the PoP runs in it).
fn bytes_in_pipes() -> usize {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if !target.to_string_lossy().starts_with("pipe:") {
            continue;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer given. The number may have been
        // closed and reused since the listing: the link is read again below.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        if rc == 0 && std::fs::read_link(entry.path()).is_ok_and(|again| again == target) {
            total += queued.max(0) as usize;
        }
    }
    total
}

/// Large stored bodies go to plain HTTP/1.1 clients by reference (spliced from the cache's
/// pages, not copied; `server::write_batch`'s unit tests cover pages freed while the kernel
/// still sends from them): a client that pipelines requests and reads slowly gets every byte,
/// in order.
#[tokio::test]
async fn large_stored_bodies_reach_slow_pipelining_clients_intact() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = Scripted::start().await;
    // Two of them are more than the sockets take (a few MiB on loopback) before the client
    // reads: what they do not take waits in a pipe.
    let big = patterned(2 * 1024 * 1024 + 17, 0);
    let other = patterned(2 * 1024 * 1024 + 40_000, 1);
    o.set("/big", route(200, &[("cache-control", "max-age=600")], &big));
    o.set("/other", route(200, &[("cache-control", "max-age=600")], &other));
    o.set("/small", route(200, &[("cache-control", "max-age=600")], "small"));
    let (_dir, edge, addr) = pop(&o, "").await;
    for path in ["/big", "/other", "/small"] {
        get(addr, path).await;
    }
    assert_hit(&get(addr, "/big").await, "the large body is stored");
    assert_hit(&get(addr, "/other").await, "the other large body is stored");

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: www.test\r\n\r\n");
    let all = [
        request("/big"),
        request("/small"),
        request("/other"),
        request("/big"),
    ]
    .concat();
    s.write_all(all.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 1024];
    s.read_exact(&mut first).await.unwrap();
    let waiting = eventually(Duration::from_secs(5), || bytes_in_pipes() > 0).await;
    assert!(
        waiting,
        "the rest of a large stored body waits in a pipe, not copied"
    );

    let mut buf = first;
    for (i, want) in [big.as_bytes(), b"small", other.as_bytes(), big.as_bytes()]
        .into_iter()
        .enumerate()
    {
        let (head, body) = read_sized_response(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "response {i}: {head}");
        assert!(body == want, "response {i} arrived intact and in its place");
    }
    assert!(buf.is_empty(), "nothing more than the four responses");
    let text = metrics(&edge).await;
    let spliced = metric_value(&text, "outpost_spliced_bytes_total", &[]).unwrap_or(0.0);
    assert!(
        spliced >= (2 * big.len()) as f64,
        "the metric counts the spliced bodies: {spliced}"
    );
    let fallbacks = metric_value(&text, "outpost_splice_fallbacks_total", &[("reason", "no_pipe")]);
    assert_eq!(fallbacks, Some(0.0), "no body was copied for want of a pipe");
}
