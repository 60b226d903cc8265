//! The sandbox controller: turns every bound Sandbox into a container on its
//! agent and keeps the status true until the object is gone.
//!
//! Triggers: the sandbox watch, and the agent directory (an agent listed, an
//! event on its stream, an agent pod that changed or became unreachable).
//! The only timed requeues are the expiry instant, the end of an agent's
//! grace period, and error backoff.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fast_sandbox_api::agent::{CreateSandboxRequest, ErrorCode, SandboxInfo};
use fast_sandbox_api::validation::limits_of;
use fast_sandbox_api::wellknown::{
    ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION, FINALIZER, LABEL_AGENT, condition, reason,
};
use fast_sandbox_api::{FailurePolicy, Sandbox, SandboxPhase, SandboxStatus};
use fast_sandbox_placement::{Choice, pool_key};
use fast_sandbox_webhook::binding::{self, Binding};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation, TestOperation};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::agents::{Agent, pod_gone};
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::expiry;
use crate::transition;

/// Reconciles one sandbox.
pub async fn reconcile(sb: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("sandbox");
    let key = sb.metadata.uid.clone().unwrap_or_default();
    ctx.wait_synced().await;
    let action = crate::error::unwound(reconcile_inner(&sb, &ctx)).await?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Retries a failed reconcile with per-object exponential backoff.
pub fn error_policy(sb: Arc<Sandbox>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed("sandbox", err.metric_label());
    let delay = ctx.backoff(sb.metadata.uid.as_deref().unwrap_or_default());
    tracing::warn!(sandbox = %sb.name_any(), namespace = ?sb.namespace(), error = %err, retry_in = ?delay, "sandbox reconcile failed");
    Action::requeue(delay)
}

/// The parts of a sandbox every step needs.
struct Target<'a> {
    sb: &'a Sandbox,
    api: Api<Sandbox>,
    ns: String,
    name: String,
    uid: String,
    now: DateTime<Utc>,
    written: Option<SandboxStatus>,
}

impl Target<'_> {
    /// The latest status: the one last written, else the stored one.
    fn status(&self) -> SandboxStatus {
        self.written
            .clone()
            .or_else(|| self.sb.status.clone())
            .unwrap_or_default()
    }

    fn phase(&self) -> SandboxPhase {
        self.status().phase.unwrap_or_default()
    }

    fn generation(&self) -> Option<i64> {
        self.sb.metadata.generation
    }

    fn bound_at(&self) -> Option<DateTime<Utc>> {
        self.sb
            .annotations()
            .get(ANNOTATION_BOUND_AT)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            // A bind time still to come (set before admission guarded the
            // annotation) would keep a lost agent's sandbox waiting forever.
            .map(|t| t.with_timezone(&Utc).min(self.now))
    }
}

async fn reconcile_inner(sb: &Sandbox, ctx: &Context) -> Result<Action, Error> {
    let ns = sb
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let t = Target {
        sb,
        api: Api::namespaced(ctx.client.clone(), &ns),
        name: sb.name_any(),
        uid: sb.uid().ok_or(Error::MissingField("metadata.uid"))?,
        written: sb.uid().and_then(|uid| ctx.written.get(&uid)),
        ns,
        now: Utc::now(),
    };

    if sb.metadata.deletion_timestamp.is_some() {
        return finalize(&t, ctx).await;
    }

    let deadline = expiry::deadline(sb);
    if let Some(at) = deadline
        && at <= t.now
    {
        tracing::info!(sandbox = %t.name, namespace = %t.ns, "sandbox expired; deleting");
        ctx.publish(
            sb,
            event(EventType::Normal, reason::EXPIRED, "Delete", "expired"),
        );
        match t.api.delete(&t.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }

    let next = match &sb.spec.agent_ref {
        None => unbound(&t, ctx).await?,
        Some(r) => bound(&t, ctx, &r.pod_name.clone(), &r.node_name.clone()).await?,
    };
    let wake = match (deadline, next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match wake {
        Some(at) => Action::requeue(expiry::wait_until(at, Utc::now())),
        None => Action::await_change(),
    })
}

fn event(type_: EventType, reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.into()),
        action: action.to_string(),
        secondary: None,
    }
}

