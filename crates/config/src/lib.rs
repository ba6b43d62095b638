//! Outpost's declarative configuration.
//!
//! This crate owns the config file format (TOML), the typed model every other crate consumes,
//! its validation, and error messages that point at a file, line, column and key.
//!
//! It must not know about sockets, TLS libraries, the proxy runtime or the control plane: it
//! names certificate files and addresses but never opens them, so a config can be checked
//! anywhere, and the crates that do the work can change without touching the format.

pub mod duration;
pub mod model;
pub mod size;

mod error;
mod load;
mod locate;
mod path;
mod validate;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use load::{from_config, load_file, parse_str, quick_start, LoadedConfig};
pub use model::*;
pub use size::parse_size;
