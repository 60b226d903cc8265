//! Orders an agent's task creates and deletes around its shared shim.
//!
//! All tasks of an agent run in one runc shim process (the shim groups
//! containers by an annotation of their runtime spec). containerd asks
//! that shim to shut down after every task delete, and it does once it
//! holds no container. A task created in that window joins the dying shim
//! and fails ("ttrpc: closed"); one created after it starts a new shim.
//! So, counting the agent's tasks:
//! - while none is known to live, one create at a time may start (it may
//!   start a shim), and none while a delete is in flight (it may be
//!   stopping one);
//! - a delete that would leave no known task while creates are in flight
//!   waits for them (were it first, the shim would stop under them).
//!
//! A task leaves the count only once a delete removed it: a delete that
//! failed, or found no task (a create that failed before making one), must
//! not make the shim look emptier than it is, or the last deletes would
//! wait on every create in flight. The agent seeds the count from
//! containerd when it starts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Tasks of the agent as the gate knows them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Tasks created and not yet deleted (those being deleted included).
    live: usize,
    /// Creates in flight.
    creating: usize,
    /// Deletes in flight.
    deleting: usize,
}

impl Counts {
    /// Tasks that will still live once the deletes in flight are done.
    fn staying(&self) -> usize {
        self.live.saturating_sub(self.deleting)
    }

    /// Whether a create may start now.
    fn may_create(&self) -> bool {
        self.staying() > 0 || (self.creating == 0 && self.deleting == 0)
    }

    /// Whether a delete may start now.
    fn may_delete(&self) -> bool {
        !(self.staying() <= 1 && self.creating > 0)
    }
}

/// The gate of one agent's shim group; disabled when the agent's tasks
/// each have a shim of their own.
#[derive(Debug)]
pub struct ShimGate {
    enabled: bool,
    counts: Mutex<Counts>,
    changed: Notify,
    seeded: AtomicBool,
}

/// A create let through; say [`CreatePass::created`] once the task exists.
#[must_use]
pub struct CreatePass<'a> {
    gate: &'a ShimGate,
    created: bool,
}

/// A delete let through, until dropped; say [`DeletePass::deleted`] once
/// the task is gone.
#[must_use]
pub struct DeletePass<'a> {
    gate: &'a ShimGate,
    deleted: bool,
}

impl ShimGate {
    /// A gate for an agent whose tasks share one shim (`enabled`), or a
    /// gate that lets everything through.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            counts: Mutex::new(Counts::default()),
            changed: Notify::new(),
            seeded: AtomicBool::new(false),
        }
    }

    /// Whether the agent's tasks share one shim.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Tasks kept up, creates and deletes in flight, as the gate counts
    /// them (for metrics).
    pub fn counts_now(&self) -> (usize, usize, usize) {
        let c = *self.counts();
        (c.live, c.creating, c.deleting)
    }

    /// Sets the number of the agent's tasks found in containerd when the
    /// agent first rebuilds its state, before anything is created or
    /// deleted; later rebuilds (after containerd restarts) keep the gate's
    /// own count.
    pub fn seed(&self, live: usize) {
        if self.seeded.swap(true, Ordering::SeqCst) {
            return;
        }
        self.counts().live = live;
        self.changed.notify_waiters();
    }

    /// Waits until a task create may start.
    pub async fn create(&self) -> CreatePass<'_> {
        self.enter(Counts::may_create, |c| c.creating += 1).await;
        CreatePass {
            gate: self,
            created: false,
        }
    }

    /// Waits until a task delete may start.
    pub async fn delete(&self) -> DeletePass<'_> {
        self.enter(Counts::may_delete, |c| c.deleting += 1).await;
        DeletePass {
            gate: self,
            deleted: false,
        }
    }

    async fn enter(&self, may: fn(&Counts) -> bool, take: impl FnOnce(&mut Counts)) {
        if !self.enabled {
            return;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut counts = self.counts();
                if may(&counts) {
                    take(&mut counts);
                    return;
                }
            }
            changed.await;
        }
    }

    fn leave(&self, give: impl FnOnce(&mut Counts)) {
        if !self.enabled {
            return;
        }
        give(&mut self.counts());
        self.changed.notify_waiters();
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CreatePass<'_> {
    /// The task exists: it keeps the shim up until deleted.
    pub fn created(mut self) {
        self.created = true;
    }
}