/// Writes `status` if it differs from the stored one.
async fn write_status(
    t: &Target<'_>,
    ctx: &Context,
    status: &SandboxStatus,
) -> Result<bool, Error> {
    if !transition::changed(Some(&t.status()), status) {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    // The whole status in one JSON patch: the controller alone writes it,
    // and the apiserver applies a patch for a fraction of the CPU a
    // server-side apply costs (no managed-fields merge), which counts in a
    // burst.
    let value = serde_json::to_value(status)?;
    let patch = json_patch::Patch(vec![PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["status"]),
        value,
    })]);
    t.api
        .patch_status(
            &t.name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            },
            &Patch::Json::<()>(patch),
        )
        .await?;
    ctx.metrics
        .status_write
        .observe(started.elapsed().as_secs_f64());
    ctx.written.put(&t.uid, status.clone());
    Ok(true)
}

/// No agent: place it now if a slot is free, else report why and make the
/// pool grow.
async fn unbound(t: &Target<'_>, ctx: &Context) -> Result<Option<DateTime<Utc>>, Error> {
    let pool = &t.sb.spec.pool_ref;
    let pool_exists = ctx.pools.get(&ObjectRef::new(pool).within(&t.ns)).is_some();
    if !pool_exists {
        let st = transition::unbound(
            &t.status(),
            reason::POOL_NOT_FOUND,
            &format!("SandboxPool {pool} does not exist in namespace {}", t.ns),
            t.generation(),
            t.now,
        );
        write_status(t, ctx, &st).await?;
        return Ok(None);
    }
    let pool_key = pool_key(&t.ns, pool);
    match ctx.index.reserve(&pool_key, &t.sb.spec.image, &t.uid) {
        Ok(choice) => {
            bind(t, ctx, &choice).await?;
            Ok(None)
        }
        Err(_) => {
            wait_for_capacity(t, ctx).await?;
            Ok(None)
        }
    }
}

/// No slot anywhere: the sandbox waits, visibly (Pending, Scheduled=False,
/// NoCapacity), and the pool grows. It is placed as soon as a slot frees.
async fn wait_for_capacity(t: &Target<'_>, ctx: &Context) -> Result<(), Error> {
    let pool = &t.sb.spec.pool_ref;
    // A finished sandbox keeps its slot (its container, for its logs)
    // until it is deleted: say so, since the pool may not grow past them.
    let finished = ctx
        .sandboxes
        .state()
        .iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(t.ns.as_str())
                && s.spec.pool_ref == *pool
                && s.spec.agent_ref.is_some()
                && s.phase().is_finished()
        })
        .count();
    let held = if finished > 0 {
        format!(
            " ({finished} slots are held by finished sandboxes until they are deleted; ttlSecondsAfterFinished deletes them)"
        )
    } else {
        String::new()
    };
    // A pool at its poolMax (0 included) does not grow: a slot frees only
    // when one of its sandboxes is deleted.
    let at_max = ctx
        .pools
        .get(&ObjectRef::new(pool).within(&t.ns))
        .and_then(|p| {
            let max = p.spec.capacity.effective().pool_max;
            let agents = ctx
                .pods
                .state()
                .iter()
                .filter(|pod| crate::pool_controller::owned_by(pod, &p))
                .count();
            (agents as u32 >= max).then_some(max)
        });
    let waiting = match at_max {
        Some(max) => {
            format!("the pool is at its poolMax ({max} agents): waiting for a slot to free")
        }
        None => "waiting while the pool grows".to_string(),
    };
    let st = transition::unbound(
        &t.status(),
        reason::NO_CAPACITY,
        &format!("no ready agent of pool {pool} has a free slot{held}; {waiting}"),
        t.generation(),
        t.now,
    );
    write_status(t, ctx, &st).await?;
    let _ = ctx.pool_tx.send(ObjectRef::new(pool).within(&t.ns));
    Ok(())
}

