//! The agent's Prometheus metrics: create latency by stage (so a regression
//! points at its cause), sandboxes running, errors by code, containers the
//! node janitor removed.

use fast_sandbox_api::agent::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// A stage of sandbox creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Image lookup and resolution (cached by digest).
    Image,
    /// Rootfs snapshot prepare (or a warm one taken).
    Snapshot,
    /// Container record create.
    Container,
    /// Task create (shim, runc create).
    TaskCreate,
    /// Task start.
    TaskStart,
    /// The whole create.
    Total,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Image => "image",
            Stage::Snapshot => "snapshot",
            Stage::Container => "container",
            Stage::TaskCreate => "task_create",
            Stage::TaskStart => "task_start",
            Stage::Total => "total",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// Metric handles, registered once.
#[derive(Clone)]
pub struct Metrics {
    create_seconds: Family<StageLabel, Histogram>,
    running: Gauge,
    errors: Family<CodeLabel, Counter>,
    janitor_removed: Counter,
}

impl Metrics {
    /// Registers the agent's metrics in `registry`.
    pub fn register(registry: &fast_sandbox_server::Registry) -> Self {
        let m = Self {
            create_seconds: Family::new_with_constructor(|| {
                Histogram::new(fast_sandbox_server::metrics::latency_buckets())
            }),
            running: Gauge::default(),
            errors: Family::default(),
            janitor_removed: Counter::default(),
        };
        registry.with(|r| {
            r.register(
                "agent_create_seconds",
                "Sandbox create latency by stage",
                m.create_seconds.clone(),
            );
            r.register(
                "agent_sandboxes_running",
                "Sandboxes whose process runs",
                m.running.clone(),
            );
            r.register(
                "agent_errors",
                "Requests answered with an error, by error code",
                m.errors.clone(),
            );
            r.register(
                "agent_janitor_removed",
                "Containers of gone agents removed by the node janitor",
                m.janitor_removed.clone(),
            );
        });
        m
    }

    /// Records how long a stage took.
    pub fn observe(&self, stage: Stage, elapsed: std::time::Duration) {
        self.create_seconds
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the running gauge.
    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts containers the janitor removed.
    pub fn janitor_removed(&self, n: usize) {
        self.janitor_removed.inc_by(n as u64);
    }

    /// Counts an error answer.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: format!("{code:?}"),
            })
            .inc();
    }
}