impl Drop for CreatePass<'_> {
    fn drop(&mut self) {
        let created = self.created;
        self.gate.leave(|c| {
            c.creating = c.creating.saturating_sub(1);
            if created {
                c.live += 1;
            }
        });
    }
}

impl DeletePass<'_> {
    /// The task is gone: it no longer keeps the shim up.
    pub fn deleted(mut self) {
        self.deleted = true;
    }
}

impl Drop for DeletePass<'_> {
    fn drop(&mut self) {
        let deleted = self.deleted;
        self.gate.leave(|c| {
            c.deleting = c.deleting.saturating_sub(1);
            if deleted {
                c.live = c.live.saturating_sub(1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn counts(live: usize, creating: usize, deleting: usize) -> Counts {
        Counts {
            live,
            creating,
            deleting,
        }
    }

    #[test]
    fn without_a_live_task_creates_found_the_shim_one_at_a_time() {
        assert!(counts(0, 0, 0).may_create());
        assert!(!counts(0, 1, 0).may_create());
        assert!(!counts(0, 0, 1).may_create());
        assert!(counts(3, 3, 2).may_create());
        assert!(!counts(2, 1, 2).may_create(), "both live tasks are going");
    }

    #[test]
    fn the_last_live_task_is_not_deleted_under_a_create() {
        assert!(!counts(1, 1, 0).may_delete());
        assert!(!counts(0, 1, 0).may_delete());
        assert!(counts(2, 1, 0).may_delete());
        assert!(counts(1, 0, 3).may_delete());
    }

    /// Whether `fut` waits: the gate decides on the first poll.
    fn waits<F: std::future::Future>(fut: F) -> bool {
        fut.now_or_never().is_none()
    }

    #[tokio::test]
    async fn a_create_waits_for_the_delete_of_the_last_task() {
        let gate = ShimGate::new(true);
        gate.seed(1);
        let delete = gate.delete().await;
        assert!(waits(gate.create()));
        delete.deleted();
        gate.create().await.created();
        assert_eq!(*gate.counts(), counts(1, 0, 0));
    }

    #[tokio::test]
    async fn a_delete_that_removed_nothing_keeps_the_count() {
        let gate = ShimGate::new(true);
        gate.seed(2);
        // Failed (the task still runs), or found no task (a create that
        // failed before it): the two tasks still keep the shim up.
        drop(gate.delete().await);
        drop(gate.delete().await);
        assert_eq!(*gate.counts(), counts(2, 0, 0));
        let creating = gate.create().await;
        let _first = gate.delete().await;
        assert!(
            waits(gate.delete()),
            "the last task's delete waits for the create"
        );
        creating.created();
    }

    #[tokio::test]
    async fn the_last_delete_waits_for_creates_in_flight_and_a_failed_founder_lets_the_next_in() {
        let gate = ShimGate::new(true);
        let founder = gate.create().await;
        assert!(waits(gate.create()), "a second founder");
        drop(founder);
        let first = gate.create().await;
        first.created();
        let creating = gate.create().await;
        assert!(waits(gate.delete()), "the last live task's delete");
        creating.created();
        let _delete = gate.delete().await;
        assert_eq!(*gate.counts(), counts(2, 0, 1));
    }

    #[test]
    fn only_the_first_seed_counts() {
        let gate = ShimGate::new(true);
        gate.seed(2);
        gate.seed(7);
        assert_eq!(*gate.counts(), counts(2, 0, 0));
    }

    #[tokio::test]
    async fn a_disabled_gate_never_waits() {
        let gate = ShimGate::new(false);
        let _deleting = gate.delete().await;
        let _a = gate.create().await;
        let _b = gate.create().await;
        let _c = gate.delete().await;
    }
}
