//! The validated configuration model. Everything here has passed validation: addresses parse,
//! pools referenced by routes exist, host patterns are well formed and unique across tenants.
//! The TOML file types never leave `config`; the rest of porteiro only sees these types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::tls::{CaBundle, LoadedCert};

use super::error::ConfigError;

/// The whole configuration: server settings plus every tenant, in file-name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    /// Shared, so a reload that leaves a tenant file alone reuses its parsed tenant as is.
    pub tenants: Vec<Arc<TenantConfig>>,
    /// The files this configuration was read from (main file first), for status and reload.
    pub sources: Vec<PathBuf>,
    /// A digest over the bytes of every source file, so status can tell which edit is live.
    pub digest: String,
    /// Certificates and CA bundles read from the files the configuration names.
    pub material: Material,
    /// The addresses DNS names in pools resolve to now (filled in after loading).
    pub resolved: Arc<Resolved>,
    /// Tenant files refused on their own (the rest applies); empty in a strict load.
    pub faults: Vec<TenantFault>,
    /// What is served although wrong (expired certificates): worth a log line, not a refusal.
    pub warnings: Vec<ConfigError>,
}

/// Host name -> its addresses, as last resolved. A name absent here has never resolved.
pub type Resolved = std::collections::HashMap<String, Vec<std::net::IpAddr>>;

/// A tenant file refused on its own while the rest of the configuration applies.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantFault {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
    /// The tenant whose last good version keeps serving in its place; `None`: not served.
    pub kept: Option<String>,
}

/// Key material loaded (and checked) while loading the configuration, shared by `Arc` so an
/// unchanged file yields the same value on the next reload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Material {
    /// Parallel to `Config::tenants`: each tenant's certificate, if it has `tls`.
    pub tenant_certs: Vec<Option<Arc<LoadedCert>>>,
    /// Parallel to `Config::tenants`, then to each tenant's pools: the pool's `ca_file`.
    pub pool_cas: Vec<Vec<Option<Arc<CaBundle>>>>,
    pub default_cert: Option<Arc<LoadedCert>>,
}

/// A certificate file and its key, as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS towards a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// Sent as SNI and verified against the backend's certificate.
    pub sni: String,
    /// Verify against this CA bundle instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// `[server]` in the main file. Listener addresses and threads need a restart to change.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen_tls: Vec<SocketAddr>,
    /// Served to clients that send no SNI, or a name no tenant claims; `None` refuses them.
    pub default_certificate: Option<TlsFiles>,
    /// Issue TLS session tickets (stateless resumption).
    pub tls_session_tickets: bool,
    /// TLS sessions kept for resumption by id; 0 keeps none.
    pub tls_session_cache: usize,
    /// The port `https_redirect` sends clients to (443 is left out of the URL).
    pub https_port: u16,
    pub threads: usize,
    /// Let idle worker threads take tasks from busy ones. Off: each connection stays on the
    /// thread that accepted it (as with nginx's workers), which costs less per request.
    pub work_stealing: bool,
    pub tenants_dir: PathBuf,
    pub unknown_host_status: u16,
    /// Peers whose `X-Forwarded-*` headers are believed; everyone else's are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Accept cleartext HTTP/2 (prior knowledge) on the plain listeners.
    pub h2c: bool,
    /// Seconds an old process keeps serving after a graceful upgrade hands over its sockets.
    pub grace_period: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub graceful_shutdown_timeout: Duration,
    /// The admin listener (health, readiness, reload, status); `None` turns it off.
    pub admin: Option<SocketAddr>,
    /// When set, admin requests need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// Reload by itself when the main file or a tenant file changes.
    pub watch: bool,
    /// How porteiro's own log lines are written (restart only).
    pub log_format: LogFormat,
    /// `[metrics] enabled`: count requests per tenant (the state gauges are served either way).
    pub metrics_enabled: bool,
    /// `[metrics] max_tenants`: tenants with series of their own; the rest share "_other".
    pub metrics_max_tenants: usize,
    /// `[access_log]`.
    pub access_log: AccessLogConfig,
    /// `[limits]` of the main file: the default for every tenant key left unset.
    pub default_limits: LimitsConfig,
    /// Where quota counts are kept across restarts; `None` keeps them in memory only.
    pub quota_state_file: Option<PathBuf>,
    /// Where a new process waits for the listening sockets in a graceful upgrade.
    pub upgrade_socket: PathBuf,
    /// The DNS server for backend names; `None`: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolver: Option<SocketAddr>,
    /// How often quota counts are written (and at graceful shutdown).
    pub quota_persist_interval: Duration,
    /// Timeouts and caps that protect porteiro from its clients.
    pub clients: ClientLimits,
    /// `[cache]` of the main file.
    pub cache: CacheMemory,
    /// `[cluster]`: the Redis a fleet shares limits through; `None`: every limit is local.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]` in the main file (restart only).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://…`, `rediss://…` or `redis+unix://…`, possibly with a password in it.
    pub redis: String,
    /// Read from `password_file`; used when the URL has none.
    pub password: Option<String>,
    /// Put before every key and channel name, so several fleets can share one Redis.
    pub key_prefix: String,
    /// This instance's name in logs, metrics and the fleet's member list.
    pub node_id: String,
    /// Instances the fleet has; while Redis is unreachable each admits `1/expected_nodes` of
    /// a shared limit.
    pub expected_nodes: u32,
    /// The longest a request waits for Redis before it is decided locally.
    pub timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    // Never print a password (the URL may carry one too).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &super::cluster::redacted(&self.redis))
            .field("key_prefix", &self.key_prefix)
            .field("node_id", &self.node_id)
            .field("expected_nodes", &self.expected_nodes)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `[cache]` in the main file: what every tenant's cache shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheMemory {
    /// Bytes all tenants' entries may hold together; 0 turns caching off everywhere.
    pub max_memory: u64,
    /// How long concurrent misses for one key wait for the first one's response before they
    /// go to the backend themselves.
    pub lock_timeout: Duration,
}

