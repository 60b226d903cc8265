//! The agent: admits sandboxes against its slots, runs them through
//! containerd (claiming a pre-started one when it holds one, see the
//! `prestart` submodule), keeps its table true from containerd's task
//! events, and rebuilds it from container labels after a restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use containerd_client::events::{TaskExit, TaskOom};
use fast_sandbox_api::ExposedPort;
use fast_sandbox_api::agent::{
    AgentInfo, CachedImage, ContainerState, CreateSandboxRequest, EventKind, ImageCacheReport,
    JanitorReport, JanitorRequest, ListSandboxesResponse, RemovedContainer, SandboxInfo,
};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::pool::RUNC_RUNTIME;
use fast_sandbox_api::validation::validate_create_request;
use fast_sandbox_api::wellknown::container_labels as label;
use fast_sandbox_server::Health;
use prost::Message;
use tokio::sync::watch;

use crate::cgroup;
use crate::egress::Egress;
use crate::error::{Error, Result};
use crate::events::{EventBus, Subscription};
use crate::exec::Execs;
use crate::image::ImageCache;
use crate::janitor::{Fence, Owner, SNAPSHOT_PREFIX, snapshot_agent, state_dir_of};
use crate::logs::{LogDir, LogStream};
use crate::metrics::{Metrics, Stage};
use crate::ports::Ports;
use crate::prestarted::PrestartDirs;
use crate::runtime::{ContainerRecord, Containerd, TaskState, timestamp};
use crate::spec;
use crate::state::{Change, Entry, Table};
use crate::stock::Stock;
use crate::userns::Mapping;
use crate::warm::{WarmPool, WarmSnapshot};

mod image_pins;
mod layer_cap;
mod prestart;
mod userns_slot;

pub use prestart::Prestarted;

/// Name of the lease holding agent `pod_uid`'s prepared snapshots.
fn warm_lease_of(pod_uid: &str) -> String {
    format!("fast-sandbox-warm-{pod_uid}")
}

/// Container label that makes containers share one runc shim process.
pub const SHIM_GROUP_LABEL: &str = "io.containerd.runc.v2.group";
/// Topic of containerd's task exit events.
pub const TOPIC_EXIT: &str = "/tasks/exit";
/// Topic of containerd's OOM events.
pub const TOPIC_OOM: &str = "/tasks/oom";
/// Lifetime of the lease a create runs under: if the agent dies mid-create,
/// containerd collects what only the lease held after this long.
pub const CREATE_LEASE_TTL: Duration = Duration::from_secs(600);
/// SIGKILL is followed by at most this long a wait for the exit.
/// How many fresh container ids one create tries when containerd keeps a
/// dead task's directory under the sandbox's id.
const STALE_BUNDLE_FRESH_IDS: u32 = 2;

