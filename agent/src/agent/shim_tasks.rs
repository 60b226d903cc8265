//! Task creates and deletes of the agent's containers, through the shim
//! gate: with every task in one shared shim process, a create must not
//! join a shim that a delete is about to stop (see [`crate::shim_gate`]).

use std::time::Instant;

use super::Agent;
use crate::error::Result;
use crate::metrics::{DeleteStage, Stage};
use crate::spec;

impl Agent {
    /// Puts a container in the agent's shim group (when configured), so
    /// its task joins the agent's running shim process instead of spawning
    /// one.
    pub(super) fn join_shim_group(&self, spec: &mut oci_spec::runtime::Spec) {
        if self.shim_gate.enabled() {
            spec::join_shim_group(spec, &format!("fast-sandbox-{}", self.cfg.pod_uid));
        }
    }

    /// Creates the task of one of this agent's containers, through the
    /// shim gate.
    pub(super) async fn create_task(
        &self,
        id: &str,
        rootfs: Vec<containerd_client::types::Mount>,
        stdout: &std::path::Path,
        stderr: &std::path::Path,
    ) -> Result<u32> {
        let waited = Instant::now();
        let pass = self.shim_gate.create().await;
        if self.shim_gate.enabled() {
            self.metrics.observe(Stage::ShimGate, waited.elapsed());
            self.gate_changed();
        }
        let created = self.cd.create_task(id, rootfs, stdout, stderr).await;
        if created.is_ok() {
            pass.created();
        } else {
            drop(pass);
        }
        self.gate_changed();
        created
    }

    /// Publishes the shim gate's counts (none when it is off).
    pub(crate) fn gate_changed(&self) {
        if !self.shim_gate.enabled() {
            return;
        }
        let (live, creating, deleting) = self.shim_gate.counts_now();
        self.metrics.set_shim_gate(live, creating, deleting);
    }

    /// Deletes the task of one of this agent's containers, through the
    /// shim gate (another agent's has a shim of its own).
    pub(super) async fn delete_task(&self, id: &str) -> Result<()> {
        let waited = Instant::now();
        let pass = self.shim_gate.delete().await;
        if self.shim_gate.enabled() {
            self.metrics
                .observe_delete(DeleteStage::ShimGate, waited.elapsed());
            self.gate_changed();
        }
        let t = Instant::now();
        // Only a task that was there and is gone leaves the count: a
        // delete that failed (the task still runs) or found nothing (a
        // create that failed before its task) must not make the gate
        // think the shim is emptier than it is.
        let deleted = self.cd.delete_task(id).await;
        self.metrics.observe_delete(DeleteStage::Task, t.elapsed());
        if matches!(deleted, Ok(true)) {
            pass.deleted();
        } else {
            drop(pass);
        }
        self.gate_changed();
        deleted.map(|_| ())
    }
}
