//! The sandbox controller: turns every bound Sandbox into a container on its
//! agent and keeps the status true until the object is gone.
//!
//! Triggers: the sandbox watch, and the agent directory (an agent listed, an
//! event on its stream, an agent pod that changed or became unreachable).
//! The only timed requeues are the expiry instant, the end of an agent's
//! grace period, and error backoff.

mod finalize;
mod realise;
mod unbound;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fast_sandbox_api::agent::SandboxInfo;
use fast_sandbox_api::wellknown::{ANNOTATION_BOUND_AT, reason};
use fast_sandbox_api::{Sandbox, SandboxPhase, SandboxStatus};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;

use crate::agents::Agent;
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

    /// The same sandbox as a write returned it, as of now.
    fn after<'b>(&self, sb: &'b Sandbox) -> Target<'b> {
        Target {
            sb,
            api: self.api.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            now: Utc::now(),
            written: self.written.clone(),
        }
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
        return finalize::finalize(&t, ctx).await;
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
        None => unbound::unbound(&t, ctx).await?,
        Some(r) => realise::bound(&t, ctx, &r.pod_name.clone(), &r.node_name.clone()).await?,
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

/// Mirrors the agent's report into the status.
async fn observe(
    t: &Target<'_>,
    ctx: &Context,
    agent: &Agent,
    info: &SandboxInfo,
) -> Result<(), Error> {
    let before = t.phase();
    let mut st = transition::from_info(
        &t.status(),
        info,
        &agent.name,
        &agent.node,
        t.generation(),
        t.now,
    );
    blame_pool_deletion(t, ctx, &mut st);
    if write_status(t, ctx, &st).await? {
        announce(t, ctx, before, &st);
    }
    Ok(())
}

/// A sandbox that failed or was lost as its pool went says that its pool's
/// deletion stopped it.
fn blame_pool_deletion(t: &Target<'_>, ctx: &Context, st: &mut SandboxStatus) {
    if !matches!(st.phase, Some(SandboxPhase::Failed | SandboxPhase::Lost)) {
        return;
    }
    let pool = &t.sb.spec.pool_ref;
    let going = ctx
        .pools
        .get(&ObjectRef::new(pool).within(&t.ns))
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    if going {
        transition::stopped_by_pool_deletion(st, pool, t.generation(), t.now);
    }
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
