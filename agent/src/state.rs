//! The agent's table of sandboxes and slots: pure bookkeeping, no I/O.
//!
//! The table is rebuilt from containerd's container labels after a restart
//! and kept true by containerd's task events. It is the authority on slots:
//! a sandbox takes a slot from the moment its create is admitted until it is
//! deleted, whatever its process does meanwhile.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use fast_sandbox_api::SandboxEndpoint;
use fast_sandbox_api::agent::{ContainerState, EventKind, SandboxInfo};
use fast_sandbox_api::wellknown::reason;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// One sandbox the agent holds.
#[derive(Debug)]
pub struct Entry {
    /// What the API reports.
    pub info: SandboxInfo,
    /// Key of its rootfs snapshot.
    pub snapshot_key: String,
    /// The kernel OOM-killed a process of the sandbox.
    pub oom: bool,
    /// Cap of the writable layer in bytes, if it has one.
    pub layer_cap: Option<u64>,
    /// The agent killed the sandbox for writing past `layer_cap`.
    pub layer_full: bool,
    /// Task create/start in flight: exits are held back until start returns,
    /// so `Started` is always emitted before `Exited`.
    pub starting: bool,
    /// An exit seen while starting.
    pub pending_exit: Option<(u32, Option<DateTime<Utc>>)>,
    /// Flips to true once the process exited; log followers wait on it.
    pub exited: watch::Sender<bool>,
}

impl Entry {
    /// A new entry.
    pub fn new(info: SandboxInfo, snapshot_key: String) -> Self {
        let exited = watch::Sender::new(info.state == ContainerState::Exited);
        Self {
            info,
            snapshot_key,
            oom: false,
            layer_cap: None,
            layer_full: false,
            starting: false,
            pending_exit: None,
            exited,
        }
    }
}

/// A state change to publish.
pub type Change = (EventKind, SandboxInfo);

/// Sandboxes by UID, with slot accounting.
#[derive(Debug)]
pub struct Table {
    slots: u32,
    entries: HashMap<String, Entry>,
    by_container: HashMap<String, String>,
    reserved: HashSet<String>,
}

fn exit_reason(code: u32, oom: bool, layer_full: bool) -> &'static str {
    if layer_full {
        reason::EPHEMERAL_STORAGE_EXCEEDED
    } else if oom {
        reason::OOM_KILLED
    } else if code == 0 {
        reason::COMPLETED
    } else {
        reason::ERROR
    }
}

impl Table {
    /// An empty table with `slots` slots.
    pub fn new(slots: u32) -> Self {
        Self {
            slots,
            entries: HashMap::new(),
            by_container: HashMap::new(),
            reserved: HashSet::new(),
        }
    }

    /// Slots in total.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Slots taken: sandboxes held plus creates in flight.
    pub fn used(&self) -> u32 {
        u32::try_from(self.entries.len() + self.reserved.len()).unwrap_or(u32::MAX)
    }

