//! Fleet mode: several porteiro instances share each tenant's rates and quotas, see each
//! other, and pass cache purges on, through one Redis (`[cluster]`). The limiter's side is in
//! `limits::fleet`; this is the Redis side: leases, heartbeats, purge messages, and the
//! "is Redis answering" state that decides when limits fall back to local shares.
//!
//! No request ever waits on Redis longer than `[cluster] timeout`: commands run on this
//! service's own runtime and fill leases when they answer.

mod scripts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{json, Value};
use tokio::runtime::Handle;

use crate::config::model::ClusterConfig;
use crate::limits::fleet::{now_ns, Ask, Budget, Fleet, Grant, Lease};

/// How often each instance says it is alive; members silent for `MEMBER_TTL` are dropped.
const HEARTBEAT: Duration = Duration::from_millis(500);
const MEMBER_TTL: Duration = Duration::from_secs(10);
/// A Redis command that takes longer than this counts as failed (the store is "down").
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Applies a purge received from another instance: (tenant, query as in the admin URL).
pub type PurgeHandler = Box<dyn Fn(&str, Option<&str>) + Send + Sync>;

pub struct Cluster {
    config: ClusterConfig,
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    runtime: OnceLock<Handle>,
    health: Arc<Health>,
    members: Mutex<Vec<String>>,
    on_purge: OnceLock<PurgeHandler>,
    /// Tells this process's purge messages from others', even between two instances that
    /// share a node_id (the hostname, by default).
    instance: String,
    /// Whether purges from other instances reach this one now.
    subscribed: AtomicBool,
}

/// Whether Redis answers, changed by every command's outcome and logged once per change.
struct Health {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    node_id: String,
}

impl Health {
    fn ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            crate::metrics::get().cluster().up.set(1);
            tracing::info!(node_id = %self.node_id, "cluster: Redis answers; limits are shared by the fleet");
        }
    }

    fn failed(&self, error: &str) {
        crate::metrics::get().cluster().errors.inc();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        if self.up.swap(false, Ordering::AcqRel) {
            crate::metrics::get().cluster().up.set(0);
            tracing::warn!(node_id = %self.node_id, error, "cluster: Redis does not answer; each instance now admits its share of every shared limit");
        }
    }
}

static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

/// The process's fleet membership, when `[cluster]` is set.
pub fn get() -> Option<&'static Arc<Cluster>> {
    CLUSTER.get()
}

