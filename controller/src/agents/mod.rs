//! The agents the controller talks to: one entry per live agent pod, each
//! with its HTTP/2 client and a follower task that lists the agent's
//! sandboxes and then follows its event stream, reconnecting with backoff
//! (and listing again) when the stream breaks. What the follower learns is
//! kept per agent and turned into reconcile triggers for the sandboxes
//! concerned; nothing polls the agents.
//!
//! Agent pods all live in the operator's namespace, so an agent is known
//! by its pod name; its pool (namespace and name) comes from its labels.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use fast_sandbox_agent_client::{AgentClient, ClientTls};
use fast_sandbox_api::agent::SandboxInfo;
use fast_sandbox_api::{Sandbox, SandboxPool};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::janitor::Trigger;

mod follower;
mod pod;

pub use follower::MAX_RECONNECT_BACKOFF;
pub use pod::{node_of, pod_draining, pod_gone, pod_ready, pod_unschedulable, pool_of};

/// Deleted agent pod names remembered (pod names are generated, so a name
/// is never reused in practice); the set is cleared when full.
const MAX_REMEMBERED_DELETIONS: usize = 4096;

/// What the controller currently knows of one agent's sandboxes.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The last list succeeded and the event stream is open.
    pub reachable: bool,
    /// A list has succeeded at least once since this entry was made.
    pub synced: bool,
    /// Since when the agent could not be reached (`None` while reachable).
    pub unreachable_since: Option<DateTime<Utc>>,
    /// The agent's sandboxes by UID.
    pub sandboxes: HashMap<String, SandboxInfo>,
}

/// One live agent pod.
#[derive(Debug)]
pub struct Agent {
    /// Namespace of its pool (the pod itself is in the operator's).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Node of the pod.
    pub node: String,
    /// Pool of the pod.
    pub pool: String,
    /// The agent's API client.
    pub client: AgentClient,
    view: Mutex<View>,
    task: Mutex<Option<AbortHandle>>,
}

impl Agent {
    fn view_mut(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what is known.
    pub fn view(&self) -> View {
        self.view_mut().clone()
    }

    /// What the agent reported about sandbox `uid`, with reachability.
    pub fn sandbox(&self, uid: &str) -> (bool, bool, Option<SandboxInfo>) {
        let v = self.view_mut();
        (v.reachable, v.synced, v.sandboxes.get(uid).cloned())
    }

    /// Sandboxes the agent holds, once it was listed.
    pub fn held(&self) -> Option<u32> {
        let v = self.view_mut();
        v.synced.then_some(v.sandboxes.len() as u32)
    }

    /// Records the agent's answer to a create call. Events are fresher than
    /// a create answer, so an entry for the same revision is kept.
    pub fn record_created(&self, info: SandboxInfo) {
        let mut v = self.view_mut();
        match v.sandboxes.get(&info.uid) {
            Some(old) if old.reset_revision == info.reset_revision => {}
            _ => {
                v.sandboxes.insert(info.uid.clone(), info);
            }
        }
    }

    /// Records that sandbox `uid` is gone from the agent.
    pub fn record_deleted(&self, uid: &str) {
        self.view_mut().sandboxes.remove(uid);
    }

    fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of live agents.
pub struct Agents {
    tls: ClientTls,
    port: u16,
    entries: Mutex<HashMap<String, Arc<Agent>>>,
    deleted: Mutex<HashSet<String>>,
    sandboxes: Store<Sandbox>,
    sandbox_tx: UnboundedSender<ObjectRef<Sandbox>>,
    pool_tx: UnboundedSender<ObjectRef<SandboxPool>>,
    janitor_tx: UnboundedSender<Trigger>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents").field("port", &self.port).finish()
    }
}

impl Agents {
    /// An empty directory; `sandbox_tx` and `pool_tx` receive the objects to
    /// reconcile when something about their agents changes, `janitor_tx`
    /// the nodes whose leftovers may need collecting.
    pub fn new(
        tls: ClientTls,
        port: u16,
        sandboxes: Store<Sandbox>,
        sandbox_tx: UnboundedSender<ObjectRef<Sandbox>>,
        pool_tx: UnboundedSender<ObjectRef<SandboxPool>>,
        janitor_tx: UnboundedSender<Trigger>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tls,
            port,
            entries: Mutex::new(HashMap::new()),
            deleted: Mutex::new(HashSet::new()),
            sandboxes,
            sandbox_tx,
            pool_tx,
            janitor_tx,
        })
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Arc<Agent>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops following every agent (end of a leadership term).
    pub fn shutdown(&self) {
        let all: Vec<Arc<Agent>> = self.entries().drain().map(|(_, a)| a).collect();
        for a in all {
            a.stop();
        }
    }

