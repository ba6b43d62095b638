//! Everything about origins: pools, balancing, health, outlier ejection, retries, connections.

pub mod balance;
pub mod client;
pub mod connect;
pub mod h1;
pub mod h1_inline;
pub mod h2;
pub mod health;
pub mod health_state;
pub mod outlier;
pub mod pool;
pub mod retry_budget;

pub use h1::OriginBody;

/// How an exchange with an origin failed, over either HTTP version.
pub enum SendError {
    /// No connection could be opened: nothing reached the origin.
    Connect(String),
    /// The exchange broke (hyper's error, or the inline codec's).
    Protocol(crate::proxy::body::BoxError),
    /// No response head came before the exchange's deadline.
    Timeout,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(reason) => f.write_str(reason),
            Self::Protocol(e) => e.fmt(f),
            Self::Timeout => f.write_str("no response head before the deadline"),
        }
    }
}

/// `exchange`, or `SendError::Timeout` once `deadline` passes first.
pub(crate) async fn by_deadline<T>(
    deadline: tokio::time::Instant,
    exchange: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout_at(deadline, exchange)
        .await
        .unwrap_or(Err(SendError::Timeout))
}
