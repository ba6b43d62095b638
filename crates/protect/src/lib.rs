//! `outpost-protect`: decisions that protect origins from abusive traffic.
//!
//! Owns rate limiting (keyed token buckets with bounded memory) and the WAF (custom rules for
//! now). It sees a request only as the few facts a decision needs (`RequestFacts`) and answers
//! allow or deny; it must not know about sockets, the HTTP server, proxying or the config file
//! format (it takes the typed config model).

pub mod path;
pub mod rate_limit;
pub mod waf;
