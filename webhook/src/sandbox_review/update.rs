//! UPDATE of a Sandbox: refuse changes to the binding (and the labels and
//! annotations that record it), to the pool, to the spec fields fixed at
//! binding and to the cleanup finalizer, except from the controller; what
//! may change must still be valid and within the operator's maximum.

use fast_sandbox_api::resources;
use fast_sandbox_api::validation::validate_sandbox_spec;
use fast_sandbox_api::wellknown::FINALIZER;
use fast_sandbox_api::{Sandbox, SandboxPhase};
use kube::ResourceExt;
use serde_json::Value;

use super::binding_metadata;
use crate::review::{Request, Response, Reviewer, Verdict, allowed, denied};

/// Spec fields a user may change after binding (`agentRef` is checked on
/// its own): recreating the container, and when and how the sandbox is
/// deleted (a session kept alive moves its `expireTime` on).
const MUTABLE_WHEN_BOUND: &[&str] = &[
    "agentRef",
    "expireTime",
    "resetRevision",
    "terminationGracePeriodSeconds",
    "ttlSecondsAfterFinished",
];

impl Reviewer {
    /// Reviews an UPDATE: guards the binding and the fixed fields.
    pub(super) fn update(
        &self,
        req: &Request,
        new: Option<&Sandbox>,
        old: Option<&Sandbox>,
    ) -> Verdict {
        let uid = req.uid.as_str();
        if req.sub_resource.is_some() || self.is_controller(req) {
            return allowed(uid);
        }
        let (Some(new), Some(old)) = (new, old) else {
            return denied(Response::deny(
                uid,
                400,
                "BadRequest",
                "UPDATE without object and oldObject".into(),
            ));
        };
        let had = old.finalizers().iter().any(|f| f == FINALIZER);
        let has = new.finalizers().iter().any(|f| f == FINALIZER);
        if had && !has {
            return denied(Response::deny(
                uid,
                403,
                "Forbidden",
                format!(
                    "metadata.finalizers: {FINALIZER} is removed by the controller ({}) once the sandbox's container is gone; delete the sandbox instead",
                    self.controller_username
                ),
            ));
        }
        let was: Vec<_> = binding_metadata(old).collect();
        let is: Vec<_> = binding_metadata(new).collect();
        if let Some((field, _)) = was
            .iter()
            .filter(|f| !is.contains(f))
            .chain(is.iter().filter(|f| !was.contains(f)))
            .next()
        {
            return denied(Response::deny(
                uid,
                403,
                "Forbidden",
                format!(
                    "{field}: records the binding; only the controller ({}) may change it",
                    self.controller_username
                ),
            ));
        }
        if new.spec.pool_ref != old.spec.pool_ref {
            return denied(Response::deny(
                uid,
                403,
                "Forbidden",
                "spec.poolRef: cannot change once the sandbox exists; create a sandbox in the other pool instead".into(),
            ));
        }
        if new.spec.agent_ref != old.spec.agent_ref {
            return denied(Response::deny(
                uid,
                403,
                "Forbidden",
                format!(
                    "spec.agentRef: is set once at binding; only the controller ({}) may change it",
                    self.controller_username
                ),
            ));
        }
        let finished = old
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(SandboxPhase::is_finished);
        if (old.spec.agent_ref.is_some() || finished)
            && let Some(field) = changed_fixed_field(old, new)
        {
            return denied(Response::deny(
                uid,
                403,
                "Forbidden",
                format!(
                    "spec.{field}: cannot change once the sandbox is bound to an agent; only spec.resetRevision (bump it to recreate the container), spec.expireTime, spec.ttlSecondsAfterFinished and spec.terminationGracePeriodSeconds may change"
                ),
            ));
        }
        if let Err(errs) = validate_sandbox_spec(&new.spec) {
            return denied(Response::deny(uid, 422, "Invalid", errs.to_string()));
        }
        if new.spec.resources != old.spec.resources {
            let namespace = req.namespace.as_deref().unwrap_or_default();
            let max = self.policy.get().caps(namespace).max_sandbox;
            match resources::effective(
                new.spec.resources.as_ref(),
                None,
                &max,
                namespace,
                "spec.resources.",
            ) {
                Err(errs) => return denied(Response::deny(uid, 422, "Invalid", errs.to_string())),
                // Dropping a limit the maximum requires would run the
                // sandbox unlimited once bound.
                Ok(full) if full != new.spec.resources => {
                    return denied(Response::deny(
                        uid,
                        422,
                        "Invalid",
                        format!(
                            "spec.resources: every limit the operator bounds in namespace {namespace} must stay set (at most {})",
                            serde_json::to_string(&max).unwrap_or_default()
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        allowed(uid)
    }
}

/// The first spec field, in name order, that differs and may not change
/// after binding.
fn changed_fixed_field(old: &Sandbox, new: &Sandbox) -> Option<String> {
    let (Ok(Value::Object(o)), Ok(Value::Object(n))) = (
        serde_json::to_value(&old.spec),
        serde_json::to_value(&new.spec),
    ) else {
        return None;
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !MUTABLE_WHEN_BOUND.contains(&k.as_str()))
        .find(|k| o.get(*k) != n.get(*k))
        .cloned()
}
