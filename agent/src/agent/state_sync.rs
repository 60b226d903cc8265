//! Keeping the table true: rebuilding it from containerd's records after a
//! restart, then following containerd's task events (exits, OOM kills).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use containerd_client::events::{TaskExit, TaskOom};
use fast_sandbox_api::ExposedPort;
use fast_sandbox_api::agent::{ContainerState, EventKind, SandboxInfo};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::container_labels as label;
use prost::Message;
use tokio::sync::watch;

use crate::cgroup;
use crate::error::Result;
use crate::runtime::{TaskState, timestamp};
use crate::state::Entry;

use super::{Agent, RESUBSCRIBE_BACKOFF, TOPIC_EXIT, TOPIC_OOM};

impl Agent {
    /// Rebuilds the table from containerd: every container of this agent
    /// (by label) with its task's state. Half-created leftovers (a container
    /// without a started task, snapshots and log files without a container)
    /// are removed.
    pub async fn rebuild(&self) -> Result<()> {
        let filters = vec![format!(
            "labels.\"{}\"==true,labels.\"{}\"=={}",
            label::MANAGED,
            label::AGENT_UID,
            self.cfg.pod_uid
        )];
        let mut containers = self.cd.list_containers(filters).await?;
        // Should one sandbox have two containers (a crash between a reset's
        // or a failed claim's steps), the newest revision comes first and
        // wins, and a cold one wins over a claimed one of the same revision.
        let revision = |c: &containerd_client::services::v1::Container| -> i64 {
            c.labels
                .get(label::RESET_REVISION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        containers.sort_by_key(|c| {
            (
                std::cmp::Reverse(revision(c)),
                c.labels.contains_key(label::PRESTARTED),
            )
        });
        let mut seen_uids = HashSet::new();
        let mut keep_snapshots = HashSet::new();
        let mut keep_logs = HashSet::new();
        let mut changes = Vec::new();
        // Running sandboxes whose exposed ports a previous agent forwarded.
        let mut forwarded = Vec::new();
        let held = self.stock.ids();
        for id in &held {
            keep_snapshots.insert(format!("{}{id}", self.snapshot_prefix()));
            keep_logs.insert(id.clone());
        }
        let mut stock_seen = Vec::new();
        // Tasks of this agent kept, for the shim gate.
        let mut tasks = 0;
        for c in containers {
            let labels = &c.labels;
            let Some(uid) = labels.get(label::SANDBOX_UID).cloned() else {
                if labels.contains_key(label::PRESTARTED) {
                    keep_logs.insert(c.id.clone());
                    if !held.contains(&c.id) {
                        stock_seen.push(c);
                    }
                }
                continue;
            };
            if self.table().is_reserved(&uid) || self.table().get(&uid).is_some_and(|e| e.starting)
            {
                seen_uids.insert(uid);
                keep_snapshots.insert(c.snapshot_key.clone());
                keep_logs.insert(c.id.clone());
                continue;
            }
            let shadowed = self.table().get(&uid).is_some_and(|e| {
                e.info.container_id != c.id && e.info.reset_revision >= revision(&c)
            });
            if shadowed {
                tracing::warn!(%uid, container = %c.id, "removing a second container of one sandbox");
                self.discard(&c.id, &c.snapshot_key).await;
                continue;
            }
            let task = self.cd.task(&c.id).await?;
            let task = match task {
                Some(t) if matches!(t.state, TaskState::Running | TaskState::Stopped) => t,
                other => {
                    tracing::info!(container = %c.id, task = ?other.map(|t| t.state), "removing a half-created sandbox");
                    self.cleanup(&c.id, &c.snapshot_key).await;
                    continue;
                }
            };
            if labels.contains_key(label::PRESTARTED)
                && task.state == TaskState::Running
                && self
                    .prestart
                    .still_init(&c.id, &self.cfg.proc_root, task.pid)
                && let Err(e) = self.finish_claim(&c, task.pid).await
            {
                tracing::warn!(%uid, container = %c.id, error = %e, "a claim cut short by a restart could not be finished; removing the sandbox");
                self.discard(&c.id, &c.snapshot_key).await;
                continue;
            }
            tasks += 1;
            seen_uids.insert(uid.clone());
            keep_snapshots.insert(c.snapshot_key.clone());
            keep_logs.insert(c.id.clone());
            let created_at = labels
                .get(label::CLAIMED_AT)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| timestamp(c.created_at.as_ref()));
            if let Some(at) = created_at {
                self.images.mark_used(&normalize(&c.image), at);
            }
            let mut table = self.table();
            if table.get(&uid).is_none() {
                let info = SandboxInfo {
                    uid: uid.clone(),
                    name: labels.get(label::SANDBOX_NAME).cloned().unwrap_or_default(),
                    namespace: labels
                        .get(label::SANDBOX_NAMESPACE)
                        .cloned()
                        .unwrap_or_default(),
                    pool: labels.get(label::POOL).cloned().unwrap_or_default(),
                    container_id: c.id.clone(),
                    image: c.image.clone(),
                    state: ContainerState::Running,
                    pid: Some(task.pid),
                    created_at,
                    started_at: created_at,
                    reset_revision: labels
                        .get(label::RESET_REVISION)
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                    ..Default::default()
                };
                let mut entry = Entry::new(info, c.snapshot_key.clone());
                entry.layer_cap = labels
                    .get(label::EPHEMERAL_STORAGE)
                    .and_then(|b| b.parse().ok());
                table.insert(entry);
                let ports: Vec<ExposedPort> = labels
                    .get(label::EXPOSED_PORTS)
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                if task.state == TaskState::Running && !ports.is_empty() {
                    forwarded.push((uid.clone(), task.pid, ports));
                }
            }
            if task.state == TaskState::Stopped {
                if task.exit_status != 0 && self.oom_killed(&uid, &c.id) {
                    table.oom(&c.id);
                }
                changes.extend(table.exited(&c.id, task.exit_status, task.exited_at));
            }
        }
        // Sandboxes the table holds but containerd no longer has.
        let gone: Vec<String> = {
            let t = self.table();
            t.uids()
                .into_iter()
                .filter(|u| !seen_uids.contains(u) && !t.is_reserved(u))
                .collect()
        };
        for uid in gone {
            if let Some(e) = self.table().remove(&uid) {
                changes.push((EventKind::Deleted, e.info));
            }
        }
        self.publish(changes);
        for (uid, pid, ports) in forwarded {
            match self.ports.expose(&uid, pid, &ports).await {
                Ok(endpoints) => {
                    let info = {
                        let mut table = self.table();
                        table.set_endpoints(&uid, endpoints);
                        table.get(&uid).map(|e| e.info.clone())
                    };
                    if let Some(info) = info {
                        self.publish([(EventKind::Started, info)]);
                    }
                }
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "exposed ports not forwarded again");
                }
            }
        }
        let stock_ids: HashSet<String> = stock_seen.iter().map(|c| c.id.clone()).collect();
        for c in stock_seen {
            keep_snapshots.insert(c.snapshot_key.clone());
            if self.adopt(c).await {
                tasks += 1;
            }
        }
        self.shim_gate.seed(tasks);
        self.gate_changed();
        for id in self.prestart.ids() {
            if !keep_logs.contains(&id)
                && !stock_ids.contains(&id)
                && !self.stock.ids().contains(&id)
            {
                self.prestart.remove(&id);
            }
        }
        // Leftovers of creates that never finished.
        let warm: HashSet<String> = self.warm.keys().into_iter().collect();
        for key in self.cd.snapshot_keys(&self.snapshot_prefix()).await? {
            if !keep_snapshots.contains(&key) && !warm.contains(&key) {
                tracing::info!(key = %key, "removing an orphaned snapshot");
                self.cd.remove_snapshot(&key).await?;
            }
        }
        let in_flight: HashSet<String> = {
            let t = self.table();
            t.list().into_iter().map(|i| i.container_id).collect()
        };
        for id in self.logs.container_ids() {
            if !keep_logs.contains(&id) && !in_flight.contains(&id) {
                self.logs.remove(&id);
            }
        }
        Ok(())
    }

    /// Whether the kernel OOM-killed a process of sandbox `uid` (container
    /// `container_id`), by its cgroup's counter.
    pub(super) fn oom_killed(&self, uid: &str, container_id: &str) -> bool {
        let path = format!(
            "{}/{}",
            self.cfg.cgroup_parent.trim_end_matches('/'),
            cgroup::leaf(uid, container_id)
        );
        cgroup::oom::kills(&self.cfg.cgroup_root, &path).is_some_and(|n| n > 0)
    }

    pub(super) fn apply_envelope(&self, topic: &str, payload: &[u8]) {
        let change = match topic {
            TOPIC_EXIT => match TaskExit::decode(payload) {
                // Exits of exec'd processes are not the sandbox's.
                Ok(ev) if ev.id.is_empty() || ev.id == ev.container_id => {
                    let uid = self.table().uid_of(&ev.container_id).map(str::to_string);
                    if ev.exit_status != 0
                        && uid.is_some_and(|u| self.oom_killed(&u, &ev.container_id))
                    {
                        self.table().oom(&ev.container_id);
                    }
                    let change = self.table().exited(
                        &ev.container_id,
                        ev.exit_status,
                        timestamp(ev.exited_at.as_ref()),
                    );
                    if change.is_none() {
                        self.stock_exited(&ev.container_id);
                    }
                    change
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable task exit event");
                    None
                }
            },
            TOPIC_OOM => match TaskOom::decode(payload) {
                Ok(ev) => self.table().oom(&ev.container_id),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable task OOM event");
                    None
                }
            },
            _ => None,
        };
        self.publish(change);
    }

    /// Follows containerd's task events for as long as the agent lives:
    /// subscribes, rebuilds the table (events that arrive meanwhile wait in
    /// the stream), marks the agent ready, then applies events as they come.
    /// When the stream breaks (containerd restarted) the agent turns
    /// unready, subscribes again and re-syncs.
    pub async fn run_events(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let metrics = self.metrics.clone();
        tokio::spawn(crate::logs::keep_capped(
            self.logs.clone(),
            self.cfg.log_max_bytes,
            move |n| metrics.log_bytes_dropped(n),
            shutdown.clone(),
        ));
        tokio::spawn(self.clone().keep_layers_within_caps(shutdown.clone()));
        if self.user_namespaces() {
            tokio::spawn(self.clone().keep_slots_swept(shutdown.clone()));
        }
        tokio::spawn(self.clone().keep_images_pinned(shutdown.clone()));
        loop {
            if *shutdown.borrow() {
                return;
            }
            let stream = match self.cd.subscribe(&[TOPIC_EXIT, TOPIC_OOM]).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to containerd events failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RESUBSCRIBE_BACKOFF) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(e) = self.prepare_warm_lease().await {
                tracing::warn!(error = %e, "creating the warm snapshot lease failed");
            }
            match self.rebuild().await {
                Ok(()) => {
                    let n = self.table().list().len();
                    tracing::info!(sandboxes = n, "state rebuilt from containerd; ready");
                    self.health.set_ready(true);
                    self.start_refill(shutdown.clone());
                    crate::exec::finish_leftovers(self.clone()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rebuilding state from containerd failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RESUBSCRIBE_BACKOFF) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            }
            let mut stream = stream;
            loop {
                tokio::select! {
                    msg = stream.recv() => match msg {
                        Some(Ok(env)) => {
                            if let Some(ev) = env.event {
                                self.apply_envelope(&env.topic, &ev.value);
                            }
                        }
                        None => {
                            tracing::warn!("containerd closed the event stream");
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "containerd event stream failed");
                            break;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
            self.health.set_ready(false);
        }
    }
}
