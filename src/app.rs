//! Wires a validated configuration into a pingora server: the proxy service on every
//! listener, and the one health checker in the background.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::{self, model::Config, ConfigErrors};
use crate::proxy::Porteiro;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::health::HealthChecker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How `run` should start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take the listening sockets over from a running porteiro (graceful upgrade).
    pub upgrade: bool,
}

/// A server ready to run: `Server::run_forever` (or `run`) blocks until shutdown.
pub struct Prepared {
    pub server: Server,
    pub snapshot: Arc<SharedSnapshot>,
}

/// Loads and validates the configuration, checks the listeners, builds the server.
pub fn prepare(config_file: &Path, opts: &RunOptions) -> Result<Prepared, StartError> {
    let config = config::load(config_file).map_err(StartError::Config)?;
    if !opts.upgrade {
        // pingora panics deep inside a service when a bind fails; check first for one clear line.
        for addr in &config.server.listen {
            TcpListener::bind(addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
        }
    }
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, 1, None)));
    let server = build_server(&config, snapshot.clone(), opts);
    Ok(Prepared { server, snapshot })
}

fn build_server(config: &Config, snapshot: Arc<SharedSnapshot>, opts: &RunOptions) -> Server {
    let s = &config.server;
    let conf = ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = http_proxy_service_with_name(
        &server.configuration,
        Porteiro::new(snapshot.clone()),
        "porteiro",
    );
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = s.h2c;
        app.server_options = Some(options);
    }
    for addr in &s.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(snapshot),
    ));
    server
}
