//! Pre-started sandboxes: the agent's stock of containers whose task runs
//! already, our init waiting in each, and the claim that turns one into a
//! sandbox in a few milliseconds.
//!
//! A claim:
//! 1. relabels the container to the sandbox and replaces its spec with the
//!    cold spec its process now follows, in one containerd update: the
//!    commit point (a restarted agent finds the sandbox by its labels);
//! 2. writes the sandbox's limits to its cgroup, restores the CPU weight,
//!    and sets the hostname;
//! 3. sends the launch message (argv, env, cwd, rlimits, all from that
//!    spec) and waits until the init exec'd, or reports its reason as
//!    `StartFailed`;
//! 4. reports Running.
//!
//! A claim that fails for any other reason removes the container and the
//! create goes on cold. A restart between 1 and 3 finishes the launch from
//! the stored spec (the init still runs: its executable is the file in the
//! container's directory), so the command starts exactly once.
//!
//! The stock refills in the background, one build at a time, each build's
//! process at the lowest CPU weight. While the image holds more than a
//! quarter of its stock, a build starts once the agent has seen no create
//! for a moment (a burst keeps every core for its claims) or after a
//! bounded wait; below that it starts at once, so a steady stream of
//! creates keeps finding one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use containerd_client::services::v1::Container;
use fast_sandbox_api::agent::{CreateSandboxRequest, SandboxInfo};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::container_labels as label;
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use super::{Agent, CREATE_LEASE_TTL, SHIM_GROUP_LABEL};
use crate::cgroup::{self, limits::Limits};
use crate::error::{Error, Result};
use crate::metrics::Stage;
use crate::prestarted::{Ends, set_hostname};
use crate::rootfs::{self, SandboxPath, SandboxRoot};
use crate::runtime::{ContainerRecord, TaskState};
use crate::spec;
use crate::stock::{self, Item, Miss};
use crate::userns::Mapping;

/// How long a new init may take to say it waits.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an init may take from the launch message to its exec.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed build before the next; doubles with each failure
/// in a row, up to [`MAX_BUILD_BACKOFF`] (an image that cannot run the
/// init must not keep a core busy).
const BUILD_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between failed builds.
const MAX_BUILD_BACKOFF: Duration = Duration::from_secs(60);

/// One pre-started sandbox in the stock.
#[derive(Debug)]
pub struct Prestarted {
    id: String,
    digest: String,
    snapshot_key: String,
    cgroup_path: String,
    pid: u32,
    ends: Ends,
    mapping: Option<Mapping>,
}

impl Item for Prestarted {
    fn id(&self) -> &str {
        &self.id
    }
    fn digest(&self) -> &str {
        &self.digest
    }
}

/// Why a claim produced no sandbox.
#[derive(Debug)]
enum ClaimFailed {
    /// Nothing of the sandbox ran: the create may go on cold.
    Unlaunched(Error),
    /// The launch message went out, so the command may have run: the
    /// create fails rather than run it a second time.
    Launched(Error),
}

fn cgroups_path(spec: &Spec) -> Option<String> {
    spec.linux()
        .as_ref()?
        .cgroups_path()
        .as_ref()
        .map(|p| p.display().to_string())
}

impl Agent {
    /// Pre-started sandboxes ready to be claimed.
    pub fn stock_ready(&self) -> usize {
        self.stock.ready()
    }

