//! The in-memory view the extender answers from, fed by watches on nodes,
//! agent pods, SandboxPools and Sandboxes: which images each node holds,
//! which images each pool wants, and where each pool's agents already run.
//!
//! Every request is answered from this index under a read lock; watches
//! write to it. Nothing here does I/O.

use std::sync::RwLock;

use chrono::{DateTime, Utc};
use fast_sandbox_api::{Sandbox, SandboxPool};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::agent_pod::{AgentPod, PoolKey};
use crate::images::ImageId;
use crate::scoring::{ScoringConfig, node_score};

use state::State;

mod state;
#[cfg(test)]
mod tests;

/// The kubelet reports at most this many images in `Node.status.images`
/// (`--node-status-max-images`, largest first). A list this long may be
/// cut, so the absence of an image from it proves nothing.
pub const NODE_STATUS_MAX_IMAGES: usize = 50;

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
