//! The node janitor's sweep (see [`crate::janitor`] for its rules):
//! containers, snapshots, slots, image marks and state directories of agent
//! pods that are gone.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use fast_sandbox_api::agent::{JanitorReport, JanitorRequest, RemovedContainer};
use fast_sandbox_api::wellknown::container_labels as label;

use crate::error::Result;
use crate::janitor::{Fence, Owner, SNAPSHOT_PREFIX, snapshot_agent, state_dir_of};
use crate::logs::LogDir;

use containerd_client::services::v1::Container;

use crate::userns::Mapping;

use super::Agent;
use super::warm_snapshots::warm_lease_of;

impl Agent {
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
            match self.collect(&c, &fence, &owner).await {
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
    /// its user namespace slot, its snapshot (when under that agent's key
    /// prefix), log files and exec FIFOs.
    pub(super) async fn collect(&self, c: &Container, fence: &Fence, owner: &Owner) -> Result<()> {
        let (id, snapshot_key) = (c.id.as_str(), c.snapshot_key.as_str());
        self.stop(id, Duration::ZERO).await?;
        self.cd.delete_task(id).await?;
        let slot = Mapping::of_container(&c.labels);
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
}
