//! The in-memory view the extender answers from, fed by watches on nodes,
//! agent pods, SandboxPools and Sandboxes: which images each node holds,
//! which images each pool wants, and where each pool's agents already run.
//!
//! Every request is answered from this index under a read lock; watches
//! write to it. Nothing here does I/O.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE};
use fast_sandbox_api::{Sandbox, SandboxPool};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lru::LruCache;

use crate::agent_pod::{AgentPod, PoolKey};
use crate::images::{ImageId, ImageTable};
use crate::scoring::{
    ImageSet, ScoringConfig, WantedImage, image_value, node_score, recency_weight,
};

/// The kubelet reports at most this many images in `Node.status.images`
/// (`--node-status-max-images`, largest first). A list this long may be
/// cut, so the absence of an image from it proves nothing.
pub const NODE_STATUS_MAX_IMAGES: usize = 50;

/// Sandbox image uses remembered per pool (most recent kept).
const RECENT_USES_PER_POOL: usize = 1024;

/// What the extender knows of one node.
#[derive(Clone, Debug, Default, PartialEq)]
struct NodeRecord {
    /// `spec.unschedulable` (cordoned).
    unschedulable: bool,
    /// The Ready condition is present and not `True`.
    not_ready: bool,
    /// Every name of every image on the node, interned, sorted, unique.
    images: Vec<ImageId>,
    /// Entries in `status.images`; at [`NODE_STATUS_MAX_IMAGES`] or more the
    /// list may be incomplete.
    image_entries: usize,
}

impl NodeRecord {
    fn holds(&self, id: ImageId) -> bool {
        self.images.binary_search(&id).is_ok()
    }

    fn image_list_complete(&self) -> bool {
        self.image_entries < NODE_STATUS_MAX_IMAGES
    }
}

/// One sandbox's use of an image.
#[derive(Clone, Copy, Debug)]
struct ImageUse {
    image: ImageId,
    at: DateTime<Utc>,
}

/// What the extender knows of one pool.
#[derive(Debug)]
struct PoolRecord {
    /// `spec.warmImages`, interned.
    warm: Vec<ImageId>,
    /// Agent pods of the pool per node name.
    agents_per_node: HashMap<String, u32>,
    /// Recent image uses by sandbox UID (deleted sandboxes stay until
    /// pushed out, dated at their end).
    recent: LruCache<String, ImageUse>,
}

impl Default for PoolRecord {
    fn default() -> Self {
        Self {
            warm: Vec::new(),
            agents_per_node: HashMap::new(),
            recent: LruCache::new(
                NonZeroUsize::new(RECENT_USES_PER_POOL).unwrap_or(NonZeroUsize::MIN),
            ),
        }
    }
}

/// Where one counted agent pod runs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AgentPlacement {
    pool: PoolKey,
    node: String,
}

/// How long a placement assumed at prioritize time counts without the pod
/// watch confirming it (the scheduler may have chosen another node, or
/// failed to bind).
const ASSUMED_FOR: chrono::Duration = chrono::Duration::seconds(30);

#[derive(Debug, Default)]
struct State {
    /// Agent pods counted on the node they scored best on, by (namespace,
    /// name), with when: the scheduler binds agents of a pool one after
    /// another faster than the pod watch reports each binding, and spread
    /// must see the ones just placed.
    assumed: HashMap<(String, String), DateTime<Utc>>,
    images: ImageTable,
    nodes: HashMap<String, NodeRecord>,
    pools: HashMap<PoolKey, PoolRecord>,
    /// Counted agent pods by (namespace, name).
    agents: HashMap<(String, String), AgentPlacement>,
}

/// Why a node cannot host an agent pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// The node's Ready condition is not True.
    NotReady,
    /// The node is cordoned.
    Unschedulable,
    /// An image the pod never pulls is not on the node.
    ImageMissing(String),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::NotReady => f.write_str("node is not Ready"),
            Unfit::Unschedulable => f.write_str("node is cordoned (spec.unschedulable)"),
            Unfit::ImageMissing(image) => write!(
                f,
                "image {image} is not on the node and the agent pod never pulls it (imagePullPolicy: Never)"
            ),
        }
    }
}

/// Sizes of the index, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStats {
    /// Nodes known.
    pub nodes: usize,
    /// Pools known (by their object, their agents or their sandboxes).
    pub pools: usize,
    /// Agent pods counted on a node.
    pub agents: usize,
    /// Distinct image names interned.
    pub images: usize,
}

