//! A sandbox without an agent: placed on one with a free slot, or waiting,
//! visibly, while its pool grows; and re-placed when its agent is lost.

use chrono::{DateTime, Utc};
use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::wellknown::{
    ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION, LABEL_AGENT, reason,
};
use fast_sandbox_placement::{Choice, pool_key};
use fast_sandbox_webhook::binding::{self, Binding};
use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, RemoveOperation, TestOperation};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::{Target, event, write_status};
use crate::agents::{pod_ready, pod_unschedulable};
use crate::context::Context;
use crate::error::Error;
use crate::transition;

/// No agent: place it now if a slot is free, else report why and make the
/// pool grow.
pub(super) async fn unbound(t: &Target<'_>, ctx: &Context) -> Result<Option<DateTime<Utc>>, Error> {
    let pool = &t.sb.spec.pool_ref;
    let Some(pool_obj) = ctx.pools.get(&ObjectRef::new(pool).within(&t.ns)) else {
        let st = transition::unbound(
            &t.status(),
            reason::POOL_NOT_FOUND,
            &format!("SandboxPool {pool} does not exist in namespace {}", t.ns),
            t.generation(),
            t.now,
        );
        write_status(t, ctx, &st).await?;
        return Ok(None);
    };
    let pool_key = pool_key(&t.ns, pool);
    match ctx.index.reserve(&pool_key, &t.sb.spec.image, &t.uid) {
        Ok(choice) => {
            bind(t, ctx, &choice).await?;
            Ok(None)
        }
        Err(_) => {
            wait_for_capacity(t, ctx, Some(&pool_obj)).await?;
            Ok(None)
        }
    }
}

/// No slot anywhere: the sandbox waits, visibly (Pending, Scheduled=False,
/// NoCapacity), and the pool grows. It is placed as soon as a slot frees.
async fn wait_for_capacity(
    t: &Target<'_>,
    ctx: &Context,
    pool_obj: Option<&SandboxPool>,
) -> Result<(), Error> {
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
    let at_max = pool_obj.and_then(|p| {
        let max = p.spec.capacity.effective().pool_max;
        let pods = ctx.pods.state();
        let owned: Vec<_> = pods
            .iter()
            .filter(|pod| crate::pool_controller::owned_by(pod, p))
            .collect();
        let starting = owned.iter().filter(|pod| !pod_ready(pod)).count();
        let stuck = owned.iter().filter(|pod| pod_unschedulable(pod)).count();
        (owned.len() as u32 >= max).then_some((max, starting, stuck))
    });
    let waiting = match at_max {
        Some((max, _, stuck)) if stuck > 0 => format!(
            "the pool is at its poolMax ({max} agents) and no node can take {stuck} of them (the pool's Ready condition says more): waiting for them to be scheduled or a slot to free"
        ),
        Some((max, starting, _)) if starting > 0 => format!(
            "the pool is at its poolMax ({max} agents), {starting} of them starting: waiting for one to be ready or a slot to free"
        ),
        Some((max, _, _)) => {
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

/// Re-placement: clears the binding (the CRD allows only clearing), then
/// binds to another agent chosen by the placement index if one has room;
/// otherwise the sandbox waits unbound and the pool grows.
pub(super) async fn replace(
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
    let t = t.after(&cleared);
    match ctx
        .index
        .reserve_avoiding(&pool_key, &t.sb.spec.image, &t.uid, old_pod)
    {
        Ok(choice) => bind(&t, ctx, &choice).await,
        Err(_) => {
            let pool = ctx
                .pools
                .get(&ObjectRef::new(&t.sb.spec.pool_ref).within(&t.ns));
            wait_for_capacity(&t, ctx, pool.as_deref()).await
        }
    }
}
