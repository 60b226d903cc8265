//! The agent: admits sandboxes against its slots, runs them through
//! containerd (cold in `cold_create`, claiming a pre-started one when it
//! holds one in `prestart`), keeps its table true from containerd's task
//! events and rebuilds it from container labels after a restart
//! (`state_sync`), and deletes them (`delete`). The other submodules are one
//! concern each: tasks through the shared shim's gate, warm snapshots,
//! capped layers, user namespace slots, image pins and the node janitor.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fast_sandbox_api::agent::{
    AgentInfo, CachedImage, ContainerState, EventKind, ImageCacheReport, ListSandboxesResponse,
    SandboxInfo,
};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::pool::RUNC_RUNTIME;
use fast_sandbox_server::Health;
use tokio::sync::watch;

use crate::cgroup;
use crate::egress::Egress;
use crate::error::{Error, Result};
use crate::events::{EventBus, Subscription};
use crate::exec::Execs;
use crate::image::ImageCache;
use crate::logs::{LogDir, LogStream};
use crate::metrics::Metrics;
use crate::ports::Ports;
use crate::prestarted::PrestartDirs;
use crate::runtime::Containerd;
use crate::shim_gate::ShimGate;
use crate::state::{Change, Table};
use crate::stock::Stock;
use crate::warm::WarmPool;

mod cold_create;
mod delete;
mod image_pins;
mod layer_cap;
mod node_janitor;
mod prestart;
mod shim_tasks;
mod state_sync;
mod stock_refill;
mod userns_slot;
mod warm_snapshots;

pub use prestart::Prestarted;

/// Topic of containerd's task exit events.
pub const TOPIC_EXIT: &str = "/tasks/exit";
/// Topic of containerd's OOM events.
pub const TOPIC_OOM: &str = "/tasks/oom";
/// Lifetime of the lease a create runs under: if the agent dies mid-create,
/// containerd collects what only the lease held after this long.
pub const CREATE_LEASE_TTL: Duration = Duration::from_secs(600);
/// How many fresh container ids one create tries when containerd keeps a
/// dead task's directory under the sandbox's id.
const STALE_BUNDLE_FRESH_IDS: u32 = 2;
/// Wait between attempts to re-subscribe to containerd events.
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(1);
/// Makes warm snapshot keys unique within a process.
static WARM_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How the agent is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Name of the agent pod.
    pub pod_name: String,
    /// UID of the agent pod: every container and snapshot the agent makes
    /// carries it, so agents sharing a node never touch each other's.
    pub pod_uid: String,
    /// Node the agent runs on.
    pub node_name: String,
    /// Slots: how many sandboxes the agent holds at most.
    pub slots: u32,
    /// Directory for log files; must be the same path on the host (the
    /// shim opens it there).
    pub state_dir: PathBuf,
    /// cgroup path sandboxes nest under (normally the agent's own).
    pub cgroup_parent: String,
    /// Run every sandbox of this agent in one runc shim process.
    pub shim_group: bool,
    /// Snapshots kept prepared per hot image (0 disables).
    pub warm_snapshots: usize,
    /// How many images get prepared snapshots.
    pub warm_images: usize,
    /// Grace period between SIGTERM and SIGKILL when a delete names none.
    pub default_grace: Duration,
    /// The host's `/proc` as the agent sees it: sandboxes' network
    /// namespaces are found there to forward exposed ports.
    pub proc_root: PathBuf,
    /// Address endpoints of exposed ports are advertised (and listened) on:
    /// the agent pod's IP; loopback when unset.
    pub advertise: Option<std::net::IpAddr>,
    /// Largest upload (file write, tar extraction) accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Pre-started sandboxes kept per warm image (0 disables the stock).
    pub stock_size: usize,
    /// Images always warm for the stock (the pool's `warmImages`); the
    /// `warm_images` most recently used others are warm too.
    pub stock_images: Vec<String>,
    /// Writable layer cap of every pre-started sandbox, in bytes; a create
    /// claims one only when it asks for exactly this cap (or for none when
    /// unset).
    pub stock_layer_cap: Option<u64>,
    /// Where the cgroup filesystem is mounted (as the agent sees the
    /// host's): a claim writes the sandbox's limits there.
    pub cgroup_root: PathBuf,
    /// Bytes each output of a sandbox keeps on the node (0: no cap); past
    /// it the oldest half is dropped.
    pub log_max_bytes: u64,
    /// How sandboxes asking for `network.mode: Egress` get it; `None`:
    /// they fail as `EgressUnavailable`.
    pub egress: Option<crate::egress::EgressConfig>,
    /// Host ids sandboxes' user namespaces are carved from; `None`: they
    /// run as host users (uid 0 is the host's root).
    pub user_namespaces: Option<crate::userns::IdRange>,
}