/// Binds the sandbox to `choice` with the same patch admission uses.
async fn bind(t: &Target<'_>, ctx: &Context, choice: &Choice) -> Result<(), Error> {
    let b = Binding {
        pool: t.sb.spec.pool_ref.clone(),
        choice: Some(choice.clone()),
        bound_at: Utc::now(),
        reservation: t.uid.clone(),
        // Admission wrote its limits and network when it was created.
        resources: None,
        network: None,
        at_admission: false,
    };
    let patch = binding::patch(&t.sb.metadata, &b);
    if let Err(e) = t
        .api
        .patch(&t.name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        ctx.index.release(&t.uid);
        return Err(e.into());
    }
    tracing::info!(sandbox = %t.name, namespace = %t.ns, agent = %choice.pod_name, "sandbox placed by the controller");
    ctx.publish(
        t.sb,
        event(
            EventType::Normal,
            reason::BOUND,
            "Bind",
            format!("bound to agent {}", choice.pod_name),
        ),
    );
    Ok(())
}

/// Bound to `pod`: make the agent run it and mirror its state.
async fn bound(
    t: &Target<'_>,
    ctx: &Context,
    pod: &str,
    node: &str,
) -> Result<Option<DateTime<Utc>>, Error> {
    if !t.sb.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(t).await?;
        // The change comes back on the watch; continue from there.
        return Ok(None);
    }
    let status = t.status();
    let want_rev = t.sb.spec.reset_revision.unwrap_or(0);
    let phase = t.phase();
    let agent_ns = &ctx.settings.agent_pod.namespace;
    let auto_lost =
        phase == SandboxPhase::Lost && t.sb.spec.failure_policy == FailurePolicy::AutoRecreate;
    if auto_lost {
        match ctx.pods.get(&ObjectRef::new(pod).within(agent_ns)) {
            // The pod object is gone: the kubelet removes it only once the
            // pod's cgroup, the sandboxes' parent, is reclaimed (or someone
            // forced it, asserting the same), so the old container is gone.
            None => {
                replace(t, ctx, pod, reason::AGENT_LOST).await?;
                return Ok(None);
            }
            // Terminating or finished, but its cgroup may still hold the
            // container (a partitioned node keeps running it): wait until
            // the pod object goes.
            Some(p) if pod_gone(&p) => return Ok(None),
            Some(_) => {}
        }
        // Its agent lives (re-placed onto it, or back from a partition):
        // only an agent that answers can say whether the old container is
        // still there. Until then nothing is started anywhere; the follower
        // triggers a reconcile as soon as it answers.
        if !ctx.agents.get(pod).is_some_and(|a| a.view().reachable) {
            return Ok(None);
        }
    }
    // A Lost sandbox under the Manual policy is never started again, but
    // if its agent comes back with the container, the status recovers.
    let reset_pending = status
        .observed_reset_revision
        .is_some_and(|r| r != want_rev);
    if phase.is_finished() && !reset_pending {
        return Ok(None);
    }

    let grace = chrono::Duration::from_std(ctx.settings.agent_lost_grace).unwrap_or_default();
    let pod_obj = ctx.pods.get(&ObjectRef::new(pod).within(agent_ns));
    if let Some(p) = &pod_obj
        && crate::agents::pool_of(p) != Some((t.ns.clone(), t.sb.spec.pool_ref.clone()))
    {
        // A sandbox of pool ns/p runs only on agents of ns/p, whatever its
        // binding says.
        tracing::warn!(sandbox = %t.name, namespace = %t.ns, agent = %pod, "bound to an agent of another pool; re-placing");
        replace(t, ctx, pod, reason::AGENT_OF_ANOTHER_POOL).await?;
        return Ok(None);
    }
    let agent = ctx.agents.get(pod);
    let agent = match (pod_obj, agent) {
        (Some(p), _) if pod_gone(&p) => {
            return lost(
                t,
                ctx,
                pod,
                &format!("agent pod {pod} is terminating or finished; its sandboxes stop with it"),
                Fence::Unknown,
            )
            .await;
        }
        (None, _) if ctx.agents.was_deleted(pod) => {
            return lost(
                t,
                ctx,
                pod,
                &format!("agent pod {pod} was deleted"),
                Fence::AgentGone,
            )
            .await;
        }
        (None, _) => {
            // The pod cache may trail a binding made a moment ago.
            let since = t.bound_at().unwrap_or(t.now - grace);
            if t.now - since < grace {
                write_status(
                    t,
                    ctx,
                    &transition::bound(&status, pod, node, t.generation(), t.now),
                )
                .await?;
                return Ok(Some(since + grace));
            }
            return lost(
                t,
                ctx,
                pod,
                &format!("agent pod {pod} does not exist"),
                Fence::AgentGone,
            )
            .await;
        }
        (Some(p), None) => {
            // The pod has no IP yet or its agent has not started.
            let since = t
                .bound_at()
                .or_else(|| {
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(crate::time::from_k8s)
                })
                .unwrap_or(t.now);
            if t.now - since < grace {
                write_status(
                    t,
                    ctx,
                    &transition::bound(&status, pod, node, t.generation(), t.now),
                )
                .await?;
                return Ok(Some(since + grace));
            }
            return lost(
                t,
                ctx,
                pod,
                &format!("agent pod {pod} has no running agent"),
                Fence::Unknown,
            )
            .await;
        }
        (Some(_), Some(a)) => a,
    };

    let (reachable, synced, info) = agent.sandbox(&t.uid);
    if !reachable {
        let since = agent.view().unreachable_since.unwrap_or(t.now);
        if t.now - since >= grace {
            return lost(
                t,
                ctx,
                pod,
                &format!(
                    "agent {pod} unreachable for {}s; its container may still run, so it is not started elsewhere until the agent answers or its pod goes",
                    (t.now - since).num_seconds()
                ),
                Fence::Unknown,
            )
            .await;
        }
        if matches!(phase, SandboxPhase::Pending) || t.sb.status.is_none() {
            write_status(
                t,
                ctx,
                &transition::bound(&status, pod, node, t.generation(), t.now),
            )
            .await?;
        }
        // The follower triggers a reconcile as soon as the agent answers.
        return Ok(Some(since + grace));
    }

    match info {
        Some(info) if info.reset_revision == want_rev => {
            observe(t, ctx, &agent, &info).await?;
            Ok(None)
        }
        Some(_) if phase == SandboxPhase::Lost && !auto_lost => Ok(None),
        Some(_) => {
            // A new resetRevision: remove the old container, then start anew.
            delete_on_agent(t, &agent).await?;
            create(t, ctx, &agent, pod, want_rev).await
        }
        // Manual: a lost sandbox is never started again.
        None if phase == SandboxPhase::Lost && !auto_lost => Ok(None),
        // AutoRecreate, the agent answers and holds no container: the old
        // one is known gone, so it starts again (creates are idempotent by
        // UID at the agent).
        None if auto_lost && !synced => Ok(None),
        None if synced
            && phase == SandboxPhase::Running
            && status.observed_reset_revision == Some(want_rev) =>
        {
            lost(
                t,
                ctx,
                pod,
                "the container no longer exists on its agent",
                Fence::ContainerGone,
            )
            .await
        }
        None => create(t, ctx, &agent, pod, want_rev).await,
    }
}

