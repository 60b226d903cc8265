//! A pool's status as the controller writes it (agents, slots and the
//! Ready, CapacityLimited and Scaling conditions), and its metrics.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fast_sandbox_api::policy::Caps;
use fast_sandbox_api::wellknown::{condition, reason};
use fast_sandbox_api::{SandboxPool, SandboxPoolStatus};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::agent_pod;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::scale::{AgentState, ScalePlan};
use crate::transition::set_condition;

/// The Ready condition's message: how many agents run, and which no node
/// can take (a pool whose agents never start says why, not only that).
fn ready_message(ready: i32, live: usize, pool_min: i32, unschedulable: &[String]) -> String {
    let mut m = format!("{ready} of {live} agents ready (poolMin {pool_min})");
    if !unschedulable.is_empty() {
        m.push_str(&format!(
            "; the scheduler finds no node for agent pods {}: their requests (spec.agentTemplate resources plus the sandboxes' share) are larger than any node has free, or taints and selectors rule every node out (the pods' events in the operator's namespace say which)",
            unschedulable.join(", ")
        ));
    }
    m
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn write_status(
    pool: &SandboxPool,
    ctx: &Context,
    ns: &str,
    name: &str,
    agents: &[AgentState],
    unschedulable: &[String],
    plan: &ScalePlan,
    bound: &HashMap<String, u32>,
    capped: Option<Caps>,
    refused: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let slots = pool.spec.slots_per_agent() as i32;
    let live: Vec<&AgentState> = agents.iter().filter(|a| !a.failed).collect();
    let ready = live.iter().filter(|a| a.ready).count() as i32;
    let draining = live.iter().filter(|a| a.draining_since.is_some()).count() as i32;
    let schedulable = live
        .iter()
        .filter(|a| a.ready && a.draining_since.is_none())
        .count() as i32;
    let used: u32 = live
        .iter()
        .map(|a| bound.get(&a.name).copied().unwrap_or(0))
        .sum();
    let pool_min = pool.spec.capacity.effective().pool_min as i32;
    let generation = pool.metadata.generation;

    let current = pool.status.clone().unwrap_or_default();
    let mut conditions = current.conditions.clone();
    let is_ready = ready >= pool_min;
    set_condition(
        &mut conditions,
        condition::READY,
        is_ready,
        if is_ready {
            reason::POOL_READY
        } else {
            reason::POOL_NOT_READY
        },
        &ready_message(ready, live.len(), pool_min, unschedulable),
        generation,
        now,
    );
    let (limited, limit_message) = match capped {
        Some(c) => (
            true,
            format!(
                "growth stopped: namespace {ns} may hold {} agents and {} slots (a cap the operator sets); sandboxes wait until one frees",
                c.max_agents, c.max_slots
            ),
        ),
        None => (false, "within the namespace's caps".to_string()),
    };
    set_condition(
        &mut conditions,
        condition::CAPACITY_LIMITED,
        limited,
        if limited {
            reason::NAMESPACE_CAP_REACHED
        } else {
            reason::WITHIN_CAPS
        },
        &limit_message,
        generation,
        now,
    );
    let scaling = !plan.is_noop() || live.len() as u32 != plan.target;
    let (scaling_reason, scaling_message) = match refused {
        Some(m) => (
            reason::AGENT_POD_REFUSED,
            format!(
                "target {} agents, but the apiserver refuses the agent pod built from spec.agentTemplate: {m}",
                plan.target
            ),
        ),
        None => {
            // `kubectl scale` writes spec.replicas through the scale
            // subresource, which admission does not see: say what was kept.
            let cap = pool.spec.capacity.effective();
            let kept = match pool.spec.replicas {
                Some(r) if r.max(0) as u32 != plan.target => format!(
                    " (spec.replicas {r} is kept within poolMin {} and poolMax {})",
                    cap.pool_min, cap.pool_max
                ),
                _ => String::new(),
            };
            let reason = if scaling { "Scaling" } else { "Stable" };
            (reason, format!("target {} agents{kept}", plan.target))
        }
    };
    set_condition(
        &mut conditions,
        condition::SCALING,
        scaling,
        scaling_reason,
        &scaling_message,
        generation,
        now,
    );
    let status = SandboxPoolStatus {
        agents: live.len() as i32,
        ready_agents: ready,
        draining_agents: draining,
        slots_total: schedulable * slots,
        slots_used: used as i32,
        selector: Some(agent_pod::selector_string(pool)),
        conditions,
        observed_generation: generation,
    };

    let labels = |state: &str| {
        vec![
            ("namespace", ns.to_string()),
            ("pool", name.to_string()),
            ("state", state.to_string()),
        ]
    };
    let m = &ctx.metrics;
    for (family, state, value) in [
        (&m.pool_agents, "total", i64::from(status.agents)),
        (&m.pool_agents, "ready", i64::from(status.ready_agents)),
        (
            &m.pool_agents,
            "draining",
            i64::from(status.draining_agents),
        ),
        (&m.pool_slots, "total", i64::from(status.slots_total)),
        (&m.pool_slots, "used", i64::from(status.slots_used)),
    ] {
        family.get_or_create(&labels(state)).set(value);
    }

    if pool.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<SandboxPool> = Api::namespaced(ctx.client.clone(), ns);
    let body = json!({
        "apiVersion": SandboxPool::api_version(&()),
        "kind": SandboxPool::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_no_node_takes_are_named_in_the_ready_message() {
        assert_eq!(
            ready_message(1, 1, 1, &[]),
            "1 of 1 agents ready (poolMin 1)"
        );
        let m = ready_message(0, 1, 1, &["p-abc".to_string()]);
        assert!(
            m.starts_with(
                "0 of 1 agents ready (poolMin 1); the scheduler finds no node for agent pods p-abc"
            ),
            "{m}"
        );
    }
}
