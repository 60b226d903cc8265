//! The pool controller: keeps each SandboxPool's agent pods warm, managing
//! the pods directly (no Deployment or ReplicaSet), and writes the pool's
//! status, which also serves `/scale`.
//!
//! Agent pods live in the operator's namespace, tied to their pool by its
//! UID label. A finalizer on the pool lets the controller remove them when
//! the pool (or its namespace) goes; agents whose pool no longer exists are
//! swept as orphans. Growth stops at the caps the operator set for the
//! pool's namespace, and the pool says so in a condition.

mod removal;
mod scaling;
mod status;
mod teardown;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::policy::Caps;
use fast_sandbox_api::wellknown::{
    ANNOTATION_DRAINING, ANNOTATION_SLOTS, LABEL_POOL_NAMESPACE, LABEL_POOL_UID, POOL_FINALIZER,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::agents::{pod_gone, pod_ready, pod_unschedulable};
use crate::context::Context;
use crate::error::Error;
use crate::scale::{self, AgentState, ScaleInput};
use crate::time::from_k8s;

use scaling::execute;
use status::write_status;
use teardown::{add_finalizer, teardown};

pub use teardown::sweep_orphans_on;

/// Reconciles one pool.
pub async fn reconcile(pool: Arc<SandboxPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("pool");
    let key = pool.metadata.uid.clone().unwrap_or_default();
    ctx.wait_synced().await;
    let action = crate::error::unwound(reconcile_inner(&pool, &ctx)).await?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Retries a failed reconcile with per-object exponential backoff.
pub fn error_policy(pool: Arc<SandboxPool>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed("pool", err.metric_label());
    let delay = ctx.backoff(pool.metadata.uid.as_deref().unwrap_or_default());
    tracing::warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), error = %err, retry_in = ?delay, "pool reconcile failed");
    Action::requeue(delay)
}

/// Whether `pod` is an agent of `pool`: by the pool's UID, so a pool
/// deleted and created again under its name never adopts the old agents.
pub fn owned_by(pod: &Pod, pool: &SandboxPool) -> bool {
    pool.metadata.uid.is_some() && pod.labels().get(LABEL_POOL_UID) == pool.metadata.uid.as_ref()
}

/// The agent pods of `pool` in the controller's cache.
fn pods_of(ctx: &Context, pool: &SandboxPool) -> Vec<Arc<Pod>> {
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| owned_by(p, pool))
        .collect()
}

fn slots_of(pod: &Pod) -> u32 {
    pod.annotations()
        .get(ANNOTATION_SLOTS)
        .and_then(|s| s.parse().ok())
        .unwrap_or(fast_sandbox_api::pool::DEFAULT_SLOTS_PER_AGENT as u32)
}

/// The draining mark's time; an unreadable mark counts as long ago.
fn draining_since(pod: &Pod) -> Option<DateTime<Utc>> {
    let v = pod.annotations().get(ANNOTATION_DRAINING)?;
    Some(
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
    )
}

