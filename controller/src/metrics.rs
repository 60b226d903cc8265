//! The controller's Prometheus metrics: the create→Running latency and its
//! stages, reconcile counts and errors by kind, pool sizes and leadership.

use std::sync::Arc;

use fast_sandbox_server::Registry;
use fast_sandbox_server::metrics::latency_buckets;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Label set: pairs of name and value.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    /// From the bind time (annotation) to status Running written.
    pub create_to_running: Histogram,
    /// From the bind time to the reconcile that acts on it (watch delay).
    pub watch_delay: Histogram,
    /// Duration of the agent's create call.
    pub agent_create: Histogram,
    /// Duration of a sandbox status write.
    pub status_write: Histogram,
    /// Reconciles by kind (`sandbox`, `pool`).
    pub reconciles: Family<Labels, Counter>,
    /// Failed reconciles by kind and error.
    pub reconcile_errors: Family<Labels, Counter>,
    /// Agent pods per pool and state (`total`, `ready`, `draining`).
    pub pool_agents: Family<Labels, Gauge>,
    /// Slots per pool and state (`total`, `used`).
    pub pool_slots: Family<Labels, Gauge>,
    /// Sandboxes re-placed on another agent, by reason.
    pub replacements: Family<Labels, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Containers of gone agents the node janitors removed.
    pub janitor_removed: Counter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> Arc<Self> {
        let m = Metrics {
            create_to_running: Histogram::new(latency_buckets()),
            watch_delay: Histogram::new(latency_buckets()),
            agent_create: Histogram::new(latency_buckets()),
            status_write: Histogram::new(latency_buckets()),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            pool_agents: Family::default(),
            pool_slots: Family::default(),
            replacements: Family::default(),
            leader: Gauge::default(),
            janitor_removed: Counter::default(),
        };
        registry.with(|r| {
            r.register(
                "controller_sandbox_create_to_running_seconds",
                "Time from binding (bound-at annotation) to status Running written",
                m.create_to_running.clone(),
            );
            r.register(
                "controller_sandbox_watch_delay_seconds",
                "Time from binding to the reconcile that starts the sandbox",
                m.watch_delay.clone(),
            );
            r.register(
                "controller_agent_create_seconds",
                "Duration of the agent's create call",
                m.agent_create.clone(),
            );
            r.register(
                "controller_status_write_seconds",
                "Duration of a sandbox status write",
                m.status_write.clone(),
            );
            r.register(
                "controller_reconciles",
                "Reconciles by kind",
                m.reconciles.clone(),
            );
            r.register(
                "controller_reconcile_errors",
                "Failed reconciles by kind and error",
                m.reconcile_errors.clone(),
            );
            r.register(
                "controller_pool_agents",
                "Agent pods per pool and state",
                m.pool_agents.clone(),
            );
            r.register(
                "controller_pool_slots",
                "Slots per pool and state",
                m.pool_slots.clone(),
            );
            r.register(
                "controller_sandbox_replacements",
                "Sandboxes re-placed on another agent, by reason",
                m.replacements.clone(),
            );
            r.register(
                "controller_leader",
                "1 while this replica leads",
                m.leader.clone(),
            );
            r.register(
                "controller_janitor_removed",
                "Containers of gone agent pods removed by node janitors",
                m.janitor_removed.clone(),
            );
        });
        Arc::new(m)
    }

    /// Counts one reconcile of `kind`.
    pub fn reconciled(&self, kind: &'static str) {
        self.reconciles
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Counts one failed reconcile of `kind`.
    pub fn failed(&self, kind: &'static str, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("error", error.to_string()),
            ])
            .inc();
    }
}
