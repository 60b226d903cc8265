//! The placement index: which warm agent runs a sandbox.
//!
//! One implementation, used by the admission webhook to bind new sandboxes
//! and by the controller to re-place sandboxes whose agent refused or died.
//! It is pure (no I/O): a watch feeds it agents ([`Index::upsert_agent`]),
//! pools ([`Index::upsert_pool`]) and the sandboxes that hold slots
//! ([`Index::observe_bound`], [`Index::observe_unbound`]); callers ask it for
//! an agent ([`Index::choose`]) or take a slot at once ([`Index::reserve`]).
//!
//! # The rule
//!
//! Candidates are the agents of the sandbox's pool that are ready, not
//! draining, have a free slot and did not refuse a sandbox a moment ago
//! ([`Index::record_refusal`], with backoff). An agent whose node holds the
//! image wins. Among those, and otherwise among all, the least loaded agent
//! wins; among equally loaded agents the one chosen longest ago, so new
//! sandboxes spread round-robin. Holders spread rather than pack: each
//! agent keeps its own stock of pre-started sandboxes of the image, so a
//! stream of creates spread over N holders claims from N stocks refilling
//! side by side, where packed onto the last holder it drains one stock and
//! goes cold.
//! While some node of the pool holds the image, an agent on a node known to
//! lack it is never chosen: nothing is pulled, so the sandbox would fail
//! there; it waits for a slot on a holder instead.
//!
//! # Slots
//!
//! Slot use is counted from bindings keyed by sandbox UID, so replaying a
//! watch is idempotent. A bound sandbox holds its slot until its object is
//! deleted, finished or not, as its agent counts it: the agent keeps a
//! finished sandbox's container (and logs) until then. A reservation made at admission is keyed by a token
//! (the object has no UID yet) and stays *tentative* until the sandbox is seen
//! bound on the watch; tentative reservations whose object never shows up
//! (the apiserver rejected it after admission) are dropped by
//! [`Index::expire_tentative`].
//!
//! Reservations are atomic within one index: concurrent callers never book an
//! agent beyond its slots. Several webhook replicas each have their own index
//! and may briefly disagree; the agent is the authority on its own capacity
//! and refuses a sandbox beyond its slots, and the controller then re-places
//! it with [`Index::reserve_avoiding`]. That contract is what makes a local
//! view of capacity safe.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fast_sandbox_api::image;

use state::{Pool, State};

mod state;
#[cfg(test)]
mod tests;

/// Images remembered per pool before the least recently used is forgotten.
/// A forgotten image only loses its cache preference; its next placement is
/// a miss that falls back to the least loaded agent.
pub const DEFAULT_IMAGES_PER_POOL: usize = 65_536;

/// The key of a pool: `namespace/name`. Sandboxes name a pool of their own
/// namespace; the pool's agent pods live in the operator's namespace and
/// carry the pool's namespace and name as labels.
pub fn pool_key(namespace: &str, pool: &str) -> String {
    format!("{namespace}/{pool}")
}

/// Longest an agent that refused a sandbox for lack of slots is skipped.
pub const MAX_REFUSAL_BACKOFF: Duration = Duration::from_secs(30);
/// How long an agent is skipped after its first refusal; doubled for each
/// refusal in a row.
pub const FIRST_REFUSAL_BACKOFF: Duration = Duration::from_millis(500);

/// What the index knows about one agent pod, as observed on its watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// `namespace/pool` of the pool the agent belongs to.
    pub pool_key: String,
    /// Name of the agent pod (unique: every agent pod lives in the
    /// operator's namespace).
    pub pod_name: String,
    /// Node the pod runs on; empty while unscheduled.
    pub node_name: String,
    /// The pod's `Ready` condition is true.
    pub ready: bool,
    /// The agent is being drained: it takes no new sandbox.
    pub draining: bool,
    /// Sandboxes the agent runs at once.
    pub slots_total: u32,
    /// Images held by the agent's node, in any spelling; the index
    /// normalises them.
    pub images: Vec<String>,
}

/// The agent chosen for a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Agent pod name, for `spec.agentRef.podName`.
    pub pod_name: String,
    /// Node of the agent pod, for `spec.agentRef.nodeName`.
    pub node_name: String,
    /// Whether the agent's node holds the image.
    pub image_hit: bool,
}

/// No ready, non-draining agent of the pool has a free slot. The sandbox is
/// admitted unbound and the pool controller grows the pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no ready agent of pool {pool_key} has a free slot")]
pub struct NoCapacity {
    /// `namespace/pool` that had no room.
    pub pool_key: String,
}