    /// Claims a pre-started sandbox of the image for `req` when the stock
    /// holds one; `None` sends the create down the cold path. `spec` is the
    /// cold spec.
    pub(super) async fn try_claim(
        &self,
        req: &CreateSandboxRequest,
        image_name: &str,
        digest: &str,
        spec: &Spec,
    ) -> Result<Option<SandboxInfo>> {
        *self.last_create.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if req.limits.ephemeral_storage_bytes != self.cfg.stock_layer_cap {
            self.metrics.stock_create(Miss::LayerCap.as_str());
            return Ok(None);
        }
        // A cold create's container id is the sandbox's, so containerd
        // refuses it while another agent's container of the sandbox lives
        // on this node (a re-placement after its agent vanished) and the
        // controller has the node swept first. A claimed container has an
        // id of its own: the same check is made here.
        if self.stock.enabled() {
            let filter = format!("labels.\"{}\"==\"{}\"", label::SANDBOX_UID, req.uid);
            if let Some(c) = self
                .cd
                .list_containers(vec![filter])
                .await?
                .into_iter()
                .next()
            {
                return Err(Error::ContainerExists {
                    owner: c.labels.get(label::AGENT_UID).cloned().unwrap_or_default(),
                    id: c.id,
                });
            }
        }
        let (taken, stale) = self.stock.take(image_name, digest);
        stale.into_iter().for_each(|p| self.destroy(p));
        // Warm from now on, if it was not.
        for p in self.stock.note_used(image_name) {
            self.destroy(p);
        }
        self.refill.notify_one();
        let p = match taken {
            Ok(p) => p,
            Err(miss) => {
                self.metrics.stock_create(miss.as_str());
                return Ok(None);
            }
        };
        self.metrics.set_stock_ready(self.stock.ready());
        match self.claim(req, image_name, spec, p).await {
            Ok(info) => {
                self.metrics.stock_create("claimed");
                Ok(Some(info))
            }
            Err(ClaimFailed::Launched(e @ Error::StartFailed(_))) => {
                self.metrics.stock_create("claimed");
                Err(e)
            }
            Err(ClaimFailed::Launched(e)) => {
                tracing::warn!(uid = %req.uid, error = %e, "a claimed sandbox failed after its launch message; not creating it again");
                self.metrics.stock_create("failed");
                Err(e)
            }
            Err(ClaimFailed::Unlaunched(e)) => {
                tracing::warn!(uid = %req.uid, error = %e, "claiming a pre-started sandbox failed; creating it cold");
                self.metrics.stock_create("failed");
                Ok(None)
            }
        }
    }

    async fn claim(
        &self,
        req: &CreateSandboxRequest,
        image_name: &str,
        cold: &Spec,
        p: Prestarted,
    ) -> std::result::Result<SandboxInfo, ClaimFailed> {
        let t = Instant::now();
        let prepared = (|| {
            let mut spec = cold.clone();
            if let Some(m) = &p.mapping {
                spec::map_users(&mut spec, m)?;
            }
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_cgroups_path(Some(p.cgroup_path.clone().into()));
            spec.set_linux(Some(linux));
            spec::add_prestart_mount(&mut spec, &self.prestart.dir(&p.id))?;
            let launch = spec::launch_of(&spec)?.encode();
            let json = serde_json::to_vec(&spec).map_err(|e| Error::Spec(e.to_string()))?;
            Ok::<_, Error>((spec, launch, json))
        })();
        let (spec, launch, spec_json) = match prepared {
            Ok(x) => x,
            Err(e) => {
                self.destroy(p);
                return Err(ClaimFailed::Unlaunched(e));
            }
        };
        let mut labels = self.container_labels(req);
        labels.insert(label::CLAIMED_AT.to_string(), Utc::now().to_rfc3339());
        if let Some(m) = p.mapping {
            labels.extend([m.container_label()]);
        }
        if let Err(e) = self.cd.relabel_container(&p.id, labels, spec_json).await {
            self.destroy(p);
            return Err(ClaimFailed::Unlaunched(e));
        }
        let Prestarted {
            id,
            snapshot_key,
            cgroup_path,
            pid,
            ends,
            ..
        } = p;
        self.track_created(req, &id, &snapshot_key);
        self.stock.release(&id);
        let failed = |e| async {
            self.discard(&id, &snapshot_key).await;
            let mut table = self.table();
            table.remove(&req.uid);
            // Keep the slot: create() releases it, or the cold create
            // that follows takes it.
            let _ = table.reserve(&req.uid);
            e
        };
        let leaf = cgroup::leaf(&req.uid, &id);
        if let Err(e) = self.prepare_launch(&spec, &cgroup_path, pid, &leaf).await {
            return Err(ClaimFailed::Unlaunched(failed(e).await));
        }
        if let Err(e) = self.attach_network(req, pid, &leaf).await {
            return Err(ClaimFailed::Unlaunched(failed(e).await));
        }
        let launched = async {
            ends.launch(&launch, LAUNCH_TIMEOUT).await?;
            self.ports.expose(&req.uid, pid, &req.exposed_ports).await
        }
        .await;
        let endpoints = match launched {
            Ok(e) => e,
            Err(e) => return Err(ClaimFailed::Launched(failed(e).await)),
        };
        self.metrics.observe(Stage::Claim, t.elapsed());
        self.mark_started(&req.uid, image_name, pid, endpoints);
        self.prestart.scrub(&id);
        tracing::debug!(uid = %req.uid, container = %id, elapsed = ?t.elapsed(), "claimed a pre-started sandbox");
        self.get(&req.uid).map_err(ClaimFailed::Launched)
    }