impl Cluster {
    /// Sets up (without connecting) the process's fleet membership and makes the limiters
    /// share through it. Call once, before the first snapshot is built.
    pub fn start(config: &ClusterConfig) -> Result<Arc<Cluster>, redis::RedisError> {
        use redis::IntoConnectionInfo;
        let mut info = config.redis.as_str().into_connection_info()?;
        if let (None, Some(pw)) = (info.redis_settings().password(), &config.password) {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let cluster = Arc::new(Cluster {
            client: redis::Client::open(info)?,
            conn: OnceLock::new(),
            runtime: OnceLock::new(),
            health: Arc::new(Health {
                up: AtomicBool::new(false),
                last_error: Mutex::new(Some("not connected yet".into())),
                node_id: config.node_id.clone(),
            }),
            members: Mutex::default(),
            on_purge: OnceLock::new(),
            instance: format!(
                "{}/{}/{}",
                config.node_id,
                std::process::id(),
                fastrand::u64(..)
            ),
            subscribed: AtomicBool::new(false),
            config: config.clone(),
        });
        let metrics = crate::metrics::get().cluster();
        metrics.set_node(&config.node_id);
        metrics.up.set(0);
        let _ = CLUSTER.set(cluster.clone());
        crate::limits::fleet::set_fleet(cluster.clone());
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// What purges received from other instances do here.
    pub fn on_purge(&self, handler: PurgeHandler) {
        let _ = self.on_purge.set(handler);
    }

    fn channel(&self) -> String {
        format!("{}purge", self.config.key_prefix)
    }

    /// Tells every other instance to purge as this one did; how many listened (`None`: Redis
    /// did not take the message).
    pub async fn broadcast_purge(&self, tenant: &str, query: Option<&str>) -> Option<u64> {
        let mut conn = self.conn.get().cloned()?;
        let message = json!({"from": self.instance, "tenant": tenant, "query": query});
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg(message.to_string());
        let publish = publish.query_async::<u64>(&mut conn);
        match tokio::time::timeout(COMMAND_TIMEOUT, publish).await {
            // Every subscriber, this instance's own listener included.
            Ok(Ok(n)) => Some(n.saturating_sub(u64::from(self.subscribed.load(Ordering::Acquire)))),
            Ok(Err(e)) => {
                self.health.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.health.failed("PUBLISH timed out");
                None
            }
        }
    }

    /// `/-/config`'s `cluster` section.
    pub fn status(&self) -> Value {
        let c = &self.config;
        json!({
            "node_id": c.node_id,
            "redis": crate::config::cluster::redacted(&c.redis),
            "key_prefix": c.key_prefix,
            "expected_nodes": c.expected_nodes,
            "timeout_ms": c.timeout.as_secs_f64() * 1000.0,
            "connected": self.is_up(),
            "purges_subscribed": self.subscribed.load(Ordering::Acquire),
            "last_error": *self.health.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            "members": *self.members.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }

    async fn heartbeat(&self, conn: &mut ConnectionManager) {
        let mut call = scripts::HEARTBEAT.prepare_invoke();
        call.key(format!("{}members", self.config.key_prefix))
            .arg(&self.config.node_id)
            .arg(MEMBER_TTL.as_millis() as u64);
        match tokio::time::timeout(COMMAND_TIMEOUT, call.invoke_async::<Vec<String>>(conn)).await {
            Ok(Ok(members)) => {
                self.health.ok();
                crate::metrics::get()
                    .cluster()
                    .members
                    .set(members.len() as i64);
                *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members;
            }
            Ok(Err(e)) => self.health.failed(&e.to_string()),
            Err(_) => self.health.failed("heartbeat timed out"),
        }
    }

    /// Receives other instances' purges until shutdown, resubscribing after a lost connection.
    async fn listen_for_purges(&self) {
        use futures_util::StreamExt;
        loop {
            let mut pubsub = match self.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(_) => {
                    tokio::time::sleep(HEARTBEAT).await;
                    continue;
                }
            };
            if pubsub.subscribe(self.channel()).await.is_err() {
                tokio::time::sleep(HEARTBEAT).await;
                continue;
            }
            self.subscribed.store(true, Ordering::Release);
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                self.apply_purge(&text);
            }
            self.subscribed.store(false, Ordering::Release);
            tracing::warn!("cluster: lost the purge subscription; purges from other instances are missed until it is back");
        }
    }

    fn apply_purge(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            tracing::warn!("cluster: ignored a purge message that is not JSON");
            return;
        };
        if message["from"].as_str() == Some(self.instance.as_str()) {
            return;
        }
        let (Some(tenant), Some(handler)) = (message["tenant"].as_str(), self.on_purge.get())
        else {
            return;
        };
        tracing::info!(
            tenant,
            from = message["from"].as_str().unwrap_or("?"),
            "cluster: purge from another instance"
        );
        handler(tenant, message["query"].as_str());
    }
}

impl Fleet for Cluster {
    fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Acquire)
    }

    fn expected_nodes(&self) -> u32 {
        self.config.expected_nodes
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn key_prefix(&self) -> &str {
        &self.config.key_prefix
    }

    fn refill(&self, lease: Arc<Lease>, ask: Ask) {
        let (Some(runtime), Some(conn)) = (self.runtime.get(), self.conn.get()) else {
            lease.failed();
            return;
        };
        let (mut conn, health) = (conn.clone(), self.health.clone());
        runtime.spawn(async move {
            let owed = match &ask.budget {
                Budget::Quota { debt, .. } | Budget::Rate { debt, .. } => debt,
            };
            let debt = owed.swap(0, Ordering::AcqRel);
            let credit = match &ask.budget {
                Budget::Rate { .. } => lease.take_lapsed(),
                Budget::Quota { .. } => 0,
            };
            let started = std::time::Instant::now();
            let lease_request = lease_from(&mut conn, &ask, debt, credit);
            let answer = tokio::time::timeout(COMMAND_TIMEOUT, lease_request).await;
            let took_us = started.elapsed().as_micros() as u64;
            tracing::debug!(key = %ask.key, took_us, ?answer, "cluster: lease");
            match answer {
                Ok(Ok(grant)) => {
                    health.ok();
                    let reported = match &ask.budget {
                        Budget::Quota { .. } => debt,
                        Budget::Rate { .. } => 0,
                    };
                    lease.fill(grant, reported, now_ns(), ask.ttl);
                }
                Ok(Err(e)) => {
                    // Not counted by Redis: owed and handed back again next time.
                    owed.fetch_add(debt, Ordering::AcqRel);
                    lease.return_lapsed(credit);
                    health.failed(&e.to_string());
                    lease.failed();
                }
                Err(_) => {
                    // The script may have run: not sending the debt again errs towards
                    // admitting a little more, never towards counting a request twice.
                    health.failed("lease request timed out");
                    lease.failed();
                }
            }
        });
    }
}

async fn lease_from(
    conn: &mut ConnectionManager,
    ask: &Ask,
    debt: u64,
    credit: u64,
) -> redis::RedisResult<Grant> {
    match &ask.budget {
        Budget::Rate {
            interval_us,
            tolerance_us,
            ..
        } => {
            let mut call = scripts::RATE.prepare_invoke();
            call.key(&*ask.key)
                .arg(interval_us)
                .arg(tolerance_us)
                .arg(ask.want)
                .arg(debt)
                .arg(credit);
            let (granted, retry_us): (u64, u64) = call.invoke_async(conn).await?;
            Ok(Grant {
                granted,
                retry_after: Duration::from_micros(retry_us),
                used: 0,
            })
        }
        Budget::Quota {
            limit,
            expire_at_ms,
            ..
        } => {
            let mut call = scripts::QUOTA.prepare_invoke();
            call.key(&*ask.key)
                .arg(limit)
                .arg(ask.want)
                .arg(debt)
                .arg(expire_at_ms);
            let (granted, used): (u64, u64) = call.invoke_async(conn).await?;
            Ok(Grant {
                granted,
                // A spent quota stays spent until its window ends (the lease's lifetime).
                retry_after: ask.ttl,
                used,
            })
        }
    }
}

/// Runs a fleet membership's Redis work: heartbeats, leases, purge messages.
pub struct ClusterService(pub Arc<Cluster>);

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

impl Cluster {
    async fn run(&self, mut shutdown: ShutdownWatch) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(HEARTBEAT);
        let mut conn = match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(c) => c,
            Err(e) => {
                self.health.failed(&e.to_string());
                tracing::error!(error = %e, "cluster: cannot set up the Redis connection; limits stay local");
                return;
            }
        };
        let _ = self.conn.set(conn.clone());
        let _ = self.runtime.set(Handle::current());
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let purges = self.listen_for_purges();
        tokio::pin!(purges);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = &mut purges => {}
                _ = ticks.tick() => self.heartbeat(&mut conn).await,
            }
        }
    }
}
