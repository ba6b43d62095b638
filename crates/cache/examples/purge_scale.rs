//! Purge at scale: a million stored objects, then a tag purge and a prefix purge while a
//! reader thread keeps looking objects up. Prints how long each purge call took to return,
//! how long the background sweep took, and the lookup latency percentiles before and during
//! the sweep: the evidence that a purge over a million objects does not stall requests.
//!
//! Run: `cargo run --release -p outpost-cache --example purge_scale [objects]`
//! (bench/purge.sh runs it and keeps the output).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use outpost_cache::{Cache, CacheConfig, CacheKey, Freshness, LifetimePolicy, Object, PurgeRequest};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cache = Arc::new(
        Cache::new(&CacheConfig {
            memory_bytes: 8 << 30,
            disk: None,
        })
        .expect("memory-only cache"),
    );
    let body = Bytes::from(vec![b'x'; 64]);
    let policy = LifetimePolicy {
        default_ttl: None,
        ttl_override: Some(Duration::from_secs(3600)),
    };
    let started = Instant::now();
    for i in 0..n {
        let key = CacheKey::for_url(&format!("http://shop.test/p/{}/item/{i}", i % 100)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "surrogate-key",
            format!("product-{} all", i % 1000).parse().unwrap(),
        );
        let f = Freshness::compute(0.0, 0.0, StatusCode::OK, &h, &Default::default(), &policy);
        let obj = Object::new(
            &key,
            "shop".into(),
            StatusCode::OK,
            h,
            body.clone(),
            f,
            Box::new([]),
            cache.fetch_seq(),
        );
        cache.store(&key, obj);
    }
    cache.sweep();
    println!(
        "stored {} objects in {:.1} s ({} URLs in memory)",
        n,
        started.elapsed().as_secs_f64(),
        cache.stats().memory_objects
    );

    let keys: Vec<CacheKey> = (0..10_000)
        .map(|i| {
            CacheKey::for_url(&format!(
                "http://shop.test/p/{}/item/{}",
                (i * 97) % 100,
                (i * 97) % n
            ))
            .unwrap()
        })
        .collect();
    let lookups = |cache: &Cache, stop: &AtomicBool| {
        let mut samples = Vec::new();
        let none = HeaderMap::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && samples.len() < 2_000_000 {
            let t = Instant::now();
            std::hint::black_box(cache.lookup(&keys[i % keys.len()], &none));
            samples.push(t.elapsed());
            i += 1;
        }
        samples
    };

    // Baseline lookups, no purge running.
    let stop = AtomicBool::new(false);
    let base = std::thread::scope(|s| {
        let h = s.spawn(|| lookups(&cache, &stop));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    report("lookups, no purge", base);

    for (what, json) in [
        ("tag purge (1 in 1000 objects)", r#"{"tag": "product-7"}"#),
        (
            "prefix purge (1 in 100 objects)",
            r#"{"prefix": "http://shop.test/p/42/"}"#,
        ),
        ("soft tag purge (every object)", r#"{"tag": "all", "soft": true}"#),
    ] {
        let purge = serde_json::from_str::<PurgeRequest>(json)
            .unwrap()
            .into_purge()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (call, sweep, during) = std::thread::scope(|s| {
            let reader = s.spawn(|| lookups(&cache, &stop));
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            cache.purge(purge);
            let call = t.elapsed();
            let t = Instant::now();
            cache.sweep();
            let sweep = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            (call, sweep, reader.join().unwrap())
        });
        println!(
            "{what}: call returned in {:.1} µs; background sweep over {} objects took {:.0} ms",
            call.as_secs_f64() * 1e6,
            n,
            sweep.as_secs_f64() * 1e3
        );
        report(&format!("lookups during the {what} sweep"), during);
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "  {what}: {} lookups, p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.0} µs",
        samples.len(),
        p(0.5),
        p(0.99),
        p(0.999),
        p(1.0)
    );
}