    /// What runc does for a cold sandbox before its process starts and the
    /// init cannot do itself: the sandbox's limits on its cgroup (and the
    /// default CPU weight back), its hostname, and its working directory
    /// made as root when missing. `leaf` names the sandbox's cgroup, which
    /// proves host PID `pid` is still its process.
    async fn prepare_launch(
        &self,
        spec: &Spec,
        cgroup_path: &str,
        pid: u32,
        leaf: &str,
    ) -> Result<()> {
        let limits = Limits::of(spec.linux().as_ref().and_then(|l| l.resources().as_ref()));
        cgroup::limits::apply(&self.cfg.cgroup_root, cgroup_path, &limits)?;
        let proc_dir = rootfs::process_dir(&self.cfg.proc_root, pid, leaf)?;
        set_hostname(proc_dir, &spec.hostname().clone().unwrap_or_default()).await?;
        let cwd = spec
            .process()
            .as_ref()
            .map(|p| p.cwd().display().to_string())
            .unwrap_or_default();
        let (proc_root, leaf) = (self.cfg.proc_root.clone(), leaf.to_string());
        let made = tokio::task::spawn_blocking(move || {
            let root = SandboxRoot::open(&proc_root, pid, &leaf)?.as_root();
            root.mkdir_all(&SandboxPath::parse(&cwd)?, 0o755)
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::io("making the working directory", std::io::Error::other(e)))?;
        // Where the agent cannot (a working directory on another mount),
        // the init tries, and its failure is the sandbox's StartFailed.
        if let Err(e) = made {
            tracing::debug!(error = %e, "working directory not made before launch");
        }
        Ok(())
    }

    /// Kills and removes a container whose task may run, and its directory.
    pub(super) async fn discard(&self, id: &str, snapshot_key: &str) {
        if let Err(e) = self.stop(id, Duration::ZERO).await {
            tracing::debug!(container = %id, error = %e, "kill while discarding");
        }
        self.cleanup(id, snapshot_key).await;
    }

    /// Destroys a pre-started sandbox in the background.
    fn destroy(&self, p: Prestarted) {
        let Some(agent) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            agent.discard(&p.id, &p.snapshot_key).await;
            agent.stock.release(&p.id);
            agent.metrics.set_stock_ready(agent.stock.ready());
        });
    }

    /// The process of container `id` exited: if it was in the stock, it
    /// leaves it and the stock refills.
    pub(super) fn stock_exited(&self, id: &str) {
        if let Some(p) = self.stock.remove_id(id) {
            tracing::warn!(container = %id, "a pre-started sandbox's init exited; replacing it");
            self.destroy(p);
            self.refill.notify_one();
        }
    }

    /// Starts the background refill, once.
    pub(super) fn start_refill(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        if !self.stock.enabled() || self.refill_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let handle = tokio::spawn(self.clone().refill_loop(shutdown));
        *self.refill_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    async fn refill_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BUILD_BACKOFF;
        loop {
            if *shutdown.borrow() || self.stock_stopped.load(Ordering::SeqCst) {
                return;
            }
            let Some(image) = self.stock.next_build() else {
                tokio::select! {
                    () = self.refill.notified() => continue,
                    r = shutdown.changed() => if r.is_err() { return } else { continue },
                }
            };
            let wanted = Instant::now();
            loop {
                let last = *self.last_create.lock().unwrap_or_else(|p| p.into_inner());
                let pause = stock::build_delay(
                    last.map(|t| t.elapsed()),
                    wanted.elapsed(),
                    self.stock.ready_of(&image),
                    self.stock.per_image(),
                );
                if pause.is_zero() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    r = shutdown.changed() => if r.is_err() { return },
                }
            }
            match self.build(&image).await {
                Ok(p) => {
                    backoff = BUILD_BACKOFF;
                    self.metrics.stock_build("ok");
                    if self.stock_stopped.load(Ordering::SeqCst) {
                        self.stock.build_failed(&image);
                        self.discard(&p.id, &p.snapshot_key).await;
                        self.stock.release(&p.id);
                    } else if let Some(back) = self.stock.add(&image, p, true) {
                        self.destroy(back);
                    }
                    self.metrics.set_stock_ready(self.stock.ready());
                }
                Err(e) => {
                    self.stock.build_failed(&image);
                    self.metrics.stock_build("failed");
                    tracing::warn!(%image, error = %e, retry_in = ?backoff, "building a pre-started sandbox failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BUILD_BACKOFF);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        r = shutdown.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }

    /// A new container id for the stock: unique across the agent's
    /// restarts (its PID may repeat; the clock does not).
    fn stock_id(&self) -> String {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}{}-{nanos:x}{seq:x}",
            cgroup::PRESTARTED_PREFIX,
            self.cfg.pod_uid
        )
    }

    /// Builds one pre-started sandbox of `image_name`: its directory and
    /// FIFO ends first (the init needs a reader for its status), then
    /// snapshot, container and task under a create lease, then waits until
    /// the init says it waits.
    async fn build(&self, image_name: &str) -> Result<Prestarted> {
        let image = self.images.resolve(&self.cd, image_name).await?;
        self.ensure_unpacked(image_name, &image).await?;
        let (uid, gid) = spec::user_ids(image.exec.user.as_deref())?;
        let id = self.stock_id();
        let snapshot_key = format!("{}{id}", self.snapshot_prefix());
        let cgroup_path = cgroup::sandbox_cgroup(&self.cfg.cgroup_parent, &id);
        self.stock.hold(&id);
        let mut mapping = None;
        let built = async {
            mapping = self.take_slot(&id).await?;
            let (uid, gid) = match &mapping {
                Some(m) => (m.host_id(uid), m.host_id(gid)),
                None => (uid, gid),
            };
            let dir = self.prestart.create(&id, uid, gid)?;
            let mut ends = Ends::open(&dir)?;
            let mut spec = spec::prestarted(&image.exec, &cgroup_path, &dir)?;
            if let Some(m) = &mapping {
                spec::map_users(&mut spec, m)?;
            }
            let spec_json = serde_json::to_vec(&spec).map_err(|e| Error::Spec(e.to_string()))?;
            let lease = self
                .cd
                .create_lease(
                    &format!("fast-sandbox-create-{id}"),
                    Some(CREATE_LEASE_TTL),
                    Default::default(),
                )
                .await?;
            let made = async {
                let snapshot_labels = mapping.map(|m| m.snapshot_labels()).unwrap_or_default();
                let mut mounts = self
                    .cd
                    .prepare_snapshot(
                        &snapshot_key,
                        &image.chain_id,
                        Some(&lease),
                        snapshot_labels,
                    )
                    .await?;
                let mut labels = std::collections::HashMap::from([
                    (label::MANAGED.to_string(), "true".to_string()),
                    (label::AGENT_UID.to_string(), self.cfg.pod_uid.clone()),
                    (label::PRESTARTED.to_string(), image.digest.clone()),
                ]);
                if let Some(m) = mapping {
                    labels.extend([m.container_label()]);
                }
                if let Some(cap) = self.cfg.stock_layer_cap {
                    mounts = self.capped_mounts(mounts, cap).await?;
                    labels.insert(label::EPHEMERAL_STORAGE.to_string(), cap.to_string());
                }
                if self.cfg.shim_group {
                    labels.insert(
                        SHIM_GROUP_LABEL.to_string(),
                        format!("fast-sandbox-{}", self.cfg.pod_uid),
                    );
                }
                self.cd
                    .create_container(
                        ContainerRecord {
                            id: id.clone(),
                            image: image_name.to_string(),
                            labels,
                            spec_json,
                            snapshot_key: snapshot_key.clone(),
                        },
                        Some(&lease),
                    )
                    .await?;
                let (stdout, stderr) = self.logs.create(&id)?;
                let created = self.cd.create_task(&id, mounts, &stdout, &stderr).await?;
                if mapping.is_some() && self.cfg.stock_layer_cap.is_some() {
                    self.own_capped_root(created, &cgroup::leaf(&id, &id)).await?;
                }
                let pid = self.cd.start_task(&id).await?;
                if let Some(cap) = self.cfg.stock_layer_cap {
                    self.verify_layer(pid, cap)?;
                }
                Ok(pid)
            }
            .await;
            if let Err(e) = self.cd.delete_lease(&lease).await {
                tracing::debug!(%lease, error = %e, "deleting a create lease failed; it expires by itself");
            }
            let pid = made?;
            ends.ready(READY_TIMEOUT).await?;
            Ok::<_, Error>((pid, ends))
        }
        .await;
        match built {
            Ok((pid, ends)) => Ok(Prestarted {
                id,
                digest: image.digest.clone(),
                snapshot_key,
                cgroup_path,
                pid,
                ends,
                mapping,
            }),
            Err(e) => {
                self.discard(&id, &snapshot_key).await;
                // The slot, when no container came to hold it.
                self.release_slot(mapping).await;
                self.stock.release(&id);
                Err(e)
            }
        }
    }

    /// Takes a pre-started container a previous agent process left into the
    /// stock once its init answers on fresh FIFO ends; removes it if its
    /// task is gone or the init does not answer.
    pub(super) async fn adopt(&self, c: Container) {
        let task = match self.cd.task(&c.id).await {
            Ok(Some(t)) if t.state == TaskState::Running => t,
            Ok(_) => {
                tracing::info!(container = %c.id, "removing a pre-started sandbox whose task is gone");
                self.discard(&c.id, &c.snapshot_key).await;
                return;
            }
            Err(e) => {
                tracing::warn!(container = %c.id, error = %e, "pre-started sandbox not adopted");
                return;
            }
        };
        let spec: Option<Spec> = c
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok());
        // A pre-started root's layer cap is fixed; one of another cap than
        // this agent's stock can never be claimed.
        let cap = c
            .labels
            .get(label::EPHEMERAL_STORAGE)
            .and_then(|b| b.parse::<u64>().ok());
        // Nor one of the other kind of user: host or mapped.
        let mapping = Mapping::of_container(&c.labels);
        let (Some(digest), Some(cgroup_path), true, true) = (
            c.labels.get(label::PRESTARTED).cloned(),
            spec.as_ref().and_then(cgroups_path),
            cap == self.cfg.stock_layer_cap,
            mapping.is_some() == self.user_namespaces(),
        ) else {
            self.discard(&c.id, &c.snapshot_key).await;
            return;
        };
        let Some(agent) = self.me.upgrade() else {
            return;
        };
        let image = normalize(&c.image);
        for p in self.stock.note_used(&image) {
            self.destroy(p);
        }
        self.stock.hold(&c.id);
        tokio::spawn(async move {
            let opened = async {
                let mut ends = Ends::open(&agent.prestart.dir(&c.id))?;
                ends.ready(READY_TIMEOUT).await?;
                Ok::<_, Error>(ends)
            }
            .await;
            match opened {
                Ok(ends) => {
                    let p = Prestarted {
                        id: c.id.clone(),
                        digest,
                        snapshot_key: c.snapshot_key.clone(),
                        cgroup_path,
                        pid: task.pid,
                        ends,
                        mapping,
                    };
                    tracing::info!(container = %c.id, %image, "adopted a pre-started sandbox");
                    if let Some(back) = agent.stock.add(&image, p, false) {
                        agent.destroy(back);
                    }
                    agent.metrics.set_stock_ready(agent.stock.ready());
                }
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "removing a pre-started sandbox whose init does not answer");
                    agent.discard(&c.id, &c.snapshot_key).await;
                    agent.stock.release(&c.id);
                }
            }
        });
    }

    /// Finishes a claim a previous agent process committed (relabelled)
    /// but did not see exec: limits, hostname and the launch message again,
    /// all from the stored spec. The init reads one whole message, so a
    /// second one is never run.
    pub(super) async fn finish_claim(&self, c: &Container, pid: u32) -> Result<()> {
        let spec: Spec = c
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| Error::Spec(format!("container {} has no readable spec", c.id)))?;
        let cgroup_path = cgroups_path(&spec)
            .ok_or_else(|| Error::Spec(format!("container {} has no cgroup path", c.id)))?;
        let launch = spec::launch_of(&spec)?.encode();
        let leaf = cgroup_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        self.prepare_launch(&spec, &cgroup_path, pid, &leaf).await?;
        let ends = Ends::open(&self.prestart.dir(&c.id))?;
        match ends.launch(&launch, LAUNCH_TIMEOUT).await {
            Ok(()) => {}
            // The init exec'd before these ends opened: its EXECUTING went
            // to the previous agent.
            Err(Error::Prestarted(_))
                if !self.prestart.still_init(&c.id, &self.cfg.proc_root, pid)
                    && self.cfg.proc_root.join(pid.to_string()).exists() => {}
            Err(e) => return Err(e),
        }
        self.prestart.scrub(&c.id);
        tracing::info!(container = %c.id, "finished a claim an agent restart cut short");
        Ok(())
    }

    /// Stops refilling and destroys the whole stock; for tests and
    /// benchmarks that must leave nothing behind (a real agent keeps its
    /// stock across restarts, and the node janitor collects a gone one's).
    pub async fn release_stock(&self) {
        self.stock_stopped.store(true, Ordering::SeqCst);
        self.refill.notify_one();
        let task = self
            .refill_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        for p in self.stock.drain() {
            self.discard(&p.id, &p.snapshot_key).await;
            self.stock.release(&p.id);
        }
        self.metrics.set_stock_ready(0);
    }
}
