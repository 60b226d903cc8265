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
use std::time::Duration;

use chrono::{DateTime, Utc};
use fast_sandbox_api::agent::{EventKind, SandboxEvent, SandboxInfo};
use fast_sandbox_api::wellknown::{ANNOTATION_DRAINING, LABEL_POOL, LABEL_POOL_NAMESPACE};
use fast_sandbox_api::{Sandbox, SandboxPool};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::janitor::Trigger;
use crate::transition::info_after_event;
use fast_sandbox_agent_client::{AgentClient, ClientTls};

/// Deleted agent pod names remembered (pod names are generated, so a name
/// is never reused in practice); the set is cleared when full.
const MAX_REMEMBERED_DELETIONS: usize = 4096;

/// Longest wait between reconnect attempts to an agent.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

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

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod is finished or being deleted: its agent is going away.
pub fn pod_gone(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Failed" || p == "Succeeded")
}

/// Whether the pod carries the draining annotation.
pub fn pod_draining(pod: &Pod) -> bool {
    pod.annotations().contains_key(ANNOTATION_DRAINING)
}

/// The pool an agent pod belongs to: its namespace and name, from labels.
pub fn pool_of(pod: &Pod) -> Option<(String, String)> {
    let l = pod.labels();
    Some((
        l.get(LABEL_POOL_NAMESPACE)?.clone(),
        l.get(LABEL_POOL)?.clone(),
    ))
}

/// The node of a pod, empty while unscheduled.
pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
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

    fn trigger_info(&self, info: &SandboxInfo) {
        if !info.name.is_empty() && !info.namespace.is_empty() {
            let _ = self
                .sandbox_tx
                .send(ObjectRef::new(&info.name).within(&info.namespace));
        }
    }

    fn apply_event(&self, agent: &Agent, ev: &SandboxEvent) {
        let Some(sb) = ev.sandbox.as_ref() else {
            return;
        };
        match info_after_event(ev) {
            Some(info) => {
                agent.view_mut().sandboxes.insert(info.uid.clone(), info);
            }
            None if ev.kind == EventKind::Deleted => agent.record_deleted(&sb.uid),
            None => return,
        }
        self.trigger_info(sb);
        if ev.kind == EventKind::Deleted {
            // A slot is free: sandboxes waiting for capacity may take it.
            let _ = self
                .pool_tx
                .send(ObjectRef::new(&agent.pool).within(&agent.namespace));
            self.trigger_waiting(&agent.namespace, &agent.pool);
        }
    }

    /// Deletes containers the agent holds for sandboxes that no longer
    /// exist or are now bound elsewhere (re-placed while this agent was
    /// unreachable), so no sandbox runs twice and none is left behind.
    async fn collect_orphans(self: Arc<Self>, agent: Arc<Agent>, listed: Vec<SandboxInfo>) {
        if !crate::context::store_ready(&self.sandboxes).await {
            return;
        }
        for info in listed {
            let obj = self
                .sandboxes
                .get(&ObjectRef::new(&info.name).within(&info.namespace));
            let ours = obj.as_ref().is_some_and(|sb| {
                sb.metadata.uid.as_deref() == Some(info.uid.as_str())
                    && sb
                        .spec
                        .agent_ref
                        .as_ref()
                        .is_some_and(|r| r.pod_name == agent.name)
            });
            if ours {
                continue;
            }
            tracing::info!(agent = %agent.name, sandbox = %info.name, namespace = %info.namespace, uid = %info.uid, "deleting orphaned container");
            match agent.client.delete(&info.uid, None).await {
                Ok(_) => agent.record_deleted(&info.uid),
                Err(e) => {
                    tracing::warn!(agent = %agent.name, uid = %info.uid, error = %e, "cannot delete orphaned container")
                }
            }
        }
    }

    async fn follow(self: Arc<Self>, agent: std::sync::Weak<Agent>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(a) = agent.upgrade() else { return };
            match a.client.list().await {
                // A restarted agent answers before it has rebuilt its table
                // from containerd: an empty list then does not mean its
                // sandboxes are gone. Not synced until it is ready.
                Ok(list) if !list.agent.ready => {
                    tracing::debug!(agent = %a.name, "agent not ready (rebuilding its state); listing again")
                }
                Ok(list) => {
                    {
                        let mut v = a.view_mut();
                        v.reachable = true;
                        v.synced = true;
                        v.unreachable_since = None;
                        v.sandboxes = list
                            .sandboxes
                            .iter()
                            .map(|s| (s.uid.clone(), s.clone()))
                            .collect();
                    }
                    tracing::info!(agent = %a.name, namespace = %a.namespace, sandboxes = list.sandboxes.len(), "agent listed");
                    backoff = Duration::from_millis(100);
                    for s in &list.sandboxes {
                        self.trigger_info(s);
                    }
                    self.trigger_pod(&a.namespace, &a.name, Some(&a.pool), false);
                    tokio::spawn(Arc::clone(&self).collect_orphans(Arc::clone(&a), list.sandboxes));
                    if !a.node.is_empty() {
                        let _ = self.janitor_tx.send(Trigger::AgentListed(a.node.clone()));
                    }
                    match a.client.events(list.last_event_seq).await {
                        Ok(mut stream) => {
                            // Hold only a weak reference while waiting on the
                            // stream, so a removed agent is dropped.
                            let weak = Arc::downgrade(&a);
                            drop(a);
                            while let Some(item) = stream.next().await {
                                let Some(a) = weak.upgrade() else { return };
                                match item {
                                    Ok(ev) => self.apply_event(&a, &ev),
                                    Err(e) => {
                                        tracing::warn!(agent = %a.name, error = %e, "agent event stream broke");
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(agent = %a.name, error = %e, "cannot open agent event stream")
                        }
                    }
                }
                Err(e) => tracing::debug!(agent = %a.name, error = %e, "cannot list agent"),
            }
            let Some(a) = agent.upgrade() else { return };
            let newly = {
                let mut v = a.view_mut();
                let newly = v.reachable;
                v.reachable = false;
                v.unreachable_since.get_or_insert_with(Utc::now);
                newly
            };
            if newly {
                tracing::warn!(agent = %a.name, namespace = %a.namespace, "agent unreachable");
                self.trigger_pod(&a.namespace, &a.name, Some(&a.pool), false);
            }
            drop(a);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pod(ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p-ns-x".into()),
                namespace: Some("fast-sandbox-system".into()),
                labels: Some(BTreeMap::from([
                    (LABEL_POOL.to_string(), "p".to_string()),
                    (LABEL_POOL_NAMESPACE.to_string(), "team".to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_pool_and_node_come_from_the_pod() {
        let p = pod(true);
        assert_eq!(pool_of(&p), Some(("team".into(), "p".into())));
        assert_eq!(node_of(&p), "node1");
        assert!(pod_ready(&p));
        assert!(!pod_ready(&pod(false)));
        let mut bare = p.clone();
        bare.metadata.labels = None;
        assert_eq!(pool_of(&bare), None);
    }

    #[test]
    fn terminating_or_failed_pods_are_gone() {
        let mut p = pod(true);
        assert!(!pod_gone(&p));
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(pod_gone(&p));
    }
}
