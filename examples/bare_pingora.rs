//! The framework's floor for the cost benchmarks: pingora proxying every request to one
//! backend and doing nothing else, built with porteiro's own pingora and release profile so the
//! two differ only by porteiro's work. `load-tests/cost-breakdown.sh` and
//! `load-tests/peers-porteiro.sh` run it beside porteiro.
//!
//! Usage: bare_pingora LISTEN BACKEND [no-steal]
//!
//! With `no-steal`, pingora runs the way porteiro configures it by default (no work stealing,
//! I/O timeouts on tokio's timer), to tell what that configuration gains pingora itself from
//! what porteiro's own work costs.
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN BACKEND");
        std::process::exit(2);
    };
    let Ok(backend) = backend.parse() else {
        eprintln!("BACKEND must be ip:port");
        std::process::exit(2);
    };
    let like_porteiro = args.next().as_deref() == Some("no-steal");
    let defaults = ServerConf::default();
    let conf = ServerConf {
        threads: 1,
        listener_tasks_per_fd: 1,
        work_stealing: !like_porteiro,
        fast_timeout_to_tokio_threshold_seconds: if like_porteiro {
            Some(0)
        } else {
            defaults.fast_timeout_to_tokio_threshold_seconds
        },
        ..defaults
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Bare(backend));
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
