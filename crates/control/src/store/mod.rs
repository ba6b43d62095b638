//! The control plane's durable state, behind [`Store`] so another backend (PostgreSQL, for
//! several control-plane replicas) can follow without touching the API or the stream.
//!
//! The trait is synchronous: the async layer (`crate::service`) calls it from
//! `spawn_blocking`, never on a runtime thread.

mod sqlite;

pub use sqlite::SqliteStore;

use outpost_wire::Purge;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: the caller started from `base` but the latest is `latest`.
    #[error("the config moved: you started from version {base}, the latest is {latest}")]
    Conflict { base: u64, latest: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One immutable fleet config version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionRecord {
    pub version: u64,
    pub hash: String,
    pub author: String,
    pub message: String,
    pub created_ms: i64,
    /// Unified diff from the previous version.
    pub diff: String,
    /// Set when this version was made by reverting to an older one.
    pub reverted_from: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub toml: String,
}

#[derive(Debug, Clone)]
pub struct NewVersion {
    pub toml: String,
    pub hash: String,
    pub author: String,
    pub message: String,
    pub created_ms: i64,
    pub diff: String,
    pub reverted_from: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PopState {
    Active,
    Draining,
    Maintenance,
}

impl PopState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Maintenance => "maintenance",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "draining" => Some(Self::Draining),
            "maintenance" => Some(Self::Maintenance),
            _ => None,
        }
    }
}

/// A PoP in the inventory, with what it last reported.
#[derive(Debug, Clone, Serialize)]
pub struct PopRecord {
    pub id: String,
    pub region: String,
    pub location: String,
    pub capacity: u32,
    pub state: PopState,
    pub applied_version: Option<u64>,
    pub applied_ms: Option<i64>,
    pub nack_version: Option<u64>,
    pub nack_errors: Vec<String>,
    pub nack_ms: Option<i64>,
    pub last_purge_seq: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct PopSpec {
    pub id: String,
    pub region: String,
    pub location: String,
    pub capacity: u32,
    pub state: PopState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Opens only its own PoP's stream.
    Pop,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pop => "pop",
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pop" => Some(Self::Pop),
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// For `Role::Pop`: the only PoP whose stream it opens.
    pub pop: Option<String>,
    #[serde(skip)]
    pub hash: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at_ms: i64,
    /// The token's name.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    /// The client's address as the control plane saw it.
    pub remote: String,
}

#[derive(Debug, Clone)]
pub struct PurgeRecord {
    pub seq: u64,
    pub purge: Purge,
    pub author: String,
    pub created_ms: i64,
}

/// One PoP's acknowledgement of one purge.
#[derive(Debug, Clone)]
pub struct PurgeAck {
    pub seq: u64,
    pub pop: String,
    pub acked_ms: i64,
    pub error: Option<String>,
}

/// One PoP expected to apply a purge: (pop, acked_ms, error); `acked_ms` is None while pending.
pub type PurgeTarget = (String, Option<i64>, Option<String>);

/// A purge and, for each PoP expected to apply it, when it did.
#[derive(Debug, Clone)]
pub struct PurgeStatus {
    pub record: PurgeRecord,
    pub targets: Vec<PurgeTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertificateRecord {
    pub name: String,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
    /// Expiry of the leaf certificate (unix ms), when it could be read.
    pub not_after_ms: Option<i64>,
    pub uploaded_ms: i64,
}

pub trait Store: Send + Sync + 'static {
    fn latest_version(&self) -> StoreResult<Option<VersionRecord>>;
    fn version(&self, n: u64) -> StoreResult<Option<VersionRecord>>;
    /// Every version, newest first, without their text.
    fn versions(&self) -> StoreResult<Vec<VersionRecord>>;
    /// Stores `new` as the next version if the latest is still `base` (when given); atomic.
    fn insert_version(&self, new: NewVersion, base: Option<u64>) -> StoreResult<VersionRecord>;

    fn pops(&self) -> StoreResult<Vec<PopRecord>>;
    fn pop(&self, id: &str) -> StoreResult<Option<PopRecord>>;
    fn upsert_pop(&self, spec: &PopSpec) -> StoreResult<PopRecord>;
    fn delete_pop(&self, id: &str) -> StoreResult<bool>;
    fn record_applied(&self, pop: &str, version: u64, at_ms: i64) -> StoreResult<()>;
    fn record_nack(&self, pop: &str, version: u64, errors: &[String], at_ms: i64) -> StoreResult<()>;

    fn token_count(&self) -> StoreResult<u64>;
    fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>>;
    fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    fn delete_token(&self, name: &str) -> StoreResult<bool>;

    fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    /// The newest `limit` entries, newest first.
    fn audit(&self, limit: u32) -> StoreResult<Vec<AuditEntry>>;

    /// Stores a purge with the next sequence number, expected from `targets`.
    fn insert_purge(
        &self,
        purge: &Purge,
        author: &str,
        at_ms: i64,
        targets: &[String],
    ) -> StoreResult<PurgeRecord>;
    /// Purges with `seq > after`, in order, at most `limit`.
    fn purges_after(&self, after: u64, limit: u32) -> StoreResult<Vec<PurgeRecord>>;
    fn latest_purge_seq(&self) -> StoreResult<u64>;
    fn record_purge_acks(&self, acks: &[PurgeAck]) -> StoreResult<()>;
    /// Closes `pop`'s pending purges up to `upto` with `reason` (a PoP that starts with nothing
    /// cached has nothing to purge); returns how many.
    fn skip_purges(&self, pop: &str, upto: u64, at_ms: i64, reason: &str) -> StoreResult<u64>;
    fn purge_status(&self, seq: u64) -> StoreResult<Option<PurgeStatus>>;
    /// The newest `limit` purges with their targets, newest first.
    fn recent_purges(&self, limit: u32) -> StoreResult<Vec<PurgeStatus>>;

    fn put_certificate(&self, cert: &CertificateRecord) -> StoreResult<()>;
    fn certificates(&self) -> StoreResult<Vec<CertificateRecord>>;
    fn delete_certificate(&self, name: &str) -> StoreResult<bool>;
}
