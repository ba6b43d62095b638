//! Why a request could not be proxied, which side is to blame, and the one place where that
//! becomes an HTTP status and a body the client can read.

use http::StatusCode;

/// Who caused a failure: it decides logging level, metrics and whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Origin,
    /// No origin of the pool can take traffic: an outage, which the pool logs once when it
    /// starts (not once per request refused).
    Pool,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no Host header or authority")]
    MissingHost,
    #[error("the client did not send its request body in time")]
    ClientBodyTimeout,
    #[error("the client sent its request body too slowly")]
    ClientBodyTooSlow,
    #[error("no site is configured for host \"{0}\" on this PoP")]
    UnknownHost(String),
    #[error(
        "host \"{host}\" is not served by the certificate negotiated for \"{sni}\"; open a new connection"
    )]
    Misdirected { host: String, sni: String },
    #[error("request target is {len} bytes, the limit is {limit}")]
    UriTooLong { len: usize, limit: usize },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no healthy origin in pool \"{pool}\" ({detail})")]
    NoHealthyOrigin { pool: String, detail: String },
    #[error("could not connect to origin {origin}: {reason}")]
    OriginConnect { origin: String, reason: String },
    #[error("origin {origin} did not answer within {secs:.1}s")]
    OriginTimeout { origin: String, secs: f64 },
    #[error("origin {origin} failed: {reason}")]
    OriginProtocol { origin: String, reason: String },
    #[error("upgrade failed: {0}")]
    Upgrade(String),
    #[error("the request body could not be read from the client: {0}")]
    ClientBody(String),
    #[error("blocked by WAF rule \"{rule}\"")]
    WafBlocked {
        rule: std::sync::Arc<str>,
        status: u16,
        body: std::sync::Arc<str>,
    },
    #[error("not in cache and the request said only-if-cached")]
    NotCached,
    #[error("too many requests (limit \"{limit}\"); retry in {retry_after:?}")]
    RateLimited {
        limit: std::sync::Arc<str>,
        retry_after: std::time::Duration,
        policy: String,
    },
}

impl ProxyError {
    /// What the client is told. Origin failures keep addresses, error texts and pool internals
    /// out of the answer (they are in the PoP's logs and metrics); client mistakes are spelled out.
    pub fn client_message(&self) -> String {
        match self {
            Self::NoHealthyOrigin { .. } => "no healthy origin is available for this site".to_owned(),
            Self::OriginConnect { .. } => "could not connect to the origin".to_owned(),
            Self::OriginTimeout { secs, .. } => format!("the origin did not answer within {secs:.1}s"),
            Self::OriginProtocol { .. } | Self::Upgrade(_) => {
                "the origin's answer could not be used".to_owned()
            }
            Self::ClientBody(_) => "the request body could not be read".to_owned(),
            Self::WafBlocked { body, .. } => body.trim_end().to_owned(),
            other => other.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost | Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::ClientBodyTimeout | Self::ClientBodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownHost(_) => StatusCode::NOT_FOUND,
            Self::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoHealthyOrigin { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::OriginConnect { .. } | Self::OriginProtocol { .. } | Self::Upgrade(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::OriginTimeout { .. } | Self::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::WafBlocked { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN),
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::MissingHost
            | Self::ClientBodyTimeout
            | Self::ClientBodyTooSlow
            | Self::UnknownHost(_)
            | Self::Misdirected { .. }
            | Self::UriTooLong { .. }
            | Self::BodyTooLarge { .. }
            | Self::ClientBody(_)
            | Self::RateLimited { .. }
            | Self::NotCached
            | Self::WafBlocked { .. } => Side::Client,
            Self::NoHealthyOrigin { .. } => Side::Pool,
            Self::OriginConnect { .. }
            | Self::OriginTimeout { .. }
            | Self::OriginProtocol { .. }
            | Self::Upgrade(_) => Side::Origin,
        }
    }

    /// A bounded label for the rejected-requests metric and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHost => "missing_host",
            Self::ClientBodyTimeout => "client_body_timeout",
            Self::ClientBodyTooSlow => "client_body_too_slow",
            Self::UnknownHost(_) => "unknown_host",
            Self::Misdirected { .. } => "misdirected",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::NoHealthyOrigin { .. } => "no_healthy_origin",
            Self::OriginConnect { .. } => "origin_connect",
            Self::OriginTimeout { .. } => "origin_timeout",
            Self::OriginProtocol { .. } => "origin_protocol",
            Self::Upgrade(_) => "upgrade_failed",
            Self::ClientBody(_) => "client_body",
            Self::RateLimited { .. } => "rate_limited",
            Self::WafBlocked { .. } => "waf_blocked",
            Self::NotCached => "not_cached",
        }
    }
}