/// Default of [`Config::stock_size`]: the pool's documented default.
pub const DEFAULT_STOCK_SIZE: usize = fast_sandbox_api::pool::DEFAULT_PRESTARTED as usize;

/// Default of [`Config::max_upload_bytes`]: 1 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// A sandbox whose process runs: what exec and file operations need.
#[derive(Clone, Debug)]
pub struct RunningSandbox {
    /// Its containerd container.
    pub container_id: String,
    /// Host PID of its init process.
    pub pid: u32,
    /// Last component of its cgroup path (see [`cgroup::leaf`]).
    pub cgroup_leaf: String,
}

/// A background task's turns: every period, and at once when `wake` is
/// notified; `None` once `shutdown` says stop.
struct Turns {
    tick: tokio::time::Interval,
}

impl Turns {
    fn every(period: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick }
    }

    /// Waits for the next turn: `Some(true)` when woken by `wake`,
    /// `Some(false)` on a tick, `None` at shutdown.
    async fn next(
        &mut self,
        wake: Option<&tokio::sync::Notify>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<bool> {
        let woken = async {
            match wake {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.tick.tick() => Some(false),
            () = woken => Some(true),
            _ = shutdown.changed() => None,
        }
    }
}

/// The agent.
pub struct Agent {
    me: Weak<Agent>,
    cfg: Config,
    cd: Containerd,
    table: Mutex<Table>,
    ports: Ports,
    egress: Egress,
    events: EventBus,
    images: ImageCache,
    unpacked: Mutex<HashSet<String>>,
    warm: Arc<WarmPool>,
    logs: LogDir,
    execs: Execs,
    metrics: Metrics,
    health: Health,
    uid_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    sweeping: tokio::sync::Mutex<()>,
    stock: Stock<Prestarted>,
    prestart: PrestartDirs,
    /// When the last create reached the stock: builds wait for quiet.
    last_create: Mutex<Option<Instant>>,
    refill: tokio::sync::Notify,
    refill_started: AtomicBool,
    refill_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stock_stopped: AtomicBool,
    /// Whether the node's containerd can cap a writable layer (asked once).
    layer_caps: tokio::sync::OnceCell<std::result::Result<(), String>>,
    /// Whether the node's snapshotter can idmap a root (asked once).
    idmapped: tokio::sync::OnceCell<std::result::Result<(), String>>,
    /// Wakes the image pin sync.
    pins: tokio::sync::Notify,
    /// Orders task creates and deletes around the agent's shared shim.
    shim_gate: ShimGate,
}

impl Agent {
    /// Builds the agent; it is not ready until [`Agent::run_events`] has
    /// rebuilt its state.
    pub async fn new(
        cfg: Config,
        cd: Containerd,
        metrics: Metrics,
        health: Health,
    ) -> Result<Arc<Self>> {
        let logs = LogDir::new(cfg.state_dir.join("logs"))?;
        let execs = Execs::new(cfg.state_dir.join("exec"))?;
        let prestart = PrestartDirs::new(&cfg.state_dir)?;
        let pinned = cfg.stock_images.iter().map(|i| normalize(i)).collect();
        let stock_size = if cfg.stock_size > 0
            && let Err(e) = cgroup::limits::reachable(&cfg.cgroup_root, &cfg.cgroup_parent)
        {
            tracing::error!(error = %e, "pre-started sandboxes are disabled: a claim could not apply the sandbox's limits; mount the host's cgroup filesystem and point --cgroup-root at it");
            0
        } else if cfg.stock_size > 0 && cd.runtime() != RUNC_RUNTIME {
            // A claim writes the limits to the sandbox's own cgroup and
            // hands the init its launch message, which runc's layout
            // guarantees; other runtimes start every sandbox cold.
            tracing::info!(
                runtime = cd.runtime(),
                "pre-started sandboxes are runc's only; every sandbox starts cold"
            );
            0
        } else {
            cfg.stock_size
        };
        let egress = if cd.runtime() == RUNC_RUNTIME {
            Egress::start(cfg.egress.clone(), cfg.proc_root.clone()).await
        } else {
            // gVisor's netstack takes its interfaces from the namespace
            // when the sandbox is made, before the agent could add one.
            Egress::Unavailable(format!(
                "runtime {} takes no link added after the sandbox is made; use runtime runc",
                cd.runtime()
            ))
        };
        health.set_ready(false);
        // gVisor's shim groups by the pod's sandbox id only.
        let shim_gate = ShimGate::new(cfg.shim_group && cd.runtime() == RUNC_RUNTIME);
        Ok(Arc::new_cyclic(|me| Self {
            shim_gate,
            egress,
            me: me.clone(),
            stock: Stock::new(stock_size, cfg.warm_images, pinned),
            prestart,
            last_create: Mutex::new(None),
            refill: tokio::sync::Notify::new(),
            refill_started: AtomicBool::new(false),
            refill_task: Mutex::new(None),
            stock_stopped: AtomicBool::new(false),
            layer_caps: tokio::sync::OnceCell::new(),
            idmapped: tokio::sync::OnceCell::new(),
            pins: tokio::sync::Notify::new(),
            table: Mutex::new(Table::new(cfg.slots)),
            ports: Ports::new(cfg.proc_root.clone(), cfg.advertise),
            warm: Arc::new(WarmPool::new(cfg.warm_snapshots, cfg.warm_images)),
            cfg,
            cd,
            events: EventBus::new(),
            images: ImageCache::new(),
            unpacked: Mutex::new(HashSet::new()),
            logs,
            execs,
            metrics,
            health,
            uid_locks: Mutex::new(HashMap::new()),
            sweeping: tokio::sync::Mutex::new(()),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, changes: impl IntoIterator<Item = Change>) {
        for (kind, info) in changes {
            if matches!(
                kind,
                EventKind::Exited | EventKind::OomKilled | EventKind::Deleted
            ) {
                self.ports.close(&info.uid);
                self.release_link(&info.uid);
            }
            tracing::info!(uid = %info.uid, container = %info.container_id, ?kind, exit_code = ?info.exit_code, "sandbox event");
            self.events.emit(kind, info);
        }
        let running = self.table().running();
        self.metrics.set_running(running);
    }

    fn uid_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.uid_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds, so the map does not grow without bound.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(uid.to_string()).or_default().clone()
    }

    /// ID of the containerd container of a sandbox at a reset revision.
    pub fn container_id(uid: &str, reset_revision: i64) -> String {
        if reset_revision == 0 {
            format!("sandbox-{uid}")
        } else {
            format!("sandbox-{uid}-r{reset_revision}")
        }
    }

    fn snapshot_prefix(&self) -> String {
        format!("fast-sandbox/{}/", self.cfg.pod_uid)
    }

    /// Identity and slot use.
    pub fn info(&self) -> AgentInfo {
        let t = self.table();
        AgentInfo {
            pod_name: self.cfg.pod_name.clone(),
            pod_uid: self.cfg.pod_uid.clone(),
            node_name: self.cfg.node_name.clone(),
            slots_total: t.slots(),
            slots_used: t.used(),
            ready: self.health.is_ready(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Every sandbox, with the sequence number to follow events from.
    /// Refused until the table is rebuilt from containerd: an empty list
    /// from a freshly restarted agent would read as "every sandbox gone".
    pub fn list(&self) -> Result<ListSandboxesResponse> {
        if !self.health.is_ready() {
            return Err(Error::Unavailable("rebuilding state from containerd"));
        }
        let last_event_seq = self.events.last_seq();
        Ok(ListSandboxesResponse {
            agent: self.info(),
            sandboxes: self.table().list(),
            last_event_seq,
        })
    }

    /// One sandbox; refused, like [`Agent::list`], until the table is
    /// rebuilt.
    pub fn get(&self, uid: &str) -> Result<SandboxInfo> {
        if !self.health.is_ready() {
            return Err(Error::Unavailable("rebuilding state from containerd"));
        }
        self.table()
            .get(uid)
            .map(|e| e.info.clone())
            .ok_or_else(|| Error::NotFound(uid.to_string()))
    }

    /// The container and init PID of sandbox `uid` when its process runs;
    /// [`Error::SandboxNotRunning`] naming its state otherwise.
    pub fn running(&self, uid: &str) -> Result<RunningSandbox> {
        let t = self.table();
        let e = t.get(uid).ok_or_else(|| Error::NotFound(uid.to_string()))?;
        match (e.info.state, e.info.pid) {
            (ContainerState::Running, Some(pid)) if !e.starting => Ok(RunningSandbox {
                container_id: e.info.container_id.clone(),
                pid,
                cgroup_leaf: cgroup::leaf(uid, &e.info.container_id),
            }),
            (ContainerState::Exited, _) => Err(Error::SandboxNotRunning(format!(
                "sandbox {uid} is not running: it finished with exit code {} ({})",
                e.info
                    .exit_code
                    .map_or_else(|| "unknown".to_string(), |c| c.to_string()),
                e.info.reason.as_deref().unwrap_or("unknown reason"),
            ))),
            _ => Err(Error::SandboxNotRunning(format!(
                "sandbox {uid} is not running yet: it is still being created"
            ))),
        }
    }

    /// Whether container `id` is one of this agent's sandboxes.
    pub fn holds_container(&self, id: &str) -> bool {
        self.table().uid_of(id).is_some()
    }

    /// The containerd connection.
    pub fn containerd(&self) -> &Containerd {
        &self.cd
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The execs (their FIFOs and ids).
    pub fn execs(&self) -> &Execs {
        &self.execs
    }

    /// Subscribes to sandbox events.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        self.events.subscribe(since)
    }

    /// A heartbeat event.
    pub fn heartbeat(&self) -> fast_sandbox_api::agent::SandboxEvent {
        self.events.heartbeat()
    }

    /// Streams a sandbox's log file.
    pub fn logs(
        &self,
        uid: &str,
        stream: LogStream,
        follow: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>> {
        let (path, exited) = {
            let t = self.table();
            let e = t.get(uid).ok_or_else(|| Error::NotFound(uid.to_string()))?;
            (
                self.logs.path(&e.info.container_id, stream),
                e.exited.subscribe(),
            )
        };
        Ok(crate::logs::stream(&path, follow, exited))
    }

    /// Images in the namespace with when this agent's sandboxes last used them.
    pub async fn images(&self) -> Result<ImageCacheReport> {
        let mut images = Vec::new();
        for (name, target) in self.cd.list_images().await? {
            // CRI also stores images under their config digest; not a reference.
            if name.starts_with("sha256:") {
                continue;
            }
            let normalized = normalize(&name);
            let size_bytes = match self.images.resolve_target(&self.cd, &name, &target).await {
                Ok(r) => r.size_bytes,
                Err(e) => {
                    tracing::debug!(image = %name, error = %e, "image not resolvable; size unknown");
                    u64::try_from(target.size).unwrap_or(0)
                }
            };
            images.push(CachedImage {
                last_used: self.images.last_used(&normalized),
                name,
                normalized,
                digest: target.digest,
                size_bytes,
            });
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ImageCacheReport {
            node_name: self.cfg.node_name.clone(),
            namespace: self.cd.namespace().to_string(),
            images,
        })
    }
}
