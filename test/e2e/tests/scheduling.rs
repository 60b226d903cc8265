//! The scheduler extender on the real kube-scheduler: agent pods of a pool
//! with warm images are bound to the nodes that hold those images, spread
//! across them; admission then binds each sandbox to an agent on a node
//! holding its image; other pods schedule as before; with the extender
//! gone, scheduling still works (the extender is ignorable).
//!
//! Three extra Node objects without a kubelet carry chosen
//! `status.images`; a taint keeps every other test's pods off them.

use std::collections::BTreeMap;
use std::time::Duration;

use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE, LABEL_ROLE, ROLE_AGENT};
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_e2e::scenario::{SYSTEM_NAMESPACE, agent_selector};
use fast_sandbox_e2e::{cluster_client, delete_namespace, namespace, wait_for, wait_for_set};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const TAINT: &str = "fast-sandbox-e2e/fake-node";
const WARM: &str = "registry.example/fast-sandbox-e2e/warm:1";
const AGENT_IMAGE: &str = "docker.io/fast-sandbox/agent:dev";
/// Held by one fake node each: sandbox placement must follow them.
const ONLY_A: &str = "registry.example/fast-sandbox-e2e/only-a:1";
const ONLY_B: &str = "registry.example/fast-sandbox-e2e/only-b:1";

fn toleration() -> Value {
    json!([{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}])
}

/// Registers a Node without a kubelet, Ready, holding `images`.
async fn fake_node(nodes: &Api<Node>, name: &str, images: &[(&str, u64)]) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "fast-sandbox-e2e": "fake"}},
        "spec": {"taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = json!({"status": {
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "fake node of the e2e suite", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "images": images.iter().map(|(n, s)| json!({"names": [n], "sizeBytes": s})).collect::<Vec<_>>()
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn force_delete_pods(pods: &Api<Pod>, selector: &str) {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    for p in pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
    {
        let _ = pods
            .delete(&p.metadata.name.unwrap_or_default(), &now)
            .await;
    }
}

#[tokio::test]
async fn agent_pods_land_where_the_warm_images_are() {
    let client = cluster_client("scheduling with the extender").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let suffix = std::process::id();
    let (a, b, c) = (
        format!("e2e-warm-a-{suffix}"),
        format!("e2e-warm-b-{suffix}"),
        format!("e2e-cold-c-{suffix}"),
    );
    // A small image (1 MiB) on two of three nodes: the built-in
    // ImageLocality plugin scores it zero; the extender must not.
    fake_node(
        &nodes,
        &a,
        &[(WARM, 1 << 20), (ONLY_A, 1 << 20), (AGENT_IMAGE, 50 << 20)],
    )
    .await;
    fake_node(
        &nodes,
        &b,
        &[(WARM, 1 << 20), (ONLY_B, 1 << 20), (AGENT_IMAGE, 50 << 20)],
    )
    .await;
    fake_node(&nodes, &c, &[(AGENT_IMAGE, 50 << 20)]).await;

    let ns = namespace(&client, "e2e-sched").await.unwrap();
    // Clean up even when an assertion fails: kubelet-less nodes and the
    // pods bound to them would otherwise outlive the test.
    let outcome = std::panic::AssertUnwindSafe(scenario(&client, &ns, [&a, &b, &c]))
        .catch_unwind()
        .await;
    let agents: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let plain: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), &ns);
    let _ = pools.delete("warm", &DeleteParams::default()).await;
    force_delete_pods(&agents, &agent_selector(&ns, "warm")).await;
    force_delete_pods(&plain, "").await;
    for n in [&a, &b, &c] {
        let _ = nodes.delete(n, &DeleteParams::default()).await;
    }
    delete_namespace(&client, &ns).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(client: &Client, ns: &str, [a, b, c]: [&String; 3]) {
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), ns);
    let pool: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "metadata": {"name": "warm"},
        "spec": {"capacity": {"poolMin": 0, "poolMax": 4}, "warmImages": [WARM],
                 "agentTemplate": {"spec": {
                     "nodeSelector": {"fast-sandbox-e2e": "fake"},
                     "tolerations": toleration(),
                     "containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}}}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    // The extender learns nodes and pools from its own watches: the agents
    // are asked for once it ranks the warm nodes first, as it will for them.
    extender_prefers(ns, [a.as_str(), b.as_str()], c).await;
    pools
        .patch(
            "warm",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"capacity": {"poolMin": 4}}})),
        )
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let selector = agent_selector(ns, "warm");
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let agents = wait_for_set(
        &pods,
        &selector,
        Duration::from_secs(60),
        "four bound agent pods",
        |set| set.iter().filter(|p| node_of(p).is_some()).count() >= 4,
    )
    .await
    .unwrap();
    let mut placed = BTreeMap::new();
    for n in agents.iter().filter_map(|p| node_of(p)) {
        *placed.entry(n).or_insert(0usize) += 1;
    }
    assert_eq!(
        placed.values().sum::<usize>(),
        4,
        "all four agents must be bound: {placed:?}"
    );
    assert_eq!(
        placed.get(c),
        None,
        "no agent may go to the node without the warm image: {placed:?}"
    );
    assert_eq!(
        (placed.get(a), placed.get(b)),
        (Some(&2), Some(&2)),
        "agents must spread over the nodes holding the image: {placed:?}"
    );

    sandboxes_follow_their_images(client, ns, &agents, a, b).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // A plain pod is scheduled as before, and still is with the extender
    // gone (ignorable: true).
    let plain = |name: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeSelector": {"fast-sandbox-e2e": "fake"}, "tolerations": toleration(),
                     "containers": [{"name": "c", "image": "docker.io/fast-sandbox/busybox:dev", "imagePullPolicy": "Never"}]}}))
        .unwrap()
    };
    pods.create(&PostParams::default(), &plain("plain-before"))
        .await
        .unwrap();
    wait_for(
        &pods,
        "plain-before",
        Duration::from_secs(30),
        "a node for a plain pod",
        |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
    )
    .await
    .unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "fast-sandbox-system");
    let scale = |n: i32| json!({"spec": {"replicas": n}});
    deployments
        .patch_scale(
            "fast-sandbox-extender",
            &PatchParams::default(),
            &Patch::Merge(&scale(0)),
        )
        .await
        .unwrap();
    let extender_pods: Api<Pod> = Api::namespaced(client.clone(), "fast-sandbox-system");
    wait_for_set(
        &extender_pods,
        "app.kubernetes.io/name=fast-sandbox-extender",
        Duration::from_secs(60),
        "the extender to stop",
        |set| set.is_empty(),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &plain("plain-without-extender"))
        .await
        .unwrap();
    let scheduled = wait_for(
        &pods,
        "plain-without-extender",
        Duration::from_secs(30),
        "scheduling without the extender",
        |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
    )
    .await;
    deployments
        .patch_scale(
            "fast-sandbox-extender",
            &PatchParams::default(),
            &Patch::Merge(&scale(1)),
        )
        .await
        .unwrap();
    scheduled.expect("with the extender stopped, pods must still be scheduled");
}

