//! Execs a previous agent process left (found by their FIFO directories):
//! the restarted agent finishes each one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fast_sandbox_api::exec::MAX_FRAME_PAYLOAD;
use tokio::io::AsyncReadExt;

use super::{DETACHED_PREFIX, Ids, KILL_WAIT, finish_in_background};
use crate::agent::Agent;
use crate::fifo;
use crate::runtime::{Containerd, TaskState};

/// Finishes the execs a previous agent process left (their FIFO
/// directories): those of sandboxes that are gone are removed; a detached
/// one that still runs has its output drained and discarded until it exits;
/// any other is killed (its client is gone with the previous agent). Then
/// each is deleted from containerd with its FIFOs.
pub async fn finish_leftovers(agent: Arc<Agent>) {
    let fifos = agent.execs().fifos().clone();
    for left in fifos.leftovers() {
        if agent.execs().is_own(&left.exec_id) {
            continue;
        }
        if !agent.holds_container(&left.container_id) {
            fifos.remove_container(&left.container_id);
            continue;
        }
        let cd = agent.containerd().clone();
        let ids = Ids {
            container_id: left.container_id.clone(),
            exec_id: left.exec_id.clone(),
        };
        let state = cd.process(&ids.container_id, &ids.exec_id).await;
        let running = matches!(&state, Ok(Some(p)) if p.state == TaskState::Running);
        let agent = agent.clone();
        let outputs = fifos.outputs(&ids.container_id, &ids.exec_id);
        tokio::spawn(async move {
            if running {
                if left.exec_id.starts_with(DETACHED_PREFIX) {
                    tracing::info!(container = %ids.container_id, exec = %ids.exec_id, "adopting a detached exec of a previous agent");
                    drain_until_exit(&cd, &ids, &outputs).await;
                } else {
                    tracing::info!(container = %ids.container_id, exec = %ids.exec_id, "killing an exec whose client left with the previous agent");
                    if let Err(e) = cd
                        .kill_exec(&ids.container_id, &ids.exec_id, libc::SIGKILL)
                        .await
                    {
                        tracing::warn!(error = %e, "killing a leftover exec failed");
                    }
                    let _ = tokio::time::timeout(KILL_WAIT, drain_until_exit(&cd, &ids, &outputs))
                        .await;
                }
            }
            finish_in_background(cd, agent, ids);
        });
    }
}

/// Reads and drops a leftover exec's output until it exits.
async fn drain_until_exit(cd: &Containerd, ids: &Ids, outputs: &[PathBuf]) {
    let drains: Vec<_> = outputs
        .iter()
        .filter_map(|p: &PathBuf| open_drain(p))
        .collect();
    if let Err(e) = cd.wait_exec(&ids.container_id, &ids.exec_id).await {
        tracing::debug!(error = %e, "waiting for a leftover exec failed");
    }
    for d in drains {
        d.abort();
    }
}

fn open_drain(path: &Path) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = fifo::open_output(path).ok()?;
    Some(tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_FRAME_PAYLOAD];
        while matches!(rx.read(&mut buf).await, Ok(n) if n > 0) {}
    }))
}
