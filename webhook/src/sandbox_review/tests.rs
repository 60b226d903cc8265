//! Unit tests of Sandbox admission: the fixtures the CREATE and UPDATE
//! tests share, the binding's labels and annotations, and malformed
//! bodies.

use std::sync::Arc;

use fast_sandbox_placement::{AgentState, Index};
use serde_json::{Value, json};

use crate::review::test_support::*;
use crate::review::{Caller, Reviewer};

mod create;
mod update;

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

fn ok_spec() -> Value {
    json!({"image": "busybox", "poolRef": "default-pool", "command": ["/bin/sleep", "100"]})
}

fn bound(spec: Value) -> Value {
    let mut s = spec;
    s["agentRef"] = json!({"podName": "agent-1", "nodeName": "node-a"});
    sandbox(s)
}

/// Fails unless a tenant's UPDATE of `old` to `new` is refused with a
/// message starting `prefix`.
async fn refused(r: &Reviewer, new: Value, old: &Value, prefix: &str) {
    let v = run(r, review_body("UPDATE", "alice", new, old.clone(), false)).await;
    let message = v.response.message().unwrap_or_default();
    assert!(message.starts_with(prefix), "{message}");
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
