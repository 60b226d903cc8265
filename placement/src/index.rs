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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fast_sandbox_api::image;
use lru::LruCache;

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

type AgentId = u32;

struct Agent {
    state: AgentState,
    key: String,
    pool: String,
    images: Vec<String>,
    used: u32,
    /// Value of the index's turn counter when this agent was last chosen;
    /// ties in load go to the smallest, which spreads sandboxes round-robin.
    turn: u64,
    /// Refusals in a row (the agent said it was full).
    refusals: u32,
    /// Skipped until then after a refusal.
    refused_until: Option<Instant>,
}

impl Agent {
    fn has_free_slot(&self) -> bool {
        self.state.ready && !self.state.draining && self.used < self.state.slots_total
    }

    fn available(&self, now: Instant) -> bool {
        self.has_free_slot() && self.refused_until.is_none_or(|until| until <= now)
    }

    fn free_entry(&self, id: AgentId) -> (u32, u64, AgentId) {
        (self.used, self.turn, id)
    }
}

struct Pool {
    declared: bool,
    agents: usize,
    /// Normalised image -> agents whose node holds it; the images most
    /// recently used first.
    images: LruCache<String, HashSet<AgentId>>,
    /// Agents with a free slot, least loaded first.
    free: BTreeSet<(u32, u64, AgentId)>,
}

impl Pool {
    fn new(image_capacity: NonZeroUsize) -> Self {
        Pool {
            declared: false,
            agents: 0,
            images: LruCache::new(image_capacity),
            free: BTreeSet::new(),
        }
    }

    fn is_empty(&self) -> bool {
        !self.declared && self.agents == 0
    }
}

struct Slot {
    agent_key: String,
    /// `Some(reserved at)` until the sandbox is seen bound on the watch.
    tentative_since: Option<Instant>,
}

struct State {
    pools: HashMap<String, Pool>,
    agents: Vec<Option<Agent>>,
    vacant: Vec<AgentId>,
    agent_ids: HashMap<String, AgentId>,
    /// Sandbox UID or reservation token -> the slot it holds.
    bindings: HashMap<String, Slot>,
    /// Agent pod name -> slots held, including agents not (yet)
    /// known, so a sandbox watch that runs ahead of the pod watch still counts.
    used: HashMap<String, u32>,
    turn: u64,
    image_capacity: NonZeroUsize,
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

impl State {
    fn agent(&self, id: AgentId) -> &Agent {
        // Ids in pool structures always point at live agents: removal
        // clears them first.
        self.agents[id as usize]
            .as_ref()
            .expect("placement index refers to a removed agent")
    }

    fn choice(&self, id: AgentId, image_hit: bool) -> Choice {
        let a = self.agent(id);
        Choice {
            pod_name: a.state.pod_name.clone(),
            node_name: a.state.node_name.clone(),
            image_hit,
        }
    }

    fn pick(&self, pool_key: &str, image: &str, avoid: Option<AgentId>) -> Option<(AgentId, bool)> {
        let pool = self.pools.get(pool_key)?;
        let now = Instant::now();
        if let Some(holders) = pool.images.peek(image) {
            let fits = |id: AgentId| Some(id) != avoid && self.agent(id).available(now);
            // Whichever is shorter is walked: a few holders among many free
            // agents, or a few free agents among many holders.
            let best = if holders.len() < pool.free.len() {
                holders
                    .iter()
                    .copied()
                    .filter(|&id| fits(id))
                    .min_by_key(|&id| self.agent(id).free_entry(id))
            } else {
                pool.free
                    .iter()
                    .map(|&(_, _, id)| id)
                    .find(|&id| holders.contains(&id) && fits(id))
            };
            if let Some(id) = best {
                return Some((id, true));
            }
        }
        // While some node of the pool holds the image, an agent whose node
        // is known to lack it is never chosen: nothing is pulled, so the
        // sandbox would fail there for good. It waits for a slot on a
        // holder instead. Nodes whose images are not known stay candidates.
        let held_in_pool = pool.images.peek(image).is_some_and(|h| !h.is_empty());
        pool.free
            .iter()
            .map(|&(_, _, id)| id)
            .find(|&id| {
                let a = self.agent(id);
                Some(id) != avoid && a.available(now) && (!held_in_pool || a.images.is_empty())
            })
            .map(|id| (id, false))
    }

