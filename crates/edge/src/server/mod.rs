//! Client-facing listeners: accepting, TLS termination, HTTP/1.1 and HTTP/2 serving, idle
//! and drain handling.

pub mod h2_guard;
pub mod head_timer;
pub mod housekeeping;
pub mod idle;
pub mod listener;
pub mod proxy_protocol;
pub mod splice;
pub mod tls;
pub mod write_batch;
