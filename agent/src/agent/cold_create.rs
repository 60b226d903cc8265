//! The cold path of a create, and what a claim shares with it: admission
//! against the slots and the sandbox's lock, image and snapshot, container
//! and task, network, and the table entry that makes it visible.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use fast_sandbox_api::agent::{ContainerState, CreateSandboxRequest, SandboxInfo};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::validation::validate_create_request;
use fast_sandbox_api::wellknown::container_labels as label;

use crate::cgroup;
use crate::error::{Error, Result};
use crate::metrics::Stage;
use crate::runtime::ContainerRecord;
use crate::spec;
use crate::state::Entry;
use crate::userns::Mapping;

use super::{Agent, CREATE_LEASE_TTL, STALE_BUNDLE_FRESH_IDS};

impl Agent {
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

    pub(super) async fn create_reserved(&self, req: &CreateSandboxRequest) -> Result<SandboxInfo> {
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
        let mapping = self.take_slot(&container_id).await?;
        if let Some(m) = &mapping {
            spec::map_users(&mut spec, m)?;
        }
        self.join_shim_group(&mut spec);
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
    pub(super) async fn ensure_unpacked(
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
    pub(super) async fn create_in_lease(
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
    pub(super) async fn create_container_and_task(
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
            labels.extend([m.container_label()]);
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
    pub(super) async fn attach_network(
        &self,
        req: &CreateSandboxRequest,
        pid: u32,
        leaf: &str,
    ) -> Result<()> {
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
    pub(super) fn release_link(&self, uid: &str) {
        if let Some(agent) = self.me.upgrade() {
            let uid = uid.to_string();
            tokio::spawn(async move { agent.egress.release(&uid).await });
        }
    }

    /// The labels of a sandbox's container: who it is, whose it is, and
    /// what the agent needs to rebuild its table from containerd.
    pub(super) fn container_labels(&self, req: &CreateSandboxRequest) -> HashMap<String, String> {
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
        labels
    }

    /// Turns a failed container create into [`Error::ContainerExists`] when
    /// the id is taken by another agent's container, so the create path
    /// never cleans up (kills) what is not its own.
    pub(super) async fn explain_existing(&self, container_id: &str, e: Error) -> Error {
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

    /// Kills and deletes the task and record of a container this agent no
    /// longer tracks, keeping its snapshot (a new create reuses the key).
    pub(super) async fn remove_leftover(&self, container_id: &str) -> Result<()> {
        if self.cd.task(container_id).await?.is_some() {
            self.stop(container_id, Duration::ZERO).await?;
        }
        self.delete_task(container_id).await?;
        self.cd.delete_container(container_id).await?;
        self.logs.remove(container_id);
        Ok(())
    }

    /// Puts the sandbox of `req`, whose container `container_id` exists
    /// and whose task is about to start, in the table (exits held back
    /// until it started).
    pub(super) fn track_created(
        &self,
        req: &CreateSandboxRequest,
        container_id: &str,
        snapshot_key: &str,
    ) {
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
    pub(super) fn mark_started(
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
}