    fn existing(&self, pool_key: &str, image: &str, key: &str) -> Option<Choice> {
        let slot = self.bindings.get(key)?;
        let id = *self.agent_ids.get(&slot.agent_key)?;
        let agent = self.agent(id);
        (agent.pool == pool_key).then(|| {
            let hit = agent
                .images
                .binary_search_by(|i| i.as_str().cmp(image))
                .is_ok();
            self.choice(id, hit)
        })
    }

    fn reserve(
        &mut self,
        pool_key: &str,
        image: &str,
        key: &str,
        avoid: Option<AgentId>,
    ) -> Result<Choice, NoCapacity> {
        let Some((id, hit)) = self.pick(pool_key, image, avoid) else {
            return Err(NoCapacity {
                pool_key: pool_key.to_string(),
            });
        };
        if let Some(pool) = self.pools.get_mut(pool_key)
            && hit
        {
            pool.images.promote(image);
        }
        let agent_key = self.agent(id).key.clone();
        self.take(key.to_string(), agent_key, Some(Instant::now()));
        Ok(self.choice(id, hit))
    }

    /// Records `key` holding a slot on `agent_key` and re-ranks the agent.
    fn take(&mut self, key: String, agent_key: String, tentative_since: Option<Instant>) {
        *self.used.entry(agent_key.clone()).or_default() += 1;
        if let Some(&id) = self.agent_ids.get(&agent_key) {
            self.turn += 1;
            let turn = self.turn;
            self.update(id, |a| {
                a.used += 1;
                a.turn = turn;
            });
        }
        self.bindings.insert(
            key,
            Slot {
                agent_key,
                tentative_since,
            },
        );
    }

    fn release(&mut self, key: &str) {
        let Some(slot) = self.bindings.remove(key) else {
            return;
        };
        if let Some(n) = self.used.get_mut(&slot.agent_key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.used.remove(&slot.agent_key);
            }
        }
        if let Some(&id) = self.agent_ids.get(&slot.agent_key) {
            self.update(id, |a| a.used = a.used.saturating_sub(1));
        }
    }

    /// Applies `f` to an agent and keeps its pool's free set in step.
    fn update(&mut self, id: AgentId, f: impl FnOnce(&mut Agent)) {
        let Some(agent) = self.agents[id as usize].as_mut() else {
            return;
        };
        let Some(pool) = self.pools.get_mut(&agent.pool) else {
            return;
        };
        if agent.has_free_slot() {
            pool.free.remove(&agent.free_entry(id));
        }
        f(agent);
        if agent.has_free_slot() {
            pool.free.insert(agent.free_entry(id));
        }
    }

    fn upsert_agent(&mut self, state: AgentState) {
        let key = state.pod_name.clone();
        let mut images: Vec<String> = state.images.iter().map(|i| image::normalize(i)).collect();
        images.sort_unstable();
        images.dedup();

        if let Some(&id) = self.agent_ids.get(&key) {
            let same_pool = self.agent(id).pool == state.pool_key;
            if same_pool {
                let old_images = std::mem::take(
                    &mut self.agents[id as usize]
                        .as_mut()
                        .expect("agent id maps to a live agent")
                        .images,
                );
                if old_images != images {
                    // Only the difference moves, so kept images keep their
                    // recency order.
                    let gone: Vec<String> = old_images
                        .iter()
                        .filter(|i| images.binary_search(i).is_err())
                        .cloned()
                        .collect();
                    let added: Vec<String> = images
                        .iter()
                        .filter(|i| old_images.binary_search(i).is_err())
                        .cloned()
                        .collect();
                    self.unlink_images(id, &state.pool_key, &gone);
                    self.link_images(id, &state.pool_key, &added);
                }
                self.update(id, |a| {
                    a.state = state;
                    a.images = images;
                });
                return;
            }
            self.remove_agent(&key);
        }

        let cap = self.image_capacity;
        let pool_key = state.pool_key.clone();
        let id = self.vacant.pop().unwrap_or_else(|| {
            self.agents.push(None);
            (self.agents.len() - 1) as AgentId
        });
        let used = self.used.get(&key).copied().unwrap_or(0);
        let agent = Agent {
            state,
            key: key.clone(),
            pool: pool_key.clone(),
            images: Vec::new(),
            used,
            turn: 0,
            refusals: 0,
            refused_until: None,
        };
        let pool = self
            .pools
            .entry(pool_key.clone())
            .or_insert_with(|| Pool::new(cap));
        pool.agents += 1;
        if agent.has_free_slot() {
            pool.free.insert(agent.free_entry(id));
        }
        self.agents[id as usize] = Some(agent);
        self.agent_ids.insert(key, id);
        self.link_images(id, &pool_key, &images);
        if let Some(a) = self.agents[id as usize].as_mut() {
            a.images = images;
        }
    }

