//! Wires a validated configuration into a pingora server: the proxy service on every
//! listener, and the one health checker in the background.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::prelude::Opt;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::cluster::{Cluster, ClusterService};
use crate::config::{self, model::Config, ConfigErrors};
use crate::conn::probe::SelfProbes;
use crate::conn::{Frontend, Listeners};
use crate::proxy::Porteiro;
use crate::reload::{ConfigWatcher, HangupReloader, Reloader};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tls::Resumption;
use crate::upstream::health::HealthChecker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot set up [cluster]: {0}")]
    Cluster(String),
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
    pub reloader: Arc<Reloader>,
}

/// Loads and validates the configuration, checks the listeners, builds the server.
pub fn prepare(config_file: &Path, opts: &RunOptions) -> Result<Prepared, StartError> {
    // A tenant file with errors is refused alone: one tenant's mistake (or lapsed
    // certificate) must not keep every other tenant offline.
    let mut cache = config::ParseCache::default();
    let mut config =
        config::load_isolating(config_file, &mut cache, None).map_err(StartError::Config)?;
    crate::reload::report_faults(&config);
    crate::reload::resolve_names(&mut config, None);
    if !opts.upgrade {
        // pingora panics deep inside a service when a bind fails; check first for one clear line.
        let s = &config.server;
        for addr in s.listen.iter().chain(&s.listen_tls).chain(&s.admin) {
            TcpListener::bind(addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
        }
    }
    crate::metrics::get().set_max_tenants(config.server.metrics_max_tenants);
    crate::metrics::get().set_counting(config.server.metrics_enabled);
    crate::cache::configure(&config);
    // Before the first snapshot: its limiters share through the fleet.
    let cluster = match &config.server.cluster {
        Some(c) => Some(Cluster::start(c).map_err(|e| StartError::Cluster(e.to_string()))?),
        None => None,
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, 1, None)));
    if let Some(cluster) = &cluster {
        let snap = snapshot.clone();
        cluster.on_purge(Box::new(move |tenant, query| {
            crate::admin::purge::purge(&snap.load(), tenant, query);
        }));
    }
    let reloader = Arc::new(Reloader::new(config_file, &config, cache, snapshot.clone()));
    let knocks = Arc::new(SelfProbes::default());
    let mut server = build_server(
        &config,
        snapshot.clone(),
        reloader.clone(),
        knocks.clone(),
        opts,
    )?;
    let s = &config.server;
    server.add_service(background_service(
        "readiness for the service manager",
        crate::systemd::ReadyNotifier {
            probes: s.listen.iter().chain(&s.admin).copied().collect(),
            knocks,
        },
    ));
    server.add_service(background_service(
        "upgrade on SIGUSR2",
        crate::systemd::UpgradeOnSignal {
            config: config_file.to_path_buf(),
        },
    ));
    Ok(Prepared {
        server,
        snapshot,
        reloader,
    })
}

fn build_server(
    config: &Config,
    snapshot: Arc<SharedSnapshot>,
    reloader: Arc<Reloader>,
    knocks: Arc<SelfProbes>,
    opts: &RunOptions,
) -> Result<Server, StartError> {
    let s = &config.server;
    let conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        // Timeouts of a second or more (every I/O timeout porteiro sets) on tokio's timer:
        // cheaper per request than pingora's own timer, which also keeps each cancelled timer
        // until its deadline (docs/performance.md).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: s.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    };
    // pingora binds the socket without creating its directory (and panics when it is missing).
    if let Some(dir) = s.upgrade_socket.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the upgrade socket's directory; a graceful upgrade will fail");
        }
    }
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut app = http_proxy(&server.configuration, Porteiro::new(snapshot.clone()));
    let mut options = HttpServerOptions::default();
    options.h2c = s.h2c;
    // HTTP/1.x idle time is enforced by `conn`; HTTP/2 connections by pingora, from here.
    options.h2_idle_timeout = Some(s.clients.keepalive_timeout);
    app.server_options = Some(options);
    let resumption = Resumption {
        tickets: s.tls_session_tickets,
        cache: s.tls_session_cache,
    };
    let acceptor = if s.listen_tls.is_empty() {
        None
    } else {
        let built = crate::tls::acceptor(snapshot.clone(), resumption);
        Some(built.map_err(|e| StartError::Tls(e.to_string()))?)
    };
    let listeners = Listeners {
        plain: s.listen.clone(),
        tls: s.listen_tls.clone(),
        acceptor,
        h2c: s.h2c,
    };
    let mut proxy = Service::new(
        "porteiro".to_string(),
        Frontend::new(app, snapshot.clone(), listeners, knocks),
    );
    // pingora gives each connection a 64 KiB read buffer by default. Plain HTTP needs none:
    // `conn` reads request heads itself and pingora's HTTP/1 code has its own buffers. Under
    // TLS a buffer of one record (16 KiB) keeps reads whole.
    for addr in &s.listen {
        let unbuffered_reads = L4BufferSettings {
            read: Some(0),
            ..L4BufferSettings::default()
        };
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(unbuffered_reads));
    }
    // TLS listeners too are plain TCP to pingora: `Frontend` runs the handshake.
    for addr in &s.listen_tls {
        let record_reads = L4BufferSettings {
            read: Some(16 * 1024),
            ..L4BufferSettings::default()
        };
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(record_reads));
    }
    warn_about_certificates(config);
    server.add_service(proxy);
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(snapshot.clone()),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        HangupReloader::new(reloader.clone()),
    ));
    if s.access_log.target != crate::config::model::AccessLogTarget::Off {
        crate::access_log::start(&s.access_log);
        server.add_service(background_service(
            "access log reopen on SIGUSR1",
            crate::access_log::ReopenOnSignal,
        ));
    }
    if let Some(path) = &s.quota_state_file {
        let persister = crate::limits::QuotaPersister::new(
            path.clone(),
            s.quota_persist_interval,
            snapshot.clone(),
        );
        persister.load();
        server.add_service(background_service("quota counts", persister));
    }
    if let Some(cluster) = crate::cluster::get() {
        server.add_service(background_service(
            "cluster",
            ClusterService(cluster.clone()),
        ));
    }
    server.add_service(background_service(
        "backend names",
        crate::reload::DnsRefresher::new(reloader.clone()),
    ));
    if s.watch {
        server.add_service(background_service(
            "config watcher",
            ConfigWatcher::new(reloader.clone()),
        ));
    }
    if let Some(addr) = s.admin {
        let mut admin = Service::new("admin".to_string(), Admin::new(reloader, snapshot));
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    Ok(server)
}

/// TLS listeners that can only refuse handshakes deserve a word at start-up.
fn warn_about_certificates(config: &Config) {
    if config.server.listen_tls.is_empty() {
        return;
    }
    let m = &config.material;
    if m.default_cert.is_none() && m.tenant_certs.iter().all(Option::is_none) {
        tracing::warn!("TLS listeners are configured but no tenant has `tls` and there is no default_certificate: every handshake will be refused");
    }
}

/// SIGHUP's default action ends the process (as SIGUSR1's and SIGUSR2's do). Until the
/// services that handle them are running, ignore them, so a `systemctl reload` (or a log
/// rotation, or an upgrade) right at start-up cannot kill porteiro.
pub fn ignore_hangup_until_handled() {
    // SAFETY: setting a signal disposition to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
}