    /// Sandboxes whose process runs.
    pub fn running(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.info.state == ContainerState::Running)
            .count()
    }

    /// Takes a slot for a create of `uid`.
    pub fn reserve(&mut self, uid: &str) -> Result<()> {
        if self.entries.contains_key(uid) || self.reserved.contains(uid) {
            return Ok(());
        }
        if self.used() >= self.slots {
            return Err(Error::CapacityExceeded(self.slots));
        }
        self.reserved.insert(uid.to_string());
        Ok(())
    }

    /// Whether a create of `uid` is in flight.
    pub fn is_reserved(&self, uid: &str) -> bool {
        self.reserved.contains(uid)
    }

    /// Gives back the slot of a create that failed.
    pub fn release(&mut self, uid: &str) {
        self.reserved.remove(uid);
    }

    /// Adds (or replaces) a sandbox; its reservation becomes the entry.
    pub fn insert(&mut self, entry: Entry) {
        let uid = entry.info.uid.clone();
        self.reserved.remove(&uid);
        self.by_container
            .insert(entry.info.container_id.clone(), uid.clone());
        self.entries.insert(uid, entry);
    }

    /// The sandbox `uid`.
    pub fn get(&self, uid: &str) -> Option<&Entry> {
        self.entries.get(uid)
    }

    /// UID of the sandbox whose container is `container_id`.
    pub fn uid_of(&self, container_id: &str) -> Option<&str> {
        self.by_container.get(container_id).map(String::as_str)
    }

    /// Removes a sandbox; its slot is free again.
    pub fn remove(&mut self, uid: &str) -> Option<Entry> {
        let e = self.entries.remove(uid)?;
        self.by_container.remove(&e.info.container_id);
        Some(e)
    }

    /// Every sandbox, by UID.
    pub fn list(&self) -> Vec<SandboxInfo> {
        let mut v: Vec<SandboxInfo> = self.entries.values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// Every UID held.
    pub fn uids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Where the exposed ports of `uid` are reachable.
    pub fn set_endpoints(&mut self, uid: &str, endpoints: Vec<SandboxEndpoint>) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.info.endpoints = endpoints;
        }
    }

    /// Marks the create of `uid` as starting its task.
    pub fn set_starting(&mut self, uid: &str, starting: bool) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.starting = starting;
        }
    }

    /// The task of `uid` started: `Started`, then `Exited` if the process
    /// already ended meanwhile.
    pub fn started(&mut self, uid: &str, pid: u32, at: DateTime<Utc>) -> Vec<Change> {
        let Some(e) = self.entries.get_mut(uid) else {
            return vec![];
        };
        e.starting = false;
        e.info.state = ContainerState::Running;
        e.info.pid = Some(pid);
        e.info.started_at = Some(at);
        let mut out = vec![(EventKind::Started, e.info.clone())];
        if let Some((code, exited_at)) = e.pending_exit.take() {
            out.extend(Self::apply_exit(e, code, exited_at));
        }
        out
    }

    fn apply_exit(e: &mut Entry, code: u32, at: Option<DateTime<Utc>>) -> Option<Change> {
        if e.info.state == ContainerState::Exited {
            return None;
        }
        e.info.state = ContainerState::Exited;
        e.info.pid = None;
        e.info.endpoints.clear();
        e.info.exit_code = Some(i32::try_from(code).unwrap_or(i32::MAX));
        e.info.finished_at = Some(at.unwrap_or_else(Utc::now));
        e.info.reason = Some(exit_reason(code, e.oom, e.layer_full).to_string());
        e.exited.send_replace(true);
        let kind = if e.oom && !e.layer_full {
            EventKind::OomKilled
        } else {
            EventKind::Exited
        };
        Some((kind, e.info.clone()))
    }

    /// The init process of `container_id` exited with `code`.
    pub fn exited(
        &mut self,
        container_id: &str,
        code: u32,
        at: Option<DateTime<Utc>>,
    ) -> Option<Change> {
        let uid = self.by_container.get(container_id)?.clone();
        let e = self.entries.get_mut(&uid)?;
        if e.starting {
            e.pending_exit = Some((code, at));
            return None;
        }
        Self::apply_exit(e, code, at)
    }

    /// Running sandboxes whose layer is capped: uid, container id, host
    /// PID and cap.
    pub fn capped_layers(&self) -> Vec<(String, String, u32, u64)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.info.state == ContainerState::Running && !e.layer_full)
            .filter_map(|(uid, e)| {
                Some((
                    uid.clone(),
                    e.info.container_id.clone(),
                    e.info.pid?,
                    e.layer_cap?,
                ))
            })
            .collect()
    }

    /// Records that `uid` went past its layer's cap, before it is killed,
    /// so its exit reports why. False if it is gone or exited already.
    pub fn layer_full(&mut self, uid: &str) -> bool {
        match self.entries.get_mut(uid) {
            Some(e) if e.info.state == ContainerState::Running => {
                e.layer_full = true;
                true
            }
            _ => false,
        }
    }

    /// The kernel OOM-killed a process of `container_id`. Reported with the
    /// exit; if the exit came first, reported now.
    pub fn oom(&mut self, container_id: &str) -> Option<Change> {
        let uid = self.by_container.get(container_id)?.clone();
        let e = self.entries.get_mut(&uid)?;
        e.oom = true;
        if e.info.state == ContainerState::Exited
            && !e.layer_full
            && e.info.reason.as_deref() != Some(reason::OOM_KILLED)
        {
            e.info.reason = Some(reason::OOM_KILLED.to_string());
            return Some((EventKind::OomKilled, e.info.clone()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str) -> Entry {
        Entry::new(
            SandboxInfo {
                uid: uid.into(),
                container_id: format!("c-{uid}"),
                state: ContainerState::Created,
                ..Default::default()
            },
            format!("snap-{uid}"),
        )
    }

    #[test]
    fn slots_are_refused_when_full_and_freed_on_remove() {
        let mut t = Table::new(2);
        t.reserve("a").unwrap();
        t.insert(entry("a"));
        t.reserve("b").unwrap();
        assert!(matches!(t.reserve("c"), Err(Error::CapacityExceeded(2))));
        // The same UID again never takes a second slot.
        t.reserve("a").unwrap();
        t.release("b");
        t.reserve("c").unwrap();
        t.remove("a");
        assert_eq!(t.used(), 1);
    }

    #[test]
    fn exit_while_starting_is_reported_after_started() {
        let mut t = Table::new(1);
        t.insert(entry("a"));
        t.set_starting("a", true);
        assert!(t.exited("c-a", 3, None).is_none());
        let changes = t.started("a", 42, Utc::now());
        let kinds: Vec<_> = changes.iter().map(|c| c.0).collect();
        assert_eq!(kinds, [EventKind::Started, EventKind::Exited]);
        let info = &changes[1].1;
        assert_eq!(info.exit_code, Some(3));
        assert_eq!(info.reason.as_deref(), Some(reason::ERROR));
        assert!(*t.get("a").unwrap().exited.borrow());
    }

    #[test]
    fn a_full_layer_is_the_exit_reason_even_if_the_kernel_also_ooms() {
        let mut t = Table::new(1);
        let mut e = entry("a");
        e.layer_cap = Some(1 << 20);
        t.insert(e);
        t.started("a", 7, Utc::now());
        assert_eq!(
            t.capped_layers(),
            [("a".to_string(), "c-a".to_string(), 7, 1 << 20)]
        );
        assert!(t.layer_full("a"));
        assert!(t.capped_layers().is_empty());
        let (kind, info) = t.exited("c-a", 137, None).unwrap();
        assert_eq!(kind, EventKind::Exited);
        assert_eq!(
            info.reason.as_deref(),
            Some(reason::EPHEMERAL_STORAGE_EXCEEDED)
        );
        assert!(t.oom("c-a").is_none());
        assert!(!t.layer_full("a"));
    }

    #[test]
    fn oom_before_or_after_exit_is_reported_once() {
        let mut t = Table::new(2);
        t.insert(entry("a"));
        t.started("a", 1, Utc::now());
        assert!(t.oom("c-a").is_none());
        let (kind, info) = t.exited("c-a", 137, None).unwrap();
        assert_eq!(kind, EventKind::OomKilled);
        assert_eq!(info.reason.as_deref(), Some(reason::OOM_KILLED));
        assert!(t.exited("c-a", 137, None).is_none());

        t.insert(entry("b"));
        t.started("b", 2, Utc::now());
        let (kind, _) = t.exited("c-b", 137, None).unwrap();
        assert_eq!(kind, EventKind::Exited);
        let (kind, info) = t.oom("c-b").unwrap();
        assert_eq!(kind, EventKind::OomKilled);
        assert_eq!(info.reason.as_deref(), Some(reason::OOM_KILLED));
        assert!(t.oom("c-b").is_none());
    }

    #[test]
    fn events_for_unknown_containers_are_ignored() {
        let mut t = Table::new(1);
        assert!(t.exited("nope", 0, None).is_none());
        assert!(t.oom("nope").is_none());
    }
}
