//! Prepared snapshots of warm images under a lease of the agent's, taken
//! by cold creates and refilled in the background.

use std::collections::HashMap;

use fast_sandbox_api::wellknown::container_labels as label;

use crate::error::Result;
use crate::warm::WarmSnapshot;

use super::{Agent, WARM_SEQ};

/// Name of the lease holding agent `pod_uid`'s prepared snapshots.
pub(super) fn warm_lease_of(pod_uid: &str) -> String {
    format!("fast-sandbox-warm-{pod_uid}")
}

impl Agent {
    pub(super) fn warm_lease(&self) -> String {
        warm_lease_of(&self.cfg.pod_uid)
    }

    pub(super) fn remove_warm(&self, snaps: Vec<WarmSnapshot>) {
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
    pub(super) fn refill_warm(&self, chain_id: &str) {
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

    pub(super) async fn prepare_warm_lease(&self) -> Result<()> {
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
