//! The state behind the [`Index`](super::Index) lock: agents, pools and the
//! slots sandboxes hold, and the placement decision over them. Every method
//! runs under the lock, so none of them synchronise.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::time::Instant;

use fast_sandbox_api::image;
use lru::LruCache;

use super::{AgentState, Choice, NoCapacity};

/// An agent's slot in [`State::agents`]; ids of removed agents are reused.
pub(super) type AgentId = u32;

/// One agent as the index tracks it: what its watch said, plus its load.
pub(super) struct Agent {
    pub(super) state: AgentState,
    key: String,
    pub(super) pool: String,
    images: Vec<String>,
    pub(super) used: u32,
    /// Value of the index's turn counter when this agent was last chosen;
    /// ties in load go to the smallest, which spreads sandboxes round-robin.
    turn: u64,
    /// Refusals in a row (the agent said it was full).
    pub(super) refusals: u32,
    /// Skipped until then after a refusal.
    pub(super) refused_until: Option<Instant>,
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

/// One pool's agents, the images their nodes hold and who has room.
pub(super) struct Pool {
    pub(super) declared: bool,
    agents: usize,
    /// Normalised image -> agents whose node holds it; the images most
    /// recently used first.
    images: LruCache<String, HashSet<AgentId>>,
    /// Agents with a free slot, least loaded first.
    free: BTreeSet<(u32, u64, AgentId)>,
}

impl Pool {
    /// A pool not yet declared, with no agents.
    pub(super) fn new(image_capacity: NonZeroUsize) -> Self {
        Pool {
            declared: false,
            agents: 0,
            images: LruCache::new(image_capacity),
            free: BTreeSet::new(),
        }
    }

    /// Neither declared nor holding agents: the index forgets it.
    pub(super) fn is_empty(&self) -> bool {
        !self.declared && self.agents == 0
    }
}

/// The slot one sandbox (or reservation) holds on an agent.
pub(super) struct Slot {
    pub(super) agent_key: String,
    /// `Some(reserved at)` until the sandbox is seen bound on the watch.
    pub(super) tentative_since: Option<Instant>,
}

/// Everything the index knows; lives behind the [`Index`](super::Index) lock.
pub(super) struct State {
    pub(super) pools: HashMap<String, Pool>,
    pub(super) agents: Vec<Option<Agent>>,
    pub(super) vacant: Vec<AgentId>,
    pub(super) agent_ids: HashMap<String, AgentId>,
    /// Sandbox UID or reservation token -> the slot it holds.
    pub(super) bindings: HashMap<String, Slot>,
    /// Agent pod name -> slots held, including agents not (yet)
    /// known, so a sandbox watch that runs ahead of the pod watch still counts.
    pub(super) used: HashMap<String, u32>,
    pub(super) turn: u64,
    pub(super) image_capacity: NonZeroUsize,
}

impl State {
    fn agent(&self, id: AgentId) -> &Agent {
        // Ids in pool structures always point at live agents: removal
        // clears them first.
        self.agents[id as usize]
            .as_ref()
            .expect("placement index refers to a removed agent")
    }

    /// The [`Choice`] that names agent `id`.
    pub(super) fn choice(&self, id: AgentId, image_hit: bool) -> Choice {
        let a = self.agent(id);
        Choice {
            pod_name: a.state.pod_name.clone(),
            node_name: a.state.node_name.clone(),
            image_hit,
        }
    }

    /// The agent the placement rule picks for `image` in the pool, never
    /// `avoid`, and whether its node holds the image.
    pub(super) fn pick(
        &self,
        pool_key: &str,
        image: &str,
        avoid: Option<AgentId>,
    ) -> Option<(AgentId, bool)> {
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

    /// The agent `key` already holds a slot on, if it is of the pool.
    pub(super) fn existing(&self, pool_key: &str, image: &str, key: &str) -> Option<Choice> {
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

    /// Picks an agent and takes one of its slots for `key`, tentatively.
    pub(super) fn reserve(
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
    pub(super) fn take(
        &mut self,
        key: String,
        agent_key: String,
        tentative_since: Option<Instant>,
    ) {
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

    /// Gives back the slot `key` holds, if any.
    pub(super) fn release(&mut self, key: &str) {
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

    /// Adds an agent or replaces what is known of it, keeping its pool's
    /// image holders and free set in step.
    pub(super) fn upsert_agent(&mut self, state: AgentState) {
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

    /// Forgets an agent; the slots held on it stay counted by pod name.
    pub(super) fn remove_agent(&mut self, key: &str) {
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
