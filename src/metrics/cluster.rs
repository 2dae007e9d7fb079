//! Fleet mode's series: whether the shared store answers, who is in the fleet, and how many
//! limit decisions were made locally because it did not.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::{counter, gauge};

pub struct ClusterMetrics {
    /// 1 while Redis answers; 0 while limits fall back to local shares. Absent without
    /// `[cluster]`.
    pub up: IntGauge,
    /// Instances that sent a heartbeat recently, this one included.
    pub members: IntGauge,
    /// Redis commands that failed or timed out.
    pub errors: IntCounter,
    pub(super) fallbacks: IntCounterVec,
    info: IntGaugeVec,
}

impl ClusterMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            up: gauge(r, "porteiro_cluster_up", "1 while the fleet's Redis answers; 0 while shared limits are decided locally.", &[]).with_label_values(&[] as &[&str]),
            members: gauge(r, "porteiro_cluster_members", "Fleet instances seen through Redis in the last 10 seconds, this one included.", &[]).with_label_values(&[] as &[&str]),
            errors: counter(r, "porteiro_cluster_errors_total", "Redis commands that failed or timed out.", &[]).with_label_values(&[] as &[&str]),
            fallbacks: counter(r, "porteiro_cluster_fallback_total", "Requests whose shared limits were decided locally because Redis did not answer in time.", &["tenant"]),
            info: gauge(r, "porteiro_cluster_info", "This instance's node id in the fleet.", &["node_id"]),
        }
    }

    /// Marks this instance as part of a fleet under `node_id`.
    pub fn set_node(&self, node_id: &str) {
        self.info.with_label_values(&[node_id]).set(1);
    }
}