    fn remove_agent(&mut self, key: &str) {
        let Some(id) = self.agent_ids.remove(key) else {
            return;
        };
        let Some(agent) = self.agents[id as usize].take() else {
            return;
        };
        self.unlink_images(id, &agent.pool, &agent.images);
        if let Some(pool) = self.pools.get_mut(&agent.pool) {
            pool.free.remove(&agent.free_entry(id));
            pool.agents -= 1;
            if pool.is_empty() {
                self.pools.remove(&agent.pool);
            }
        }
        self.vacant.push(id);
    }

    fn link_images(&mut self, id: AgentId, pool_key: &str, images: &[String]) {
        let Some(pool) = self.pools.get_mut(pool_key) else {
            return;
        };
        for img in images {
            if let Some(holders) = pool.images.get_mut(img) {
                holders.insert(id);
            } else {
                pool.images.push(img.clone(), HashSet::from([id]));
            }
        }
    }

    fn unlink_images(&mut self, id: AgentId, pool_key: &str, images: &[String]) {
        let Some(pool) = self.pools.get_mut(pool_key) else {
            return;
        };
        for img in images {
            if let Some(holders) = pool.images.peek_mut(img) {
                holders.remove(&id);
                if holders.is_empty() {
                    pool.images.pop(img);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const POOL: &str = "ns/pool";

    fn agent(pod: &str, slots: u32, images: &[&str]) -> AgentState {
        AgentState {
            pool_key: POOL.into(),
            pod_name: pod.into(),
            node_name: format!("node-{pod}"),
            ready: true,
            draining: false,
            slots_total: slots,
            images: images.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn empty_or_unknown_pool_has_no_capacity() {
        let idx = Index::new();
        assert_eq!(idx.choose(POOL, "busybox"), None);
        assert_eq!(
            idx.reserve(POOL, "busybox", "u1"),
            Err(NoCapacity {
                pool_key: POOL.into()
            })
        );
        idx.upsert_pool(POOL);
        assert!(idx.has_pool(POOL));
        assert!(!idx.has_pool("ns/other"));
        assert_eq!(idx.choose(POOL, "busybox"), None);
    }

    #[test]
    fn image_hit_is_preferred_and_names_are_normalised() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 4, &[]));
        idx.upsert_agent(agent("b", 4, &["docker.io/library/busybox:latest"]));
        let c = idx.choose(POOL, "busybox").unwrap();
        assert_eq!((c.pod_name.as_str(), c.image_hit), ("b", true));
        assert_eq!(c.node_name, "node-b");
        let c = idx.choose(POOL, "nginx").unwrap();
        assert!(!c.image_hit);
    }

    #[test]
    fn holders_spread_least_loaded_first_then_round_robin() {
        let idx = Index::new();
        for p in ["a", "b", "c"] {
            idx.upsert_agent(agent(p, 4, &["busybox"]));
        }
        idx.upsert_agent(agent("d", 4, &["nginx"]));
        let reserve = |keys: std::ops::Range<i32>| -> Vec<String> {
            keys.map(|i| {
                idx.reserve(POOL, "busybox", &i.to_string())
                    .unwrap()
                    .pod_name
            })
            .collect()
        };
        // Holders only, each in turn: never the idle agent without it.
        assert_eq!(reserve(0..6), ["a", "b", "c", "a", "b", "c"]);
        // "a" and "c" give back a slot: the least loaded go first, "a"
        // (chosen longest ago) before "c", then "b", chosen before both.
        idx.release("0");
        idx.release("5");
        assert_eq!(reserve(6..9), ["a", "c", "b"]);
        // An image update that keeps busybox keeps "b" a holder.
        idx.upsert_agent(agent("b", 4, &["busybox", "nginx"]));
        assert_eq!(reserve(9..12), ["a", "c", "b"]);
    }

    #[test]
    fn holders_spread_when_every_free_agent_holds_the_image() {
        // As many holders as free agents: the free set is walked instead.
        let idx = Index::new();
        for p in ["a", "b", "c"] {
            idx.upsert_agent(agent(p, 2, &["busybox"]));
        }
        let order: Vec<String> = (0..6)
            .map(|i| {
                idx.reserve(POOL, "busybox", &i.to_string())
                    .unwrap()
                    .pod_name
            })
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn full_holder_falls_through_to_next_holder_then_least_loaded() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 1, &["busybox"]));
        idx.upsert_agent(agent("b", 1, &[]));
        idx.upsert_agent(agent("c", 2, &[]));
        let c1 = idx.reserve(POOL, "busybox", "1").unwrap();
        assert_eq!((c1.pod_name.as_str(), c1.image_hit), ("a", true));
        let c2 = idx.reserve(POOL, "busybox", "2").unwrap();
        assert!(!c2.image_hit);
        let c3 = idx.reserve(POOL, "busybox", "3").unwrap();
        let c4 = idx.reserve(POOL, "busybox", "4").unwrap();
        let mut got = vec![c2.pod_name, c3.pod_name, c4.pod_name];
        got.sort();
        assert_eq!(got, ["b", "c", "c"]);
        assert!(idx.reserve(POOL, "busybox", "5").is_err());
    }

    #[test]
    fn equal_load_spreads_round_robin() {
        let idx = Index::new();
        for p in ["a", "b", "c"] {
            idx.upsert_agent(agent(p, 10, &[]));
        }
        let picks: Vec<String> = (0..6)
            .map(|i| idx.reserve(POOL, "img", &i.to_string()).unwrap().pod_name)
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn pools_are_isolated() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 1, &["busybox"]));
        let mut other = agent("x", 5, &["busybox"]);
        other.pool_key = "ns/other".into();
        idx.upsert_agent(other);
        let mut other_ns = agent("y", 5, &["busybox"]);
        other_ns.pool_key = "ns2/pool".into();
        idx.upsert_agent(other_ns);
        assert_eq!(idx.reserve(POOL, "busybox", "1").unwrap().pod_name, "a");
        assert!(idx.reserve(POOL, "busybox", "2").is_err());
        assert_eq!(
            idx.reserve("ns/other", "busybox", "3").unwrap().pod_name,
            "x"
        );
        assert_eq!(
            idx.reserve("ns2/pool", "busybox", "4").unwrap().pod_name,
            "y"
        );
    }

    #[test]
    fn draining_and_not_ready_agents_are_skipped() {
        let idx = Index::new();
        let mut d = agent("draining", 5, &["busybox"]);
        d.draining = true;
        let mut n = agent("unready", 5, &["busybox"]);
        n.ready = false;
        idx.upsert_agent(d);
        idx.upsert_agent(n);
        assert_eq!(idx.choose(POOL, "busybox"), None);
        idx.upsert_agent(agent("ok", 5, &[]));
        assert_eq!(idx.choose(POOL, "busybox").unwrap().pod_name, "ok");
        // Becoming ready makes the holder eligible again.
        idx.upsert_agent(agent("unready", 5, &["busybox"]));
        let c = idx.choose(POOL, "busybox").unwrap();
        assert_eq!((c.pod_name.as_str(), c.image_hit), ("unready", true));
        // Draining takes it out at once.
        let mut d2 = agent("unready", 5, &["busybox"]);
        d2.draining = true;
        idx.upsert_agent(d2);
        assert_eq!(idx.choose(POOL, "busybox").unwrap().pod_name, "ok");
    }

    #[test]
    fn dry_choice_takes_nothing_and_reserve_is_idempotent() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 1, &[]));
        assert!(idx.choose(POOL, "i").is_some());
        assert!(idx.choose(POOL, "i").is_some());
        assert_eq!(idx.used("a"), 0);
        let c = idx.reserve(POOL, "i", "uid").unwrap();
        assert_eq!(idx.reserve(POOL, "i", "uid").unwrap().pod_name, c.pod_name);
        assert_eq!(idx.used("a"), 1);
        idx.release("uid");
        idx.release("uid");
        assert_eq!(idx.used("a"), 0);
    }

    #[test]
    fn watch_replay_is_idempotent_and_rekeys_reservations() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 2, &[]));
        let c = idx.reserve(POOL, "i", "token").unwrap();
        assert_eq!(idx.used(&c.pod_name), 1);
        for _ in 0..3 {
            idx.observe_bound("uid", Some("token"), "a");
        }
        assert_eq!(idx.used("a"), 1);
        // Confirmed bindings survive expiry; tentative ones do not.
        idx.reserve(POOL, "i", "lost-token").unwrap();
        assert_eq!(idx.used("a"), 2);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(idx.expire_tentative(later, Duration::from_secs(30)), 1);
        assert_eq!(idx.used("a"), 1);
        idx.observe_unbound("uid", Some("token"));
        idx.observe_unbound("uid", Some("token"));
        assert_eq!(idx.used("a"), 0);
    }

    #[test]
    fn sandboxes_seen_before_their_agent_still_count() {
        let idx = Index::new();
        idx.observe_bound("u1", None, "a");
        idx.upsert_agent(agent("a", 1, &[]));
        assert_eq!(idx.choose(POOL, "i"), None);
        idx.retain_sandboxes(|uid| uid != "u1");
        assert_eq!(idx.choose(POOL, "i").unwrap().pod_name, "a");
    }

    #[test]
    fn removing_agents_and_images_unlinks_them() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 1, &["busybox"]));
        idx.upsert_agent(agent("b", 1, &[]));
        idx.upsert_agent(agent("a", 1, &[]));
        assert!(!idx.choose(POOL, "busybox").unwrap().image_hit);
        idx.upsert_agent(agent("b", 1, &["busybox"]));
        assert_eq!(idx.choose(POOL, "busybox").unwrap().pod_name, "b");
        idx.remove_agent("b");
        let c = idx.choose(POOL, "busybox").unwrap();
        assert_eq!((c.pod_name.as_str(), c.image_hit), ("a", false));
        idx.retain_agents(|_| false);
        assert_eq!(idx.agent_count(), 0);
        assert_eq!(idx.choose(POOL, "busybox"), None);
    }

    #[test]
    fn reserve_avoiding_moves_the_slot() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 1, &["busybox"]));
        idx.upsert_agent(agent("b", 1, &[]));
        assert_eq!(idx.reserve(POOL, "busybox", "u").unwrap().pod_name, "a");
        assert_eq!(
            idx.reserve_avoiding(POOL, "busybox", "u", "a")
                .unwrap()
                .pod_name,
            "b"
        );
        assert_eq!((idx.used("a"), idx.used("b")), (0, 1));
        assert!(idx.reserve_avoiding(POOL, "busybox", "u", "b").is_ok());
        assert_eq!((idx.used("a"), idx.used("b")), (1, 0));
    }

    #[test]
    fn image_table_is_bounded_per_pool() {
        let idx = Index::with_image_capacity(2);
        idx.upsert_agent(agent("a", 5, &["one", "two", "three"]));
        let hits = ["one", "two", "three"]
            .iter()
            .filter(|i| idx.choose(POOL, i).unwrap().image_hit)
            .count();
        assert_eq!(hits, 2);
    }

    #[test]
    fn usage_totals() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 3, &[]));
        let mut d = agent("d", 3, &[]);
        d.draining = true;
        idx.upsert_agent(d);
        idx.reserve(POOL, "i", "1").unwrap();
        assert_eq!(
            idx.pool_usage(POOL),
            PoolUsage {
                agents: 2,
                schedulable: 1,
                slots_total: 3,
                slots_used: 1
            }
        );
    }

    #[test]
    fn concurrent_reservations_never_overbook() {
        let idx = Arc::new(Index::new());
        let agents = 20;
        let slots = 7;
        for i in 0..agents {
            let img = if i % 3 == 0 { vec!["busybox"] } else { vec![] };
            idx.upsert_agent(agent(&format!("a{i}"), slots, &img));
        }
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let idx = idx.clone();
                std::thread::spawn(move || {
                    let mut won = 0;
                    for i in 0..100 {
                        let key = format!("{t}-{i}");
                        if idx.reserve(POOL, "busybox", &key).is_ok() {
                            won += 1;
                            if i % 10 == 0 {
                                idx.release(&key);
                                won -= 1;
                            }
                        }
                    }
                    won
                })
            })
            .collect();
        let won: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(won, agents * slots, "every slot taken exactly once");
        for i in 0..agents {
            assert_eq!(idx.used(&format!("a{i}")), slots);
        }
        assert_eq!(idx.pool_usage(POOL).slots_used, agents * slots);
    }

    #[test]
    fn an_agent_that_refused_is_skipped_with_growing_backoff() {
        let idx = Index::new();
        idx.upsert_agent(agent("a", 4, &[]));
        idx.upsert_agent(agent("b", 4, &[]));
        let now = Instant::now();
        let first = idx.record_refusal("a", now).unwrap();
        assert_eq!(first - now, FIRST_REFUSAL_BACKOFF);
        for i in 0..4 {
            assert_eq!(
                idx.reserve(POOL, "i", &i.to_string()).unwrap().pod_name,
                "b"
            );
        }
        assert!(
            idx.reserve(POOL, "i", "5").is_err(),
            "a is still backing off"
        );
        let second = idx.record_refusal("a", now).unwrap();
        assert_eq!(second - now, FIRST_REFUSAL_BACKOFF * 2);
        for _ in 0..20 {
            idx.record_refusal("a", now);
        }
        assert_eq!(
            idx.record_refusal("a", now).unwrap() - now,
            MAX_REFUSAL_BACKOFF
        );
        // A refusal long ago no longer counts; acceptance resets the streak.
        idx.record_refusal("a", now - Duration::from_secs(120));
        assert_eq!(idx.reserve(POOL, "i", "6").unwrap().pod_name, "a");
        idx.record_acceptance("a");
        assert_eq!(
            idx.record_refusal("a", now).unwrap() - now,
            FIRST_REFUSAL_BACKOFF
        );
        assert_eq!(idx.record_refusal("unknown", now), None);
    }

    #[test]
    fn a_node_known_to_lack_the_image_is_never_chosen_while_another_holds_it() {
        let idx = Index::new();
        idx.upsert_agent(agent("holder", 1, &["busybox"]));
        idx.upsert_agent(agent("lacks", 4, &["nginx"]));
        idx.upsert_agent(agent("unknown", 1, &[]));
        assert_eq!(
            idx.reserve(POOL, "busybox", "1").unwrap().pod_name,
            "holder"
        );
        // The holder is full: a node whose images are unknown may still have it.
        let c = idx.reserve(POOL, "busybox", "2").unwrap();
        assert_eq!((c.pod_name.as_str(), c.image_hit), ("unknown", false));
        // Only a node known to lack it has room: wait for the holder.
        assert!(idx.reserve(POOL, "busybox", "3").is_err());
        assert!(
            idx.reserve_avoiding(POOL, "busybox", "3", "holder")
                .is_err()
        );
        // An image no node of the pool holds goes to the least loaded agent.
        assert_eq!(idx.reserve(POOL, "redis", "4").unwrap().pod_name, "lacks");
        idx.release("1");
        assert_eq!(
            idx.reserve(POOL, "busybox", "3").unwrap().pod_name,
            "holder"
        );
    }
}
