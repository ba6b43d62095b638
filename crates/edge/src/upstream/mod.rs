//! Everything about origins: pools, balancing, health, outlier ejection, retries, the client.

pub mod balance;
pub mod client;
pub mod h2;
pub mod health;
pub mod health_state;
pub mod outlier;
pub mod pool;
pub mod retry_budget;
