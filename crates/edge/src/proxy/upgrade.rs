//! Protocol switches (WebSocket): once the origin answers 101, both upgraded connections are
//! spliced together until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The tunnel is tracked with the PoP's connections and closed when it drains, so a drain
/// waits for it (up to its deadline) instead of reporting success over open tunnels.
pub fn splice(shared: &crate::Shared, client: OnUpgrade, origin: OnUpgrade) {
    let draining = shared.draining.clone();
    shared.connections.spawn(async move {
        let (client, origin) = match tokio::try_join!(client, origin) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut origin = TokioIo::new(origin);
        tokio::select! {
            res = tokio::io::copy_bidirectional(&mut client, &mut origin) => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            _ = draining.cancelled() => {}
        }
    });
}
