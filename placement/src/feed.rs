//! Feeds the placement [`Index`] from what the watches see: agent pods
//! (label `sandbox.fast.io/role=agent`, in the operator's namespace), the
//! nodes they run on (for the images the kubelet reports), SandboxPools, and
//! Sandboxes (for slot use). The webhook and the controller feed their
//! indexes through this same code, so their views agree.
//!
//! The joins between the watches (an agent's images come from its node, its
//! slots default to its pool's) are kept here, so the caller applies events
//! from one task (or behind one lock) and needs nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fast_sandbox_api::pool::DEFAULT_SLOTS_PER_AGENT;
use fast_sandbox_api::{Sandbox, SandboxPool, wellknown};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::index::{AgentState, Index, pool_key};

/// One event from any of the four watches.
#[derive(Debug)]
pub enum Change {
    /// An agent pod.
    Pod(Event<Pod>),
    /// A node.
    Node(Event<Node>),
    /// A pool.
    Pool(Event<SandboxPool>),
    /// A sandbox.
    Sandbox(Event<Sandbox>),
}

const KINDS: usize = 4;

fn kind(c: &Change) -> usize {
    match c {
        Change::Pod(_) => 0,
        Change::Node(_) => 1,
        Change::Pool(_) => 2,
        Change::Sandbox(_) => 3,
    }
}

/// What the index needs of an agent pod, and the slot count its
/// annotation states (`None`: the pool's default applies). `None` when the
/// pod is not an agent of a pool (labels missing).
pub fn agent_of(pod: &Pod) -> Option<(AgentState, Option<u32>)> {
    let labels = pod.labels();
    let pool = labels.get(wellknown::LABEL_POOL)?;
    let pool_ns = labels.get(wellknown::LABEL_POOL_NAMESPACE)?;
    let annotated = pod
        .annotations()
        .get(wellknown::ANNOTATION_SLOTS)
        .and_then(|s| s.trim().parse::<u32>().ok());
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Failed" || p == "Succeeded");
    let ready = pod.metadata.deletion_timestamp.is_none()
        && !finished
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let draining = pod
        .annotations()
        .get(wellknown::ANNOTATION_DRAINING)
        .is_some_and(|v| v != "false");
    let agent = AgentState {
        slots_total: annotated.unwrap_or(DEFAULT_SLOTS_PER_AGENT as u32),
        pool_key: pool_key(pool_ns, pool),
        pod_name: pod.name_any(),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        ready,
        draining,
        images: Vec::new(),
    };
    Some((agent, annotated))
}

/// Turns watch events into index updates; keeps the few facts the joins
/// need (node images, pool slots, agents without their images).
pub struct Feed {
    index: Arc<Index>,
    nodes: HashMap<String, Vec<String>>,
    pool_slots: HashMap<String, u32>,
    agents: HashMap<String, (AgentState, bool)>,
    relist: [Option<HashSet<String>>; KINDS],
    synced: [bool; KINDS],
}

impl Feed {
    /// A feed writing into `index`.
    pub fn new(index: Arc<Index>) -> Self {
        Feed {
            index,
            nodes: HashMap::new(),
            pool_slots: HashMap::new(),
            agents: HashMap::new(),
            relist: Default::default(),
            synced: [false; KINDS],
        }
    }

    /// Whether every watch has completed its first list: until then the
    /// index may under-count slot use or miss agents.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Applies one event.
    pub fn apply(&mut self, change: Change) {
        let k = kind(&change);
        match change {
            Change::Pod(e) => self.event(k, e, Self::pod, Self::pod_gone, |f, keep| {
                f.agents.retain(|key, _| keep.contains(key));
                f.index.retain_agents(|key| keep.contains(key));
            }),
            Change::Node(e) => self.event(k, e, Self::node, Self::node_gone, |f, keep| {
                let gone: Vec<String> = f
                    .nodes
                    .keys()
                    .filter(|n| !keep.contains(*n))
                    .cloned()
                    .collect();
                for n in gone {
                    f.nodes.remove(&n);
                    f.refresh(|a| a.node_name == n);
                }
            }),
            Change::Pool(e) => self.event(k, e, Self::pool, Self::pool_gone, |f, keep| {
                let gone: Vec<String> = f
                    .pool_slots
                    .keys()
                    .filter(|p| !keep.contains(*p))
                    .cloned()
                    .collect();
                for p in gone {
                    f.pool_slots.remove(&p);
                    f.index.remove_pool(&p);
                }
            }),
            Change::Sandbox(e) => self.event(k, e, Self::sandbox, Self::sandbox_gone, |f, keep| {
                f.index.retain_sandboxes(|uid| keep.contains(uid));
            }),
        }
    }

