//! `outpost-wire`: the protocol between the control plane and its PoPs.
//!
//! Owns the messages on the PoP stream (one WebSocket per PoP, one JSON text frame per message)
//! and the purge request shape shared by the API, the stream and the PoP's admin listener. It is
//! plain data with serde: it must not know about sockets, the store, the config model's
//! validation, or how a PoP applies what it receives.
//!
//! The exchange:
//!
//! ```text
//! PoP ──Hello{protocol, pop, applied_version, applied_hash, last_purge_seq}──▶ control
//!     ◀──Purge{seq, purge}… (missed ones, in order), then Config{version, toml, …} if behind
//!     ──PurgeAck{seq} / Ack{version} / Nack{version, errors}──▶
//!     ◀──Config / Purge as they are made; Error{message} before a close it initiates
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped on an incompatible change; the control plane refuses a Hello with another number.
pub const PROTOCOL_VERSION: u32 = 1;

/// The path of the PoP stream on the control plane (WebSocket upgrade, bearer token).
pub const STREAM_PATH: &str = "/v1/stream";

/// What a purge removes. Serializes exactly as the PoP admin's `POST /purge` body:
/// `{"url": "http://host/path?q"}`, `{"prefix": "http://host/path"}`, `{"tag": "t"}` or
/// `{"site": "name"}`, each with `"soft": true` when stale copies may still be served while
/// revalidating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    #[serde(flatten)]
    pub target: PurgeTarget,
    #[serde(default, skip_serializing_if = "is_false")]
    pub soft: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PurgeTarget {
    /// One URL, query included.
    Url(String),
    /// Every URL that starts with this (scheme, host and path prefix).
    Prefix(String),
    /// Every response tagged with this (Cache-Tag / Surrogate-Key).
    Tag(String),
    /// Everything cached for this site.
    Site(String),
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Purge {
    /// Checks what serde cannot: non-empty values, URLs with a scheme and host.
    pub fn validate(&self) -> Result<(), String> {
        match &self.target {
            PurgeTarget::Url(u) | PurgeTarget::Prefix(u) => {
                let kind = if matches!(self.target, PurgeTarget::Url(_)) {
                    "url"
                } else {
                    "prefix"
                };
                let rest = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"))
                    .ok_or_else(|| format!("{kind}: \"{u}\" must start with http:// or https://"))?;
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(format!("{kind}: \"{u}\" has no host"));
                }
                if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("{kind}: \"{u}\" contains whitespace"));
                }
                Ok(())
            }
            PurgeTarget::Tag(t) if t.trim().is_empty() => Err("tag: must not be empty".into()),
            PurgeTarget::Site(s) if s.trim().is_empty() => Err("site: must not be empty".into()),
            _ => Ok(()),
        }
    }

    /// A short human form, e.g. `prefix http://a/b (soft)`.
    pub fn describe(&self) -> String {
        let (kind, value) = match &self.target {
            PurgeTarget::Url(v) => ("url", v),
            PurgeTarget::Prefix(v) => ("prefix", v),
            PurgeTarget::Tag(v) => ("tag", v),
            PurgeTarget::Site(v) => ("site", v),
        };
        format!("{kind} {value}{}", if self.soft { " (soft)" } else { "" })
    }
}

/// A certificate and key delivered with a config version, for the `[[certificate]]` of the same
/// name: the PoP writes them into its state dir and points the config at those files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateFiles {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Messages from the control plane to a PoP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToPop {
    /// A fleet config version to apply atomically, then `Ack` or `Nack`.
    Config {
        version: u64,
        /// `config_hash(toml)`: identifies the content across control-plane restarts.
        hash: String,
        /// The fleet config as stored (the same TOML as `outpost edge --config`).
        toml: String,
        #[serde(default)]
        certificates: Vec<CertificateFiles>,
    },
    /// A purge to apply, in `seq` order, then `PurgeAck`.
    Purge { seq: u64, purge: Purge },
    /// The control plane is closing the stream, and why (bad message, superseded session).
    Error { message: String },
}

/// Messages from a PoP to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromPop {
    /// First message on every connection: where this PoP stands, so the control plane sends only
    /// what it misses.
    Hello {
        protocol: u32,
        pop: String,
        /// The version it serves (from its last-known-good), if any.
        applied_version: Option<u64>,
        applied_hash: Option<String>,
        /// The last purge it applied; `None` for a PoP with no state (nothing cached to purge).
        last_purge_seq: Option<u64>,
    },
    /// `version` is serving.
    Ack { version: u64 },
    /// `version` was refused; the previous one keeps serving.
    Nack { version: u64, errors: Vec<String> },
    /// Purge `seq` was applied (`error` when the PoP's cache refused it).
    PurgeAck {
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Lowercase hex SHA-256 of a stored config's text.
pub fn config_hash(toml: &str) -> String {
    hex::encode(Sha256::digest(toml.as_bytes()))
}

impl ToPop {
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl FromPop {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_serializes_like_the_admin_purge_body() {
        let cases = [
            (
                Purge {
                    target: PurgeTarget::Url("http://a.test/x?q=1".into()),
                    soft: false,
                },
                r#"{"url":"http://a.test/x?q=1"}"#,
            ),
            (
                Purge {
                    target: PurgeTarget::Prefix("http://a.test/img/".into()),
                    soft: true,
                },
                r#"{"prefix":"http://a.test/img/","soft":true}"#,
            ),
            (
                Purge {
                    target: PurgeTarget::Tag("product-7".into()),
                    soft: false,
                },
                r#"{"tag":"product-7"}"#,
            ),
            (
                Purge {
                    target: PurgeTarget::Site("shop".into()),
                    soft: false,
                },
                r#"{"site":"shop"}"#,
            ),
        ];
        for (purge, json) in cases {
            assert_eq!(serde_json::to_string(&purge).unwrap(), json);
            assert_eq!(serde_json::from_str::<Purge>(json).unwrap(), purge);
        }
    }

    #[test]
    fn purge_rejects_ambiguous_or_empty_bodies() {
        assert!(serde_json::from_str::<Purge>(r#"{"soft":true}"#).is_err());
        assert!(serde_json::from_str::<Purge>(r#"{}"#).is_err());
        let no_host: Purge = serde_json::from_str(r#"{"url":"http:///x"}"#).unwrap();
        assert!(no_host.validate().unwrap_err().contains("no host"));
        let no_scheme: Purge = serde_json::from_str(r#"{"prefix":"a.test/x"}"#).unwrap();
        assert!(no_scheme.validate().unwrap_err().contains("http://"));
        let empty_tag: Purge = serde_json::from_str(r#"{"tag":" "}"#).unwrap();
        assert!(empty_tag.validate().is_err());
    }

    #[test]
    fn messages_round_trip_with_a_type_tag() {
        let hello = FromPop::Hello {
            protocol: PROTOCOL_VERSION,
            pop: "fra-1".into(),
            applied_version: Some(3),
            applied_hash: None,
            last_purge_seq: None,
        };
        let json = hello.to_json();
        assert!(json.starts_with(r#"{"type":"hello""#), "{json}");
        assert_eq!(serde_json::from_str::<FromPop>(&json).unwrap(), hello);
        let purge = ToPop::Purge {
            seq: 9,
            purge: Purge {
                target: PurgeTarget::Tag("t".into()),
                soft: true,
            },
        };
        assert_eq!(
            purge.to_json(),
            r#"{"type":"purge","seq":9,"purge":{"tag":"t","soft":true}}"#
        );
        assert!(serde_json::from_str::<FromPop>(r#"{"type":"ack"}"#).is_err());
    }
}
