//! Unit tests of Sandbox CREATE: binding and its patch, pool defaults and
//! the operator's limits, dry runs, and refusals that name their field.

use std::sync::Arc;

use fast_sandbox_api::policy::Policy;
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_k8s::policy::SharedPolicy;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::{index, ok_spec};
use crate::metrics::{Metrics, Outcome, Placement};
use crate::pool_defaults::PoolDefaults;
use crate::review::test_support::*;
use crate::review::{Caller, PoolLookup, Reviewer, Verdict};

/// The value the verdict's patch writes at `path`.
fn patched(v: &Verdict, path: &str) -> Option<Value> {
    let ops = serde_json::to_value(v.response.patch_ops().unwrap()).unwrap();
    ops.as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == path)
        .map(|o| o["value"].clone())
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
            json!({"image": "busybox", "poolRef": "default-pool", "command": ["", "a"]}),
            "spec.command[0]: must not be empty",
        ),
        (
            json!({"image": "busybox", "poolRef": "default-pool", "args": ["x".repeat(200_000)]}),
            "spec.args: command, args and env total",
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
    fn in_namespace<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<SandboxPool>, String>> {
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
