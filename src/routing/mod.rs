//! Pure routing: hostname -> tenant, request target -> path, and path -> route within a
//! tenant. No I/O.
pub mod hosts;
pub mod paths;
pub mod target;

pub use hosts::{normalize_host, HostTable};
pub use paths::{normalize_path, PathRoutes};
pub use target::{inspect as inspect_target, BadTarget, RoutedTarget};

#[cfg(test)]
mod properties;