/// The index. Cheap reads, serialized writes.
#[derive(Debug, Default)]
pub struct Index {
    config: ScoringConfig,
    check_never_pulled: bool,
    state: RwLock<State>,
}

impl Index {
    /// An empty index scoring with `config`.
    pub fn new(config: ScoringConfig) -> Self {
        Self {
            config: config.sanitized(),
            check_never_pulled: true,
            state: RwLock::default(),
        }
    }

    /// Whether the filter rules out nodes lacking an image the agent pod
    /// never pulls (on by default). Off, only readiness and cordons count,
    /// e.g. while `status.images` lags behind images just loaded.
    pub fn with_never_pulled_check(mut self, on: bool) -> Self {
        self.check_never_pulled = on;
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts of what is indexed.
    pub fn stats(&self) -> IndexStats {
        let s = self.read();
        IndexStats {
            nodes: s.nodes.len(),
            pools: s.pools.len(),
            agents: s.agents.len(),
            images: s.images.len(),
        }
    }

    // ---- nodes ----

    /// Records a node as it is now.
    pub fn apply_node(&self, node: &Node) {
        let mut s = self.write();
        s.apply_node(node);
    }

    /// Forgets a node.
    pub fn delete_node(&self, name: &str) {
        self.write().nodes.remove(name);
    }

    /// Replaces every node with `nodes` (after a re-list).
    pub fn replace_nodes<'n>(&self, nodes: impl IntoIterator<Item = &'n Node>) {
        let mut s = self.write();
        s.nodes.clear();
        for n in nodes {
            s.apply_node(n);
        }
    }

    // ---- pools ----

    /// Records a pool's wanted images.
    pub fn apply_pool(&self, pool: &SandboxPool) {
        self.write().apply_pool(pool);
    }

    /// Forgets a pool's wanted images (its agents and uses stay counted
    /// until their own objects go).
    pub fn delete_pool(&self, namespace: &str, name: &str) {
        if let Some(p) = self.write().pools.get_mut(&PoolKey::new(namespace, name)) {
            p.warm.clear();
        }
    }