impl Default for CacheMemory {
    fn default() -> Self {
        Self {
            max_memory: 256 << 20,
            lock_timeout: Duration::from_secs(5),
        }
    }
}

/// A tenant's `[cache]`. Without the table the tenant is never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCache {
    pub enabled: bool,
    /// This tenant's budget in bytes; `None`: `max_memory / 8`.
    pub max_size: Option<u64>,
    /// Larger responses stream through and are not stored.
    pub max_object_size: u64,
    /// Freshness for a storable response that gives none.
    pub default_ttl: Option<Duration>,
    /// For responses that do not carry their own `stale-while-revalidate` / `stale-if-error`.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Cache even when the request carries `Cookie`.
    pub ignore_cookies: bool,
    /// A request's `Cache-Control: no-cache` (or `max-age=0`, `Pragma: no-cache`) revalidates
    /// the stored response with the backend; otherwise it is answered from the cache.
    pub honor_client_no_cache: bool,
}

impl Default for TenantCache {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size: None,
            max_object_size: 8 << 20,
            default_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            ignore_cookies: false,
            honor_client_no_cache: false,
        }
    }
}

/// `[server]` keys that bound what one client connection may hold: time, bytes, connections.
/// They apply to connections accepted after a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request head (request line and headers) must arrive within this.
    pub header_timeout: Duration,
    /// An idle keep-alive connection (HTTP/1.1 between requests, HTTP/2 without streams).
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Longest wait for a client to accept the next piece of a response.
    pub send_timeout: Duration,
    /// Open client connections per listener; beyond it new connections get 503.
    pub max_connections: u32,
    /// Open connections per client address (IPv6: per `client_ipv6_prefix`); beyond it 429.
    /// Trusted proxies are exempt.
    pub max_connections_per_ip: u32,
    /// An IPv6 client is its block of this many leading bits for `max_connections_per_ip`
    /// and `per_client_ip`: one host commonly holds a whole /64.
    pub client_ipv6_prefix: u8,
    /// Longest request line (method, target, version); longer gets 414.
    pub max_request_line: u32,
    /// Largest request head; larger (or more than 256 headers) gets 431.
    pub max_header_bytes: u32,
    /// Drop every client header whose name has `_` (otherwise only underscore twins of
    /// headers porteiro sets or vouches for).
    pub drop_underscore_headers: bool,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_connections_per_ip: 512,
            client_ipv6_prefix: 64,
            max_request_line: 8 * 1024,
            max_header_bytes: 64 * 1024,
            drop_underscore_headers: false,
        }
    }
}

/// `[server] log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for journald and log shippers.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: AccessLogTarget,
    /// Lines waiting for the writer; beyond it lines are dropped (and counted), never waited for.
    pub queue: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// One tenant file under `tenants_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub id: String,
    /// The file the tenant came from, for error messages and status.
    pub file: PathBuf,
    pub hosts: Vec<HostPattern>,
    /// Pools in file order; names are unique within the tenant.
    pub pools: Vec<PoolConfig>,
    /// Routes as written. A tenant with one pool and no routes gets a single `/` route to it.
    pub routes: Vec<RouteConfig>,
    /// The certificate served for this tenant's hosts on the TLS listeners.
    pub tls: Option<TlsFiles>,
    /// Plain-HTTP requests get a 308 to the https URL.
    pub https_redirect: bool,
    /// `Strict-Transport-Security` value added to responses sent over TLS.
    pub hsts: Option<String>,
    /// Share of this tenant's requests written to the access log, 0.0..=1.0.
    pub access_log_sample: f64,
    /// `[limits]` as written in the tenant file; unset keys take the main file's `[limits]`.
    pub limits: LimitsConfig,
    /// Accept `;` path parameters (`/a;jsessionid=1/b`); refused by default because Java
    /// servers drop them before routing, so `/;/admin` would reach `/admin` past a route.
    pub allow_path_parameters: bool,
    /// `[cache]`; `None` (or `enabled = false`): never cached.
    pub cache: Option<TenantCache>,
}

