//! The scale plan of one pool: from the pool's bounds and what each agent
//! holds, how many agents to create, which to mark draining, which draining
//! ones to take back, and which to delete. Pure, so every rule is tested
//! without a cluster.
//!
//! Rules, in order:
//! - agents that failed are deleted (and so replaced);
//! - `spec.replicas`, when set, is the target, clamped to `poolMin..=poolMax`;
//!   otherwise the target is the busy agents plus a buffer of free agents
//!   between `bufferMin` and `bufferMax`, plus enough agents for the sandboxes
//!   that wait unbound, clamped the same way;
//! - growth first takes back draining agents, then creates new ones;
//! - shrinking only ever drains agents that host no sandbox, the newest and
//!   not-yet-ready first; a draining agent is deleted once it has been
//!   draining for the settle delay (so admission has seen the mark) and is
//!   still empty.

use chrono::{DateTime, Duration, Utc};
use fast_sandbox_api::pool::EffectiveCapacity;

/// What the plan needs to know about one agent pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentState {
    /// Pod name.
    pub name: String,
    /// Pod creation time; newer agents are drained first.
    pub created: DateTime<Utc>,
    /// The pod's Ready condition is true.
    pub ready: bool,
    /// When the pod was marked draining, if it is.
    pub draining_since: Option<DateTime<Utc>>,
    /// Sandboxes bound to it (objects) or held by it (agent's own count),
    /// whichever is larger.
    pub used: u32,
    /// The pod failed or its agent container cannot run; it is replaced.
    pub failed: bool,
}

/// Inputs of the plan besides the agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleInput {
    /// Pool bounds with defaults applied.
    pub capacity: EffectiveCapacity,
    /// `spec.replicas`, if set.
    pub replicas: Option<i32>,
    /// Slots per agent.
    pub slots_per_agent: u32,
    /// Sandboxes of the pool that wait without an agent.
    pub pending_unbound: u32,
    /// Now.
    pub now: DateTime<Utc>,
    /// How long an agent stays marked draining before it may be deleted.
    pub drain_settle: Duration,
}

/// What to do to the pool's agent pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// Agent pods to create.
    pub create: u32,
    /// Agents to mark draining.
    pub drain: Vec<String>,
    /// Draining agents to take back into service.
    pub undrain: Vec<String>,
    /// Agents to delete (empty draining agents past the settle delay, failed
    /// agents).
    pub delete: Vec<String>,
    /// The agent count the plan aims at.
    pub target: u32,
    /// When to look again because a draining agent reaches its settle delay.
    pub recheck_at: Option<DateTime<Utc>>,
}

impl ScalePlan {
    /// Whether the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.create == 0
            && self.drain.is_empty()
            && self.undrain.is_empty()
            && self.delete.is_empty()
    }
}

/// Computes the plan.
pub fn plan(input: &ScaleInput, agents: &[AgentState]) -> ScalePlan {
    let cap = input.capacity;
    let slots = input.slots_per_agent.max(1);
    let mut out = ScalePlan::default();

    let (failed, live): (Vec<&AgentState>, Vec<&AgentState>) =
        agents.iter().partition(|a| a.failed);
    out.delete.extend(failed.iter().map(|a| a.name.clone()));

    let active: Vec<&AgentState> = live
        .iter()
        .copied()
        .filter(|a| a.draining_since.is_none())
        .collect();
    let draining: Vec<&AgentState> = live
        .iter()
        .copied()
        .filter(|a| a.draining_since.is_some())
        .collect();

    let busy = active.iter().filter(|a| a.used > 0).count() as u32;
    let free = active.iter().filter(|a| a.used == 0).count() as u32;
    let free_slots: u32 = active.iter().map(|a| slots.saturating_sub(a.used)).sum();

    let target = match input.replicas {
        Some(r) => (r.max(0) as u32).clamp(cap.pool_min, cap.pool_max),
        None => {
            let overflow = input.pending_unbound.saturating_sub(free_slots);
            let for_pending = overflow.div_ceil(slots);
            let buffer = free.clamp(cap.buffer_min, cap.buffer_max);
            (busy + buffer + for_pending).clamp(cap.pool_min, cap.pool_max)
        }
    };
    out.target = target;
    let active_n = active.len() as u32;

    if target > active_n {
        let mut want = target - active_n;
        // Take back draining agents first, busiest first: they are warm and
        // deleting a busy one is impossible anyway.
        let mut back: Vec<&AgentState> = draining.clone();
        back.sort_by(|a, b| b.used.cmp(&a.used).then(a.created.cmp(&b.created)));
        for a in back {
            if want == 0 {
                break;
            }
            out.undrain.push(a.name.clone());
            want -= 1;
        }
        out.create = want;
    } else if target < active_n {
        let excess = (active_n - target) as usize;
        out.drain = drain_candidates(&active, excess);
    }

    for a in &draining {
        if out.undrain.contains(&a.name) || a.used > 0 {
            continue;
        }
        let since = a.draining_since.unwrap_or(input.now);
        let due = since + input.drain_settle;
        if due <= input.now {
            out.delete.push(a.name.clone());
        } else {
            out.recheck_at = Some(out.recheck_at.map_or(due, |t| t.min(due)));
        }
    }
    out
}

