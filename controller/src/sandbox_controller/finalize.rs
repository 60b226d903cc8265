//! A deleted sandbox: its container removed on its agent, then the
//! finalizer dropped.

use fast_sandbox_api::SandboxPhase;
use fast_sandbox_api::wellknown::FINALIZER;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::{Target, write_status};
use crate::agents::Agent;
use crate::context::Context;
use crate::error::Error;
use crate::transition;

/// Adds the finalizer that keeps the object until its container is gone.
pub(super) async fn add_finalizer(t: &Target<'_>) -> Result<(), Error> {
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

/// Stops and removes the sandbox's container on `agent`.
pub(super) async fn delete_on_agent(t: &Target<'_>, agent: &Agent) -> Result<(), Error> {
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
pub(super) async fn finalize(t: &Target<'_>, ctx: &Context) -> Result<Action, Error> {
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
    crate::finalizer::remove(&t.api, &t.name, &finalizers, FINALIZER).await?;
    ctx.index.release(&t.uid);
    Ok(Action::await_change())
}