    /// The live agent of pod `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<Agent>> {
        self.entries().get(name).cloned()
    }

    /// The live agents on `node`.
    pub fn on_node(&self, node: &str) -> Vec<Arc<Agent>> {
        self.entries()
            .values()
            .filter(|a| a.node == node)
            .cloned()
            .collect()
    }

    /// The live agents of pool `namespace/pool`.
    pub fn of_pool(&self, namespace: &str, pool: &str) -> Vec<Arc<Agent>> {
        self.entries()
            .values()
            .filter(|a| a.namespace == namespace && a.pool == pool)
            .cloned()
            .collect()
    }

    fn agent_gone_from(&self, node: &str) {
        if !node.is_empty() {
            let _ = self.janitor_tx.send(Trigger::AgentGone(node.to_string()));
        }
    }

    /// A sandbox was deleted (from the sandbox watch): its pool may shrink
    /// and, if it held a slot, sandboxes waiting for one may take it. If
    /// its agent still holds its container (the object went without the
    /// cleanup finalizer, say by force), the container goes too.
    pub fn forget_sandbox(&self, sb: &Sandbox) {
        if let (Some(uid), Some(r)) = (sb.metadata.uid.clone(), sb.spec.agent_ref.as_ref())
            && let Some(agent) = self.get(&r.pod_name)
            && agent.view().sandboxes.contains_key(&uid)
        {
            tracing::info!(sandbox = %sb.name_any(), agent = %agent.name, "sandbox object gone with its container still on the agent; removing it");
            let grace = sb.termination_grace();
            tokio::spawn(async move {
                match agent.client.delete(&uid, grace).await {
                    Ok(_) => agent.record_deleted(&uid),
                    Err(e) => {
                        tracing::warn!(agent = %agent.name, uid, error = %e, "cannot remove the container of a deleted sandbox; the agent's next listing retries")
                    }
                }
            });
        }
        if let Some(ns) = sb.namespace() {
            let _ = self
                .pool_tx
                .send(ObjectRef::new(&sb.spec.pool_ref).within(&ns));
            if sb.spec.agent_ref.is_some() {
                self.trigger_waiting(&ns, &sb.spec.pool_ref);
            }
        }
    }

    /// An agent pod was added or changed (from the pod watch).
    pub fn observe_pod(self: &Arc<Self>, pod: &Pod) {
        let name = pod.name_any();
        let Some((pool_ns, pool)) = pool_of(pod) else {
            // Not an agent of any pool: nothing to follow.
            if let Some(old) = self.entries().remove(&name) {
                old.stop();
            }
            return;
        };
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let uid = pod.uid().unwrap_or_default();
        match ip {
            Some(ip) if !pod_gone(pod) => {
                let addr = SocketAddr::new(ip, self.port);
                let fresh = {
                    let entries = self.entries();
                    !entries
                        .get(&name)
                        .is_some_and(|a| a.uid == uid && a.client.addr() == addr)
                };
                if fresh {
                    let agent = Arc::new(Agent {
                        namespace: pool_ns.clone(),
                        name: name.clone(),
                        uid,
                        node: node_of(pod),
                        pool: pool.clone(),
                        client: AgentClient::new(addr, self.tls.clone()),
                        view: Mutex::new(View {
                            unreachable_since: Some(Utc::now()),
                            ..Default::default()
                        }),
                        task: Mutex::new(None),
                    });
                    let task = tokio::spawn(Arc::clone(self).follow(Arc::downgrade(&agent)));
                    *agent.task.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(task.abort_handle());
                    if let Some(old) = self.entries().insert(name.clone(), agent) {
                        old.stop();
                    }
                }
            }
            _ => {
                if let Some(old) = self.entries().remove(&name) {
                    old.stop();
                }
            }
        }
        self.trigger_pod(
            &pool_ns,
            &name,
            Some(&pool),
            pod_ready(pod) && !pod_draining(pod) && !pod_gone(pod),
        );
    }

    /// Whether the pod watch saw agent pod `name` deleted, as opposed to
    /// not having seen it yet.
    pub fn was_deleted(&self, name: &str) -> bool {
        self.deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    fn remember_deleted(&self, name: &str) {
        let mut d = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() >= MAX_REMEMBERED_DELETIONS {
            d.clear();
        }
        d.insert(name.to_string());
    }

    /// An agent pod was deleted (from the pod watch).
    pub fn forget_pod(&self, pod: &Pod) {
        let name = pod.name_any();
        self.remember_deleted(&name);
        if let Some(old) = self.entries().remove(&name) {
            old.stop();
        }
        if let Some((ns, pool)) = pool_of(pod) {
            self.trigger_pod(&ns, &name, Some(&pool), false);
        }
        self.agent_gone_from(&node_of(pod));
    }

    /// After a re-list of agent pods: forgets the ones not in `alive` (pod
    /// names).
    pub fn retain_pods(&self, alive: &HashSet<String>) {
        let gone: Vec<Arc<Agent>> = {
            let mut entries = self.entries();
            let keys: Vec<String> = entries
                .keys()
                .filter(|k| !alive.contains(*k))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| entries.remove(k)).collect()
        };
        for a in gone {
            a.stop();
            self.remember_deleted(&a.name);
            self.trigger_pod(&a.namespace, &a.name, Some(&a.pool), false);
            self.agent_gone_from(&a.node);
        }
    }

    /// Asks for the reconcile of the pool of an agent pod, of the sandboxes
    /// bound to it and, when the agent can take sandboxes, of the pool's
    /// sandboxes that wait for capacity.
    fn trigger_pod(&self, ns: &str, pod: &str, pool: Option<&String>, schedulable: bool) {
        if let Some(pool) = pool {
            let _ = self.pool_tx.send(ObjectRef::new(pool).within(ns));
        }
        for sb in self.sandboxes.state() {
            if sb.namespace().as_deref() != Some(ns) {
                continue;
            }
            let bound_here = sb
                .spec
                .agent_ref
                .as_ref()
                .is_some_and(|r| r.pod_name == pod);
            let waiting = schedulable
                && sb.spec.agent_ref.is_none()
                && pool.is_some_and(|p| *p == sb.spec.pool_ref);
            if bound_here || waiting {
                let _ = self.sandbox_tx.send(ObjectRef::from_obj(&*sb));
            }
        }
    }

    /// Asks for the reconcile of the sandboxes of `namespace/pool` that wait
    /// without an agent.
    pub fn trigger_waiting(&self, ns: &str, pool: &str) {
        for sb in self.sandboxes.state() {
            if sb.spec.agent_ref.is_none()
                && sb.spec.pool_ref == pool
                && sb.metadata.deletion_timestamp.is_none()
                && sb.namespace().as_deref() == Some(ns)
            {
                let _ = self.sandbox_tx.send(ObjectRef::from_obj(&*sb));
            }
        }
    }
}
