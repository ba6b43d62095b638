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
pub mod send_batch;

pub use h1::OriginBody;

/// Fields a request gains on its way upstream, in the form the HTTP/1.1 inline path writes
/// straight into the request head. The proxy adds about seven fields to every request;
/// inserting them into the field map (a hash and a probe each, a growth of the map, an
/// allocated value or two) measured as a tenth of a pass-through request's instructions, and
/// the head is written from the map anyway. Paths that hand the map to a codec (hyper's
/// HTTP/1.1 client, HTTP/2) get the fields inserted by the proxy instead.
pub trait AddedFields: Sync {
    /// Whether the request's own field `name` gives way to an added one (left out of the head).
    fn replaces(&self, name: &http::HeaderName) -> bool;
    /// Writes the fields that go first, before the request's own (Host), as `name: value\r\n`.
    fn write_first(&self, head: &mut Vec<u8>);
    /// Writes the fields that go after the request's own.
    fn write_last(&self, head: &mut Vec<u8>);
}

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
