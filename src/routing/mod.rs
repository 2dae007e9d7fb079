//! Pure routing: hostname -> tenant, and path -> route within a tenant. No I/O.
pub mod hosts;
pub mod paths;

pub use hosts::{normalize_host, HostTable};
pub use paths::{normalize_path, PathRoutes};