/// Mirrors the agent's report into the status.
async fn observe(
    t: &Target<'_>,
    ctx: &Context,
    agent: &Agent,
    info: &SandboxInfo,
) -> Result<(), Error> {
    let before = t.phase();
    let st = transition::from_info(
        &t.status(),
        info,
        &agent.name,
        &agent.node,
        t.generation(),
        t.now,
    );
    if write_status(t, ctx, &st).await? {
        announce(t, ctx, before, &st);
    }
    Ok(())
}

/// Events and latency metrics for a phase change.
fn announce(t: &Target<'_>, ctx: &Context, before: SandboxPhase, st: &SandboxStatus) {
    let Some(after) = st.phase else { return };
    if after == before {
        return;
    }
    match after {
        SandboxPhase::Running => {
            if let Some(at) = t.bound_at() {
                let secs = (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
                ctx.metrics.create_to_running.observe(secs.max(0.0));
            }
            let note = format!(
                "started container {} on {}",
                st.container_id.as_deref().unwrap_or(""),
                st.node_name.as_deref().unwrap_or("")
            );
            ctx.publish(
                t.sb,
                event(EventType::Normal, reason::STARTED, "Start", note),
            );
        }
        SandboxPhase::Succeeded | SandboxPhase::Failed => {
            let why = st.reason.clone().unwrap_or_default();
            let type_ = if after == SandboxPhase::Succeeded {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let note = st.message.clone().unwrap_or_default();
            ctx.publish(t.sb, event(type_, &why, "Finish", note));
        }
        _ => {}
    }
}

/// Asks the agent to create the sandbox (idempotent by UID).
async fn create(
    t: &Target<'_>,
    ctx: &Context,
    agent: &Agent,
    pod: &str,
    reset_revision: i64,
) -> Result<Option<DateTime<Utc>>, Error> {
    let spec = &t.sb.spec;
    let limits = match limits_of(spec) {
        Ok(l) => l,
        Err(e) => {
            let st = transition::failed(
                &t.status(),
                reason::INVALID_SPEC,
                &e.to_string(),
                t.generation(),
                t.now,
            );
            write_status(t, ctx, &st).await?;
            return Ok(None);
        }
    };
    let req = CreateSandboxRequest {
        uid: t.uid.clone(),
        name: t.name.clone(),
        namespace: t.ns.clone(),
        pool: spec.pool_ref.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        working_dir: spec.working_dir.clone(),
        limits,
        exposed_ports: spec.exposed_ports.clone(),
        network: spec.network.clone(),
        reset_revision,
        first_placement: spec.agent_ref.as_ref().is_some_and(|r| r.at_admission),
    };
    if matches!(t.phase(), SandboxPhase::Pending | SandboxPhase::Bound)
        && let Some(at) = t.bound_at()
    {
        let secs = (t.now - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        ctx.metrics.watch_delay.observe(secs.max(0.0));
    }
    let started = std::time::Instant::now();
    let mut result = agent.client.create(&req).await;
    ctx.metrics
        .agent_create
        .observe(started.elapsed().as_secs_f64());
    if result.as_ref().err().and_then(|e| e.code()) == Some(ErrorCode::ContainerExists) {
        // The container id is held by a container another agent of the node
        // created: if that agent is gone, the janitor collects it and the
        // create is tried once more. Otherwise (its agent lives and still
        // holds it, or no janitor runs here) the create is retried with
        // backoff until the id is free.
        match ctx.janitor.sweep(&agent.node).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(sandbox = %t.name, namespace = %t.ns, agent = %pod, removed = n, "create conflicted; node swept, retrying");
                result = agent.client.create(&req).await;
            }
            Err(e) => {
                return Err(Error::Janitor {
                    node: agent.node.clone(),
                    source: e,
                });
            }
        }
    }
    match result {
        Ok(info) => {
            ctx.index.record_acceptance(pod);
            agent.record_created(info.clone());
            observe(t, ctx, agent, &info).await?;
            Ok(None)
        }
        Err(e) => match e.code() {
            Some(ErrorCode::CapacityExceeded) => {
                let until = ctx.index.record_refusal(pod, std::time::Instant::now());
                tracing::info!(sandbox = %t.name, namespace = %t.ns, agent = %pod, skipped_for = ?until.map(|u| u.saturating_duration_since(std::time::Instant::now())), "agent full; re-placing");
                replace(t, ctx, pod, reason::CAPACITY_EXCEEDED).await?;
                Ok(None)
            }
            Some(
                code @ (ErrorCode::ImageNotPresent
                | ErrorCode::StartFailed
                | ErrorCode::RuntimeUnavailable
                | ErrorCode::EgressUnavailable
                | ErrorCode::InvalidArgument
                | ErrorCode::Conflict),
            ) => {
                let why = match code {
                    ErrorCode::ImageNotPresent => reason::IMAGE_NOT_PRESENT,
                    ErrorCode::StartFailed => reason::START_ERROR,
                    ErrorCode::RuntimeUnavailable => reason::RUNTIME_UNAVAILABLE,
                    ErrorCode::EgressUnavailable => reason::EGRESS_UNAVAILABLE,
                    _ => reason::INVALID_SPEC,
                };
                let st =
                    transition::failed(&t.status(), why, &e.to_string(), t.generation(), t.now);
                if write_status(t, ctx, &st).await? {
                    ctx.publish(
                        t.sb,
                        event(EventType::Warning, why, "Create", e.to_string()),
                    );
                }
                Ok(None)
            }
            _ => {
                // Retried with backoff; meanwhile the status says why.
                let message = format!("agent {pod}: {e}");
                let mut st =
                    transition::bound(&t.status(), pod, &agent.node, t.generation(), t.now);
                if st.phase == Some(SandboxPhase::Bound) {
                    st.message = Some(message.clone());
                    transition::set_condition(
                        &mut st.conditions,
                        condition::READY,
                        false,
                        reason::CREATING,
                        &message,
                        t.generation(),
                        t.now,
                    );
                    if let Err(w) = write_status(t, ctx, &st).await {
                        tracing::debug!(error = %w, "cannot record the create failure");
                    }
                }
                Err(Error::Agent {
                    agent: pod.to_string(),
                    source: e,
                })
            }
        },
    }
}

/// What is known of a lost sandbox's old container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fence {
    /// Its agent pod object is gone: the kubelet deletes it only after
    /// reclaiming the pod's cgroup, sandboxes included.
    AgentGone,
    /// The agent reported it absent.
    ContainerGone,
    /// It may still run (the agent is unreachable: a partition, a crash
    /// loop; or its pod is terminating, which on a partitioned node may
    /// never finish).
    Unknown,
}