    fn event<K: kube::Resource>(
        &mut self,
        k: usize,
        event: Event<K>,
        upsert: fn(&mut Self, K) -> Option<String>,
        delete: fn(&mut Self, K),
        retain: fn(&mut Self, &HashSet<String>),
    ) {
        match event {
            Event::Apply(o) => {
                upsert(self, o);
            }
            Event::Delete(o) => delete(self, o),
            Event::Init => self.relist[k] = Some(HashSet::new()),
            Event::InitApply(o) => {
                if let Some(key) = upsert(self, o)
                    && let Some(seen) = &mut self.relist[k]
                {
                    seen.insert(key);
                }
            }
            Event::InitDone => {
                if let Some(seen) = self.relist[k].take() {
                    retain(self, &seen);
                }
                self.synced[k] = true;
            }
        }
    }

    fn slots_for(&self, pool: &str, annotated: Option<u32>) -> u32 {
        annotated
            .or_else(|| self.pool_slots.get(pool).copied())
            .unwrap_or(DEFAULT_SLOTS_PER_AGENT as u32)
    }

    fn push_agent(&mut self, key: &str) {
        if let Some((agent, _)) = self.agents.get(key) {
            let mut agent = agent.clone();
            agent.images = self
                .nodes
                .get(&agent.node_name)
                .cloned()
                .unwrap_or_default();
            self.index.upsert_agent(agent);
        }
    }

