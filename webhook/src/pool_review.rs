//! Admission of SandboxPools: a pool's `agentTemplate` is a request the
//! operator's policy filters (no other image, no command, volumes, host
//! namespaces, security context, extra containers, service account or node
//! name), its size and pre-started sandboxes must fit its namespace's
//! caps, its name must fit a
//! label (agent pods carry it), and only the controller removes the
//! finalizer that lets it remove the pool's agents.

use fast_sandbox_api::policy::{check_agent_template, check_caps};
use fast_sandbox_api::validation::{FieldErrors, validate_pool_spec};
use fast_sandbox_api::wellknown::POOL_FINALIZER;
use fast_sandbox_api::{SandboxPool, SandboxPoolSpec};
use kube::ResourceExt;
use kube::core::admission::Operation;
use serde_json::Value;

use crate::review::{Request, Response, Reviewer, Verdict, allowed, denied, typed};

/// Longest pool name: agent pods carry it as a label value.
pub const MAX_POOL_NAME: usize = 63;

impl Reviewer {
    /// Reviews a SandboxPool CREATE or UPDATE.
    pub(crate) async fn review_pool(&self, req: &Request) -> Verdict {
        let uid = req.uid.as_str();
        if req.sub_resource.is_some() || self.is_controller(req) {
            return allowed(uid);
        }
        let new = match typed::<SandboxPool>(req, req.object.as_ref(), "object") {
            Ok(Some(p)) => p,
            Ok(None) => {
                return denied(Response::deny(
                    uid,
                    400,
                    "BadRequest",
                    "no object in the review".into(),
                ));
            }
            Err(v) => return *v,
        };
        if req.operation == Operation::Update {
            let old = typed::<SandboxPool>(req, req.old_object.as_ref(), "oldObject")
                .ok()
                .flatten();
            let had = old
                .as_ref()
                .is_some_and(|o| o.finalizers().iter().any(|f| f == POOL_FINALIZER));
            if had && !new.finalizers().iter().any(|f| f == POOL_FINALIZER) {
                return denied(Response::deny(
                    uid,
                    403,
                    "Forbidden",
                    format!(
                        "metadata.finalizers: {POOL_FINALIZER} is removed by the controller ({}) once the pool's agent pods are gone; delete the pool instead",
                        self.controller_username
                    ),
                ));
            }
            if new.metadata.deletion_timestamp.is_some() {
                // A pool being deleted may still change (its finalizers).
                return allowed(uid);
            }
        }
        let name = new.name_any();
        if req.operation == Operation::Create && name.len() > MAX_POOL_NAME {
            return denied(Response::deny(
                uid,
                422,
                "Invalid",
                format!(
                    "metadata.name: must be no more than {MAX_POOL_NAME} characters (agent pods carry it as a label)"
                ),
            ));
        }
        let mut errs = FieldErrors::default();
        if let Err(e) = validate_pool_spec(&new.spec) {
            errs.0.extend(e.0);
        }
        let raw = req
            .object
            .as_ref()
            .map(|o| o.data["spec"]["agentTemplate"].clone())
            .unwrap_or(Value::Null);
        let policy = self.policy.get();
        if let Err(e) = check_agent_template(&raw, &policy) {
            errs.0.extend(e.0);
        }
        let namespace = req
            .namespace
            .clone()
            .or_else(|| new.namespace())
            .unwrap_or_default();
        let others = match &self.pools {
            Some(lookup) => match lookup.in_namespace(&namespace).await {
                Ok(pools) => pools,
                Err(e) => {
                    // Our own lookup failing must not block operators; the
                    // controller still stops growth at the cap.
                    tracing::warn!(namespace, error = %e, "listing pools failed; checking this pool alone against the caps");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let others: Vec<&SandboxPoolSpec> = others
            .iter()
            .filter(|p| p.name_any() != name && p.metadata.deletion_timestamp.is_none())
            .map(|p| &p.spec)
            .collect();
        if let Err(e) = check_caps(&new.spec, &others, &policy.caps(&namespace), &namespace) {
            errs.0.extend(e.0);
        }
        if errs.0.is_empty() {
            allowed(uid)
        } else {
            denied(Response::deny(uid, 422, "Invalid", errs.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fast_sandbox_api::policy::Policy;
    use fast_sandbox_k8s::policy::SharedPolicy;
    use fast_sandbox_placement::Index;
    use futures::future::BoxFuture;
    use serde_json::{Value, json};

    use crate::review::test_support::*;
    use crate::review::{PoolLookup, Reviewer};

    fn pool(name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "sandbox.fast.io/v1alpha1",
            "kind": "SandboxPool",
            "metadata": {"name": name, "namespace": "team"},
            "spec": spec
        })
    }

    struct Others(Vec<Value>);
    impl PoolLookup for Others {
        fn get<'a>(
            &'a self,
            _: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<fast_sandbox_api::SandboxPool>, String>> {
            let pool = fast_sandbox_api::SandboxPool::new(name, Default::default());
            Box::pin(async move { Ok(Some(pool)) })
        }
        fn in_namespace<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<fast_sandbox_api::SandboxPool>, String>> {
            let pools = self
                .0
                .iter()
                .map(|v| serde_json::from_value(v.clone()).unwrap())
                .collect();
            Box::pin(async move { Ok(pools) })
        }
    }

    fn reviewer(others: Vec<Value>) -> Reviewer {
        let policy =
            Policy::parse("namespaceDefaults: {maxAgents: 4, maxSlots: 64, maxPrestarted: 2}")
                .unwrap();
        Reviewer::new(Arc::new(Index::new()), CONTROLLER)
            .with_policy(SharedPolicy::fixed(policy))
            .with_pool_lookup(Arc::new(Others(others)))
    }

    async fn message(r: &Reviewer, op: &str, user: &str, new: Value, old: Value) -> Option<String> {
        let v = run(r, review_of("SandboxPool", op, user, new, old, false)).await;
        v.response.message().map(str::to_string)
    }

    #[tokio::test]
    async fn the_original_manifest_is_admitted() {
        let spec = json!({"capacity": {"poolMin": 1, "poolMax": 4},
            "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}}});
        let r = reviewer(vec![]);
        assert_eq!(
            message(
                &r,
                "CREATE",
                "alice",
                pool("default-pool", spec),
                Value::Null
            )
            .await,
            None
        );
    }

    #[tokio::test]
    async fn a_privileged_custom_agent_is_refused_naming_each_field() {
        let spec = json!({"agentTemplate": {"spec": {
            "hostPID": true,
            "containers": [{"name": "agent", "image": "evil/root:1", "command": ["/bin/sh"],
                            "securityContext": {"privileged": true}}]}}});
        let r = reviewer(vec![]);
        let msg = message(&r, "CREATE", "alice", pool("p", spec), Value::Null)
            .await
            .unwrap();
        for field in [
            "spec.agentTemplate.spec.hostPID",
            "spec.agentTemplate.spec.containers[0].image",
            "spec.agentTemplate.spec.containers[0].command",
            "spec.agentTemplate.spec.containers[0].securityContext",
        ] {
            assert!(msg.contains(field), "{field} not named in {msg}");
        }
    }

    #[tokio::test]
    async fn pools_past_the_namespace_cap_are_refused() {
        let r = reviewer(vec![pool("other", json!({"capacity": {"poolMin": 3}}))]);
        let msg = message(
            &r,
            "CREATE",
            "alice",
            pool("p", json!({"capacity": {"poolMin": 2}})),
            Value::Null,
        )
        .await
        .unwrap();
        assert!(msg.starts_with("spec.capacity.poolMin: "), "{msg}");
        let msg = message(
            &r,
            "CREATE",
            "alice",
            pool("p", json!({"capacity": {"poolMax": 1000}})),
            Value::Null,
        )
        .await
        .unwrap();
        assert!(
            msg.contains("spec.capacity.poolMax: 1000 exceeds the 4 agents"),
            "{msg}"
        );
        // The pool itself is not counted twice on UPDATE.
        let r = reviewer(vec![pool("p", json!({"capacity": {"poolMin": 4}}))]);
        let p = pool("p", json!({"capacity": {"poolMin": 4}}));
        assert_eq!(message(&r, "UPDATE", "alice", p.clone(), p).await, None);
    }

    #[tokio::test]
    async fn prestarted_past_the_namespace_cap_or_the_schema_is_refused() {
        let r = reviewer(vec![]);
        let create = |spec: Value| message(&r, "CREATE", "alice", pool("p", spec), Value::Null);
        assert_eq!(create(json!({"prestarted": 2})).await, None);
        assert_eq!(create(json!({})).await, None, "unset: within the cap");
        let msg = create(json!({"prestarted": 3})).await.unwrap();
        assert!(
            msg.starts_with("spec.prestarted: 3 exceeds the 2 pre-started"),
            "{msg}"
        );
        let msg = create(json!({"prestarted": -1})).await.unwrap();
        assert!(
            msg.starts_with("spec.prestarted: must be between 0"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn only_the_controller_removes_the_pool_finalizer() {
        let r = reviewer(vec![]);
        let mut old = pool("p", json!({}));
        old["metadata"]["finalizers"] = json!(["sandbox.fast.io/agents"]);
        let new = pool("p", json!({}));
        let msg = message(&r, "UPDATE", "alice", new.clone(), old.clone())
            .await
            .unwrap();
        assert!(
            msg.starts_with("metadata.finalizers: sandbox.fast.io/agents"),
            "{msg}"
        );
        assert_eq!(message(&r, "UPDATE", CONTROLLER, new, old).await, None);
    }

    #[tokio::test]
    async fn long_names_and_unreadable_pools_are_refused() {
        let r = reviewer(vec![]);
        let msg = message(
            &r,
            "CREATE",
            "alice",
            pool(&"p".repeat(64), json!({})),
            Value::Null,
        )
        .await
        .unwrap();
        assert!(
            msg.starts_with("metadata.name: must be no more than 63"),
            "{msg}"
        );
        let msg = message(
            &r,
            "CREATE",
            "alice",
            pool("p", json!({"capacity": {"poolMin": "lots"}})),
            Value::Null,
        )
        .await
        .unwrap();
        assert!(msg.starts_with("spec.capacity.poolMin: "), "{msg}");
    }
}