/// With the agents on the fake nodes marked ready (no kubelet does it
/// there), admission binds a sandbox of an image only node `a` holds to an
/// agent on `a`, and one of an image only `b` holds to `b`. Dry runs: the
/// placement is visible in the answer, nothing is reserved and nothing is
/// started on the kubelet-less nodes.
async fn sandboxes_follow_their_images(
    client: &Client,
    ns: &str,
    agents: &[std::sync::Arc<Pod>],
    a: &str,
    b: &str,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    for p in agents {
        pods.patch_status(
            p.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(&ready),
        )
        .await
        .unwrap();
    }
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let node_for = |image: &'static str| {
        let (sandboxes, dry) = (sandboxes.clone(), dry.clone());
        async move {
            let sb: Sandbox = serde_json::from_value(json!({
                "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
                "metadata": {"name": "placed"},
                "spec": {"image": image, "command": ["/bin/true"], "poolRef": "warm"}
            }))
            .unwrap();
            let made = sandboxes.create(&dry, &sb).await.unwrap();
            made.spec.agent_ref.map(|r| r.node_name)
        }
    };
    // The webhook learns of the readiness on its own watch; nothing to
    // await from outside but its answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node_for(ONLY_A).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook bound nothing 30 s after four agents of pool warm were marked ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (image, node) in [(ONLY_A, a), (ONLY_B, b), (ONLY_A, a), (ONLY_B, b)] {
        assert_eq!(
            node_for(image).await.as_deref(),
            Some(node),
            "a sandbox of {image} must be bound to an agent on {node}, the node holding it"
        );
    }
}

fn state_dir() -> String {
    std::env::var("FAST_SANDBOX_STATE")
        .unwrap_or_else(|_| "/var/lib/fast-sandbox-cluster".to_string())
}

/// The Fast Sandbox CA, which signed the extender's certificate.
fn cluster_ca() -> String {
    format!("{}/fast-sandbox-ca.crt", state_dir())
}

/// The scheduler's client certificate and key, the only caller the
/// extender answers.
fn scheduler_identity() -> (String, String) {
    let pki = format!("{}/pki", state_dir());
    (
        format!("{pki}/scheduler.crt"),
        format!("{pki}/scheduler.key"),
    )
}

/// Waits until the extender (asked the way kube-scheduler asks it, at the
/// address the scheduler is configured with) scores both `warm` nodes above
/// `cold` for an agent of pool `warm` in `ns`.
async fn extender_prefers(ns: &str, warm: [&str; 2], cold: &str) {
    let args = json!({
        "Pod": {"metadata": {"namespace": SYSTEM_NAMESPACE,
                             "labels": {LABEL_ROLE: ROLE_AGENT, LABEL_POOL: "warm", LABEL_POOL_NAMESPACE: ns}},
                "spec": {"containers": [{"name": "agent", "image": AGENT_IMAGE}]}},
        "NodeNames": [warm[0], warm[1], cold]
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (cert, key) = scheduler_identity();
        let out = tokio::process::Command::new("curl")
            .args(["-sf", "--max-time", "2", "--cacert", &cluster_ca()])
            .args(["--cert", &cert, "--key", &key])
            .args(["-X", "POST", "https://10.96.0.50:443/prioritize", "-d"])
            .arg(args.to_string())
            .output()
            .await
            .expect("curl runs");
        let last = String::from_utf8_lossy(&out.stdout).into_owned();
        let scores: BTreeMap<String, i64> = serde_json::from_str::<Vec<Value>>(&last)
            .unwrap_or_default()
            .iter()
            .filter_map(|h| Some((h["Host"].as_str()?.to_string(), h["Score"].as_i64()?)))
            .collect();
        if let (Some(a), Some(b), Some(c)) =
            (scores.get(warm[0]), scores.get(warm[1]), scores.get(cold))
            && a > c
            && b > c
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the extender does not rank {warm:?} above {cold} after 30 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