    /// Re-sends agents matching `which` (their node or pool changed).
    fn refresh(&mut self, which: impl Fn(&AgentState) -> bool) {
        let keys: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, (a, _))| which(a))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some((a, annotated)) = self.agents.get(&key)
                && !annotated
            {
                let slots = self.slots_for(&a.pool_key, None);
                if let Some((a, _)) = self.agents.get_mut(&key) {
                    a.slots_total = slots;
                }
            }
            self.push_agent(&key);
        }
    }

    fn pod(&mut self, pod: Pod) -> Option<String> {
        let key = pod.name_any();
        let Some((agent, annotated)) = agent_of(&pod) else {
            // Not an agent of any pool: it cannot take sandboxes.
            self.pod_gone(pod);
            return Some(key);
        };
        let agent = AgentState {
            slots_total: self.slots_for(&agent.pool_key, annotated),
            ..agent
        };
        self.agents
            .insert(key.clone(), (agent, annotated.is_some()));
        self.push_agent(&key);
        Some(key)
    }

    fn pod_gone(&mut self, pod: Pod) {
        let name = pod.name_any();
        self.agents.remove(&name);
        self.index.remove_agent(&name);
    }

    fn node(&mut self, node: Node) -> Option<String> {
        let name = node.name_any();
        let mut images: Vec<String> = node
            .status
            .and_then(|s| s.images)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.names.unwrap_or_default())
            .map(|n| fast_sandbox_api::image::normalize(&n))
            .collect();
        images.sort_unstable();
        images.dedup();
        if self.nodes.get(&name) != Some(&images) {
            self.nodes.insert(name.clone(), images);
            self.refresh(|a| a.node_name == name);
        }
        Some(name)
    }

    fn node_gone(&mut self, node: Node) {
        let name = node.name_any();
        if self.nodes.remove(&name).is_some() {
            self.refresh(|a| a.node_name == name);
        }
    }

    fn pool(&mut self, pool: SandboxPool) -> Option<String> {
        let key = pool_key(&pool.namespace().unwrap_or_default(), &pool.name_any());
        if pool.metadata.deletion_timestamp.is_some() {
            // A pool being torn down takes no new sandbox.
            self.index.remove_pool(&key);
            return Some(key);
        }
        let slots = pool.spec.slots_per_agent();
        self.index.upsert_pool(&key);
        if self.pool_slots.insert(key.clone(), slots) != Some(slots) {
            self.refresh(|a| a.pool_key == key);
        }
        Some(key)
    }

    fn pool_gone(&mut self, pool: SandboxPool) {
        let key = pool_key(&pool.namespace().unwrap_or_default(), &pool.name_any());
        self.pool_slots.remove(&key);
        self.index.remove_pool(&key);
    }

    fn sandbox(&mut self, sb: Sandbox) -> Option<String> {
        let uid = sb.uid()?;
        let reservation = sb.annotations().get(wellknown::ANNOTATION_RESERVATION);
        match &sb.spec.agent_ref {
            Some(agent) => {
                self.index
                    .observe_bound(&uid, reservation.map(String::as_str), &agent.pod_name)
            }
            _ => self
                .index
                .observe_unbound(&uid, reservation.map(String::as_str)),
        }
        Some(uid)
    }

    fn sandbox_gone(&mut self, sb: Sandbox) {
        if let Some(uid) = sb.uid() {
            let reservation = sb.annotations().get(wellknown::ANNOTATION_RESERVATION);
            self.index
                .observe_unbound(&uid, reservation.map(String::as_str));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerImage, NodeStatus, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, node: &str, ready: bool, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                labels: Some(
                    [
                        (
                            wellknown::LABEL_ROLE.to_string(),
                            wellknown::ROLE_AGENT.to_string(),
                        ),
                        (wellknown::LABEL_POOL.to_string(), "p".to_string()),
                        (
                            wellknown::LABEL_POOL_NAMESPACE.to_string(),
                            "team".to_string(),
                        ),
                    ]
                    .into(),
                ),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn node(name: &str, images: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                images: Some(vec![ContainerImage {
                    names: Some(images.iter().map(|s| s.to_string()).collect()),
                    size_bytes: Some(1),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pool(slots: i32) -> SandboxPool {
        let mut p = SandboxPool::new("p", Default::default());
        p.metadata.namespace = Some("team".into());
        p.spec.max_sandboxes_per_agent = Some(slots);
        p
    }

    fn sandbox(uid: &str, agent: Option<&str>, reservation: Option<&str>) -> Sandbox {
        let mut s = Sandbox::new("s", Default::default());
        s.metadata.namespace = Some("team".into());
        s.metadata.uid = Some(uid.into());
        if let Some(r) = reservation {
            s.metadata.annotations =
                Some([(wellknown::ANNOTATION_RESERVATION.to_string(), r.to_string())].into());
        }
        s.spec.agent_ref = agent.map(|a| fast_sandbox_api::AgentRef {
            pod_name: a.into(),
            node_name: "n1".into(),
            ..Default::default()
        });
        s
    }

    fn initial(feed: &mut Feed) {
        for c in [
            Change::Pod(Event::Init),
            Change::Node(Event::Init),
            Change::Pool(Event::Init),
            Change::Sandbox(Event::Init),
        ] {
            feed.apply(c);
        }
    }

    #[test]
    fn joins_pods_nodes_and_pools_and_reports_sync() {
        let index = Arc::new(Index::new());
        let mut feed = Feed::new(index.clone());
        initial(&mut feed);
        feed.apply(Change::Pod(Event::InitApply(pod("a", "n1", true, &[]))));
        feed.apply(Change::Pool(Event::InitApply(pool(3))));
        feed.apply(Change::Node(Event::InitApply(node(
            "n1",
            &["busybox:latest"],
        ))));
        assert!(!feed.synced());
        for c in [
            Change::Pod(Event::InitDone),
            Change::Node(Event::InitDone),
            Change::Pool(Event::InitDone),
            Change::Sandbox(Event::InitDone),
        ] {
            feed.apply(c);
        }
        assert!(feed.synced());
        assert!(index.has_pool("team/p"));
        let c = index.choose("team/p", "docker.io/library/busybox").unwrap();
        assert_eq!(
            (c.pod_name.as_str(), c.node_name.as_str(), c.image_hit),
            ("a", "n1", true)
        );
        assert_eq!(index.pool_usage("team/p").slots_total, 3);
        // The annotation wins over the pool's default.
        feed.apply(Change::Pod(Event::Apply(pod(
            "a",
            "n1",
            true,
            &[(wellknown::ANNOTATION_SLOTS, "5")],
        ))));
        assert_eq!(index.pool_usage("team/p").slots_total, 5);
    }

    #[test]
    fn readiness_draining_and_deletion_follow_the_pod() {
        let index = Arc::new(Index::new());
        let mut feed = Feed::new(index.clone());
        feed.apply(Change::Pod(Event::Apply(pod("a", "n1", false, &[]))));
        assert_eq!(index.choose("team/p", "x"), None);
        feed.apply(Change::Pod(Event::Apply(pod("a", "n1", true, &[]))));
        assert!(index.choose("team/p", "x").is_some());
        feed.apply(Change::Pod(Event::Apply(pod(
            "a",
            "n1",
            true,
            &[(wellknown::ANNOTATION_DRAINING, "true")],
        ))));
        assert_eq!(index.choose("team/p", "x"), None);
        feed.apply(Change::Pod(Event::Apply(pod("a", "n1", true, &[]))));
        feed.apply(Change::Pod(Event::Delete(pod("a", "n1", true, &[]))));
        assert_eq!(index.agent_count(), 0);
    }

    #[test]
    fn sandboxes_hold_slots_until_deleted_finished_or_not() {
        let index = Arc::new(Index::new());
        let mut feed = Feed::new(index.clone());
        feed.apply(Change::Pod(Event::Apply(pod(
            "a",
            "n1",
            true,
            &[(wellknown::ANNOTATION_SLOTS, "2")],
        ))));
        index.reserve("team/p", "x", "req-1").unwrap();
        feed.apply(Change::Sandbox(Event::Apply(sandbox(
            "u1",
            Some("a"),
            Some("req-1"),
        ))));
        feed.apply(Change::Sandbox(Event::Apply(sandbox(
            "u1",
            Some("a"),
            Some("req-1"),
        ))));
        assert_eq!(index.used("a"), 1);
        let mut done = sandbox("u1", Some("a"), Some("req-1"));
        done.status = Some(fast_sandbox_api::SandboxStatus {
            phase: Some(fast_sandbox_api::SandboxPhase::Succeeded),
            ..Default::default()
        });
        feed.apply(Change::Sandbox(Event::Apply(done.clone())));
        assert_eq!(
            index.used("a"),
            1,
            "the agent keeps a finished sandbox's container until it is deleted"
        );
        feed.apply(Change::Sandbox(Event::Delete(done)));
        assert_eq!(index.used("a"), 0);
        feed.apply(Change::Sandbox(Event::Apply(sandbox(
            "u2",
            Some("a"),
            None,
        ))));
        feed.apply(Change::Sandbox(Event::Delete(sandbox(
            "u2",
            Some("a"),
            None,
        ))));
        assert_eq!(index.used("a"), 0);
    }

    #[test]
    fn relist_drops_what_disappeared() {
        let index = Arc::new(Index::new());
        let mut feed = Feed::new(index.clone());
        feed.apply(Change::Pod(Event::Apply(pod("a", "n1", true, &[]))));
        feed.apply(Change::Pod(Event::Apply(pod("b", "n1", true, &[]))));
        feed.apply(Change::Sandbox(Event::Apply(sandbox(
            "u1",
            Some("a"),
            None,
        ))));
        feed.apply(Change::Pool(Event::Apply(pool(4))));
        initial(&mut feed);
        feed.apply(Change::Pod(Event::InitApply(pod("b", "n1", true, &[]))));
        for c in [
            Change::Pod(Event::InitDone),
            Change::Node(Event::InitDone),
            Change::Pool(Event::InitDone),
            Change::Sandbox(Event::InitDone),
        ] {
            feed.apply(c);
        }
        assert_eq!(index.agent_count(), 1);
        assert_eq!(index.used("a"), 0);
        assert!(!index.has_pool("team/p"));
    }
}
