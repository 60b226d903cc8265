//! The pool controller: keeps each SandboxPool's agent pods warm, managing
//! the pods directly (no Deployment or ReplicaSet), and writes the pool's
//! status, which also serves `/scale`.
//!
//! Agent pods live in the operator's namespace, tied to their pool by its
//! UID label. A finalizer on the pool lets the controller remove them when
//! the pool (or its namespace) goes; agents whose pool no longer exists are
//! swept as orphans. Growth stops at the caps the operator set for the
//! pool's namespace, and the pool says so in a condition.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use fast_sandbox_api::policy::Caps;
use fast_sandbox_api::wellknown::{
    ANNOTATION_DRAINING, ANNOTATION_SLOTS, LABEL_POOL_NAMESPACE, LABEL_POOL_UID, POOL_FINALIZER,
    condition, reason,
};
use fast_sandbox_api::{SandboxPool, SandboxPoolStatus};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::agent_pod;
use crate::agents::{pod_gone, pod_ready};
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::scale::{self, AgentState, ScaleInput, ScalePlan};
use crate::time::from_k8s;
use crate::transition::set_condition;

/// How often a pool being deleted is looked at again while its agent pods
/// terminate (their deletions also trigger it).
const TEARDOWN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

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

    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| owned_by(p, pool))
        .collect();
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
    write_status(
        pool,
        ctx,
        &ns,
        &name,
        &agents,
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

async fn execute(
    pool: &SandboxPool,
    ctx: &Context,
    pool_key: &str,
    plan: &ScalePlan,
) -> Result<(), Error> {
    let agent_ns = &ctx.settings.agent_pod.namespace;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), agent_ns);
    let policy = ctx.policy();
    for _ in 0..plan.create {
        let pod = agent_pod::build(pool, &policy, &ctx.settings.agent_pod);
        let created = match pods.create(&PostParams::default(), &pod).await {
            Ok(p) => p,
            Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => {
                let message =
                    without_generated_name(&e.message, pod.metadata.generate_name.as_deref());
                ctx.publish(
                    pool,
                    Event {
                        type_: EventType::Warning,
                        reason: reason::AGENT_POD_REFUSED.into(),
                        note: Some(format!("the apiserver refused an agent pod: {message}")),
                        action: "Scale".into(),
                        secondary: None,
                    },
                );
                return Err(Error::AgentPodRefused(message));
            }
            Err(e) => return Err(e.into()),
        };
        let pname = created.name_any();
        ctx.expectations.created(pool_key, &pname);
        tracing::info!(pool = %pool.name_any(), agent = %pname, "created agent pod");
    }
    if plan.create > 0 {
        ctx.publish(
            pool,
            Event {
                type_: EventType::Normal,
                reason: "ScaledUp".into(),
                note: Some(format!("created {} agent pod(s)", plan.create)),
                action: "Scale".into(),
                secondary: None,
            },
        );
    }
    let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    for n in &plan.drain {
        let patch = json!({"metadata": {"annotations": {ANNOTATION_DRAINING: stamp}}});
        pods.patch(n, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    for n in &plan.undrain {
        let patch = json!({"metadata": {"annotations": {ANNOTATION_DRAINING: null}}});
        pods.patch(n, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    for n in &plan.delete {
        let uid = ctx
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(n).within(agent_ns))
            .and_then(|p| p.uid());
        retire_stock(ctx, n).await;
        delete_pod(&pods, n, uid).await?;
        ctx.expectations.deleted(pool_key, n);
        tracing::info!(pool = %pool.name_any(), agent = %n, "deleted agent pod");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_status(
    pool: &SandboxPool,
    ctx: &Context,
    ns: &str,
    name: &str,
    agents: &[AgentState],
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
        &format!(
            "{ready} of {} agents ready (poolMin {pool_min})",
            live.len()
        ),
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
    ctx.metrics
        .pool_agents
        .get_or_create(&labels("total"))
        .set(status.agents as i64);
    ctx.metrics
        .pool_agents
        .get_or_create(&labels("ready"))
        .set(status.ready_agents as i64);
    ctx.metrics
        .pool_agents
        .get_or_create(&labels("draining"))
        .set(status.draining_agents as i64);
    ctx.metrics
        .pool_slots
        .get_or_create(&labels("total"))
        .set(status.slots_total as i64);
    ctx.metrics
        .pool_slots
        .get_or_create(&labels("used"))
        .set(status.slots_used as i64);

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

async fn delete_pod(pods: &Api<Pod>, name: &str, uid: Option<String>) -> Result<(), Error> {
    let dp = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn add_finalizer(pool: &SandboxPool, ctx: &Context, ns: &str) -> Result<(), Error> {
    let patch = match &pool.metadata.finalizers {
        None => json!([
            {"op": "test", "path": "/metadata/uid", "value": pool.metadata.uid},
            {"op": "add", "path": "/metadata/finalizers", "value": [POOL_FINALIZER]}
        ]),
        Some(_) => json!([
            {"op": "test", "path": "/metadata/uid", "value": pool.metadata.uid},
            {"op": "add", "path": "/metadata/finalizers/-", "value": POOL_FINALIZER}
        ]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    let api: Api<SandboxPool> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Asks agent `name` to remove its pre-started sandboxes before its pod
/// goes: a deleted pod takes nothing with it from the node's containerd,
/// and a restarted agent keeps its stock, so the agent cannot tell by
/// itself. One that cannot answer leaves them to the node janitor.
async fn retire_stock(ctx: &Context, name: &str) {
    let Some(agent) = ctx.agents.get(name) else {
        return;
    };
    if !agent.view().reachable {
        return;
    }
    match agent.client.release_stock().await {
        Ok(r) => {
            tracing::info!(agent = %name, removed = r.removed, "retired the agent's stock");
        }
        Err(e) => {
            tracing::warn!(agent = %name, error = %e, "cannot retire an agent's stock before it goes; the node janitor collects it");
        }
    }
}

/// The apiserver's refusal of an agent pod with the name it generated
/// (new at every attempt) shown as its prefix, so the pool's condition and
/// events stay the same from one attempt to the next.
fn without_generated_name(message: &str, prefix: Option<&str>) -> String {
    let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
        return message.to_string();
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i]);
        out.push_str(prefix);
        out.push('*');
        let tail = &rest[i + prefix.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// How many of a departing agent's sandboxes are stopped at once.
const REMOVE_CONCURRENCY: usize = 8;

/// Removes one agent: first the sandboxes' containers and the stock it
/// holds (a deleted pod takes nothing with it from the node's
/// containerd), then the pod.
async fn remove_agent(ctx: &Context, pod: &Pod) -> Result<(), Error> {
    let name = pod.name_any();
    if let Some(agent) = ctx.agents.get(&name)
        && agent.view().reachable
    {
        // Each with its own grace period, several at once: one after the
        // other, an agent's sandboxes that ignore SIGTERM would take the
        // default period each.
        let graces: HashMap<String, Option<std::time::Duration>> = ctx
            .sandboxes
            .state()
            .iter()
            .filter_map(|s| Some((s.uid()?, s.termination_grace())))
            .collect();
        let uids: Vec<String> = agent.view().sandboxes.keys().cloned().collect();
        futures::stream::iter(uids)
            .for_each_concurrent(REMOVE_CONCURRENCY, |uid| {
                let agent = &agent;
                let name = &name;
                let grace = graces.get(&uid).copied().flatten();
                async move {
                    if let Err(e) = agent.client.delete(&uid, grace).await {
                        tracing::warn!(agent = %name, sandbox = %uid, error = %e, "cannot remove a container before its agent goes; the node janitor collects it");
                    }
                }
            })
            .await;
    }
    retire_stock(ctx, &name).await;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.agent_pod.namespace);
    delete_pod(&pods, &name, pod.uid()).await
}

/// A pool being deleted: its agents' sandboxes and then the agents go, then
/// its finalizer.
async fn teardown(
    pool: &SandboxPool,
    ctx: &Context,
    ns: &str,
    pool_key: &str,
) -> Result<Action, Error> {
    if !pool.finalizers().iter().any(|f| f == POOL_FINALIZER) {
        return Ok(Action::await_change());
    }
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| owned_by(p, pool))
        .collect();
    let none = HashSet::new();
    let (expected_new, _) = ctx.expectations.pending(pool_key, &none, &none);
    // Once every agent's deletion is under way the pool may go: Kubernetes
    // finishes the pods' deletion (on a node that died, the pod garbage
    // collector does), and none of them can be adopted by a new pool of
    // the same name, which has another UID.
    if pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()) && expected_new.is_empty() {
        let finalizers = pool.finalizers().to_vec();
        let api: Api<SandboxPool> = Api::namespaced(ctx.client.clone(), ns);
        crate::finalizer::remove(&api, &pool.name_any(), &finalizers, POOL_FINALIZER).await?;
        tracing::info!(pool = %pool.name_any(), namespace = %ns, "pool deleted; its agents are gone");
        return Ok(Action::await_change());
    }
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        remove_agent(ctx, p).await?;
        ctx.expectations.deleted(pool_key, &p.name_any());
        tracing::info!(pool = %pool.name_any(), namespace = %ns, agent = %p.name_any(), "deleted agent pod of a deleted pool");
    }
    Ok(Action::requeue(TEARDOWN_RECHECK))
}

/// Sweeps agents whose pool no longer exists each time `rx` asks (the pool
/// list was read or a pool was deleted), once the caches are synced: a
/// pool whose finalizer was removed by force, or that went while no
/// controller ran, leaves no privileged pod behind.
pub async fn sweep_orphans_on(ctx: Arc<Context>, mut rx: UnboundedReceiver<()>) {
    while rx.recv().await.is_some() {
        while rx.try_recv().is_ok() {}
        ctx.wait_synced().await;
        let pools: HashSet<String> = ctx.pools.state().iter().filter_map(|p| p.uid()).collect();
        let scope = ctx.settings.watch_namespace.clone();
        for pod in ctx.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(ns) = &scope
                && pod.labels().get(LABEL_POOL_NAMESPACE) != Some(ns)
            {
                continue;
            }
            let owner = pod.labels().get(LABEL_POOL_UID);
            if owner.is_some_and(|uid| pools.contains(uid)) {
                continue;
            }
            tracing::warn!(agent = %pod.name_any(), pool_uid = ?owner, "agent pod has no pool; removing it");
            if let Err(e) = remove_agent(&ctx, &pod).await {
                tracing::warn!(agent = %pod.name_any(), error = %e, "cannot remove an orphaned agent pod; retried at the next sweep");
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_refusal_reads_the_same_at_every_attempt() {
        let prefix = Some("p-team-");
        for name in ["p-team-x7k2q", "p-team-9zz01"] {
            let m = format!(
                "Pod \"{name}\" is invalid: spec.nodeSelector: Invalid value: \"bad key!\""
            );
            assert_eq!(
                without_generated_name(&m, prefix),
                "Pod \"p-team-*\" is invalid: spec.nodeSelector: Invalid value: \"bad key!\""
            );
        }
        assert_eq!(without_generated_name("quota", prefix), "quota");
        assert_eq!(without_generated_name("p-team-", None), "p-team-");
    }

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