/// Per-tenant limits. Every key is optional; in a tenant file an unset key falls back to the
/// main file's `[limits]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsConfig {
    pub rate: Option<RateConfig>,
    pub per_client_ip: Option<RateConfig>,
    pub quota: Option<QuotaConfig>,
    pub max_body: Option<u64>,
    pub max_concurrent: Option<u32>,
    /// Whether `rate`, `per_client_ip` and `quota` are shared by the fleet; `None`: shared
    /// when `[cluster]` is set.
    pub scope: Option<Scope>,
}

/// `[limits] scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Counted once for the whole fleet, through Redis.
    Cluster,
    /// Counted by each instance on its own.
    Local,
}

impl LimitsConfig {
    /// This tenant's keys, each falling back to `defaults`.
    pub fn or(&self, defaults: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            rate: self.rate.or(defaults.rate),
            per_client_ip: self.per_client_ip.or(defaults.per_client_ip),
            quota: self.quota.or(defaults.quota),
            max_body: self.max_body.or(defaults.max_body),
            max_concurrent: self.max_concurrent.or(defaults.max_concurrent),
            scope: self.scope.or(defaults.scope),
        }
    }

    /// No limit at all (`scope` alone limits nothing).
    pub fn is_empty(&self) -> bool {
        LimitsConfig {
            scope: None,
            ..self.clone()
        } == LimitsConfig::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    pub requests: u64,
    pub per: QuotaWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaWindow {
    Day,
    Month,
}

/// A hostname a tenant claims: lowercase, no port, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `acme.example.com`
    Exact(String),
    /// `*.acme.example.com`, stored as the suffix without `*.`: `acme.example.com`.
    /// Matches any name that ends in `.acme.example.com` (one or more labels), not the bare suffix.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// Backends given by address.
    pub backends: Vec<BackendConfig>,
    /// Backends given by DNS name, resolved in the background.
    pub names: Vec<NamedBackend>,
    /// How often names are resolved again (sooner when the records' TTL runs out first).
    pub dns_refresh: Duration,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Idle keep-alive connections to a backend are closed after this long.
    pub idle_timeout: Duration,
    /// Extra backends to try after a connect failure (bounded by the pool size).
    pub retries: u32,
    /// Replace the client's Host header with this value when forwarding.
    pub host_header: Option<String>,
    pub health: Option<HealthConfig>,
    /// Passive health: how long a backend sits out after `unhealthy_after` consecutive
    /// connect failures or timeouts, when the pool has no active check to bring it back.
    pub passive_cooldown: Duration,
    /// Consecutive passive failures that take a backend out (also used without active checks).
    pub passive_failures: u32,
    pub tls: Option<UpstreamTls>,
    /// Offer HTTP/2 to TLS backends (ALPN h2, falling back to HTTP/1.1).
    pub http2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    /// Relative share of traffic, 1..=1000.
    pub weight: u32,
}

/// A backend named by DNS: every address the name resolves to is a backend of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedBackend {
    pub host: String,
    pub port: u16,
    /// Weight of each address the name resolves to.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    ConsistentHash(HashKey),
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// Lowercase header name.
    Header(String),
    Path,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    /// A TCP connect that succeeds within the timeout.
    Tcp,
    /// `GET path` with the tenant's first exact host (or `host` if set) as Host; 2xx/3xx passes.
    Http { path: String, host: String },
    /// The same over TLS, for pools with `tls = true`. The handshake must complete; the
    /// certificate is not verified here (a verification failure shows on real requests).
    Https {
        path: String,
        host: String,
        sni: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub path_prefix: String,
    pub action: RouteAction,
    /// `false`: the prefix matches in any letter case, for backends that route that way
    /// (Express, ASP.NET), so `/ADMIN` cannot reach their `/admin` past this route.
    pub match_case: bool,
    /// `cache = false`: this route's responses are never cached.
    pub cache: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Index into `TenantConfig::pools`.
    Pool(usize),
    Respond(StaticResponse),
}

/// A fixed answer served by porteiro itself (maintenance pages, health answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticResponse {
    pub status: u16,
    pub body: String,
    /// Header names lowercase, values as written.
    pub headers: Vec<(String, String)>,
}
