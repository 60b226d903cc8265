//! The agent's Prometheus metrics: create latency by stage (so a regression
//! points at its cause), sandboxes running, errors by code, containers the
//! node janitor removed, execs by outcome with their start latency and the
//! bytes they streamed, file operations by op and outcome, creates that
//! met a dead task's directory left by a containerd crash, and the stock of
//! pre-started sandboxes (creates by path, builds by outcome, ready ones).

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
    /// Task create (shim, runc create), the shim gate's wait included.
    TaskCreate,
    /// Within a task create: waiting for the shim gate to let it through.
    ShimGate,
    /// Task start.
    TaskStart,
    /// A pre-started sandbox claimed: relabel, limits, launch, exec seen.
    Claim,
    /// Within a claim: the node-wide look for another agent's container
    /// of the sandbox.
    ClaimCheck,
    /// Within a claim: the containerd update that hands the container to
    /// the sandbox (the commit point).
    Relabel,
    /// Within a claim: limits and hostname applied, the launch message
    /// sent and the init's exec seen.
    Launch,
    /// The link, routes and resolv.conf of a sandbox with egress.
    Egress,
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
            Stage::ShimGate => "shim_gate",
            Stage::TaskStart => "task_start",
            Stage::Claim => "claim",
            Stage::ClaimCheck => "claim_check",
            Stage::Relabel => "relabel",
            Stage::Launch => "launch",
            Stage::Egress => "egress",
            Stage::Total => "total",
        }
    }
}

/// Stages of a sandbox delete, for `agent_delete_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteStage {
    /// SIGTERM, the grace period, SIGKILL and the exit.
    Stop,
    /// Waiting for the shim gate to let the task delete through.
    ShimGate,
    /// The task delete (the shim's runc delete).
    Task,
    /// The container record delete.
    Container,
    /// The rootfs snapshot removal.
    Snapshot,
    /// The whole delete.
    Total,
}

