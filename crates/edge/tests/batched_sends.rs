//! A single-worker PoP with origin request heads batched through io_uring
//! (`upstream::send_batch`), as `outpost edge --workers 1` runs: every concurrent request
//! reaches its origin and gets its own response, over kept-alive connections.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

#[test]
fn concurrent_requests_with_batched_heads_each_get_their_own_response() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = outpost_edge::upstream::send_batch::install(&rt) {
        // A kernel or sandbox without io_uring runs the PoP with one send per head, which
        // every other test covers.
        eprintln!("io_uring unavailable here ({e}); skipping");
        return;
    }
    rt.block_on(async {
        let origin = Origin::start("batched").await;
        let dir = TempDir::new("batched-sends");
        let edge = start_edge(&dir, &pop_config("", "", &[(origin.url(), false)])).await;
        let addr = edge.listener_addr("http").unwrap();
        let client = http1_client();
        // Three rounds of 48 at once: the first opens the origin connections, the later
        // ones reuse them, their heads held and sent together.
        for round in 0..3 {
            let requests = (0..48).map(|i| {
                let client = client.clone();
                let size = 100 + round * 48 + i;
                tokio::spawn(async move {
                    let answer = send(
                        &client,
                        addr,
                        "www.example.com",
                        http::Method::GET,
                        &format!("/size/{size}"),
                        Default::default(),
                    )
                    .await;
                    (size, answer)
                })
            });
            let requests: Vec<_> = requests.collect();
            for request in requests {
                let (size, answer) = tokio::time::timeout(Duration::from_secs(10), request)
                    .await
                    .expect("answered in time")
                    .unwrap();
                assert_eq!(answer.status, StatusCode::OK);
                assert_eq!(answer.body.len(), size, "each request got its own response");
            }
        }
        assert_eq!(origin.hits(), 3 * 48);
        let (batches, heads) = outpost_edge::upstream::send_batch::stats().unwrap();
        assert_eq!(heads, 3 * 48, "every head went out in a batch");
        assert!(
            batches < heads,
            "some batches carried several heads ({batches} for {heads})"
        );
        assert!(
            origin.accepted.load(std::sync::atomic::Ordering::SeqCst) <= 48,
            "the later rounds reused the first round's connections"
        );
    });
}
