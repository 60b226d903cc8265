//! Unit tests of Sandbox UPDATE: what a tenant may change once a sandbox
//! exists or is bound, and what only the controller may.

use serde_json::{Value, json};

use super::{bound, index, ok_spec, refused};
use crate::review::Reviewer;
use crate::review::test_support::*;

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
async fn a_sandbox_stays_in_its_pool_even_unbound() {
    let r = Reviewer::new(index(), CONTROLLER);
    let old = sandbox(ok_spec());
    let mut moved = ok_spec();
    moved["poolRef"] = json!("another-pool");
    refused(&r, sandbox(moved), &old, "spec.poolRef: cannot change").await;
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
