//! The agent's side of a capped writable layer (see [`crate::layer`]):
//! refusing a cap the node cannot enforce, checking a started sandbox's
//! root really is the capped tmpfs, and killing a sandbox past its cap.

use std::sync::Arc;
use std::time::Duration;

use containerd_client::types::Mount;
use fast_sandbox_api::validation::{FieldError, FieldErrors};
use tokio::sync::watch;

use super::{Agent, Turns};
use crate::error::{Error, Result};
use crate::layer::{self, Usage};

/// How often capped layers are measured: a sandbox writing at disk speed
/// fills at most its cap meanwhile (the tmpfs refuses more).
const LAYER_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// The wire field a cap comes in.
const FIELD: &str = "limits.ephemeralStorageBytes";

fn refused(message: String) -> Error {
    Error::Invalid(FieldErrors(vec![FieldError {
        field: FIELD.to_string(),
        message,
    }]))
}

impl Agent {
    /// The rootfs mounts of a sandbox whose layer is capped at `cap`
    /// bytes; refused, naming the field, where it cannot be enforced.
    pub(super) async fn capped_mounts(&self, mounts: Vec<Mount>, cap: u64) -> Result<Vec<Mount>> {
        let support = self
            .layer_caps
            .get_or_try_init(|| self.cd.mount_manager())
            .await?;
        support.clone().map_err(refused)?;
        layer::capped(mounts, cap, layer::page_size()).map_err(refused)
    }

    /// Fails a create whose started root is not the capped tmpfs (a
    /// runtime that mounted the snapshot some other way).
    pub(super) fn verify_layer(&self, pid: u32, cap: u64) -> Result<()> {
        let usage = Usage::of(&self.cfg.proc_root, pid)
            .map_err(|e| Error::io(format!("reading the writable layer of pid {pid}"), e))?;
        if usage.is_capped_at(cap, layer::page_size()) {
            return Ok(());
        }
        Err(Error::StartFailed(format!(
            "the writable layer is not capped: its filesystem holds {} bytes, not the {} of a {cap}-byte cap",
            usage.size,
            layer::tmpfs_bytes(cap, layer::page_size())
        )))
    }

    /// Kills every sandbox that wrote past its layer's cap, each period,
    /// until `shutdown`; its exit reports `EphemeralStorageExceeded`.
    pub(super) async fn keep_layers_within_caps(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut turns = Turns::every(LAYER_CHECK_PERIOD);
        while turns.next(None, &mut shutdown).await.is_some() {
            let capped = self.table().capped_layers();
            for (uid, container_id, pid, cap) in capped {
                // A process gone meanwhile has its exit on the way.
                let Ok(usage) = Usage::of(&self.cfg.proc_root, pid) else {
                    continue;
                };
                if usage.used <= cap || !self.table().layer_full(&uid) {
                    continue;
                }
                tracing::warn!(%uid, container = %container_id, used = usage.used, cap, "writable layer past its cap; killing the sandbox");
                self.metrics.layer_exceeded();
                if let Err(e) = self.cd.kill(&container_id, libc::SIGKILL, true).await {
                    tracing::warn!(%uid, error = %e, "killing a sandbox past its layer cap failed");
                }
            }
        }
    }
}
