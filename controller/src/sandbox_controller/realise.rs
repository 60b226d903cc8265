//! A bound sandbox: its agent made to run it, and its loss handled so that
//! no sandbox ever runs twice.

use chrono::{DateTime, Utc};
use fast_sandbox_api::agent::{CreateSandboxRequest, ErrorCode};
use fast_sandbox_api::validation::limits_of;
use fast_sandbox_api::wellknown::{FINALIZER, condition, reason};
use fast_sandbox_api::{FailurePolicy, SandboxPhase};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::finalize::{add_finalizer, delete_on_agent};
use super::unbound::replace;
use super::{Target, blame_pool_deletion, event, observe, write_status};
use crate::agents::{Agent, pod_gone};
use crate::context::Context;
use crate::error::Error;
use crate::transition;

/// Bound to `pod`: make the agent run it and mirror its state.
pub(super) async fn bound(
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
            let gone = format!("agent pod {pod} does not exist");
            return wait_or_lost(
                t,
                ctx,
                (pod, node),
                (since, grace),
                (&gone, Fence::AgentGone),
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
            let silent = format!("agent pod {pod} has no running agent");
            return wait_or_lost(
                t,
                ctx,
                (pod, node),
                (since, grace),
                (&silent, Fence::Unknown),
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

/// An agent not (yet) seen since `since`: within the grace period the
/// sandbox waits, Bound, until its end; past it, the sandbox is lost with
/// `why` (the message and what is known of its container).
async fn wait_or_lost(
    t: &Target<'_>,
    ctx: &Context,
    (pod, node): (&str, &str),
    (since, grace): (DateTime<Utc>, chrono::Duration),
    (message, fence): (&str, Fence),
) -> Result<Option<DateTime<Utc>>, Error> {
    if t.now - since < grace {
        let st = transition::bound(&t.status(), pod, node, t.generation(), t.now);
        write_status(t, ctx, &st).await?;
        return Ok(Some(since + grace));
    }
    lost(t, ctx, pod, message, fence).await
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
    let mut st = if t.phase() == SandboxPhase::Lost {
        t.status()
    } else {
        transition::lost(&t.status(), message, t.generation(), t.now)
    };
    blame_pool_deletion(t, ctx, &mut st);
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
