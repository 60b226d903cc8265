//! The agent's side of user namespaces (see [`crate::userns`]): taking a
//! slot for a new container, giving it back when the container goes, and
//! sweeping the slots of containers an agent killed mid-way left behind.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fast_sandbox_api::wellknown::container_labels as label;
use tokio::sync::watch;

use super::{Agent, Turns};
use crate::error::{Error, Result};
use crate::rootfs::SandboxRoot;
use crate::userns::{Mapping, SLOT_LEASE_PREFIX, lease_base, stale_leases};

/// A slot lease younger than this is never swept: its create may not have
/// made its container yet.
const SLOT_SWEEP_AGE: Duration = Duration::from_secs(300);
/// How often slots of vanished containers are swept.
const SLOT_SWEEP_PERIOD: Duration = Duration::from_secs(60);

impl Agent {
    /// Whether this agent runs its sandboxes in user namespaces.
    pub(super) fn user_namespaces(&self) -> bool {
        self.cfg.user_namespaces.is_some()
    }

    /// Takes a free user namespace slot of the node for new container
    /// `container_id`; `None` when this agent runs sandboxes as host users.
    /// Fails as `RuntimeUnavailable` where the node cannot map a root
    /// filesystem.
    pub(super) async fn take_slot(&self, container_id: &str) -> Result<Option<Mapping>> {
        let Some(range) = self.cfg.user_namespaces else {
            return Ok(None);
        };
        let support = self
            .idmapped
            .get_or_try_init(|| self.cd.idmapped_snapshots())
            .await?;
        support.clone().map_err(|why| Error::RuntimeUnavailable {
            runtime: self.cd.runtime().to_string(),
            why: format!("user namespaces: {why}; run the pool with hostUsers: true on such nodes"),
        })?;
        for slot in range.probe(container_id) {
            let mapping = range.mapping(slot);
            if self
                .cd
                .claim_lease(&mapping.lease_id(), mapping.lease_labels(container_id))
                .await?
            {
                return Ok(Some(mapping));
            }
        }
        Err(Error::Unavailable(
            "every user namespace slot of the node is taken",
        ))
    }

    /// Gives a slot back (best effort: the sweep takes what fails here).
    pub(super) async fn release_slot(&self, mapping: Option<Mapping>) {
        let Some(m) = mapping else {
            return;
        };
        if let Err(e) = self.cd.delete_lease(&m.lease_id()).await {
            tracing::warn!(host_base = m.host_base, error = %e, "giving a user namespace slot back failed; the sweep will");
        }
    }

    /// The slot this agent's container `container_id` holds, by its label;
    /// read before the container is deleted.
    pub(super) async fn slot_of(&self, container_id: &str) -> Option<Mapping> {
        if !self.user_namespaces() {
            return None;
        }
        let c = self.cd.container(container_id).await.ok()??;
        Mapping::of_container(&c.labels)
    }

    /// Deletes the slot leases older than `min_age` that no container of
    /// the node holds (by the containers' slot labels, whichever agent made
    /// them): those of an agent killed after taking a slot and before its
    /// container was made or after it was deleted. Returns how many.
    pub async fn sweep_slots(&self, min_age: Duration) -> Result<usize> {
        let leases = self.cd.leases(SLOT_LEASE_PREFIX).await?;
        if leases.is_empty() {
            return Ok(0);
        }
        let filter = format!("labels.\"{}\"", label::USERNS_SLOT);
        let held: HashSet<u32> = self
            .cd
            .list_containers(vec![filter])
            .await?
            .into_iter()
            .filter_map(|c| Mapping::of_container(&c.labels).map(|m| m.host_base))
            .collect();
        let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
        let stale = stale_leases(&leases, &held, cutoff);
        for id in &stale {
            tracing::info!(lease = %id, host_base = ?lease_base(id), "giving back the user namespace slot of a container that is gone");
            self.cd.delete_lease(id).await?;
        }
        Ok(stale.len())
    }

    /// Sweeps slots every period until `shutdown`.
    pub(super) async fn keep_slots_swept(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut turns = Turns::every(SLOT_SWEEP_PERIOD);
        while turns.next(None, &mut shutdown).await.is_some() {
            if let Err(e) = self.sweep_slots(SLOT_SWEEP_AGE).await {
                tracing::warn!(error = %e, "sweeping user namespace slots failed");
            }
        }
    }

    /// Gives a capped layer's root to the sandbox's root: containerd makes
    /// the tmpfs's upper directory as host root, which the sandbox's root
    /// would see as nobody's. Runs between task create and start (`pid` is
    /// runc's init, already in the sandbox's root).
    pub(super) async fn own_capped_root(&self, pid: u32, leaf: &str) -> Result<()> {
        let (proc_root, leaf) = (self.cfg.proc_root.clone(), leaf.to_string());
        tokio::task::spawn_blocking(move || {
            SandboxRoot::open(&proc_root, pid, &leaf)?
                .as_root()
                .own_root()
        })
        .await
        .map_err(|e| Error::io("owning the layer's root", std::io::Error::other(e)))?
    }
}
