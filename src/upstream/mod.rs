//! Upstream pools: backend selection, backend state, active and passive health.
pub mod balance;
pub mod health;
pub mod pool;
pub mod probe;
pub mod state;

pub use pool::{Backend, Pool};
pub use state::{now_ms, BackendState, InflightGuard, PassiveState, Thresholds};
