//! Deleting a sandbox: stop its process (SIGTERM, a grace period, SIGKILL),
//! then delete its task, container, snapshot and files, free its slot and
//! publish the deletion; and the best-effort cleanup of whatever a failed
//! create or a leftover container holds.

use std::time::{Duration, Instant};

use fast_sandbox_api::agent::{ContainerState, EventKind, SandboxInfo};

use super::Agent;
use crate::error::{Error, Result};
use crate::metrics::DeleteStage;

/// SIGKILL is followed by at most this long a wait for the exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    /// Best-effort removal of everything a sandbox may have in containerd
    /// and on disk.
    pub(super) async fn cleanup(&self, container_id: &str, snapshot_key: &str) {
        if let Err(e) = self.cd.kill(container_id, libc::SIGKILL, true).await {
            tracing::debug!(container = %container_id, error = %e, "kill during cleanup");
        }
        let slot = self.slot_of(container_id).await;
        for (what, r) in [
            ("task", self.delete_task(container_id).await),
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

    /// [`Agent::delete`] once the caller holds the sandbox's lock.
    pub(super) async fn remove(&self, uid: &str, grace: Duration) -> Result<SandboxInfo> {
        let (info, snapshot_key) = {
            let t = self.table();
            let e = t.get(uid).ok_or_else(|| Error::NotFound(uid.to_string()))?;
            (e.info.clone(), e.snapshot_key.clone())
        };
        let id = info.container_id.clone();
        let started = Instant::now();
        if info.state != ContainerState::Exited {
            self.stop(&id, grace).await?;
            self.metrics
                .observe_delete(DeleteStage::Stop, started.elapsed());
        }
        self.delete_task(&id).await?;
        let slot = self.slot_of(&id).await;
        let t = Instant::now();
        self.cd.delete_container(&id).await?;
        self.metrics
            .observe_delete(DeleteStage::Container, t.elapsed());
        self.release_slot(slot).await;
        let t = Instant::now();
        self.cd.remove_snapshot(&snapshot_key).await?;
        self.metrics
            .observe_delete(DeleteStage::Snapshot, t.elapsed());
        self.metrics
            .observe_delete(DeleteStage::Total, started.elapsed());
        self.logs.remove(&id);
        self.prestart.remove(&id);
        self.execs.fifos().remove_container(&id);
        let removed = self.table().remove(uid);
        let final_info = removed.map(|e| e.info).unwrap_or(info);
        self.publish([(EventKind::Deleted, final_info.clone())]);
        self.pins_changed();
        Ok(final_info)
    }

    /// Stops the task of container `id`: SIGTERM, up to `grace` for it to
    /// exit, then SIGKILL and at most [`KILL_WAIT`] for the exit.
    pub(super) async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
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
}
