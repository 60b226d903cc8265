//! Admission of Sandboxes.
//!
//! CREATE: validate what the CRD schema cannot, then bind the sandbox to an
//! agent from the placement index with a JSON patch. UPDATE: refuse changes
//! to the binding (and the labels and annotations that record it, which the
//! placement index trusts), to the pool, to the spec fields fixed at binding
//! and to the cleanup finalizer, except from the controller. Dry-run requests get the same
//! answer and reserve nothing; so do reviews from a caller not known to be
//! the apiserver.

use chrono::Utc;
use fast_sandbox_api::resources;
use fast_sandbox_api::validation::validate_sandbox_spec;
use fast_sandbox_api::wellknown::{
    ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION, FINALIZER, LABEL_AGENT, LABEL_POOL,
};
use fast_sandbox_api::{Sandbox, SandboxNetwork, SandboxPhase};
use fast_sandbox_placement::pool_key;
use kube::ResourceExt;
use kube::core::admission::Operation;
use serde_json::Value;

use crate::binding::{self, Binding};
use crate::metrics::{Outcome, Placement};
use crate::pool_defaults::Defaults;
use crate::review::{Caller, Request, Response, Reviewer, Verdict, allowed, denied, typed};

/// Labels that record the binding, written at admission and by the
/// controller only: the placement index and `-l` selections trust them.
const BINDING_LABELS: &[&str] = &[LABEL_AGENT, LABEL_POOL];
/// Annotations that record the binding (when, and which slot reservation),
/// written at admission and by the controller only.
const BINDING_ANNOTATIONS: &[&str] = &[ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION];

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
    /// Reviews a Sandbox CREATE or UPDATE.
    pub(crate) async fn review_sandbox(&self, req: &Request, caller: Caller) -> Verdict {
        let new = match typed::<Sandbox>(req, req.object.as_ref(), "object") {
            Ok(n) => n,
            // The controller finalizes objects it cannot read; anyone else
            // gets the field named.
            Err(_) if self.is_controller(req) => return allowed(&req.uid),
            Err(v) => return *v,
        };
        match req.operation {
            Operation::Create => self.create(req, new.as_ref(), caller).await,
            _ => {
                let old = typed::<Sandbox>(req, req.old_object.as_ref(), "oldObject")
                    .ok()
                    .flatten();
                self.update(req, new.as_ref(), old.as_ref())
            }
        }
    }

    async fn create(&self, req: &Request, sandbox: Option<&Sandbox>, caller: Caller) -> Verdict {
        let uid = req.uid.as_str();
        let Some(sandbox) = sandbox else {
            return denied(Response::deny(
                uid,
                400,
                "BadRequest",
                "CREATE without an object".into(),
            ));
        };
        let spec = &sandbox.spec;
        if spec.agent_ref.is_some() {
            if self.is_controller(req) {
                return allowed(uid);
            }
            return denied(Response::deny(
                uid,
                422,
                "Invalid",
                "spec.agentRef: is written by the scheduler at admission; leave it unset".into(),
            ));
        }
        // The pool label is written from spec.poolRef whatever was sent.
        let pool_label = format!("metadata.labels[{LABEL_POOL}]");
        if let Some((field, _)) = binding_metadata(sandbox)
            .find(|(field, _)| *field != pool_label && !self.is_controller(req))
        {
            return denied(Response::deny(
                uid,
                422,
                "Invalid",
                format!("{field}: is written at admission; leave it unset"),
            ));
        }
        if let Err(errs) = validate_sandbox_spec(spec) {
            return denied(Response::deny(uid, 422, "Invalid", errs.to_string()));
        }
        let namespace = req
            .namespace
            .as_deref()
            .or(sandbox.metadata.namespace.as_deref())
            .unwrap_or_default();
        let key = pool_key(namespace, &spec.pool_ref);
        let defaults = match self.pool_defaults(namespace, &spec.pool_ref, &key).await {
            Ok(d) => d,
            Err(message) => return denied(Response::deny(uid, 422, "Invalid", message)),
        };
        let caps = self.policy.get().caps(namespace);
        let network = match effective_network(spec, defaults.network, caps.allow_egress, namespace)
        {
            Ok(n) => n,
            Err(message) => return denied(Response::deny(uid, 422, "Invalid", message)),
        };
        let max = caps.max_sandbox;
        let resources = match resources::effective(
            spec.resources.as_ref(),
            defaults.resources.as_ref(),
            &max,
            namespace,
            "spec.resources.",
        ) {
            Ok(r) if r != spec.resources => r,
            Ok(_) => None,
            Err(errs) => return denied(Response::deny(uid, 422, "Invalid", errs.to_string())),
        };

        let choice = if req.dry_run || !caller.authenticated {
            self.index.choose(&key, &spec.image)
        } else {
            // The reservation is keyed by the request UID: a new object has
            // no UID yet. The watch re-keys it once the object is stored.
            self.index.reserve(&key, &spec.image, uid).ok()
        };
        self.metrics.observe_placement(match &choice {
            Some(c) if c.image_hit => Placement::Hit,
            Some(_) => Placement::Miss,
            None => Placement::NoCapacity,
        });
        let mut warnings = Vec::new();
        if choice.is_none() {
            warnings.push(format!(
                "no ready agent of pool {} has a free slot; the sandbox stays Pending until the pool grows",
                spec.pool_ref
            ));
        }
        let outcome = if choice.is_some() {
            Outcome::Bound
        } else {
            Outcome::Unbound
        };
        let b = Binding {
            pool: spec.pool_ref.clone(),
            choice,
            bound_at: Utc::now(),
            reservation: uid.to_string(),
            resources,
            network,
            at_admission: true,
        };
        let mut response = Response::allow(uid).with_patch(&binding::patch(&sandbox.metadata, &b));
        response.warnings = warnings;
        Verdict { response, outcome }
    }

    /// The pool's `sandboxDefaults`, or `Err(message)` when the pool does
    /// not exist. A pool the watch has not seen yet (applied together with
    /// its first sandbox) is looked up.
    async fn pool_defaults(
        &self,
        namespace: &str,
        pool: &str,
        key: &str,
    ) -> Result<Defaults, String> {
        if self.index.has_pool(key) {
            return Ok(self.pool_defaults.get(key).unwrap_or_default());
        }
        let message =
            format!("spec.poolRef: SandboxPool {pool:?} does not exist in namespace {namespace:?}");
        let Some(lookup) = &self.pools else {
            return Err(message);
        };
        match lookup.get(namespace, pool).await {
            Ok(Some(p)) => Ok(Defaults::of(&p).unwrap_or_default()),
            Ok(None) => Err(message),
            Err(e) => {
                // Our own lookup failing must not block users; the
                // controller reports PoolNotFound if the pool is missing.
                tracing::warn!(namespace, pool, error = %e, "pool lookup failed; admitting without its sandbox defaults");
                Ok(Defaults::default())
            }
        }
    }

    fn update(&self, req: &Request, new: Option<&Sandbox>, old: Option<&Sandbox>) -> Verdict {
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

/// The network a new sandbox runs with: its own, else its pool's
/// `defaultNetwork` (returned to be written into its spec; `None` when the
/// spec stays as sent). Egress is refused, naming the field, in a
/// namespace the operator's policy does not allow it.
fn effective_network(
    spec: &fast_sandbox_api::SandboxSpec,
    pool_default: Option<SandboxNetwork>,
    allow_egress: bool,
    namespace: &str,
) -> Result<Option<SandboxNetwork>, String> {
    let (effective, field, written) = match &spec.network {
        Some(n) => (Some(n.clone()), "spec.network.mode", None),
        None => (
            pool_default.clone(),
            "spec.network.mode (from the pool's defaultNetwork)",
            pool_default,
        ),
    };
    if effective.as_ref().is_some_and(SandboxNetwork::has_egress) && !allow_egress {
        return Err(format!(
            "{field}: Egress is not allowed in namespace {namespace} by the operator's policy (allowEgress); use None"
        ));
    }
    Ok(written)
}

/// The binding's labels and annotations `sandbox` carries, as
/// (field path, value).
fn binding_metadata(sandbox: &Sandbox) -> impl Iterator<Item = (String, &str)> {
    let labels = BINDING_LABELS.iter().filter_map(|k| {
        let v = sandbox.labels().get(*k)?;
        Some((format!("metadata.labels[{k}]"), v.as_str()))
    });
    let annotations = BINDING_ANNOTATIONS.iter().filter_map(|k| {
        let v = sandbox.annotations().get(*k)?;
        Some((format!("metadata.annotations[{k}]"), v.as_str()))
    });
    labels.chain(annotations)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::pool_defaults::PoolDefaults;
    use crate::review::PoolLookup;
    use crate::review::test_support::*;
    use fast_sandbox_api::SandboxPool;
    use fast_sandbox_api::policy::Policy;
    use fast_sandbox_k8s::policy::SharedPolicy;
    use fast_sandbox_placement::{AgentState, Index};
    use futures::future::BoxFuture;
    use k8s_openapi::ByteString;
    use serde_json::json;
    use std::sync::Arc;

    fn index() -> Arc<Index> {
        let idx = Arc::new(Index::new());
        idx.upsert_pool("team/default-pool");
        idx.upsert_agent(AgentState {
            pool_key: "team/default-pool".into(),
            pod_name: "agent-1".into(),
            node_name: "node-a".into(),
            ready: true,
            draining: false,
            slots_total: 1,
            images: vec!["busybox".into()],
        });
        idx
    }

    /// The value the verdict's patch writes at `path`.
    fn patched(v: &Verdict, path: &str) -> Option<Value> {
        let ops = serde_json::to_value(v.response.patch_ops().unwrap()).unwrap();
        ops.as_array()
            .unwrap()
            .iter()
            .find(|o| o["path"] == path)
            .map(|o| o["value"].clone())
    }

    fn ok_spec() -> Value {
        json!({"image": "busybox", "poolRef": "default-pool", "command": ["/bin/sleep", "100"]})
    }

    #[tokio::test]
    async fn limits_come_from_the_sandbox_then_its_pool_then_the_maximum() {
        let defaults = Arc::new(PoolDefaults::default());
        let mut pool = SandboxPool::new("default-pool", Default::default());
        pool.metadata.namespace = Some("team".into());
        pool.spec.sandbox_defaults =
            Some(serde_json::from_value(json!({"memory": "64Mi", "pids": 100})).unwrap());
        defaults.observe(&kube::runtime::watcher::Event::Apply(pool));
        let policy = Policy::parse(
            "namespaceDefaults: {maxSandboxResources: {cpu: '1', memory: 1Gi, pids: 500}}",
        )
        .unwrap();
        let r = Reviewer::new(index(), CONTROLLER)
            .with_pool_defaults(defaults)
            .with_policy(SharedPolicy::fixed(policy));
        let resources = |v: &Verdict| patched(v, "/spec/resources");
        let v = run(&r, create(ok_spec())).await;
        assert_eq!(
            resources(&v),
            Some(json!({"cpu": "1", "memory": "64Mi", "pids": 100}))
        );
        let mut spec = ok_spec();
        spec["resources"] = json!({"cpu": "500m", "memory": "1Gi", "pids": 500});
        let v = run(&r, create(spec.clone())).await;
        assert!(v.response.allowed);
        assert_eq!(resources(&v), None, "nothing to fill in: no patch");

        spec["resources"] = json!({"memory": "2Gi", "pids": 501});
        let v = run(&r, create(spec)).await;
        assert_eq!(v.outcome, Outcome::Denied);
        let msg = v.response.status.unwrap().message;
        assert!(
            msg.contains("spec.resources.memory: 2Gi is more than the operator allows a sandbox in namespace team (1Gi)")
                && msg.contains("spec.resources.pids: 501"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn egress_comes_from_the_pool_and_only_where_the_policy_allows_it() {
        let defaults = Arc::new(PoolDefaults::default());
        let mut pool = SandboxPool::new("default-pool", Default::default());
        pool.metadata.namespace = Some("team".into());
        pool.spec.default_network = Some(
            serde_json::from_value(json!({"mode": "Egress", "deny": ["203.0.113.0/24"]})).unwrap(),
        );
        defaults.observe(&kube::runtime::watcher::Event::Apply(pool));
        let reviewer = |policy: &str| {
            Reviewer::new(index(), CONTROLLER)
                .with_pool_defaults(defaults.clone())
                .with_policy(SharedPolicy::fixed(Policy::parse(policy).unwrap()))
        };
        let network = |v: &Verdict| patched(v, "/spec/network");
        let open = reviewer("namespaceDefaults: {allowEgress: true}");
        let v = run(&open, create(ok_spec())).await;
        assert_eq!(
            network(&v),
            Some(json!({"mode": "Egress", "deny": ["203.0.113.0/24"]}))
        );
        let mut own = ok_spec();
        own["network"] = json!({"mode": "None"});
        assert_eq!(network(&run(&open, create(own.clone())).await), None);

        let closed = reviewer("namespaces: {team: {allowEgress: false}}");
        let v = run(&closed, create(ok_spec())).await;
        assert_eq!(v.outcome, Outcome::Denied);
        let msg = v.response.status.unwrap().message;
        assert!(
            msg.starts_with("spec.network.mode (from the pool's defaultNetwork): Egress is not allowed in namespace team"),
            "{msg}"
        );
        assert!(run(&closed, create(own)).await.response.allowed);
        let mut bad = ok_spec();
        bad["network"] = json!({"mode": "Egress", "allow": ["10.0.0.1/8"]});
        let v = run(&open, create(bad)).await;
        assert_eq!(v.outcome, Outcome::Denied);
        let msg = v.response.status.unwrap().message;
        assert!(
            msg.contains(
                "spec.network.allow[0]: \"10.0.0.1/8\" has host bits set; did you mean 10.0.0.0/8?"
            ),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn wire_shape_has_base64_patch_and_patch_type() {
        let r = Reviewer::new(index(), CONTROLLER);
        let v = run(&r, create(ok_spec())).await;
        let wire: Value = serde_json::from_slice(&v.to_json()).unwrap();
        assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(wire["kind"], "AdmissionReview");
        let resp = &wire["response"];
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        let patch = resp["patch"]
            .as_str()
            .expect("patch is a string, not an array of numbers");
        let decoded: ByteString = serde_json::from_value(json!(patch)).unwrap();
        let ops: Value = serde_json::from_slice(&decoded.0).unwrap();
        assert!(ops.as_array().is_some_and(|a| !a.is_empty()), "{ops}");
        assert!(resp.get("status").is_none());
    }

    #[tokio::test]
    async fn create_binds_and_patch_applies() {
        let idx = index();
        let metrics = Metrics::new();
        let r = Reviewer::new(idx.clone(), CONTROLLER).with_metrics(metrics.clone());
        let v = run(&r, create(ok_spec())).await;
        assert_eq!(v.outcome, Outcome::Bound);
        let mut doc = sandbox(ok_spec());
        json_patch::patch(&mut doc, &v.response.patch_ops().unwrap()).unwrap();
        assert_eq!(
            doc["spec"]["agentRef"],
            json!({"podName": "agent-1", "nodeName": "node-a", "atAdmission": true})
        );
        assert_eq!(
            doc["metadata"]["labels"]["sandbox.fast.io/agent"],
            "agent-1"
        );
        assert_eq!(
            doc["metadata"]["labels"]["sandbox.fast.io/pool"],
            "default-pool"
        );
        assert_eq!(
            doc["metadata"]["finalizers"],
            json!(["sandbox.fast.io/cleanup"])
        );
        let at = doc["metadata"]["annotations"]["sandbox.fast.io/bound-at"]
            .as_str()
            .unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.len() == 24,
            "{at}"
        );
        assert_eq!(
            doc["metadata"]["annotations"]["sandbox.fast.io/reservation"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(idx.used("agent-1"), 1);
        assert_eq!(metrics.placements(Placement::Hit), 1);
        // Sandbox typed round trip: the patched object is still a Sandbox.
        let typed: Sandbox = serde_json::from_value(doc).unwrap();
        assert_eq!(typed.spec.agent_ref.unwrap().pod_name, "agent-1");
    }

    #[tokio::test]
    async fn full_pool_admits_unbound_with_a_warning() {
        let idx = index();
        idx.reserve("team/default-pool", "busybox", "other")
            .unwrap();
        let metrics = Metrics::new();
        let r = Reviewer::new(idx, CONTROLLER).with_metrics(metrics.clone());
        let v = run(&r, create(ok_spec())).await;
        assert_eq!(v.outcome, Outcome::Unbound);
        assert!(v.response.allowed);
        assert!(v.response.warnings[0].contains("no ready agent of pool default-pool"));
        let ops = serde_json::to_value(v.response.patch_ops().unwrap()).unwrap();
        assert_eq!(
            ops,
            json!([
                // No pool defaults, no policy: the built-in maximum.
                {"op": "add", "path": "/spec/resources", "value": {"cpu": "4", "memory": "4Gi", "pids": 4096}},
                {"op": "add", "path": "/metadata/labels", "value": {"sandbox.fast.io/pool": "default-pool"}}
            ])
        );
        assert_eq!(metrics.placements(Placement::NoCapacity), 1);
    }

    #[tokio::test]
    async fn dry_run_answers_the_same_and_reserves_nothing() {
        let idx = index();
        let r = Reviewer::new(idx.clone(), CONTROLLER);
        let body = review_body("CREATE", "alice", sandbox(ok_spec()), Value::Null, true);
        let v = run(&r, body).await;
        assert_eq!(v.outcome, Outcome::Bound);
        let text = serde_json::to_string(&v.response.patch_ops().unwrap()).unwrap();
        assert!(text.contains("agent-1"), "{text}");
        assert_eq!(idx.used("agent-1"), 0);
    }

    #[tokio::test]
    async fn objects_our_types_cannot_read_are_refused_naming_the_field() {
        let r = Reviewer::new(index(), CONTROLLER);
        for (spec, field) in [
            (
                json!({"image": "busybox"}),
                "spec.poolRef: missing field `poolRef`",
            ),
            (
                json!({"image": 5, "poolRef": "default-pool"}),
                "spec.image: ",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "expireTime": "2026-12-01T00:00:00.1234567890Z"}),
                "spec.expireTime: ",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "resources": {"pids": 1e30}}),
                "spec.resources.pids: ",
            ),
        ] {
            let v = run(&r, create(spec.clone())).await;
            assert!(!v.response.allowed, "{spec} was allowed");
            let msg = v.response.message().unwrap();
            assert!(msg.starts_with(field), "{spec}: {msg}");
            assert!(msg.contains("cannot represent"), "{msg}");
        }
    }

    #[tokio::test]
    async fn a_review_from_an_unknown_caller_reserves_nothing() {
        let idx = index();
        let r = Reviewer::new(idx.clone(), CONTROLLER);
        let v = r.review(&create(ok_spec()), Caller::UNKNOWN).await.unwrap();
        assert_eq!(v.outcome, Outcome::Bound);
        assert_eq!(
            idx.used("agent-1"),
            0,
            "a forged review must not fill the pool"
        );
    }

    #[tokio::test]
    async fn only_the_controller_removes_the_cleanup_finalizer() {
        let r = Reviewer::new(index(), CONTROLLER);
        let mut old = bound(ok_spec());
        old["metadata"]["finalizers"] = json!(["sandbox.fast.io/cleanup", "other"]);
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!(["other"]);
        let v = run(
            &r,
            review_body("UPDATE", "alice", new.clone(), old.clone(), false),
        )
        .await;
        assert!(!v.response.allowed);
        assert!(
            v.response
                .message()
                .unwrap()
                .starts_with("metadata.finalizers: sandbox.fast.io/cleanup"),
            "{:?}",
            v.response
        );
        let v = run(&r, review_body("UPDATE", CONTROLLER, new, old, false)).await;
        assert!(v.response.allowed);
    }

    #[tokio::test]
    async fn every_validation_message_names_its_field() {
        let r = Reviewer::new(index(), CONTROLLER);
        let cases = [
            (
                json!({"image": "busybox", "poolRef": "nope"}),
                "spec.poolRef: SandboxPool \"nope\" does not exist in namespace \"team\"",
            ),
            (
                json!({"image": "", "poolRef": "default-pool"}),
                "spec.image: is required",
            ),
            (
                json!({"image": "Not An Image", "poolRef": "default-pool"}),
                "spec.image: ",
            ),
            (
                json!({"image": "busybox", "poolRef": "Bad_Pool"}),
                "spec.poolRef: \"Bad_Pool\" is not a valid object name",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "env": [{"name": "1BAD", "value": "x"}]}),
                "spec.env[0].name: invalid environment variable name \"1BAD\"",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "command": ["a", ""]}),
                "spec.command[1]: must not be empty",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "args": ["x".repeat(200_000)]}),
                "spec.command: command, args and env total",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "workingDir": "tmp"}),
                "spec.workingDir: must be an absolute path",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "resources": {"cpu": "lots"}}),
                "spec.resources.cpu: ",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "resources": {"memory": "1Ki"}}),
                "spec.resources.memory: must be between 6Mi and 1Ti",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "resources": {"cpu": "5000"}}),
                "spec.resources.cpu: must be between",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "resources": {"pids": 0}}),
                "spec.resources.pids: must be between 1 and",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "exposedPorts": [{"port": 0}]}),
                "spec.exposedPorts[0].port: must be between 1 and 65535",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "ttlSecondsAfterFinished": -1}),
                "spec.ttlSecondsAfterFinished: must not be negative",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "resetRevision": -1}),
                "spec.resetRevision: must not be negative",
            ),
            (
                json!({"image": "busybox", "poolRef": "default-pool", "agentRef": {"podName": "x"}}),
                "spec.agentRef: is written by the scheduler",
            ),
        ];
        for (spec, want) in cases {
            let v = run(&r, create(spec.clone())).await;
            assert!(!v.response.allowed, "{spec} was allowed");
            assert_eq!(v.outcome, Outcome::Denied);
            let msg = v.response.message().unwrap();
            assert!(
                msg.starts_with(want),
                "{spec}: got {msg:?}, want prefix {want:?}"
            );
            assert_eq!(v.response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        }
    }

    /// One pool, as the apiserver would answer for it, or none.
    struct Pools(Option<SandboxPool>);
    impl PoolLookup for Pools {
        fn get<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<SandboxPool>, String>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
        fn in_namespace<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<SandboxPool>, String>> {
            Box::pin(async move { Ok(Vec::new()) })
        }
    }

    #[tokio::test]
    async fn unseen_pool_is_looked_up() {
        let spec = json!({"image": "busybox", "poolRef": "fresh-pool"});
        let fresh = SandboxPool::new("fresh-pool", Default::default());
        let r = Reviewer::new(index(), CONTROLLER).with_pool_lookup(Arc::new(Pools(Some(fresh))));
        let v = run(&r, create(spec.clone())).await;
        assert_eq!(v.outcome, Outcome::Unbound);
        let r = Reviewer::new(index(), CONTROLLER).with_pool_lookup(Arc::new(Pools(None)));
        assert_eq!(run(&r, create(spec)).await.outcome, Outcome::Denied);
    }

    fn bound(spec: Value) -> Value {
        let mut s = spec;
        s["agentRef"] = json!({"podName": "agent-1", "nodeName": "node-a"});
        sandbox(s)
    }

    #[tokio::test]
    async fn the_binding_labels_and_annotations_are_admissions_and_the_controllers() {
        let r = Reviewer::new(index(), CONTROLLER);
        for (meta, field) in [
            (
                json!({"annotations": {"sandbox.fast.io/reservation": "someone-elses-uid"}}),
                "metadata.annotations[sandbox.fast.io/reservation]",
            ),
            (
                json!({"annotations": {"sandbox.fast.io/bound-at": "2999-01-01T00:00:00Z"}}),
                "metadata.annotations[sandbox.fast.io/bound-at]",
            ),
            (
                json!({"labels": {"sandbox.fast.io/agent": "agent-1"}}),
                "metadata.labels[sandbox.fast.io/agent]",
            ),
        ] {
            let mut obj = sandbox(ok_spec());
            obj["metadata"]
                .as_object_mut()
                .unwrap()
                .extend(meta.as_object().unwrap().clone());
            let v = run(
                &r,
                review_body("CREATE", "alice", obj.clone(), Value::Null, false),
            )
            .await;
            let message = v.response.message().unwrap_or_default();
            assert!(
                message.starts_with(&format!("{field}: is written at admission")),
                "{meta}: {message}"
            );
            // Nor added, changed or removed later.
            let old = bound(ok_spec());
            refused(
                &r,
                obj.clone(),
                &old,
                &format!("{field}: records the binding"),
            )
            .await;
            let mut with = bound(ok_spec());
            with["metadata"]
                .as_object_mut()
                .unwrap()
                .extend(meta.as_object().unwrap().clone());
            refused(
                &r,
                old.clone(),
                &with,
                &format!("{field}: records the binding"),
            )
            .await;
            let v = run(&r, review_body("UPDATE", CONTROLLER, old, with, false)).await;
            assert!(v.response.allowed, "the controller rebinds");
        }
        // The pool label is written from spec.poolRef whatever was sent.
        let mut obj = sandbox(ok_spec());
        obj["metadata"]["labels"] = json!({"sandbox.fast.io/pool": "elsewhere"});
        let v = run(&r, review_body("CREATE", "alice", obj, Value::Null, false)).await;
        assert!(v.response.allowed, "{:?}", v.response.message());
    }

    #[tokio::test]
    async fn a_sandbox_stays_in_its_pool_even_unbound() {
        let r = Reviewer::new(index(), CONTROLLER);
        let old = sandbox(ok_spec());
        let mut moved = ok_spec();
        moved["poolRef"] = json!("another-pool");
        refused(&r, sandbox(moved), &old, "spec.poolRef: cannot change").await;
    }

    /// Fails unless a tenant's UPDATE of `old` to `new` is refused with a
    /// message starting `prefix`.
    async fn refused(r: &Reviewer, new: Value, old: &Value, prefix: &str) {
        let v = run(r, review_body("UPDATE", "alice", new, old.clone(), false)).await;
        let message = v.response.message().unwrap_or_default();
        assert!(message.starts_with(prefix), "{message}");
    }

    #[tokio::test]
    async fn update_protects_the_binding_and_fixed_fields() {
        let r = Reviewer::new(index(), CONTROLLER);
        let old = bound(ok_spec());

        let mut moved = old.clone();
        moved["spec"]["agentRef"]["podName"] = json!("agent-2");
        refused(
            &r,
            moved.clone(),
            &old,
            "spec.agentRef: is set once at binding",
        )
        .await;
        let v = run(
            &r,
            review_body("UPDATE", CONTROLLER, moved, old.clone(), false),
        )
        .await;
        assert!(v.response.allowed);

        // Marking a re-placement as admission's would skip its agent's look
        // for another agent's container of it.
        let mut marked = old.clone();
        marked["spec"]["agentRef"]["atAdmission"] = json!(true);
        refused(&r, marked, &old, "spec.agentRef: is set once at binding").await;

        let mut cleared = old.clone();
        cleared["spec"].as_object_mut().unwrap().remove("agentRef");
        let v = run(
            &r,
            review_body("UPDATE", "alice", cleared.clone(), old.clone(), false),
        )
        .await;
        assert!(!v.response.allowed);
        assert!(
            run(
                &r,
                review_body("UPDATE", CONTROLLER, cleared, old.clone(), false)
            )
            .await
            .response
            .allowed
        );

        let mut image = old.clone();
        image["spec"]["image"] = json!("nginx");
        refused(
            &r,
            image,
            &old,
            "spec.image: cannot change once the sandbox is bound",
        )
        .await;

        let mut later = old.clone();
        later["spec"]["expireTime"] = json!("2099-01-01T00:00:00Z");
        let v = run(
            &r,
            review_body("UPDATE", "alice", later, old.clone(), false),
        )
        .await;
        assert!(v.response.allowed, "expireTime may move: {:?}", v.response);

        let mut reset = old.clone();
        reset["spec"]["resetRevision"] = json!(1);
        reset["metadata"]["labels"] = json!({"user": "label"});
        let v = run(
            &r,
            review_body("UPDATE", "alice", reset, old.clone(), false),
        )
        .await;
        assert!(v.response.allowed, "{:?}", v.response);
    }

    #[tokio::test]
    async fn unbound_sandbox_spec_may_change_but_stays_valid() {
        let r = Reviewer::new(index(), CONTROLLER);
        let old = sandbox(ok_spec());
        let mut new = old.clone();
        new["spec"]["image"] = json!("nginx");
        assert!(
            run(
                &r,
                review_body("UPDATE", "alice", new.clone(), old.clone(), false)
            )
            .await
            .response
            .allowed
        );
        new["spec"]["env"] = json!([{"name": "a=b"}]);
        let v = run(&r, review_body("UPDATE", "alice", new, old, false)).await;
        assert!(
            v.response
                .message()
                .unwrap()
                .starts_with("spec.env[0].name")
        );
    }

    #[tokio::test]
    async fn an_unbound_sandbox_may_not_drop_or_raise_its_limits_past_the_maximum() {
        let r = Reviewer::new(index(), CONTROLLER);
        let mut old = sandbox(ok_spec());
        old["spec"]["resources"] = json!({"cpu": "1", "memory": "1Gi", "pids": 100});
        let update = |resources: Value| {
            let mut new = old.clone();
            new["spec"]["resources"] = resources;
            review_body("UPDATE", "alice", new, old.clone(), false)
        };
        let lower = run(
            &r,
            update(json!({"cpu": "500m", "memory": "64Mi", "pids": 10})),
        )
        .await;
        assert!(lower.response.allowed);
        let dropped = run(&r, update(json!({"cpu": "1", "pids": 100}))).await;
        let msg = dropped.response.message().unwrap();
        assert!(msg.starts_with("spec.resources: every limit"), "{msg}");
        let raised = run(
            &r,
            update(json!({"cpu": "1", "memory": "64Gi", "pids": 100})),
        )
        .await;
        let msg = raised.response.message().unwrap();
        assert!(
            msg.starts_with("spec.resources.memory: 64Gi is more than"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn malformed_bodies_are_errors_not_panics() {
        let r = Reviewer::new(index(), CONTROLLER);
        for body in [
            &b""[..],
            b"not json",
            b"{}",
            b"[]",
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":5}}"#,
        ] {
            assert!(
                r.review(body, Caller::APISERVER).await.is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A DELETE (not registered, but harmless) is simply allowed.
        let v = run(
            &r,
            review_body("DELETE", "alice", Value::Null, sandbox(ok_spec()), false),
        )
        .await;
        assert!(v.response.allowed);
    }
}
