//! Carrying out a pool's scale plan: creating agent pods from the pool's
//! template, marking and unmarking them draining, and deleting them.

use chrono::{SecondsFormat, Utc};
use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::wellknown::{ANNOTATION_DRAINING, reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::removal::{delete_pod, retire_stock};
use crate::agent_pod;
use crate::context::Context;
use crate::error::Error;
use crate::scale::ScalePlan;

/// Carries out `plan` for `pool`, recording each create and delete as
/// expected so the next reconcile counts pods its cache has not seen yet.
pub(super) async fn execute(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