/// Marks the sandbox Lost; with `AutoRecreate`, re-places it, but only once
/// the old container is known gone, so no sandbox ever runs twice.
async fn lost(
    t: &Target<'_>,
    ctx: &Context,
    pod: &str,
    message: &str,
    fence: Fence,
) -> Result<Option<DateTime<Utc>>, Error> {
    // Already Lost: keep the first account of why.
    let st = if t.phase() == SandboxPhase::Lost {
        t.status()
    } else {
        transition::lost(&t.status(), message, t.generation(), t.now)
    };
    if write_status(t, ctx, &st).await? {
        tracing::warn!(sandbox = %t.name, namespace = %t.ns, agent = %pod, message, "sandbox lost");
        ctx.publish(
            t.sb,
            event(EventType::Warning, reason::AGENT_LOST, "Lose", message),
        );
    }
    if t.sb.spec.failure_policy == FailurePolicy::AutoRecreate && fence != Fence::Unknown {
        replace(t, ctx, pod, reason::AGENT_LOST).await?;
    }
    Ok(None)
}

/// Re-placement: clears the binding (the CRD allows only clearing), then
/// binds to another agent chosen by the placement index if one has room;
/// otherwise the sandbox waits unbound and the pool grows.
async fn replace(
    t: &Target<'_>,
    ctx: &Context,
    old_pod: &str,
    why: &'static str,
) -> Result<(), Error> {
    let mut ops = vec![
        PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "uid"]),
            value: json!(t.uid),
        }),
        PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["spec", "agentRef"]),
        }),
    ];
    if t.sb.labels().contains_key(LABEL_AGENT) {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["metadata", "labels", LABEL_AGENT]),
        }));
    }
    for a in [ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION] {
        if t.sb.annotations().contains_key(a) {
            ops.push(PatchOperation::Remove(RemoveOperation {
                path: PointerBuf::from_tokens(["metadata", "annotations", a]),
            }));
        }
    }
    let cleared = t
        .api
        .patch(
            &t.name,
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch::Patch(ops)),
        )
        .await?;
    ctx.metrics
        .replacements
        .get_or_create(&vec![("reason", why.to_string())])
        .inc();
    ctx.publish(
        t.sb,
        event(
            EventType::Normal,
            why,
            "Replace",
            format!("unbound from agent {old_pod} to re-place"),
        ),
    );
    let pool_key = pool_key(&t.ns, &t.sb.spec.pool_ref);
    match ctx
        .index
        .reserve_avoiding(&pool_key, &t.sb.spec.image, &t.uid, old_pod)
    {
        Ok(choice) => {
            let t2 = Target {
                sb: &cleared,
                api: t.api.clone(),
                ns: t.ns.clone(),
                name: t.name.clone(),
                uid: t.uid.clone(),
                now: Utc::now(),
                written: t.written.clone(),
            };
            bind(&t2, ctx, &choice).await
        }
        Err(_) => {
            let t2 = Target {
                sb: &cleared,
                api: t.api.clone(),
                ns: t.ns.clone(),
                name: t.name.clone(),
                uid: t.uid.clone(),
                now: Utc::now(),
                written: t.written.clone(),
            };
            wait_for_capacity(&t2, ctx).await
        }
    }
}

