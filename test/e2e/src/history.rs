//! What the sandboxes of one namespace went through, as seen on one watch:
//! when each first ran, how often it entered `Running`, which containers and
//! agents it had. The fault tests judge "nothing lost, nothing run twice"
//! from this record and wait on it instead of polling.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fast_sandbox_api::{Sandbox, SandboxPhase};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::E2eError;

/// One sandbox's record.
#[derive(Clone, Debug)]
pub struct Track {
    /// The object's UID.
    pub uid: String,
    /// The object as last seen.
    pub sandbox: Sandbox,
    /// When the watch first showed it `Running`.
    pub running_at: Option<Instant>,
    /// How many times it entered `Running` (from any other phase).
    pub times_running: u32,
    /// Distinct `status.containerID`s reported while `Running`, in order.
    pub container_ids: Vec<String>,
    /// Distinct agent pods it was bound to, in order.
    pub agents: Vec<String>,
    /// Distinct phases it went through, in order of first appearance.
    pub phases: Vec<SandboxPhase>,
    /// The watch saw it deleted.
    pub deleted: bool,
}

impl Track {
    fn new(sb: &Sandbox) -> Self {
        Self {
            uid: sb.metadata.uid.clone().unwrap_or_default(),
            sandbox: sb.clone(),
            running_at: None,
            times_running: 0,
            container_ids: Vec::new(),
            agents: Vec::new(),
            phases: Vec::new(),
            deleted: false,
        }
    }

    fn observe(&mut self, sb: &Sandbox) {
        let was = self.sandbox.phase();
        let now = sb.phase();
        let first = self.phases.is_empty();
        if !self.phases.contains(&now) {
            self.phases.push(now);
        }
        if now == SandboxPhase::Running {
            self.running_at.get_or_insert_with(Instant::now);
            if first || was != SandboxPhase::Running {
                self.times_running += 1;
            }
            if let Some(id) = sb.status.as_ref().and_then(|s| s.container_id.clone())
                && !self.container_ids.contains(&id)
            {
                self.container_ids.push(id);
            }
        }
        if let Some(a) = &sb.spec.agent_ref
            && !self.agents.contains(&a.pod_name)
        {
            self.agents.push(a.pod_name.clone());
        }
        self.sandbox = sb.clone();
    }

    /// The current phase.
    pub fn phase(&self) -> SandboxPhase {
        self.sandbox.phase()
    }

    /// The agent pod it is bound to now.
    pub fn agent(&self) -> Option<&str> {
        self.sandbox
            .spec
            .agent_ref
            .as_ref()
            .map(|a| a.pod_name.as_str())
    }
}

/// Tracks by sandbox name.
pub type Tracks = BTreeMap<String, Track>;

/// A running record of a namespace's sandboxes; stops watching when dropped.
pub struct History {
    tracks: Arc<Mutex<Tracks>>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl History {
    /// Starts watching `api` and returns once the initial listing is in, so
    /// every later change is seen when it happens.
    pub async fn start(api: Api<Sandbox>, timeout: Duration) -> Result<Self, E2eError> {
        let tracks: Arc<Mutex<Tracks>> = Arc::default();
        let (tx, changed) = watch::channel(0u64);
        let (synced_tx, synced) = oneshot::channel();
        let t = tracks.clone();
        let task = tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                {
                    let mut tracks = t.lock().unwrap_or_else(|p| p.into_inner());
                    match ev {
                        watcher::Event::Apply(sb) | watcher::Event::InitApply(sb) => {
                            let name = sb.name_any();
                            let uid = sb.metadata.uid.clone().unwrap_or_default();
                            // A new object under a reused name starts afresh.
                            let track = tracks
                                .entry(name)
                                .and_modify(|tr| {
                                    if tr.uid != uid {
                                        *tr = Track::new(&sb);
                                    }
                                })
                                .or_insert_with(|| Track::new(&sb));
                            track.observe(&sb);
                        }
                        watcher::Event::Delete(sb) => {
                            if let Some(tr) = tracks.get_mut(&sb.name_any()) {
                                tr.deleted = true;
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(s) = synced_tx.take() {
                                let _ = s.send(());
                            }
                        }
                        watcher::Event::Init => {}
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        tokio::time::timeout(timeout, synced)
            .await
            .map_err(|_| E2eError::Timeout(timeout, "the initial sandbox listing".into()))?
            .map_err(|_| E2eError::Watch("sandbox watch ended before listing".into()))?;
        Ok(Self {
            tracks,
            changed,
            task,
        })
    }

    /// A copy of the record now.
    pub fn snapshot(&self) -> Tracks {
        self.tracks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `pred` holds on the record; on timeout the error names
    /// `what` and counts the sandboxes by phase.
    pub async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Tracks) -> bool,
    ) -> Result<Tracks, E2eError> {
        let mut changed = self.changed.clone();
        let fut = async {
            loop {
                changed.borrow_and_update();
                let now = self.snapshot();
                if pred(&now) {
                    return Ok(now);
                }
                changed
                    .changed()
                    .await
                    .map_err(|_| E2eError::Watch("sandbox watch ended".into()))?;
            }
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| {
            E2eError::Timeout(
                timeout,
                format!("{what}; now: {}", census(&self.snapshot())),
            )
        })?
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts by phase, naming (with reason and message) a few sandboxes of
/// every phase but `Running`: the first thing to read when a wait times out.
pub fn census(tracks: &Tracks) -> String {
    let mut by_phase: BTreeMap<&'static str, Vec<&Track>> = BTreeMap::new();
    for t in tracks.values().filter(|t| !t.deleted) {
        by_phase.entry(t.phase().as_str()).or_default().push(t);
    }
    let mut out = String::new();
    for (phase, ts) in by_phase {
        let _ = write!(out, "{phase}: {}", ts.len());
        if phase != SandboxPhase::Running.as_str() {
            let names: Vec<String> = ts
                .iter()
                .take(5)
                .map(|t| {
                    let st = t.sandbox.status.clone().unwrap_or_default();
                    format!(
                        "{} (agent {:?}, reason {:?}, message {:?})",
                        t.sandbox.name_any(),
                        t.agent(),
                        st.reason,
                        st.message
                    )
                })
                .collect();
            let _ = write!(out, " [{}]", names.join(", "));
        }
        out.push_str("; ");
    }
    let deleted = tracks.values().filter(|t| t.deleted).count();
    let _ = write!(out, "deleted: {deleted}");
    out
}

/// `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
