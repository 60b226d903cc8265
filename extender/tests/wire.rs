//! The extender verbs fed JSON exactly as kube-scheduler v1.34 encodes it,
//! in both the `NodeNames` (node cache capable) and the `Nodes` form.

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::*;
use fast_sandbox_extender::Extender;
use serde_json::{Value, json};

const AGENT: &str = "docker.io/fast-sandbox/agent:dev";
const WARM: &str = "docker.io/fast-sandbox/busybox:dev";

/// Four nodes: the one with the (1 MiB) warm image, one with a big
/// unrelated image, one without the never-pulled agent image, one NotReady.
fn cluster() -> Vec<Value> {
    let mut not_ready = node("n-notready", &[(&[AGENT], 20 * MIB)]);
    not_ready["status"]["conditions"][1]["status"] = json!("False");
    vec![
        node(
            "n-warm",
            &[
                (
                    &[AGENT, "docker.io/fast-sandbox/agent@sha256:aaaa"],
                    20 * MIB,
                ),
                (&[WARM], MIB),
            ],
        ),
        node(
            "n-big",
            &[
                (&[AGENT], 20 * MIB),
                (&["docker.io/library/postgres:16"], 800 * MIB),
            ],
        ),
        node("n-noagent", &[(&[WARM], MIB)]),
        not_ready,
    ]
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

const ALL: [&str; 4] = ["n-warm", "n-big", "n-noagent", "n-notready"];

#[test]
fn filter_names_form_drops_unfit_nodes_and_says_why() {
    let nodes = cluster();
    let ext = Extender::new(index(&nodes, &[WARM]), None);
    let pod = pod(
        "agent-x1",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    let out: Value = serde_json::from_slice(&ext.filter(&names_args(&pod, &ALL)).unwrap()).unwrap();

    let kept = names(&out["NodeNames"]);
    assert_eq!(kept, ["n-big", "n-warm"].map(String::from).into());
    assert!(
        kept.iter().all(|n| ALL.contains(&n.as_str())),
        "answer names only input nodes"
    );
    assert_eq!(out["Nodes"], Value::Null);
    assert_eq!(out["Error"], "");
    assert_eq!(out["FailedNodes"], json!({}));
    let failed = &out["FailedAndUnresolvableNodes"];
    assert_eq!(failed.as_object().unwrap().len(), 2);
    assert!(
        failed["n-noagent"].as_str().unwrap().contains(AGENT),
        "{failed}"
    );
    assert!(
        failed["n-notready"].as_str().unwrap().contains("not Ready"),
        "{failed}"
    );
}

#[test]
fn filter_objects_form_returns_the_kept_node_objects_unchanged() {
    let nodes = cluster();
    let ext = Extender::new(index(&nodes, &[WARM]), None);
    let pod = pod(
        "agent-x1",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    let out: Value =
        serde_json::from_slice(&ext.filter(&objects_args(&pod, &nodes)).unwrap()).unwrap();
    assert_eq!(out["NodeNames"], Value::Null);
    let items = out["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items, &vec![nodes[0].clone(), nodes[1].clone()]);
    assert_eq!(
        out["FailedAndUnresolvableNodes"].as_object().unwrap().len(),
        2
    );
}

#[test]
fn other_pods_get_their_nodes_back_byte_for_byte() {
    let nodes = cluster();
    let ext = Extender::new(index(&nodes, &[WARM]), None);
    let web = pod("web-1", json!({"app": "web"}), "nginx");

    let args = names_args(&web, &ALL);
    let out = ext.filter(&args).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(r#""NodeNames":["n-warm","n-big","n-noagent","n-notready"]"#),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["FailedNodes"], json!({}));
    assert_eq!(v["FailedAndUnresolvableNodes"], json!({}));

    let args = objects_args(&web, &nodes);
    let sent: Value = serde_json::from_slice(&args).unwrap();
    let out = ext.filter(&args).unwrap();
    // The Nodes value is the request's bytes, echoed.
    let raw = serde_json::to_string(&sent["Nodes"]).unwrap();
    assert!(String::from_utf8(out.clone()).unwrap().contains(&raw));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["Nodes"], sent["Nodes"]);

    // A pod with the role label but no pool is not an agent either.
    let half = pod("x", json!({"sandbox.fast.io/role": "agent"}), "nginx");
    let v: Value = serde_json::from_slice(&ext.filter(&names_args(&half, &ALL)).unwrap()).unwrap();
    assert_eq!(names(&v["NodeNames"]).len(), 4);
}

#[test]
fn prioritize_prefers_the_node_with_the_small_warm_image() {
    let nodes = cluster();
    let ext = Extender::new(index(&nodes, &[WARM]), None);
    let pod = pod(
        "agent-x1",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    let out: Value =
        serde_json::from_slice(&ext.prioritize(&names_args(&pod, &ALL), Utc::now()).unwrap())
            .unwrap();
    let list = out.as_array().unwrap();
    assert_eq!(list.len(), 4);
    let score = |host: &str| {
        list.iter()
            .find(|h| h["Host"] == host)
            .and_then(|h| h["Score"].as_i64())
            .unwrap()
    };
    for h in list {
        assert_eq!(h.as_object().unwrap().len(), 2, "only Host and Score: {h}");
        assert!(ALL.contains(&h["Host"].as_str().unwrap()));
        assert!((0..=10).contains(&h["Score"].as_i64().unwrap()));
    }
    // The 1 MiB warm image exists on one node of four: the built-in
    // ImageLocality plugin would give it nothing; here it decides.
    assert_eq!(score("n-warm"), 10);
    assert!(score("n-warm") > score("n-big"), "{out}");

    // Same answer from the Nodes form.
    let objects: Value = serde_json::from_slice(
        &ext.prioritize(&objects_args(&pod, &nodes), Utc::now())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(objects, out);
}

#[test]
fn prioritize_is_neutral_for_other_pods() {
    let nodes = cluster();
    let ext = Extender::new(index(&nodes, &[WARM]), None);
    let web = pod("web-1", json!({"app": "web"}), WARM);
    let out: Value =
        serde_json::from_slice(&ext.prioritize(&names_args(&web, &ALL), Utc::now()).unwrap())
            .unwrap();
    let expected: Vec<Value> = ALL.iter().map(|n| json!({"Host": n, "Score": 0})).collect();
    assert_eq!(out, Value::Array(expected));
}

#[test]
fn prioritize_spreads_a_pools_agents() {
    let nodes = vec![
        node("a", &[(&[AGENT], 20 * MIB), (&[WARM], MIB)]),
        node("b", &[(&[AGENT], 20 * MIB), (&[WARM], MIB)]),
    ];
    let idx = index(&nodes, &[WARM]);
    idx.apply_agent_pod(&running_agent("agent-1", "default-pool", "a"));
    idx.apply_agent_pod(&running_agent("agent-2", "default-pool", "a"));
    // Agents of another pool do not count.
    idx.apply_agent_pod(&running_agent("other-1", "other-pool", "b"));
    let ext = Extender::new(idx, None);
    let pod = pod(
        "agent-3",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    let out: Value = serde_json::from_slice(
        &ext.prioritize(&names_args(&pod, &["a", "b"]), Utc::now())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        out,
        json!([{"Host": "a", "Score": 8}, {"Host": "b", "Score": 10}])
    );
}

#[test]
fn malformed_requests_are_errors() {
    let ext = Extender::new(index(&[], &[]), None);
    assert!(ext.filter(b"{").is_err());
    assert!(ext.prioritize(br#"{"NodeNames": 5}"#, Utc::now()).is_err());
    // An empty candidate list is valid.
    let out: Value = serde_json::from_slice(
        &ext.prioritize(br#"{"Pod":null,"Nodes":null,"NodeNames":[]}"#, Utc::now())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out, json!([]));
}
