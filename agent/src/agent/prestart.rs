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
//! The stock is built and refilled in `stock_refill`.

use std::time::{Duration, Instant};

use chrono::Utc;
use containerd_client::services::v1::Container;
use fast_sandbox_api::agent::{CreateSandboxRequest, SandboxInfo};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::container_labels as label;
use oci_spec::runtime::Spec;

use super::Agent;
use crate::cgroup::{self, limits::Limits};
use crate::error::{Error, Result};
use crate::metrics::Stage;
use crate::prestarted::{Ends, set_hostname};
use crate::rootfs::{self, SandboxPath, SandboxRoot};
use crate::runtime::TaskState;
use crate::spec;
use crate::stock::{Item, Miss};
use crate::userns::Mapping;

/// How long a new init may take to say it waits.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an init may take from the launch message to its exec.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One pre-started sandbox in the stock.
#[derive(Debug)]
pub struct Prestarted {
    pub(super) id: String,
    pub(super) digest: String,
    pub(super) snapshot_key: String,
    pub(super) cgroup_path: String,
    pub(super) pid: u32,
    pub(super) ends: Ends,
    pub(super) mapping: Option<Mapping>,
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
        // id of its own: the same check is made here, unless the sandbox is
        // where admission bound it, which no other agent has held. The
        // check reads every container of the node, so it is skipped where
        // it cannot find one.
        if self.stock.enabled() && !req.first_placement {
            let t = Instant::now();
            let filter = format!("labels.\"{}\"==\"{}\"", label::SANDBOX_UID, req.uid);
            for c in self.cd.list_containers(vec![filter]).await? {
                let owner = c.labels.get(label::AGENT_UID).cloned().unwrap_or_default();
                // A relabel in flight as an earlier run of this agent was
                // killed can reach containerd after this run rebuilt its
                // state and took the container for its stock: no launch
                // message ever went out (it follows the relabel), so the
                // container is an unclaimed pre-started one and goes.
                let ours = (owner == self.cfg.pod_uid)
                    .then(|| self.stock.remove_id(&c.id))
                    .flatten();
                let Some(p) = ours else {
                    return Err(Error::ContainerExists { owner, id: c.id });
                };
                tracing::warn!(uid = %req.uid, container = %c.id, "a stock container carries the sandbox's labels from a claim a kill cut short; removing it");
                self.destroy(p);
            }
            self.metrics.observe(Stage::ClaimCheck, t.elapsed());
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
            self.join_shim_group(&mut spec);
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
        let relabel = Instant::now();
        if let Err(e) = self.cd.relabel_container(&p.id, labels, spec_json).await {
            self.destroy(p);
            return Err(ClaimFailed::Unlaunched(e));
        }
        self.metrics.observe(Stage::Relabel, relabel.elapsed());
        let launch_started = Instant::now();
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
        self.metrics
            .observe(Stage::Launch, launch_started.elapsed());
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
    pub(super) fn destroy(&self, p: Prestarted) {
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

    /// Takes a pre-started container a previous agent process left into the
    /// stock once its init answers on fresh FIFO ends; removes it if its
    /// task is gone or the init does not answer. Says whether the task was
    /// kept (for now: the init's answer comes later).
    pub(super) async fn adopt(&self, c: Container) -> bool {
        let task = match self.cd.task(&c.id).await {
            Ok(Some(t)) if t.state == TaskState::Running => t,
            Ok(_) => {
                tracing::info!(container = %c.id, "removing a pre-started sandbox whose task is gone");
                self.discard(&c.id, &c.snapshot_key).await;
                return false;
            }
            Err(e) => {
                tracing::warn!(container = %c.id, error = %e, "pre-started sandbox not adopted");
                return false;
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
            return false;
        };
        let Some(agent) = self.me.upgrade() else {
            return false;
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
        true
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
}