impl DeleteStage {
    fn as_str(self) -> &'static str {
        match self {
            DeleteStage::Stop => "stop",
            DeleteStage::ShimGate => "shim_gate",
            DeleteStage::Task => "task",
            DeleteStage::Container => "container",
            DeleteStage::Snapshot => "snapshot",
            DeleteStage::Total => "total",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabel {
    count: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileOpLabel {
    op: &'static str,
    outcome: String,
}

/// Metric handles, registered once.
#[derive(Clone)]
pub struct Metrics {
    create_seconds: Family<StageLabel, Histogram>,
    delete_seconds: Family<StageLabel, Histogram>,
    shim_gate: Family<CountLabel, Gauge>,
    running: Gauge,
    errors: Family<CodeLabel, Counter>,
    janitor_removed: Counter,
    stale_task_directories: Counter,
    execs: Family<ReasonLabel, Counter>,
    exec_start_seconds: Histogram,
    exec_bytes: Family<ChannelLabel, Counter>,
    exec_ends: Family<OutcomeLabel, Counter>,
    file_ops: Family<FileOpLabel, Counter>,
    stock_creates: Family<PathLabel, Counter>,
    stock_builds: Family<OutcomeLabel, Counter>,
    stock_ready: Gauge,
    pinned_images: Gauge,
    log_bytes_dropped: Counter,
    layers_exceeded: Counter,
}

impl Metrics {
    /// Registers the agent's metrics in `registry`.
    pub fn register(registry: &fast_sandbox_server::Registry) -> Self {
        let m = Self {
            create_seconds: Family::new_with_constructor(|| {
                Histogram::new(fast_sandbox_server::metrics::latency_buckets())
            }),
            delete_seconds: Family::new_with_constructor(|| {
                Histogram::new(fast_sandbox_server::metrics::latency_buckets())
            }),
            shim_gate: Family::default(),
            running: Gauge::default(),
            errors: Family::default(),
            janitor_removed: Counter::default(),
            stale_task_directories: Counter::default(),
            execs: Family::default(),
            exec_start_seconds: Histogram::new(fast_sandbox_server::metrics::latency_buckets()),
            exec_bytes: Family::default(),
            exec_ends: Family::default(),
            file_ops: Family::default(),
            stock_creates: Family::default(),
            stock_builds: Family::default(),
            stock_ready: Gauge::default(),
            pinned_images: Gauge::default(),
            log_bytes_dropped: Counter::default(),
            layers_exceeded: Counter::default(),
        };
        registry.with(|r| {
            r.register(
                "agent_log_bytes_dropped",
                "Oldest bytes of sandbox logs dropped to keep each file within --log-max-bytes",
                m.log_bytes_dropped.clone(),
            );
            r.register(
                "agent_ephemeral_storage_exceeded",
                "Sandboxes killed for writing past their resources.ephemeralStorage",
                m.layers_exceeded.clone(),
            );
            r.register(
                "agent_create_seconds",
                "Sandbox create latency by stage",
                m.create_seconds.clone(),
            );
            r.register(
                "agent_delete_seconds",
                "Sandbox delete latency by stage",
                m.delete_seconds.clone(),
            );
            r.register(
                "agent_shim_gate",
                "The shim gate's view of the agent's shared runc shim: tasks it keeps up (live), creates and deletes in flight",
                m.shim_gate.clone(),
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
            r.register(
                "agent_stale_task_directories",
                "Creates that found a dead task's directory under their container id and moved to a fresh id",
                m.stale_task_directories.clone(),
            );
            r.register(
                "agent_execs",
                "Execs that ended, by ExecStatus reason",
                m.execs.clone(),
            );
            r.register(
                "agent_exec_start_seconds",
                "From an exec request to its process running",
                m.exec_start_seconds.clone(),
            );
            r.register(
                "agent_exec_bytes",
                "Bytes exec'd processes read and wrote, by channel",
                m.exec_bytes.clone(),
            );
            r.register(
                "agent_exec_session_ends",
                "Execs asked to end by their session name because their client went away, by outcome: ended, or none (over already or never named so)",
                m.exec_ends.clone(),
            );
            r.register(
                "agent_file_ops",
                "File operations inside sandboxes, by op and outcome (ok or the error code)",
                m.file_ops.clone(),
            );
            r.register(
                "agent_stock_creates",
                "Creates by path: claimed (a pre-started sandbox), or cold because the stock was disabled, the image not warm, its stock empty, or the claim failed",
                m.stock_creates.clone(),
            );
            r.register(
                "agent_stock_builds",
                "Pre-started sandboxes built, by outcome (ok, failed)",
                m.stock_builds.clone(),
            );
            r.register(
                "agent_stock_ready",
                "Pre-started sandboxes ready to be claimed",
                m.stock_ready.clone(),
            );
            r.register(
                "agent_pinned_images",
                "Images this agent keeps pinned against the kubelet's image garbage collection",
                m.pinned_images.clone(),
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

    /// Records how long a stage of a delete took.
    pub fn observe_delete(&self, stage: DeleteStage, elapsed: std::time::Duration) {
        self.delete_seconds
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the shim gate's counts.
    pub fn set_shim_gate(&self, live: usize, creating: usize, deleting: usize) {
        for (count, n) in [
            ("live", live),
            ("creating", creating),
            ("deleting", deleting),
        ] {
            self.shim_gate
                .get_or_create(&CountLabel { count })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets the running gauge.
    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a create that moved past a dead task's directory.
    pub fn stale_task_directory(&self) {
        self.stale_task_directories.inc();
    }

    /// Counts containers the janitor removed.
    pub fn janitor_removed(&self, n: usize) {
        self.janitor_removed.inc_by(n as u64);
    }

    /// Counts an exec that ended with `reason`.
    pub fn exec_finished(&self, reason: &str) {
        self.execs
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records how long an exec took to start its process.
    pub fn exec_started(&self, elapsed: std::time::Duration) {
        self.exec_start_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts bytes an exec streamed on `channel` (`stdin`, `stdout`, `stderr`).
    pub fn exec_bytes(&self, channel: &'static str, n: usize) {
        self.exec_bytes
            .get_or_create(&ChannelLabel { channel })
            .inc_by(n as u64);
    }

    /// Counts a file operation and its outcome (`None`: it succeeded).
    pub fn file_op(&self, op: &'static str, error: Option<ErrorCode>) {
        let outcome = error.map_or_else(|| "ok".to_string(), |c| format!("{c:?}"));
        self.file_ops
            .get_or_create(&FileOpLabel { op, outcome })
            .inc();
    }

    /// Counts a create by the path it took (`claimed`, or why it went cold).
    pub fn stock_create(&self, path: &'static str) {
        self.stock_creates.get_or_create(&PathLabel { path }).inc();
    }

    /// Counts an exec asked to end by its session name: `ended`, or `none`
    /// when no such exec was running.
    pub fn exec_session_end(&self, outcome: &'static str) {
        self.exec_ends
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a pre-started sandbox built (`ok`) or not (`failed`).
    pub fn stock_build(&self, outcome: &'static str) {
        self.stock_builds
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts log bytes dropped by the cap.
    pub fn log_bytes_dropped(&self, n: u64) {
        self.log_bytes_dropped.inc_by(n);
    }

    /// Counts a sandbox killed for a full writable layer.
    pub fn layer_exceeded(&self) {
        self.layers_exceeded.inc();
    }

    /// Sets how many pre-started sandboxes are ready.
    pub fn set_stock_ready(&self, n: usize) {
        self.stock_ready.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets how many images this agent keeps pinned.
    pub fn set_pinned_images(&self, n: usize) {
        self.pinned_images.set(i64::try_from(n).unwrap_or(i64::MAX));
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