async fn reconcile_inner(pool: &SandboxPool, ctx: &Context) -> Result<Action, Error> {
    let ns = pool
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pool.name_any();
    let pool_key = format!("{ns}/{name}");
    if pool.metadata.deletion_timestamp.is_some() {
        return teardown(pool, ctx, &ns, &pool_key).await;
    }
    if !pool.finalizers().iter().any(|f| f == POOL_FINALIZER) {
        add_finalizer(pool, ctx, &ns).await?;
        // The change comes back on the watch; continue from there.
        return Ok(Action::await_change());
    }
    let now = Utc::now();

    let pods = pods_of(ctx, pool);
    let seen: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let deleting: HashSet<String> = pods
        .iter()
        .filter(|p| pod_gone(p))
        .map(|p| p.name_any())
        .collect();
    let (expected_new, expected_gone) = ctx.expectations.pending(&pool_key, &seen, &deleting);

    let mut bound: HashMap<String, u32> = HashMap::new();
    let mut pending_unbound = 0u32;
    for sb in ctx.sandboxes.state() {
        if sb.namespace().as_deref() != Some(ns.as_str()) || sb.spec.pool_ref != name {
            continue;
        }
        match &sb.spec.agent_ref {
            Some(r) => *bound.entry(r.pod_name.clone()).or_default() += 1,
            None if sb.metadata.deletion_timestamp.is_none() && !sb.phase().is_finished() => {
                pending_unbound += 1
            }
            None => {}
        }
    }

    let mut agents = Vec::new();
    for p in &pods {
        let pname = p.name_any();
        if deleting.contains(&pname) || expected_gone.contains(&pname) {
            continue;
        }
        let failed = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Failed" || ph == "Succeeded");
        let held = ctx.agents.get(&pname).and_then(|a| a.held()).unwrap_or(0);
        agents.push(AgentState {
            name: pname.clone(),
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(from_k8s)
                .unwrap_or(now),
            ready: pod_ready(p),
            draining_since: draining_since(p),
            used: bound.get(&pname).copied().unwrap_or(0).max(held),
            failed,
        });
    }
    // Pods created a moment ago count as starting agents.
    for n in &expected_new {
        agents.push(AgentState {
            name: n.clone(),
            created: now,
            ready: false,
            draining_since: None,
            used: 0,
            failed: false,
        });
    }

    let input = ScaleInput {
        capacity: pool.spec.capacity.effective(),
        replicas: pool.spec.replicas,
        slots_per_agent: pool.spec.slots_per_agent(),
        pending_unbound,
        now,
        drain_settle: chrono::Duration::from_std(ctx.settings.drain_settle).unwrap_or_default(),
    };
    let mut plan = scale::plan(&input, &agents);
    // A pod just created is not in the cache yet: never drain or delete it.
    plan.drain.retain(|n| !expected_new.contains(n));

    // Growth stops at the namespace's caps; pools of one namespace plan
    // one at a time so together they never pass them.
    let caps = ctx.policy().caps(&ns);
    let lock = ctx.namespace_lock(&ns);
    let _planning = lock.lock().await;
    let room = room_in_namespace(ctx, &ns, &caps, input.slots_per_agent);
    let capped = plan.create > room;
    if capped {
        tracing::info!(pool = %name, namespace = %ns, wanted = plan.create, room, max_agents = caps.max_agents, max_slots = caps.max_slots, "pool growth stops at the namespace's cap");
        plan.create = room;
    }
    if !plan.is_noop() {
        tracing::info!(pool = %name, namespace = %ns, create = plan.create, drain = ?plan.drain, undrain = ?plan.undrain, delete = ?plan.delete, target = plan.target, "scaling pool");
    }
    // A template the apiserver refuses is the tenant's to fix: it is told
    // on the pool, and the create is retried with backoff.
    let refused = match execute(pool, ctx, &pool_key, &plan).await {
        Ok(()) => None,
        Err(Error::AgentPodRefused(message)) => Some(message),
        Err(e) => return Err(e),
    };
    drop(_planning);

    let limit = capped.then_some(caps);
    let unschedulable: Vec<String> = pods
        .iter()
        .filter(|p| pod_unschedulable(p))
        .map(|p| p.name_any())
        .collect();
    write_status(
        pool,
        ctx,
        &ns,
        &name,
        &agents,
        &unschedulable,
        &plan,
        &bound,
        limit,
        refused.as_deref(),
        now,
    )
    .await?;
    if let Some(message) = refused {
        return Err(Error::AgentPodRefused(message));
    }
    Ok(match plan.recheck_at {
        Some(at) => Action::requeue(crate::expiry::wait_until(at, Utc::now())),
        None => Action::await_change(),
    })
}

/// Slots-per-agent `slots`: how many more agents namespace `ns` may get
/// under `caps`, counting every agent of its pools that is not going away
/// and those just created.
fn room_in_namespace(ctx: &Context, ns: &str, caps: &Caps, slots: u32) -> u32 {
    let mut agents = 0u32;
    let mut used_slots = 0u64;
    for p in ctx.pods.state() {
        if p.labels().get(LABEL_POOL_NAMESPACE).map(String::as_str) != Some(ns) || pod_gone(&p) {
            continue;
        }
        agents += 1;
        used_slots += u64::from(slots_of(&p));
    }
    let just_created = ctx.expectations.created_in(&format!("{ns}/"));
    agents += just_created.len() as u32;
    used_slots += u64::from(slots) * just_created.len() as u64;
    let by_agents = caps.max_agents.saturating_sub(agents);
    let by_slots =
        (u64::from(caps.max_slots).saturating_sub(used_slots) / u64::from(slots.max(1))) as u32;
    by_agents.min(by_slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn agents_belong_to_a_pool_by_uid_only() {
        let mut pool = SandboxPool::new("p", Default::default());
        pool.metadata.uid = Some("u1".into());
        let mut pod = Pod::default();
        pod.metadata.labels = Some(BTreeMap::from([(LABEL_POOL_UID.to_string(), "u1".into())]));
        assert!(owned_by(&pod, &pool));
        pool.metadata.uid = Some("u2".into());
        assert!(
            !owned_by(&pod, &pool),
            "a pool created again is another pool"
        );
        pool.metadata.uid = None;
        assert!(!owned_by(&pod, &pool));
    }
}