/// Which agents to drain to remove `n`: only agents hosting no sandbox,
/// not-ready ones first (they serve nothing yet), then the newest.
pub fn drain_candidates(active: &[&AgentState], n: usize) -> Vec<String> {
    let mut empty: Vec<&AgentState> = active.iter().copied().filter(|a| a.used == 0).collect();
    empty.sort_by(|a, b| {
        a.ready
            .cmp(&b.ready)
            .then(b.created.cmp(&a.created))
            .then(a.name.cmp(&b.name))
    });
    empty.into_iter().take(n).map(|a| a.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn cap(pool_min: u32, pool_max: u32, buffer_min: u32, buffer_max: u32) -> EffectiveCapacity {
        EffectiveCapacity {
            pool_min,
            pool_max,
            buffer_min,
            buffer_max,
        }
    }

    fn input(capacity: EffectiveCapacity) -> ScaleInput {
        ScaleInput {
            capacity,
            replicas: None,
            slots_per_agent: 4,
            pending_unbound: 0,
            now: t(1000),
            drain_settle: Duration::seconds(2),
        }
    }

    fn agent(name: &str, created: i64, used: u32) -> AgentState {
        AgentState {
            name: name.into(),
            created: t(created),
            ready: true,
            draining_since: None,
            used,
            failed: false,
        }
    }

    #[test]
    fn empty_pool_grows_to_pool_min() {
        let p = plan(&input(cap(3, 5, 0, 5)), &[]);
        assert_eq!(p.create, 3);
        assert_eq!(p.target, 3);
        assert!(p.drain.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn steady_pool_is_a_noop() {
        let agents = [agent("a", 0, 1), agent("b", 1, 0)];
        let p = plan(&input(cap(1, 5, 1, 1)), &agents);
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(p.target, 2);
    }

    #[test]
    fn buffer_min_keeps_free_agents_warm() {
        // Both agents busy, bufferMin 2: two more free agents.
        let agents = [agent("a", 0, 1), agent("b", 1, 4)];
        let p = plan(&input(cap(1, 10, 2, 3)), &agents);
        assert_eq!(p.create, 2);
    }

    #[test]
    fn pool_max_caps_growth() {
        let agents = [agent("a", 0, 4), agent("b", 1, 4)];
        let mut i = input(cap(1, 3, 2, 3));
        i.pending_unbound = 20;
        let p = plan(&i, &agents);
        assert_eq!(p.create, 1);
        assert_eq!(p.target, 3);
    }

    #[test]
    fn pending_unbound_sandboxes_grow_the_pool() {
        // One full agent, 9 waiting at 4 slots each: 3 more agents.
        let agents = [agent("a", 0, 4)];
        let mut i = input(cap(0, 10, 0, 0));
        i.pending_unbound = 9;
        assert_eq!(plan(&i, &agents).create, 3);
        // Waiting sandboxes that fit into free slots need no new agent.
        let agents = [agent("a", 0, 1)];
        i.pending_unbound = 3;
        assert_eq!(plan(&i, &agents).create, 0);
    }

    #[test]
    fn buffer_max_drains_extra_free_agents_newest_first() {
        let agents = [
            agent("old", 0, 0),
            agent("busy", 1, 2),
            agent("mid", 5, 0),
            agent("new", 9, 0),
        ];
        let p = plan(&input(cap(0, 10, 0, 1)), &agents);
        assert_eq!(p.drain, vec!["new".to_string(), "mid".to_string()]);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty(), "marked first, deleted later");
    }

    #[test]
    fn never_drains_an_agent_with_sandboxes() {
        let agents = [agent("a", 0, 1), agent("b", 1, 3), agent("c", 2, 1)];
        let mut i = input(cap(0, 10, 0, 0));
        i.replicas = Some(1);
        let p = plan(&i, &agents);
        assert!(p.drain.is_empty(), "{p:?}");
        assert!(p.delete.is_empty());
    }

    #[test]
    fn not_ready_agents_are_drained_before_ready_ones() {
        let mut starting = agent("starting", 0, 0);
        starting.ready = false;
        let agents = [starting, agent("warm", 5, 0)];
        let mut i = input(cap(0, 10, 0, 10));
        i.replicas = Some(1);
        assert_eq!(plan(&i, &agents).drain, vec!["starting".to_string()]);
    }

    #[test]
    fn replicas_is_clamped_to_pool_bounds() {
        let mut i = input(cap(2, 4, 0, 10));
        i.replicas = Some(9);
        assert_eq!(plan(&i, &[]).create, 4);
        i.replicas = Some(0);
        assert_eq!(plan(&i, &[]).create, 2);
    }

    #[test]
    fn draining_agent_is_deleted_after_settle_when_still_empty() {
        let mut d = agent("d", 0, 0);
        d.draining_since = Some(t(999));
        let mut i = input(cap(0, 10, 0, 0));
        let p = plan(&i, std::slice::from_ref(&d));
        assert!(p.delete.is_empty());
        assert_eq!(p.recheck_at, Some(t(1001)));
        i.now = t(1001);
        assert_eq!(plan(&i, &[d.clone()]).delete, vec!["d".to_string()]);
        // A sandbox landed on it meanwhile: it is kept.
        d.used = 1;
        assert!(plan(&i, &[d]).delete.is_empty());
    }

    #[test]
    fn growth_takes_back_draining_agents_before_creating() {
        let mut d = agent("d", 0, 0);
        d.draining_since = Some(t(999));
        let mut i = input(cap(0, 10, 0, 10));
        i.replicas = Some(2);
        let p = plan(&i, &[d]);
        assert_eq!(p.undrain, vec!["d".to_string()]);
        assert_eq!(p.create, 1);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn failed_agents_are_deleted_and_replaced() {
        let mut f = agent("f", 0, 0);
        f.failed = true;
        let p = plan(&input(cap(1, 3, 0, 3)), &[f]);
        assert_eq!(p.delete, vec!["f".to_string()]);
        assert_eq!(p.create, 1);
    }
}