/// Totals of one pool, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Agents known.
    pub agents: u32,
    /// Agents ready and not draining.
    pub schedulable: u32,
    /// Slots over the schedulable agents.
    pub slots_total: u32,
    /// Slots taken on the schedulable agents (bound and reserved sandboxes).
    pub slots_used: u32,
}

/// The placement index. Cheap to share behind an `Arc`; every method takes
/// `&self` and holds an internal lock for a few microseconds.
pub struct Index {
    state: Mutex<State>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Index")
            .field("pools", &s.pools.len())
            .field("agents", &s.agent_ids.len())
            .field("bindings", &s.bindings.len())
            .finish()
    }
}

impl Index {
    /// An empty index remembering [`DEFAULT_IMAGES_PER_POOL`] images per pool.
    pub fn new() -> Self {
        Self::with_image_capacity(DEFAULT_IMAGES_PER_POOL)
    }

    /// An empty index remembering at most `images_per_pool` images per pool.
    pub fn with_image_capacity(images_per_pool: usize) -> Self {
        Index {
            state: Mutex::new(State {
                pools: HashMap::new(),
                agents: Vec::new(),
                vacant: Vec::new(),
                agent_ids: HashMap::new(),
                bindings: HashMap::new(),
                used: HashMap::new(),
                turn: 0,
                image_capacity: NonZeroUsize::new(images_per_pool).unwrap_or(NonZeroUsize::MIN),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters consistent enough to
        // keep placing: every mutation is applied before its index entries.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a pool exists (its slots come from agent annotations).
    pub fn upsert_pool(&self, pool_key: &str) {
        let mut s = self.lock();
        let cap = s.image_capacity;
        s.pools
            .entry(pool_key.to_string())
            .or_insert_with(|| Pool::new(cap))
            .declared = true;
    }

    /// Records that a pool was deleted. Its agents stay until their pods go.
    pub fn remove_pool(&self, pool_key: &str) {
        let mut s = self.lock();
        if let Some(p) = s.pools.get_mut(pool_key) {
            p.declared = false;
            if p.is_empty() {
                s.pools.remove(pool_key);
            }
        }
    }

    /// Whether the pool was seen by [`Index::upsert_pool`].
    pub fn has_pool(&self, pool_key: &str) -> bool {
        self.lock().pools.get(pool_key).is_some_and(|p| p.declared)
    }

    /// Adds an agent or replaces what is known of it. Idempotent.
    pub fn upsert_agent(&self, agent: AgentState) {
        self.lock().upsert_agent(agent);
    }

    /// Forgets an agent pod. Sandboxes bound to it keep their bindings until
    /// they are re-placed or deleted.
    pub fn remove_agent(&self, pod_name: &str) {
        self.lock().remove_agent(pod_name);
    }

    /// Keeps only the agents for which `keep(pod name)` is true; used
    /// after a watch re-list.
    pub fn retain_agents(&self, mut keep: impl FnMut(&str) -> bool) {
        let mut s = self.lock();
        let gone: Vec<String> = s.agent_ids.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            s.remove_agent(&key);
        }
    }

    /// The agent a sandbox of `pool_key` running `image` would get now,
    /// without taking its slot (dry-run admission, previews).
    pub fn choose(&self, pool_key: &str, image: &str) -> Option<Choice> {
        let image = image::normalize(image);
        let s = self.lock();
        s.pick(pool_key, &image, None)
            .map(|(id, hit)| s.choice(id, hit))
    }

    /// Chooses an agent and takes one of its slots for `key` in one step.
    ///
    /// `key` is the sandbox UID, or a reservation token when the object has
    /// no UID yet (admission). The slot is tentative until the sandbox is seen
    /// bound on the watch. Idempotent: if `key` already holds a slot on an
    /// agent of the pool, that agent is returned and nothing changes.
    pub fn reserve(&self, pool_key: &str, image: &str, key: &str) -> Result<Choice, NoCapacity> {
        let image = image::normalize(image);
        let mut s = self.lock();
        if let Some(c) = s.existing(pool_key, &image, key) {
            return Ok(c);
        }
        s.reserve(pool_key, &image, key, None)
    }

    /// Re-placement: releases the slot `key` holds (if any) and reserves one
    /// on another agent of the pool than `avoid_pod` (the agent that refused
    /// the sandbox or was lost).
    pub fn reserve_avoiding(
        &self,
        pool_key: &str,
        image: &str,
        key: &str,
        avoid_pod: &str,
    ) -> Result<Choice, NoCapacity> {
        let image = image::normalize(image);
        let mut s = self.lock();
        s.release(key);
        let avoid = s.agent_ids.get(avoid_pod).copied();
        s.reserve(pool_key, &image, key, avoid)
    }

    /// Gives back the slot `key` holds, if any.
    pub fn release(&self, key: &str) {
        self.lock().release(key);
    }

    /// The watch saw sandbox `uid` bound to agent pod `pod_name` and holding
    /// a slot (bound and not yet deleted: the agent keeps a finished
    /// sandbox's container, and its slot, until the object goes). Confirms (and re-keys from `reservation` to `uid`)
    /// a reservation made for it. Idempotent.
    pub fn observe_bound(&self, uid: &str, reservation: Option<&str>, pod_name: &str) {
        let mut s = self.lock();
        if let Some(token) = reservation
            && token != uid
        {
            s.release(token);
        }
        let agent_key = pod_name.to_string();
        match s.bindings.get_mut(uid) {
            Some(slot) if slot.agent_key == agent_key => slot.tentative_since = None,
            _ => {
                s.release(uid);
                s.take(uid.to_string(), agent_key, None);
            }
        }
    }

    /// The watch saw sandbox `uid` holding no slot (unbound, finished or
    /// deleted); frees its slot and any reservation made for it. Idempotent.
    pub fn observe_unbound(&self, uid: &str, reservation: Option<&str>) {
        let mut s = self.lock();
        s.release(uid);
        if let Some(token) = reservation {
            s.release(token);
        }
    }

    /// Keeps only confirmed bindings whose sandbox UID passes `keep`; used
    /// after a watch re-list. Tentative reservations are kept.
    pub fn retain_sandboxes(&self, mut keep: impl FnMut(&str) -> bool) {
        let mut s = self.lock();
        let gone: Vec<String> = s
            .bindings
            .iter()
            .filter(|(k, slot)| slot.tentative_since.is_none() && !keep(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            s.release(&key);
        }
    }

    /// Drops tentative reservations older than `max_age` at `now`: their
    /// sandbox never appeared on the watch. Returns how many were dropped.
    pub fn expire_tentative(&self, now: Instant, max_age: Duration) -> usize {
        let mut s = self.lock();
        let stale: Vec<String> = s
            .bindings
            .iter()
            .filter(|(_, slot)| {
                slot.tentative_since
                    .is_some_and(|t| now.saturating_duration_since(t) > max_age)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &stale {
            s.release(key);
        }
        stale.len()
    }

    /// Slots held on agent pod `pod_name`.
    pub fn used(&self, pod_name: &str) -> u32 {
        self.lock().used.get(pod_name).copied().unwrap_or(0)
    }

    /// The agent `pod_name` refused a sandbox for lack of slots at `now`
    /// (its own count is the truth; ours was behind). It is skipped until
    /// the returned instant: a backoff that doubles with each refusal in a
    /// row, so re-placement does not hammer a full agent.
    pub fn record_refusal(&self, pod_name: &str, now: Instant) -> Option<Instant> {
        let mut s = self.lock();
        let &id = s.agent_ids.get(pod_name)?;
        let agent = s.agents[id as usize].as_mut()?;
        agent.refusals = agent.refusals.saturating_add(1);
        let factor = 1u32 << (agent.refusals - 1).min(16);
        let backoff = FIRST_REFUSAL_BACKOFF
            .saturating_mul(factor)
            .min(MAX_REFUSAL_BACKOFF);
        let until = now + backoff;
        agent.refused_until = Some(until);
        Some(until)
    }

    /// The agent `pod_name` accepted a sandbox: its refusal backoff ends.
    pub fn record_acceptance(&self, pod_name: &str) {
        let mut s = self.lock();
        if let Some(&id) = s.agent_ids.get(pod_name)
            && let Some(agent) = s.agents[id as usize].as_mut()
        {
            agent.refusals = 0;
            agent.refused_until = None;
        }
    }

    /// Totals of one pool.
    pub fn pool_usage(&self, pool_key: &str) -> PoolUsage {
        let s = self.lock();
        let mut u = PoolUsage::default();
        for a in s.agents.iter().flatten().filter(|a| a.pool == pool_key) {
            u.agents += 1;
            if a.state.ready && !a.state.draining {
                u.schedulable += 1;
                u.slots_total += a.state.slots_total;
                u.slots_used += a.used;
            }
        }
        u
    }

    /// Number of agents known.
    pub fn agent_count(&self) -> usize {
        self.lock().agent_ids.len()
    }
}