const KILL_WAIT: Duration = Duration::from_secs(10);
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
    /// Cold creates in flight; building stock waits for none (a claim
    /// takes milliseconds and no runc work, so claims do not stop it).
    creating: watch::Sender<usize>,
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
        Ok(Arc::new_cyclic(|me| Self {
            egress,
            me: me.clone(),
            stock: Stock::new(stock_size, cfg.warm_images, pinned),
            prestart,
            creating: watch::Sender::new(0),
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

    fn warm_lease(&self) -> String {
        warm_lease_of(&self.cfg.pod_uid)
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

    /// Creates and starts a sandbox, or returns the existing one with the
    /// same UID and reset revision. The flag is true when it was created now.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<(SandboxInfo, bool)> {
        validate_create_request(&req).map_err(Error::Invalid)?;
        self.egress.check(req.network.as_ref())?;
        if !self.health.is_ready() {
            return Err(Error::Unavailable("rebuilding state from containerd"));
        }
        let lock = self.uid_lock(&req.uid);
        let _held = lock.lock().await;
        let existing = self.table().get(&req.uid).map(|e| e.info.clone());
        if let Some(existing) = existing {
            if existing.reset_revision == req.reset_revision {
                if normalize(&existing.image) != normalize(&req.image) {
                    return Err(Error::Conflict(format!(
                        "sandbox {} exists with image {}, not {}",
                        req.uid, existing.image, req.image
                    )));
                }
                return Ok((existing, false));
            }
            if req.reset_revision < existing.reset_revision {
                return Err(Error::Conflict(format!(
                    "sandbox {} runs reset revision {}, newer than {}",
                    req.uid, existing.reset_revision, req.reset_revision
                )));
            }
            tracing::info!(uid = %req.uid, from = existing.reset_revision, to = req.reset_revision, "replacing sandbox for a new reset revision");
            self.remove(&req.uid, Duration::ZERO).await?;
        }
        self.table().reserve(&req.uid)?;
        let result = self.create_reserved(&req).await;
        if result.is_err() {
            self.table().release(&req.uid);
        }
        result.map(|info| (info, true))
    }

    async fn create_reserved(&self, req: &CreateSandboxRequest) -> Result<SandboxInfo> {
        let started = Instant::now();
        let image_name = normalize(&req.image);
        let image = self.images.resolve(&self.cd, &image_name).await?;
        self.ensure_unpacked(&image_name, &image).await?;
        let container_id = Self::container_id(&req.uid, req.reset_revision);
        let cgroup_path = cgroup::sandbox_cgroup(&self.cfg.cgroup_parent, &req.uid);
        let mut spec = spec::build(req, &image.exec, &cgroup_path)?;
        self.metrics.observe(Stage::Image, started.elapsed());
        if let Some(info) = self
            .try_claim(req, &image_name, &image.digest, &spec)
            .await?
        {
            self.metrics.observe(Stage::Total, started.elapsed());
            return Ok(info);
        }
        let _creating = self.count_create();
        let mapping = self.take_slot(&container_id).await?;
        if let Some(m) = &mapping {
            spec::map_users(&mut spec, m)?;
        }
        let spec_json = serde_json::to_vec(&spec).map_err(|e| Error::Spec(e.to_string()))?;

        let lease_id = format!("fast-sandbox-create-{container_id}");
        let lease = self
            .cd
            .create_lease(&lease_id, Some(CREATE_LEASE_TTL), HashMap::new())
            .await?;
        let result = self
            .create_in_lease(
                req,
                &image_name,
                &image.chain_id,
                &container_id,
                spec_json,
                &lease,
                mapping,
            )
            .await;
        if result.is_err() {
            self.release_slot(mapping).await;
        }
        let cd = self.cd.clone();
        tokio::spawn(async move {
            if let Err(e) = cd.delete_lease(&lease).await {
                tracing::warn!(lease = %lease, error = %e, "deleting create lease failed; it expires by itself");
            }
        });
        if result.is_ok() {
            self.metrics.observe(Stage::Total, started.elapsed());
        }
        result
    }

    /// Fails with [`Error::ImageNotPresent`] unless the image's layers are
    /// unpacked for the snapshotter (remembered once seen).
    async fn ensure_unpacked(
        &self,
        image_name: &str,
        image: &crate::image::ResolvedImage,
    ) -> Result<()> {
        let unpacked = self
            .unpacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&image.chain_id);
        if !unpacked {
            if !self.cd.snapshot_exists(&image.chain_id).await? {
                return Err(Error::ImageNotPresent {
                    image: image_name.to_string(),
                    why: format!(
                        "its layers are not unpacked for the {} snapshotter",
                        self.cd.snapshotter()
                    ),
                });
            }
            self.unpacked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(image.chain_id.clone());
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in_lease(
        &self,
        req: &CreateSandboxRequest,
        image_name: &str,
        chain_id: &str,
        container_id: &str,
        spec_json: Vec<u8>,
        lease: &str,
        mapping: Option<Mapping>,
    ) -> Result<SandboxInfo> {
        let t = Instant::now();
        // A warm snapshot has no ID mapping; a mapped one is made per
        // sandbox.
        let (warm, evicted) = if mapping.is_some() {
            (None, vec![])
        } else {
            self.warm.take(chain_id)
        };
        self.remove_warm(evicted);
        let labels = mapping.map(|m| m.snapshot_labels()).unwrap_or_default();
        let (snapshot_key, mounts) = match warm {
            Some(w) => (w.key, w.mounts),
            None => {
                let key = format!("{}{container_id}", self.snapshot_prefix());
                let prepared = self
                    .cd
                    .prepare_snapshot(&key, chain_id, Some(lease), labels.clone())
                    .await;
                let mounts = match prepared {
                    Err(e) if e.is_already_exists() => {
                        // This agent's key, and the sandbox's lock is held:
                        // a create of an agent killed with this prepare in
                        // flight, which containerd finished after the
                        // restart's sweep. No container uses it yet (its
                        // create would have come after the prepare).
                        tracing::warn!(uid = %req.uid, key = %key, "removing the snapshot a killed create left");
                        self.cd.remove_snapshot(&key).await?;
                        self.cd
                            .prepare_snapshot(&key, chain_id, Some(lease), labels)
                            .await?
                    }
                    other => other?,
                };
                (key, mounts)
            }
        };
        self.metrics.observe(Stage::Snapshot, t.elapsed());
        if mapping.is_none() {
            self.refill_warm(chain_id);
        }
        let mounts = match req.limits.ephemeral_storage_bytes {
            Some(cap) => match self.capped_mounts(mounts, cap).await {
                Ok(m) => m,
                Err(e) => {
                    self.cd.remove_snapshot(&snapshot_key).await.ok();
                    return Err(e);
                }
            },
            None => mounts,
        };

        let result = self
            .create_container_and_task(
                req,
                image_name,
                container_id,
                &snapshot_key,
                mounts,
                spec_json,
                lease,
                mapping,
            )
            .await;
        match &result {
            Ok(_) => {}
            Err(Error::ContainerExists { .. }) => {
                // The container is another agent's: only what this create
                // made goes.
                if let Err(e) = self.cd.remove_snapshot(&snapshot_key).await {
                    tracing::warn!(key = %snapshot_key, error = %e, "cleanup failed");
                }
                self.logs.remove(container_id);
                self.table().remove(&req.uid);
            }
            Err(_) => {
                // A create that moved to a fresh id cleans that one up.
                let id = self
                    .table()
                    .get(&req.uid)
                    .map(|e| e.info.container_id.clone())
                    .unwrap_or_else(|| container_id.to_string());
                self.cleanup(&id, &snapshot_key).await;
                self.table().remove(&req.uid);
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_container_and_task(
        &self,
        req: &CreateSandboxRequest,
        image_name: &str,
        container_id: &str,
        snapshot_key: &str,
        mounts: Vec<containerd_client::types::Mount>,
        spec_json: Vec<u8>,
        lease: &str,
        mapping: Option<Mapping>,
    ) -> Result<SandboxInfo> {
        let mut labels = self.container_labels(req);
        if let Some(m) = mapping {
            labels.insert(label::USERNS_SLOT.to_string(), m.host_base.to_string());
        }
        let mut id = container_id.to_string();
        let mut fresh_ids = 0;
        let mut leftover_removed = false;
        let (container_id, created_pid) = loop {
            let (stdout, stderr) = self.logs.create(&id)?;
            let t = Instant::now();
            let created = self
                .cd
                .create_container(
                    ContainerRecord {
                        id: id.clone(),
                        image: image_name.to_string(),
                        labels: labels.clone(),
                        spec_json: spec_json.clone(),
                        snapshot_key: snapshot_key.to_string(),
                    },
                    Some(lease),
                )
                .await;
            if let Err(e) = created {
                let e = self.explain_existing(&id, e).await;
                if e.is_already_exists() && !leftover_removed {
                    // This agent's record, yet not in its table (the
                    // sandbox's lock is held): an earlier create failed
                    // while containerd was down and could not clean up.
                    leftover_removed = true;
                    tracing::warn!(uid = %req.uid, container = %id, "removing the container record an earlier failed create left");
                    self.remove_leftover(&id).await?;
                    continue;
                }
                return Err(e);
            }
            self.metrics.observe(Stage::Container, t.elapsed());
            self.track_created(req, &id, snapshot_key);
            let t = Instant::now();
            match self
                .cd
                .create_task(&id, mounts.clone(), &stdout, &stderr)
                .await
            {
                Ok(pid) => {
                    self.metrics.observe(Stage::TaskCreate, t.elapsed());
                    break (id, pid);
                }
                Err(e) if e.is_stale_bundle() && fresh_ids < STALE_BUNDLE_FRESH_IDS => {
                    // containerd died while it set this id's task up and
                    // kept the directory, so this id can never get a task
                    // again until containerd restarts. No shim runs for it
                    // (a live one would be a task), so nothing runs twice:
                    // the record goes and the sandbox takes a fresh id.
                    fresh_ids += 1;
                    tracing::warn!(uid = %req.uid, container = %id, error = %e, "containerd kept a dead task's directory under this id; creating the sandbox under a fresh id");
                    self.metrics.stale_task_directory();
                    self.cd.delete_container(&id).await?;
                    self.logs.remove(&id);
                    id = format!("{container_id}-{fresh_ids}");
                }
                Err(e) => return Err(e.start_failure().runtime_failure(self.cd.runtime())),
            }
        };
        // The network is in place before the sandbox's process runs.
        let leaf = cgroup::leaf(&req.uid, &container_id);
        if mapping.is_some() && req.limits.ephemeral_storage_bytes.is_some() {
            self.own_capped_root(created_pid, &leaf).await?;
        }
        self.attach_network(req, created_pid, &leaf).await?;
        let t = Instant::now();
        let pid = self
            .cd
            .start_task(&container_id)
            .await
            .map_err(Error::start_failure)?;
        self.metrics.observe(Stage::TaskStart, t.elapsed());
        if let Some(cap) = req.limits.ephemeral_storage_bytes {
            self.verify_layer(pid, cap)?;
        }
        let endpoints = self.ports.expose(&req.uid, pid, &req.exposed_ports).await?;
        self.mark_started(&req.uid, image_name, pid, endpoints);
        self.get(&req.uid)
    }

    /// Gives the sandbox of `req` (host PID `pid`, cgroup leaf `leaf`) the
    /// network it asks for, before its command runs.
    async fn attach_network(&self, req: &CreateSandboxRequest, pid: u32, leaf: &str) -> Result<()> {
        let network = req.network.as_ref().filter(|n| n.has_egress());
        if network.is_none() {
            return Ok(());
        }
        let t = Instant::now();
        self.egress.attach(&req.uid, pid, leaf, network).await?;
        self.metrics.observe(Stage::Egress, t.elapsed());
        Ok(())
    }

    /// Frees the network link of sandbox `uid` in the background (it goes
    /// with the sandbox's namespace anyway; this frees its address now).
    fn release_link(&self, uid: &str) {
        if let Some(agent) = self.me.upgrade() {
            let uid = uid.to_string();
            tokio::spawn(async move { agent.egress.release(&uid).await });
        }
    }

    /// The labels of a sandbox's container: who it is, whose it is, and
    /// what the agent needs to rebuild its table from containerd.
    fn container_labels(&self, req: &CreateSandboxRequest) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (label::SANDBOX_UID.to_string(), req.uid.clone()),
            (label::SANDBOX_NAME.to_string(), req.name.clone()),
            (label::SANDBOX_NAMESPACE.to_string(), req.namespace.clone()),
            (label::POOL.to_string(), req.pool.clone()),
            (label::AGENT_UID.to_string(), self.cfg.pod_uid.clone()),
            (
                label::RESET_REVISION.to_string(),
                req.reset_revision.to_string(),
            ),
            (label::MANAGED.to_string(), "true".to_string()),
        ]);
        if let Some(cap) = req.limits.ephemeral_storage_bytes {
            labels.insert(label::EPHEMERAL_STORAGE.to_string(), cap.to_string());
        }
        if !req.exposed_ports.is_empty() {
            labels.insert(
                label::EXPOSED_PORTS.to_string(),
                serde_json::to_string(&req.exposed_ports).unwrap_or_default(),
            );
        }
        if self.cfg.shim_group {
            labels.insert(
                SHIM_GROUP_LABEL.to_string(),
                format!("fast-sandbox-{}", self.cfg.pod_uid),
            );
        }
        labels
    }

    /// Turns a failed container create into [`Error::ContainerExists`] when
    /// the id is taken by another agent's container, so the create path
    /// never cleans up (kills) what is not its own.
    async fn explain_existing(&self, container_id: &str, e: Error) -> Error {
        if !e.is_already_exists() {
            return e;
        }
        let owner = match self.cd.container(container_id).await {
            Ok(Some(c)) => c.labels.get(label::AGENT_UID).cloned().unwrap_or_default(),
            // Gone again, or unreadable: nothing proves it is ours either.
            Ok(None) | Err(_) => String::new(),
        };
        if owner == self.cfg.pod_uid {
            return e;
        }
        tracing::warn!(container = %container_id, %owner, "container id taken by another agent's container");
        Error::ContainerExists {
            id: container_id.to_string(),
            owner: if owner.is_empty() {
                "(unknown)".to_string()
            } else {
                owner
            },
        }
    }

    /// The node janitor: removes every container in the namespace that
    /// carries the managed label and was created by an agent pod that is
    /// neither this one nor in `live_agent_uids` (task killed and deleted,
    /// container record, rootfs snapshot, log files when agents share the
    /// state dir layout), then the snapshots and warm lease such agents
    /// left. Nothing else is touched (see [`crate::janitor`]).
    ///
    /// Idempotent. One sweep runs at a time; each container is removed
    /// under its sandbox's lock and only after re-reading its labels, so a
    /// create of the same sandbox on this agent never races the removal.
    pub async fn janitor(&self, req: &JanitorRequest) -> Result<JanitorReport> {
        let _sweep = self.sweeping.lock().await;
        let fence = Fence::new(&self.cfg.pod_uid, req.live_agent_uids.iter().cloned())
            .scoped(req.namespace.clone());
        let managed = vec![format!("labels.\"{}\"==true", label::MANAGED)];
        let mut gone_agents = BTreeSet::new();
        let mut removed = Vec::new();
        for c in self.cd.list_containers(managed).await? {
            let Some(owner) = fence.collectable(&c.labels) else {
                continue;
            };
            gone_agents.insert(owner.agent_uid.clone());
            let key = if owner.sandbox_uid.is_empty() {
                format!("container:{}", c.id)
            } else {
                owner.sandbox_uid.clone()
            };
            let lock = self.uid_lock(&key);
            let _held = lock.lock().await;
            // Re-read: since the list, the id may have been collected and
            // taken again by a sandbox of a live agent.
            match self.cd.container(&c.id).await {
                Ok(Some(now)) if fence.collectable(&now.labels).as_ref() == Some(&owner) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "janitor cannot re-read the container; skipped");
                    continue;
                }
            }
            match self.collect(&c.id, &c.snapshot_key, &fence, &owner).await {
                Ok(()) => {
                    tracing::info!(container = %c.id, sandbox = %owner.sandbox_uid, agent = %owner.agent_uid, "janitor removed a container of a gone agent");
                    removed.push(RemovedContainer {
                        container_id: c.id,
                        sandbox_uid: owner.sandbox_uid,
                        agent_uid: owner.agent_uid,
                    });
                }
                Err(e) => {
                    tracing::warn!(container = %c.id, agent = %owner.agent_uid, error = %e, "janitor could not remove a container; the next sweep retries")
                }
            }
        }
        // Snapshots gone agents left without a container (warm ones, creates
        // cut short), except any a container still uses.
        let in_use: HashSet<String> = self
            .cd
            .list_containers(vec![])
            .await?
            .into_iter()
            .map(|c| c.snapshot_key)
            .collect();
        let orphan_snapshots = if fence.sweeps_orphan_snapshots() {
            self.cd.snapshot_keys(SNAPSHOT_PREFIX).await?
        } else {
            Vec::new()
        };
        for key in orphan_snapshots {
            if !fence.snapshot_collectable(&key) || in_use.contains(&key) {
                continue;
            }
            if let Some(uid) = snapshot_agent(&key) {
                gone_agents.insert(uid.to_string());
            }
            tracing::info!(key = %key, "janitor removed a snapshot of a gone agent");
            if let Err(e) = self.cd.remove_snapshot(&key).await {
                tracing::warn!(key = %key, error = %e, "janitor could not remove a snapshot");
            }
        }
        for uid in &gone_agents {
            if let Err(e) = self.cd.delete_lease(&warm_lease_of(uid)).await {
                tracing::warn!(agent = %uid, error = %e, "janitor could not delete a warm lease");
            }
            if let Some(dir) = state_dir_of(&self.cfg.state_dir, &self.cfg.pod_uid, uid) {
                // Only empty directories go: files of containers that could
                // not be removed stay for the next sweep.
                let _ = std::fs::remove_dir(dir.join("logs"));
                let _ = std::fs::remove_dir(dir.join("exec"));
                let _ = std::fs::remove_dir(dir.join("stock"));
                let _ = std::fs::remove_file(dir.join(crate::prestarted::INSTALLED_INIT));
                let _ = std::fs::remove_dir(&dir);
            }
        }
        // Image marks name agents, not namespaces: only an unscoped sweep
        // knows every live agent.
        if fence.sweeps_orphan_snapshots()
            && let Err(e) = self.release_pins_of(|a| fence.is_gone(a)).await
        {
            tracing::warn!(error = %e, "janitor could not release the image marks of gone agents");
        }
        self.metrics.janitor_removed(removed.len());
        removed.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(JanitorReport { removed })
    }

    /// Removes one container of a gone agent: SIGKILL, task, container,
    /// its snapshot (when under that agent's key prefix), log files and
    /// exec FIFOs.
    async fn collect(
        &self,
        id: &str,
        snapshot_key: &str,
        fence: &Fence,
        owner: &Owner,
    ) -> Result<()> {
        self.stop(id, Duration::ZERO).await?;
        self.cd.delete_task(id).await?;
        let slot = self.slot_of(id).await;
        self.cd.delete_container(id).await?;
        self.release_slot(slot).await;
        if fence.snapshot_collectable(snapshot_key) {
            self.cd.remove_snapshot(snapshot_key).await?;
        }
        if let Some(dir) = state_dir_of(&self.cfg.state_dir, &self.cfg.pod_uid, &owner.agent_uid) {
            LogDir::at(dir.join("logs")).remove(id);
            let _ = std::fs::remove_dir_all(dir.join("stock").join(id));
            // FIFOs of execs the gone agent ran in the container.
            let _ = std::fs::remove_dir_all(dir.join("exec").join(id));
        }
        Ok(())
    }

    /// Kills and deletes the task and record of a container this agent no
    /// longer tracks, keeping its snapshot (a new create reuses the key).
    async fn remove_leftover(&self, container_id: &str) -> Result<()> {
        if self.cd.task(container_id).await?.is_some() {
            self.stop(container_id, Duration::ZERO).await?;
        }
        self.cd.delete_task(container_id).await?;
        self.cd.delete_container(container_id).await?;
        self.logs.remove(container_id);
        Ok(())
    }

    /// Puts the sandbox of `req`, whose container `container_id` exists
    /// and whose task is about to start, in the table (exits held back
    /// until it started).
    fn track_created(&self, req: &CreateSandboxRequest, container_id: &str, snapshot_key: &str) {
        let info = SandboxInfo {
            uid: req.uid.clone(),
            name: req.name.clone(),
            namespace: req.namespace.clone(),
            pool: req.pool.clone(),
            container_id: container_id.to_string(),
            image: req.image.clone(),
            state: ContainerState::Created,
            created_at: Some(Utc::now()),
            reset_revision: req.reset_revision,
            ..Default::default()
        };
        let mut entry = Entry::new(info, snapshot_key.to_string());
        entry.layer_cap = req.limits.ephemeral_storage_bytes;
        let mut table = self.table();
        table.insert(entry);
        table.set_starting(&req.uid, true);
    }

    /// Records that sandbox `uid`'s process (host PID `pid`) runs, with its
    /// port endpoints, and publishes it: the last step of a cold create and
    /// of a claim alike.
    fn mark_started(
        &self,
        uid: &str,
        image_name: &str,
        pid: u32,
        endpoints: Vec<fast_sandbox_api::sandbox::SandboxEndpoint>,
    ) {
        let now = Utc::now();
        self.images.mark_used(image_name, now);
        let changes = {
            let mut table = self.table();
            table.set_endpoints(uid, endpoints);
            table.started(uid, pid, now)
        };
        self.publish(changes);
        self.pins_changed();
    }

    /// Best-effort removal of everything a sandbox may have in containerd
    /// and on disk.
    async fn cleanup(&self, container_id: &str, snapshot_key: &str) {
        if let Err(e) = self.cd.kill(container_id, libc::SIGKILL, true).await {
            tracing::debug!(container = %container_id, error = %e, "kill during cleanup");
        }
        let slot = self.slot_of(container_id).await;
        for (what, r) in [
            ("task", self.cd.delete_task(container_id).await),
            ("container", self.cd.delete_container(container_id).await),
            ("snapshot", self.cd.remove_snapshot(snapshot_key).await),
        ] {
            if let Err(e) = r {
                tracing::warn!(container = %container_id, what, error = %e, "cleanup failed");
            }
        }
        self.release_slot(slot).await;
        self.logs.remove(container_id);
        self.prestart.remove(container_id);
    }

    /// Stops (SIGTERM, `grace`, SIGKILL) and deletes a sandbox: task,
    /// container, snapshot and log files.
    pub async fn delete(&self, uid: &str, grace: Option<Duration>) -> Result<SandboxInfo> {
        let lock = self.uid_lock(uid);
        let _held = lock.lock().await;
        self.remove(uid, grace.unwrap_or(self.cfg.default_grace))
            .await
    }

    async fn remove(&self, uid: &str, grace: Duration) -> Result<SandboxInfo> {
        let (info, snapshot_key) = {
            let t = self.table();
            let e = t.get(uid).ok_or_else(|| Error::NotFound(uid.to_string()))?;
            (e.info.clone(), e.snapshot_key.clone())
        };
        let id = info.container_id.clone();
        if info.state != ContainerState::Exited {
            self.stop(&id, grace).await?;
        }
        self.cd.delete_task(&id).await?;
        let slot = self.slot_of(&id).await;
        self.cd.delete_container(&id).await?;
        self.release_slot(slot).await;
        self.cd.remove_snapshot(&snapshot_key).await?;
        self.logs.remove(&id);
        self.prestart.remove(&id);
        self.execs.fifos().remove_container(&id);
        let removed = self.table().remove(uid);
        let final_info = removed.map(|e| e.info).unwrap_or(info);
        self.publish([(EventKind::Deleted, final_info.clone())]);
        self.pins_changed();
        Ok(final_info)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        if !grace.is_zero() {
            self.cd.kill(id, libc::SIGTERM, false).await?;
            if let Ok(r) = tokio::time::timeout(grace, self.cd.wait(id)).await {
                return r
                    .map(|_| ())
                    .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) });
            }
        }
        self.cd.kill(id, libc::SIGKILL, true).await?;
        match tokio::time::timeout(KILL_WAIT, self.cd.wait(id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_not_found() => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::containerd(
                "wait task",
                tonic::Status::deadline_exceeded(format!(
                    "{id} did not exit {KILL_WAIT:?} after SIGKILL"
                )),
            )),
        }
    }

    fn remove_warm(&self, snaps: Vec<WarmSnapshot>) {
        if snaps.is_empty() {
            return;
        }
        let cd = self.cd.clone();
        tokio::spawn(async move {
            for s in snaps {
                if let Err(e) = cd.remove_snapshot(&s.key).await {
                    tracing::warn!(key = %s.key, error = %e, "removing warm snapshot failed");
                }
            }
        });
    }

    /// Prepares snapshots of `chain_id` in the background until the pool
    /// holds its share for that image.
    fn refill_warm(&self, chain_id: &str) {
        let n = self.warm.claim_refill(chain_id);
        if n == 0 {
            return;
        }
        let cd = self.cd.clone();
        let pool = self.warm.clone();
        let lease = self.warm_lease();
        let prefix = self.snapshot_prefix();
        let chain = chain_id.to_string();
        tokio::spawn(async move {
            for _ in 0..n {
                let seq = WARM_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let key = format!("{prefix}warm-{}-{seq}", std::process::id());
                match cd
                    .prepare_snapshot(&key, &chain, Some(&lease), HashMap::new())
                    .await
                {
                    Ok(mounts) => {
                        if let Some(back) = pool.add(&chain, WarmSnapshot { key, mounts })
                            && let Err(e) = cd.remove_snapshot(&back.key).await
                        {
                            tracing::warn!(key = %back.key, error = %e, "removing warm snapshot failed");
                        }
                    }
                    Err(e) => {
                        pool.failed(&chain);
                        tracing::warn!(key = %key, error = %e, "preparing a warm snapshot failed");
                    }
                }
            }
        });
    }

    /// Rebuilds the table from containerd: every container of this agent
    /// (by label) with its task's state. Half-created leftovers (a container
    /// without a started task, snapshots and log files without a container)
    /// are removed.
    pub async fn rebuild(&self) -> Result<()> {
        let filters = vec![format!(
            "labels.\"{}\"==true,labels.\"{}\"=={}",
            label::MANAGED,
            label::AGENT_UID,
            self.cfg.pod_uid
        )];
        let mut containers = self.cd.list_containers(filters).await?;
        // Should one sandbox have two containers (a crash between a reset's
        // or a failed claim's steps), the newest revision comes first and
        // wins, and a cold one wins over a claimed one of the same revision.
        let revision = |c: &containerd_client::services::v1::Container| -> i64 {
            c.labels
                .get(label::RESET_REVISION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        containers.sort_by_key(|c| {
            (
                std::cmp::Reverse(revision(c)),
                c.labels.contains_key(label::PRESTARTED),
            )
        });
        let mut seen_uids = HashSet::new();
        let mut keep_snapshots = HashSet::new();
        let mut keep_logs = HashSet::new();
        let mut changes = Vec::new();
        // Running sandboxes whose exposed ports a previous agent forwarded.
        let mut forwarded = Vec::new();
        let held = self.stock.ids();
        for id in &held {
            keep_snapshots.insert(format!("{}{id}", self.snapshot_prefix()));
            keep_logs.insert(id.clone());
        }
        let mut stock_seen = Vec::new();
        for c in containers {
            let labels = &c.labels;
            let Some(uid) = labels.get(label::SANDBOX_UID).cloned() else {
                if labels.contains_key(label::PRESTARTED) {
                    keep_logs.insert(c.id.clone());
                    if !held.contains(&c.id) {
                        stock_seen.push(c);
                    }
                }
                continue;
            };
            if self.table().is_reserved(&uid) || self.table().get(&uid).is_some_and(|e| e.starting)
            {
                seen_uids.insert(uid);
                keep_snapshots.insert(c.snapshot_key.clone());
                keep_logs.insert(c.id.clone());
                continue;
            }
            let shadowed = self.table().get(&uid).is_some_and(|e| {
                e.info.container_id != c.id && e.info.reset_revision >= revision(&c)
            });
            if shadowed {
                tracing::warn!(%uid, container = %c.id, "removing a second container of one sandbox");
                self.discard(&c.id, &c.snapshot_key).await;
                continue;
            }
            let task = self.cd.task(&c.id).await?;
            let task = match task {
                Some(t) if matches!(t.state, TaskState::Running | TaskState::Stopped) => t,
                other => {
                    tracing::info!(container = %c.id, task = ?other.map(|t| t.state), "removing a half-created sandbox");
                    self.cleanup(&c.id, &c.snapshot_key).await;
                    continue;
                }
            };
            if labels.contains_key(label::PRESTARTED)
                && task.state == TaskState::Running
                && self
                    .prestart
                    .still_init(&c.id, &self.cfg.proc_root, task.pid)
                && let Err(e) = self.finish_claim(&c, task.pid).await
            {
                tracing::warn!(%uid, container = %c.id, error = %e, "a claim cut short by a restart could not be finished; removing the sandbox");
                self.discard(&c.id, &c.snapshot_key).await;
                continue;
            }
            seen_uids.insert(uid.clone());
            keep_snapshots.insert(c.snapshot_key.clone());
            keep_logs.insert(c.id.clone());
            let created_at = labels
                .get(label::CLAIMED_AT)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| timestamp(c.created_at.as_ref()));
            if let Some(at) = created_at {
                self.images.mark_used(&normalize(&c.image), at);
            }
            let mut table = self.table();
            if table.get(&uid).is_none() {
                let info = SandboxInfo {
                    uid: uid.clone(),
                    name: labels.get(label::SANDBOX_NAME).cloned().unwrap_or_default(),
                    namespace: labels
                        .get(label::SANDBOX_NAMESPACE)
                        .cloned()
                        .unwrap_or_default(),
                    pool: labels.get(label::POOL).cloned().unwrap_or_default(),
                    container_id: c.id.clone(),
                    image: c.image.clone(),
                    state: ContainerState::Running,
                    pid: Some(task.pid),
                    created_at,
                    started_at: created_at,
                    reset_revision: labels
                        .get(label::RESET_REVISION)
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                    ..Default::default()
                };
                let mut entry = Entry::new(info, c.snapshot_key.clone());
                entry.layer_cap = labels
                    .get(label::EPHEMERAL_STORAGE)
                    .and_then(|b| b.parse().ok());
                table.insert(entry);
                let ports: Vec<ExposedPort> = labels
                    .get(label::EXPOSED_PORTS)
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                if task.state == TaskState::Running && !ports.is_empty() {
                    forwarded.push((uid.clone(), task.pid, ports));
                }
            }
            if task.state == TaskState::Stopped {
                if task.exit_status != 0 && self.oom_killed(&uid, &c.id) {
                    table.oom(&c.id);
                }
                changes.extend(table.exited(&c.id, task.exit_status, task.exited_at));
            }
        }
        // Sandboxes the table holds but containerd no longer has.
        let gone: Vec<String> = {
            let t = self.table();
            t.uids()
                .into_iter()
                .filter(|u| !seen_uids.contains(u) && !t.is_reserved(u))
                .collect()
        };
        for uid in gone {
            if let Some(e) = self.table().remove(&uid) {
                changes.push((EventKind::Deleted, e.info));
            }
        }
        self.publish(changes);
        for (uid, pid, ports) in forwarded {
            match self.ports.expose(&uid, pid, &ports).await {
                Ok(endpoints) => {
                    let info = {
                        let mut table = self.table();
                        table.set_endpoints(&uid, endpoints);
                        table.get(&uid).map(|e| e.info.clone())
                    };
                    if let Some(info) = info {
                        self.publish([(EventKind::Started, info)]);
                    }
                }
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "exposed ports not forwarded again");
                }
            }
        }
        let stock_ids: HashSet<String> = stock_seen.iter().map(|c| c.id.clone()).collect();
        for c in stock_seen {
            keep_snapshots.insert(c.snapshot_key.clone());
            self.adopt(c).await;
        }
        for id in self.prestart.ids() {
            if !keep_logs.contains(&id)
                && !stock_ids.contains(&id)
                && !self.stock.ids().contains(&id)
            {
                self.prestart.remove(&id);
            }
        }
        // Leftovers of creates that never finished.
        let warm: HashSet<String> = self.warm.keys().into_iter().collect();
        for key in self.cd.snapshot_keys(&self.snapshot_prefix()).await? {
            if !keep_snapshots.contains(&key) && !warm.contains(&key) {
                tracing::info!(key = %key, "removing an orphaned snapshot");
                self.cd.remove_snapshot(&key).await?;
            }
        }
        let in_flight: HashSet<String> = {
            let t = self.table();
            t.list().into_iter().map(|i| i.container_id).collect()
        };
        for id in self.logs.container_ids() {
            if !keep_logs.contains(&id) && !in_flight.contains(&id) {
                self.logs.remove(&id);
            }
        }
        Ok(())
    }

    /// Whether the kernel OOM-killed a process of sandbox `uid` (container
    /// `container_id`), by its cgroup's counter.
    fn oom_killed(&self, uid: &str, container_id: &str) -> bool {
        let path = format!(
            "{}/{}",
            self.cfg.cgroup_parent.trim_end_matches('/'),
            cgroup::leaf(uid, container_id)
        );
        cgroup::oom::kills(&self.cfg.cgroup_root, &path).is_some_and(|n| n > 0)
    }

    fn apply_envelope(&self, topic: &str, payload: &[u8]) {
        let change = match topic {
            TOPIC_EXIT => match TaskExit::decode(payload) {
                // Exits of exec'd processes are not the sandbox's.
                Ok(ev) if ev.id.is_empty() || ev.id == ev.container_id => {
                    let uid = self.table().uid_of(&ev.container_id).map(str::to_string);
                    if ev.exit_status != 0
                        && uid.is_some_and(|u| self.oom_killed(&u, &ev.container_id))
                    {
                        self.table().oom(&ev.container_id);
                    }
                    let change = self.table().exited(
                        &ev.container_id,
                        ev.exit_status,
                        timestamp(ev.exited_at.as_ref()),
                    );
                    if change.is_none() {
                        self.stock_exited(&ev.container_id);
                    }
                    change
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable task exit event");
                    None
                }
            },
            TOPIC_OOM => match TaskOom::decode(payload) {
                Ok(ev) => self.table().oom(&ev.container_id),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable task OOM event");
                    None
                }
            },
            _ => None,
        };
        self.publish(change);
    }

    /// Follows containerd's task events for as long as the agent lives:
    /// subscribes, rebuilds the table (events that arrive meanwhile wait in
    /// the stream), marks the agent ready, then applies events as they come.
    /// When the stream breaks (containerd restarted) the agent turns
    /// unready, subscribes again and re-syncs.
    pub async fn run_events(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let metrics = self.metrics.clone();
        tokio::spawn(crate::logs::keep_capped(
            self.logs.clone(),
            self.cfg.log_max_bytes,
            move |n| metrics.log_bytes_dropped(n),
            shutdown.clone(),
        ));
        tokio::spawn(self.clone().keep_layers_within_caps(shutdown.clone()));
        if self.user_namespaces() {
            tokio::spawn(self.clone().keep_slots_swept(shutdown.clone()));
        }
        tokio::spawn(self.clone().keep_images_pinned(shutdown.clone()));
        loop {
            if *shutdown.borrow() {
                return;
            }
            let stream = match self.cd.subscribe(&[TOPIC_EXIT, TOPIC_OOM]).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to containerd events failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RESUBSCRIBE_BACKOFF) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(e) = self.prepare_warm_lease().await {
                tracing::warn!(error = %e, "creating the warm snapshot lease failed");
            }
            match self.rebuild().await {
                Ok(()) => {
                    let n = self.table().list().len();
                    tracing::info!(sandboxes = n, "state rebuilt from containerd; ready");
                    self.health.set_ready(true);
                    self.start_refill(shutdown.clone());
                    crate::exec::finish_leftovers(self.clone()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rebuilding state from containerd failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RESUBSCRIBE_BACKOFF) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            }
            let mut stream = stream;
            loop {
                tokio::select! {
                    msg = stream.recv() => match msg {
                        Some(Ok(env)) => {
                            if let Some(ev) = env.event {
                                self.apply_envelope(&env.topic, &ev.value);
                            }
                        }
                        None => {
                            tracing::warn!("containerd closed the event stream");
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "containerd event stream failed");
                            break;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
            self.health.set_ready(false);
        }
    }

    /// Removes the prepared snapshots and their lease; for a graceful
    /// shutdown (the pod is going away; a restarted agent would clean them
    /// up in its rebuild anyway).
    pub async fn release_warm(&self) {
        if !self.warm.enabled() {
            return;
        }
        for key in self.warm.drain() {
            if let Err(e) = self.cd.remove_snapshot(&key).await {
                tracing::warn!(key = %key, error = %e, "removing warm snapshot failed");
            }
        }
        if let Err(e) = self.cd.delete_lease(&self.warm_lease()).await {
            tracing::warn!(error = %e, "deleting the warm snapshot lease failed");
        }
    }

    async fn prepare_warm_lease(&self) -> Result<()> {
        if !self.warm.enabled() {
            return Ok(());
        }
        let labels = HashMap::from([(label::AGENT_UID.to_string(), self.cfg.pod_uid.clone())]);
        self.cd
            .create_lease(&self.warm_lease(), None, labels)
            .await?;
        Ok(())
    }
}