async fn add_finalizer(t: &Target<'_>) -> Result<(), Error> {
    let patch = match &t.sb.metadata.finalizers {
        None => json!([{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]),
        Some(_) => json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    t.api
        .patch(&t.name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(())
}

async fn delete_on_agent(t: &Target<'_>, agent: &Agent) -> Result<(), Error> {
    match agent.client.delete(&t.uid, t.sb.termination_grace()).await {
        Ok(_) => {
            agent.record_deleted(&t.uid);
            Ok(())
        }
        Err(e) => Err(Error::Agent {
            agent: agent.name.clone(),
            source: e,
        }),
    }
}

/// Deletion: stop and delete the container on the agent, then drop the
/// finalizer. An agent that is gone (or unreachable past the grace period)
/// has nothing left to delete that the node's janitor would not collect.
async fn finalize(t: &Target<'_>, ctx: &Context) -> Result<Action, Error> {
    let finalizers = t.sb.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    if let Some(r) = &t.sb.spec.agent_ref
        && let Some(agent) = ctx.agents.get(&r.pod_name)
    {
        if t.phase() != SandboxPhase::Terminating {
            write_status(
                t,
                ctx,
                &transition::terminating(&t.status(), t.generation(), t.now),
            )
            .await?;
        }
        if let Err(e) = delete_on_agent(t, &agent).await {
            let since = agent.view().unreachable_since;
            let grace =
                chrono::Duration::from_std(ctx.settings.agent_lost_grace).unwrap_or_default();
            let given_up = since.is_some_and(|s| t.now - s >= grace);
            if !given_up {
                return Err(e);
            }
            tracing::warn!(sandbox = %t.name, namespace = %t.ns, error = %e, "agent unreachable; releasing the sandbox without deleting its container");
        }
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    let patch = json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers"]),
            value: json!(finalizers),
        }),
        PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers"]),
            value: json!(kept),
        }),
    ]);
    match t
        .api
        .patch(&t.name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    ctx.index.release(&t.uid);
    Ok(Action::await_change())
}
