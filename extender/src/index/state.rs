//! The state behind the [`Index`](super::Index) lock: what is known of
//! each node, pool and counted agent pod, and how watch events change it.
//! Every method runs under the lock, so none of them synchronise.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use chrono::{DateTime, Utc};
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE};
use fast_sandbox_api::{Sandbox, SandboxPool};
use k8s_openapi::api::core::v1::{Node, Pod};
use lru::LruCache;

use super::NODE_STATUS_MAX_IMAGES;
use crate::agent_pod::{AgentPod, PoolKey};
use crate::images::{ImageId, ImageTable};
use crate::scoring::{ImageSet, ScoringConfig, WantedImage, image_value, recency_weight};

/// Sandbox image uses remembered per pool (most recent kept).
const RECENT_USES_PER_POOL: usize = 1024;

/// What the extender knows of one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct NodeRecord {
    /// `spec.unschedulable` (cordoned).
    pub(super) unschedulable: bool,
    /// The Ready condition is present and not `True`.
    pub(super) not_ready: bool,
    /// Every name of every image on the node, interned, sorted, unique.
    pub(super) images: Vec<ImageId>,
    /// Entries in `status.images`; at [`NODE_STATUS_MAX_IMAGES`] or more the
    /// list may be incomplete.
    image_entries: usize,
}

impl NodeRecord {
    pub(super) fn holds(&self, id: ImageId) -> bool {
        self.images.binary_search(&id).is_ok()
    }

    pub(super) fn image_list_complete(&self) -> bool {
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
pub(super) struct PoolRecord {
    /// `spec.warmImages`, interned.
    pub(super) warm: Vec<ImageId>,
    /// Agent pods of the pool per node name.
    pub(super) agents_per_node: HashMap<String, u32>,
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
pub(super) struct AgentPlacement {
    pub(super) pool: PoolKey,
    pub(super) node: String,
}

/// How long a placement assumed at prioritize time counts without the pod
/// watch confirming it (the scheduler may have chosen another node, or
/// failed to bind).
pub(super) const ASSUMED_FOR: chrono::Duration = chrono::Duration::seconds(30);

/// Everything the index knows, behind its lock.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Agent pods counted on the node they scored best on, by (namespace,
    /// name), with when: the scheduler binds agents of a pool one after
    /// another faster than the pod watch reports each binding, and spread
    /// must see the ones just placed.
    pub(super) assumed: HashMap<(String, String), DateTime<Utc>>,
    pub(super) images: ImageTable,
    pub(super) nodes: HashMap<String, NodeRecord>,
    pub(super) pools: HashMap<PoolKey, PoolRecord>,
    /// Counted agent pods by (namespace, name).
    pub(super) agents: HashMap<(String, String), AgentPlacement>,
}

impl State {
    pub(super) fn apply_node(&mut self, node: &Node) {
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

    pub(super) fn apply_pool(&mut self, pool: &SandboxPool) {
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

    pub(super) fn apply_agent_pod(&mut self, pod: &Pod) {
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
    pub(super) fn assume(&mut self, agent: &AgentPod, node: &str, now: DateTime<Utc>) {
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

    pub(super) fn uncount_agent(&mut self, key: &(String, String)) {
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

    pub(super) fn record_use(&mut self, sandbox: &Sandbox, at: Option<DateTime<Utc>>, ended: bool) {
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
    pub(super) fn image_set(
        &self,
        agent: &AgentPod,
        now: DateTime<Utc>,
        config: &ScoringConfig,
    ) -> ImageSet {
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
