//! porteiro: a multi-tenant reverse proxy on pingora.
//!
//! The flow: `config` (files -> validated model) -> `snapshot` (compiled, immutable routing
//! state) -> `proxy` (pingora hooks reading one snapshot per request). `routing` and the
//! selection logic in `upstream` are pure and unit-tested; `app` wires the pingora server.

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod app;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod dns;
pub mod hash;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod snapshot;
pub mod systemd;
pub mod text;
pub mod tls;
pub mod upstream;
