//! The pool controller: keeps each SandboxPool's agent pods warm, managing
//! the pods directly (no Deployment or ReplicaSet), and writes the pool's
//! status, which also serves `/scale`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use fast_sandbox_api::wellknown::{ANNOTATION_DRAINING, LABEL_POOL, condition, reason};
use fast_sandbox_api::{SandboxPool, SandboxPoolStatus};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::agent_pod::{self, AGENT_TLS_SECRET};
use crate::agents::{pod_gone, pod_ready};
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::scale::{self, AgentState, ScaleInput, ScalePlan};
use crate::time::from_k8s;
use crate::transition::set_condition;

/// Reconciles one pool.
pub async fn reconcile(pool: Arc<SandboxPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("pool");
    let key = pool.metadata.uid.clone().unwrap_or_default();
    ctx.wait_synced().await;
    let action = reconcile_inner(&pool, &ctx).await?;
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

/// Whether `pod` is an agent of `pool` (by label and controller owner).
pub fn owned_by(pod: &Pod, pool: &SandboxPool) -> bool {
    pod.namespace() == pool.namespace()
        && pod.labels().get(LABEL_POOL) == pool.metadata.name.as_ref()
        && pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == pool.metadata.uid.as_ref())
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
    if pool.metadata.deletion_timestamp.is_some() {
        // Agent pods go with their owner through garbage collection.
        return Ok(Action::await_change());
    }
    let ns = pool
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pool.name_any();
    let pool_key = format!("{ns}/{name}");
    let now = Utc::now();
    ensure_tls_secret(ctx, &ns).await?;

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
        let held = ctx
            .agents
            .get(&ns, &pname)
            .and_then(|a| a.held())
            .unwrap_or(0);
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
    if !plan.is_noop() {
        tracing::info!(pool = %name, namespace = %ns, create = plan.create, drain = ?plan.drain, undrain = ?plan.undrain, delete = ?plan.delete, target = plan.target, "scaling pool");
    }
    execute(pool, ctx, &ns, &pool_key, &plan).await?;

    write_status(pool, ctx, &ns, &name, &agents, &plan, &bound, now).await?;
    Ok(match plan.recheck_at {
        Some(at) => Action::requeue(crate::expiry::wait_until(at, Utc::now())),
        None => Action::await_change(),
    })
}

async fn execute(
    pool: &SandboxPool,
    ctx: &Context,
    ns: &str,
    pool_key: &str,
    plan: &ScalePlan,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for _ in 0..plan.create {
        let pod = agent_pod::build(pool, &ctx.settings.agent_pod);
        let created = pods.create(&PostParams::default(), &pod).await?;
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
            .get(&kube::runtime::reflector::ObjectRef::new(n).within(ns))
            .and_then(|p| p.uid());
        let dp = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(n, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
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
    let scaling = !plan.is_noop() || live.len() as u32 != plan.target;
    set_condition(
        &mut conditions,
        condition::SCALING,
        scaling,
        if scaling { "Scaling" } else { "Stable" },
        &format!("target {} agents", plan.target),
        generation,
        now,
    );
    let status = SandboxPoolStatus {
        agents: live.len() as i32,
        ready_agents: ready,
        draining_agents: draining,
        slots_total: schedulable * slots,
        slots_used: used as i32,
        selector: Some(agent_pod::selector_string(name)),
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

/// Copies the agent TLS secret from the controller's namespace into the
/// pool's namespace, so agent pods can mount it. Done once per namespace
/// until the source changes (a renewed certificate): the controller watches
/// the source and then copies it again everywhere.
async fn ensure_tls_secret(ctx: &Context, ns: &str) -> Result<(), Error> {
    if ns == ctx.settings.namespace || tls_copied(ctx, ns) {
        return Ok(());
    }
    let source_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let Some(source) = source_api.get_opt(AGENT_TLS_SECRET).await? else {
        tracing::warn!(namespace = %ctx.settings.namespace, secret = AGENT_TLS_SECRET, "agent TLS secret missing; agent pods cannot start");
        return Ok(());
    };
    let copy = Secret {
        metadata: ObjectMeta {
            name: Some(AGENT_TLS_SECRET.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                FIELD_MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        data: source.data.clone(),
        type_: source.type_.clone(),
        ..Default::default()
    };
    let target: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut body = serde_json::to_value(&copy)?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    target
        .patch(
            AGENT_TLS_SECRET,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    ctx.tls_copied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(ns.to_string());
    Ok(())
}

fn tls_copied(ctx: &Context, ns: &str) -> bool {
    ctx.tls_copied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(ns)
}