    /// Replaces every pool's wanted images with `pools` (after a re-list).
    pub fn replace_pools<'p>(&self, pools: impl IntoIterator<Item = &'p SandboxPool>) {
        let mut s = self.write();
        for p in s.pools.values_mut() {
            p.warm.clear();
        }
        for p in pools {
            s.apply_pool(p);
        }
    }

    // ---- agent pods ----

    /// Records an agent pod (counted once bound to a node, until it ends or
    /// starts terminating).
    pub fn apply_agent_pod(&self, pod: &Pod) {
        self.write().apply_agent_pod(pod);
    }

    /// Forgets an agent pod.
    pub fn delete_agent_pod(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let mut s = self.write();
        s.assumed.remove(&key);
        s.uncount_agent(&key);
    }

    /// Replaces every agent pod with `pods` (after a re-list).
    pub fn replace_agent_pods<'p>(&self, pods: impl IntoIterator<Item = &'p Pod>) {
        let mut s = self.write();
        s.agents.clear();
        s.assumed.clear();
        for p in s.pools.values_mut() {
            p.agents_per_node.clear();
        }
        for p in pods {
            s.apply_agent_pod(p);
        }
    }

    // ---- sandboxes ----

    /// Records a sandbox's image use, dated when it started (or was
    /// created).
    pub fn apply_sandbox(&self, sandbox: &Sandbox) {
        let at = sandbox
            .status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref().or(s.started_at.as_ref()))
            .or(sandbox.metadata.creation_timestamp.as_ref())
            .map(chrono_time);
        self.write().record_use(sandbox, at, false);
    }

    /// Records that a sandbox is gone: its image use stays, dated at its end
    /// (`finishedAt`, else `now`).
    pub fn delete_sandbox(&self, sandbox: &Sandbox, now: DateTime<Utc>) {
        let at = sandbox
            .status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref())
            .map(chrono_time)
            .unwrap_or(now);
        self.write().record_use(sandbox, Some(at), true);
    }

    // ---- answers ----

    /// For each of `nodes`, why `agent` cannot run there, or `None` when it
    /// can. Unknown nodes pass: the extender only says no when it knows.
    pub fn filter(&self, agent: &AgentPod, nodes: &[&str]) -> Vec<Option<Unfit>> {
        let s = self.read();
        let never_pulled: Vec<(Option<ImageId>, &str)> = if self.check_never_pulled {
            agent
                .never_pulled
                .iter()
                .map(|i| (s.images.lookup(i), i.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        nodes
            .iter()
            .map(|name| {
                let node = s.nodes.get(*name)?;
                if node.not_ready {
                    return Some(Unfit::NotReady);
                }
                if node.unschedulable {
                    return Some(Unfit::Unschedulable);
                }
                if node.image_list_complete() {
                    for (id, image) in &never_pulled {
                        if !id.is_some_and(|id| node.holds(id)) {
                            return Some(Unfit::ImageMissing((*image).to_string()));
                        }
                    }
                }
                None
            })
            .collect()
    }

    /// Scores (0..=10) of `nodes` for `agent`, in order: image locality of
    /// the pool's image set mixed with the spread of the pool's agents.
    pub fn prioritize(&self, agent: &AgentPod, nodes: &[&str], now: DateTime<Utc>) -> Vec<i64> {
        let mut scores = self.score(agent, nodes, now);
        let best = scores
            .iter()
            .enumerate()
            .max_by_key(|&(i, s)| (*s, std::cmp::Reverse(i)))
            .map(|(i, s)| (i, *s));
        if let Some((chosen, top)) = best
            && !agent.name.is_empty()
        {
            // The assumption must be where the scheduler binds: among nodes
            // tied at the top, the extender picks one and ranks the rest a
            // point lower, instead of leaving the tie to the scheduler.
            if top > 0 {
                for (i, s) in scores.iter_mut().enumerate() {
                    if i != chosen && *s == top {
                        *s -= 1;
                    }
                }
            }
            self.write().assume(agent, nodes[chosen], now);
        }
        scores
    }

    fn score(&self, agent: &AgentPod, nodes: &[&str], now: DateTime<Utc>) -> Vec<i64> {
        let s = self.read();
        let set = s.image_set(agent, now, &self.config);
        let pool = s.pools.get(&agent.pool);
        // A pod scored again (the scheduler retries) does not count itself.
        let own = s
            .agents
            .get(&(agent.namespace.clone(), agent.name.clone()))
            .filter(|p| p.pool == agent.pool)
            .map(|p| p.node.as_str());
        nodes
            .iter()
            .map(|name| {
                let locality = s
                    .nodes
                    .get(*name)
                    .map(|n| set.locality(&n.images))
                    .unwrap_or(0.0);
                let agents = pool
                    .and_then(|p| p.agents_per_node.get(*name))
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(u32::from(own == Some(*name)));
                node_score(locality, agents, self.config.spread_weight)
            })
            .collect()
    }
}

/// A Kubernetes `Time` as a chrono time.
fn chrono_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

impl State {
    fn apply_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let mut record = NodeRecord {
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            ..Default::default()
        };
        if let Some(status) = &node.status {
            record.not_ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status != "True");
            let images = status.images.as_deref().unwrap_or_default();
            record.image_entries = images.len();
            for image in images {
                let size = image.size_bytes.unwrap_or(0).max(0) as u64;
                for n in image.names.iter().flatten() {
                    record.images.push(self.images.intern(n, size));
                }
            }
        }
        record.images.sort_unstable();
        record.images.dedup();
        self.nodes.insert(name, record);
    }

    fn apply_pool(&mut self, pool: &SandboxPool) {
        let (Some(ns), Some(name)) = (&pool.metadata.namespace, &pool.metadata.name) else {
            return;
        };
        let warm: Vec<ImageId> = pool
            .spec
            .warm_images
            .iter()
            .filter(|i| !i.trim().is_empty())
            .map(|i| self.images.intern(i, 0))
            .collect();
        self.pools
            .entry(PoolKey::new(ns.as_str(), name.as_str()))
            .or_default()
            .warm = warm;
    }

    fn apply_agent_pod(&mut self, pod: &Pod) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        let key = (ns.clone(), name.clone());
        let labels = pod.metadata.labels.as_ref();
        let pool = labels
            .and_then(|l| Some((l.get(LABEL_POOL_NAMESPACE)?, l.get(LABEL_POOL)?)))
            .filter(|(pns, p)| !pns.is_empty() && !p.is_empty());
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .filter(|n| !n.is_empty());
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let live = !finished && pod.metadata.deletion_timestamp.is_none();
        if node.is_none() && live && self.assumed.contains_key(&key) {
            // Not bound yet as far as the watch knows: keep the assumption.
            return;
        }
        self.assumed.remove(&key);
        let placement = match (pool, node) {
            (Some((pool_ns, pool)), Some(node)) if live => Some(AgentPlacement {
                pool: PoolKey::new(pool_ns.as_str(), pool.as_str()),
                node: node.clone(),
            }),
            _ => None,
        };
        if self.agents.get(&key) == placement.as_ref() {
            return;
        }
        self.uncount_agent(&key);
        if let Some(p) = placement {
            *self
                .pools
                .entry(p.pool.clone())
                .or_default()
                .agents_per_node
                .entry(p.node.clone())
                .or_default() += 1;
            self.agents.insert(key, p);
        }
    }

    /// Counts `agent` on `node` until its pod is seen bound (or gone), or
    /// [`ASSUMED_FOR`] passed; drops assumptions that outlived it.
    fn assume(&mut self, agent: &AgentPod, node: &str, now: DateTime<Utc>) {
        let stale: Vec<(String, String)> = self
            .assumed
            .iter()
            .filter(|(_, at)| now - **at > ASSUMED_FOR)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.assumed.remove(&k);
            self.uncount_agent(&k);
        }
        let key = (agent.namespace.clone(), agent.name.clone());
        if self.agents.contains_key(&key) && !self.assumed.contains_key(&key) {
            // The watch already saw it bound.
            return;
        }
        self.uncount_agent(&key);
        *self
            .pools
            .entry(agent.pool.clone())
            .or_default()
            .agents_per_node
            .entry(node.to_string())
            .or_default() += 1;
        self.agents.insert(
            key.clone(),
            AgentPlacement {
                pool: agent.pool.clone(),
                node: node.to_string(),
            },
        );
        self.assumed.insert(key, now);
    }

    fn uncount_agent(&mut self, key: &(String, String)) {
        let Some(old) = self.agents.remove(key) else {
            return;
        };
        if let Some(pool) = self.pools.get_mut(&old.pool)
            && let Some(count) = pool.agents_per_node.get_mut(&old.node)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pool.agents_per_node.remove(&old.node);
            }
        }
    }

    fn record_use(&mut self, sandbox: &Sandbox, at: Option<DateTime<Utc>>, ended: bool) {
        let (Some(ns), Some(uid)) = (&sandbox.metadata.namespace, &sandbox.metadata.uid) else {
            return;
        };
        let spec = &sandbox.spec;
        if spec.pool_ref.is_empty() || spec.image.trim().is_empty() {
            return;
        }
        let Some(at) = at else { return };
        let image = self.images.intern(&spec.image, 0);
        let recent = &mut self
            .pools
            .entry(PoolKey::new(ns.as_str(), spec.pool_ref.as_str()))
            .or_default()
            .recent;
        let at = match recent.peek(uid) {
            // A live update never dates a use back; an end dates it at the end.
            Some(prev) if !ended => prev.at.max(at),
            _ => at,
        };
        recent.put(uid.clone(), ImageUse { image, at });
    }

    /// The images `agent`'s pool wants, with their worth.
    fn image_set(&self, agent: &AgentPod, now: DateTime<Utc>, config: &ScoringConfig) -> ImageSet {
        let mut wanted = Vec::new();
        let mut unheld = 0.0;
        let worth = |id: ImageId, weight: f64| WantedImage {
            id,
            worth: weight * image_value(self.images.size(id)),
        };
        for image in &agent.images {
            match self.images.lookup(&normalize(image)) {
                Some(id) => wanted.push(worth(id, 1.0)),
                None => unheld += image_value(0),
            }
        }
        if let Some(pool) = self.pools.get(&agent.pool) {
            wanted.extend(pool.warm.iter().map(|id| worth(*id, 1.0)));
            let mut recency: HashMap<ImageId, f64> = HashMap::new();
            for (_, u) in pool.recent.iter() {
                let age = (now - u.at).num_milliseconds() as f64 / 1000.0;
                *recency.entry(u.image).or_default() +=
                    recency_weight(age, config.recent_half_life);
            }
            wanted.extend(recency.into_iter().map(|(id, w)| worth(id, w.min(1.0))));
        }
        ImageSet::new(wanted, unheld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::SandboxSpec;
    use k8s_openapi::api::core::v1::{
        ContainerImage, NodeCondition, NodeSpec, NodeStatus, PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    const MIB: i64 = 1 << 20;

    fn node(name: &str, images: &[(&str, i64)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                images: Some(
                    images
                        .iter()
                        .map(|(n, s)| ContainerImage {
                            names: Some(vec![n.to_string()]),
                            size_bytes: Some(*s),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    fn pool(name: &str, warm: &[&str]) -> SandboxPool {
        let mut p = SandboxPool::new(name, Default::default());
        p.metadata.namespace = Some("ns".into());
        p.spec.warm_images = warm.iter().map(|s| s.to_string()).collect();
        p
    }

    fn agent_pod(name: &str, pool: &str, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("fast-sandbox-system".into()),
                labels: Some(
                    [
                        (LABEL_POOL.to_string(), pool.to_string()),
                        (LABEL_POOL_NAMESPACE.to_string(), "ns".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn sandbox(uid: &str, pool: &str, image: &str, started: DateTime<Utc>) -> Sandbox {
        let mut s = Sandbox::new(
            uid,
            SandboxSpec {
                image: image.into(),
                pool_ref: pool.into(),
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(uid.into());
        s.metadata.creation_timestamp = Some(Time(
            Timestamp::new(started.timestamp(), 0).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        s
    }

    fn agent(pool: &str, images: &[&str]) -> AgentPod {
        AgentPod {
            pool: PoolKey::new("ns", pool),
            images: images.iter().map(|i| normalize(i)).collect(),
            never_pulled: Vec::new(),
            name: String::new(),
            namespace: "fast-sandbox-system".into(),
        }
    }

    #[test]
    fn agents_scored_back_to_back_spread_before_the_watch_catches_up() {
        let idx = Index::new(ScoringConfig::default());
        idx.replace_nodes(&[node("a", &[]), node("b", &[])]);
        let named = |n: &str| AgentPod {
            name: n.to_string(),
            ..agent("p", &[])
        };
        let now = Utc::now();
        // The first goes to a (the extender breaks the tie itself); the
        // second, scored before any binding is watched, prefers b.
        let s1 = idx.prioritize(&named("p-1"), &["a", "b"], now);
        assert_eq!(s1[0], s1[1] + 1);
        let s2 = idx.prioritize(&named("p-2"), &["a", "b"], now);
        assert!(s2[1] > s2[0], "{s2:?}");
        // Scored again, p-1 does not count itself: a (where only it is)
        // still beats b (where p-2 is).
        let again = idx.prioritize(&named("p-1"), &["a", "b"], now);
        assert!(again[0] > again[1], "{again:?}");
        // The watch confirms p-1 on a and p-2 on b: each counted once.
        idx.apply_agent_pod(&agent_pod("p-1", "p", Some("a")));
        idx.apply_agent_pod(&agent_pod("p-2", "p", Some("b")));
        let s = idx.prioritize(&agent("p", &[]), &["a", "b"], now);
        assert_eq!(s[0], s[1], "{s:?}");
        assert_eq!(idx.stats().agents, 2);
        // An assumption never confirmed stops counting after a while.
        idx.prioritize(&named("p-3"), &["a", "b"], now);
        let later = now + ASSUMED_FOR + chrono::Duration::seconds(1);
        idx.prioritize(&named("p-4"), &["a", "b"], later);
        idx.delete_agent_pod("fast-sandbox-system", "p-4");
        let s = idx.prioritize(&agent("p", &[]), &["a", "b"], later);
        assert_eq!(s[0], s[1], "p-3 no longer counts: {s:?}");
    }

    #[test]
    fn a_small_image_on_one_node_still_wins() {
        let idx = Index::new(ScoringConfig::default());
        idx.replace_nodes(&[
            node("has", &[("docker.io/library/tiny:1", MIB)]),
            node("big1", &[("docker.io/library/other:1", 900 * MIB)]),
            node("big2", &[("docker.io/library/other:1", 900 * MIB)]),
        ]);
        idx.apply_pool(&pool("p", &["tiny:1"]));
        let scores = idx.prioritize(&agent("p", &[]), &["has", "big1", "big2"], Utc::now());
        assert_eq!(scores, vec![10, 3, 3]);
    }

    #[test]
    fn agents_of_the_pool_spread_and_others_do_not_count() {
        let idx = Index::new(ScoringConfig::default());
        idx.replace_nodes(&[node("a", &[]), node("b", &[])]);
        idx.apply_agent_pod(&agent_pod("x1", "p", Some("a")));
        idx.apply_agent_pod(&agent_pod("x2", "p", Some("a")));
        idx.apply_agent_pod(&agent_pod("y1", "q", Some("b")));
        idx.apply_agent_pod(&agent_pod("pending", "p", None));
        let s = idx.prioritize(&agent("p", &[]), &["a", "b"], Utc::now());
        assert!(s[0] < s[1], "{s:?}");
        // Moving and deleting pods updates the counts.
        idx.apply_agent_pod(&agent_pod("x2", "p", Some("b")));
        idx.delete_agent_pod("fast-sandbox-system", "x1");
        let s = idx.prioritize(&agent("p", &[]), &["a", "b"], Utc::now());
        assert!(s[0] > s[1], "{s:?}");
        assert_eq!(idx.stats().agents, 2);
    }

    #[test]
    fn recent_sandbox_images_count_by_recency() {
        let idx = Index::new(ScoringConfig {
            spread_weight: 0.0,
            recent_half_life: std::time::Duration::from_secs(60),
        });
        let now = Utc::now();
        idx.replace_nodes(&[
            node("fresh", &[("fresh:1", 50 * MIB)]),
            node("stale", &[("stale:1", 50 * MIB)]),
        ]);
        idx.apply_sandbox(&sandbox("u1", "p", "fresh:1", now));
        idx.apply_sandbox(&sandbox(
            "u2",
            "p",
            "stale:1",
            now - chrono::Duration::hours(1),
        ));
        let s = idx.prioritize(&agent("p", &[]), &["fresh", "stale"], now);
        assert!(s[0] > s[1], "{s:?}");
        // A deleted sandbox's use stays, dated at its end.
        idx.delete_sandbox(&sandbox("u2", "p", "stale:1", now), now);
        let s = idx.prioritize(&agent("p", &[]), &["fresh", "stale"], now);
        assert_eq!(s[0], s[1], "{s:?}");
    }

    #[test]
    fn filter_names_why_a_node_cannot_host() {
        let idx = Index::new(ScoringConfig::default());
        let mut not_ready = node("nr", &[]);
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let mut cordoned = node("c", &[("fast-sandbox/agent:dev", MIB)]);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let many: Vec<(String, i64)> = (0..NODE_STATUS_MAX_IMAGES)
            .map(|i| (format!("img{i}:1"), MIB))
            .collect();
        let many: Vec<(&str, i64)> = many.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        idx.replace_nodes(&[
            not_ready,
            cordoned,
            node("ok", &[("fast-sandbox/agent:dev", MIB)]),
            node("lacks", &[("busybox", MIB)]),
            node("full", &many),
        ]);
        let mut a = agent("p", &["fast-sandbox/agent:dev"]);
        a.never_pulled = a.images.clone();
        let v = idx.filter(&a, &["nr", "c", "ok", "lacks", "full", "unknown"]);
        assert_eq!(v[0], Some(Unfit::NotReady));
        assert_eq!(v[1], Some(Unfit::Unschedulable));
        assert_eq!(v[2], None);
        assert_eq!(
            v[3],
            Some(Unfit::ImageMissing(
                "docker.io/fast-sandbox/agent:dev".into()
            ))
        );
        assert_eq!(v[4], None, "a possibly cut image list proves nothing");
        assert_eq!(v[5], None, "unknown nodes pass");

        let idx = Index::new(ScoringConfig::default()).with_never_pulled_check(false);
        idx.replace_nodes(&[node("lacks", &[("busybox", MIB)])]);
        assert_eq!(idx.filter(&a, &["lacks"]), vec![None]);
    }

    #[test]
    fn relists_replace_nodes_and_agents() {
        let idx = Index::new(ScoringConfig::default());
        idx.replace_nodes(&[node("a", &[]), node("b", &[])]);
        idx.apply_agent_pod(&agent_pod("x", "p", Some("a")));
        idx.replace_nodes(&[node("b", &[])]);
        idx.replace_agent_pods(&[]);
        let st = idx.stats();
        assert_eq!((st.nodes, st.agents), (1, 0));
        idx.apply_pool(&pool("p", &["a:1"]));
        idx.replace_pools(&[]);
        assert_eq!(
            idx.prioritize(&agent("p", &[]), &["b"], Utc::now()),
            vec![3],
            "a pool's warm images go with its object"
        );
    }
}
