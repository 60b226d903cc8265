//! Two real nodes whose images differ. Sandboxes go to the node that holds
//! their image, at admission and again when their agent is lost; a node
//! known to lack the image is never chosen while the other holds it, so no
//! sandbox fails `ImageNotPresent`. Each sandbox runs exactly once, and
//! nothing is left in either containerd.

use std::collections::BTreeMap;
use std::time::Duration;

use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE, reason};
use fast_sandbox_api::{FailurePolicy, Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_e2e::containerd::{self, ctr_on};
use fast_sandbox_e2e::history::{History, Tracks};
use fast_sandbox_e2e::scenario::{AGENT_IMAGE, BUSYBOX, SYSTEM_NAMESPACE, agent_pods, sleeper};
use fast_sandbox_e2e::{cluster_client, delete_namespace, namespace, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
const AGENTS: i32 = 4;

/// A pool of four agents spread two per node (by the topology spread
/// constraint its template may carry), four slots each.
async fn spread_pool(client: &Client, ns: &str) -> Api<SandboxPool> {
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), ns);
    let p: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": "p"},
        "spec": {"capacity": {"poolMin": AGENTS, "poolMax": AGENTS + 1}, "maxSandboxesPerAgent": 4,
                 "warmImages": [BUSYBOX],
                 "agentTemplate": {"spec": {
                    "containers": [{"name": "agent", "image": AGENT_IMAGE}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {LABEL_POOL: "p", LABEL_POOL_NAMESPACE: ns}}}]}}}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &p).await.unwrap();
    wait_for(&pools, "p", WAIT, "four ready agents", |p: &SandboxPool| {
        p.status.as_ref().is_some_and(|s| s.ready_agents >= AGENTS)
    })
    .await
    .unwrap();
    pools
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Every sandbox of `names` Running on `node` now.
fn all_running_on(tracks: &Tracks, names: &[String], node: &str) -> bool {
    names.iter().all(|n| {
        tracks.get(n).is_some_and(|t| {
            t.phase() == SandboxPhase::Running
                && t.sandbox
                    .status
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    == Some(node)
        })
    })
}

/// The node each container of the namespace's sandboxes is on, by UID.
async fn containers_by_uid(ns: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut by_uid: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (node, socket) in containerd::sockets() {
        let filter = format!(
            "labels.\"{}\"==\"{ns}\"",
            fast_sandbox_api::wellknown::container_labels::SANDBOX_NAMESPACE
        );
        let out = ctr_on(&socket, &["containers", "ls", "-q", &filter])
            .await
            .unwrap();
        for id in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let info = ctr_on(&socket, &["containers", "info", id]).await;
            let Ok(info) = info else { continue };
            let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
            let uid = v["Labels"][fast_sandbox_api::wellknown::container_labels::SANDBOX_UID]
                .as_str()
                .unwrap_or_default()
                .to_string();
            by_uid
                .entry(uid)
                .or_default()
                .push((node.clone(), id.to_string()));
        }
    }
    by_uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_follow_their_image_across_nodes_and_on_replacement() {
    let client = cluster_client("nodes").await;
    let sockets = containerd::sockets();
    assert!(
        sockets.len() >= 2 && sockets.iter().all(|(n, _)| !n.is_empty()),
        "this test needs two real nodes with their containerd sockets in FAST_SANDBOX_NODE_CONTAINERD (test/cluster/cluster.sh env); got {sockets:?}"
    );
    let (holder, holder_socket) = sockets[1].clone();
    let other = sockets[0].0.clone();
    let ns = namespace(&client, "e2e-nodes").await.unwrap();
    // An image only the second node holds: the test image under a name of
    // this test's own.
    let only_here = format!("docker.io/fast-sandbox/e2e-{ns}:dev");
    ctr_on(&holder_socket, &["images", "tag", BUSYBOX, &only_here])
        .await
        .unwrap();
    // The kubelet reports it in the node's status; the webhook and the
    // controller learn node images from there.
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(
        &nodes,
        &holder,
        WAIT,
        "the node reporting the image",
        |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.images.as_ref())
                .is_some_and(|imgs| {
                    imgs.iter()
                        .any(|i| i.names.iter().flatten().any(|n| n == &only_here))
                })
        },
    )
    .await
    .unwrap();

    spread_pool(&client, &ns).await;
    let agents = agent_pods(&client, &ns, "p").await.unwrap();
    let per_node = |node: &str| agents.iter().filter(|p| node_of(p) == node).count();
    assert!(
        per_node(&holder) >= 1 && per_node(&other) >= 1,
        "agents on both nodes: {:?}",
        agents
            .iter()
            .map(|p| (p.name_any(), node_of(p)))
            .collect::<Vec<_>>()
    );

    let sbx: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let history = History::start(sbx.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("s-{i}")).collect();
    for n in &names {
        let mut sb = sleeper(n, "p", FailurePolicy::AutoRecreate);
        sb.spec.image = only_here.clone();
        sbx.create(&PostParams::default(), &sb).await.unwrap();
    }
    let tracks = history
        .wait(
            WAIT,
            "every sandbox Running on the node with the image",
            |t| all_running_on(t, &names, &holder),
        )
        .await
        .unwrap();

    // Lose the agent that holds the most of them, the way it usually goes:
    // a plain delete; the kubelet stops the pod and reclaims its cgroup.
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for n in &names {
        if let Some(a) = tracks[n].agent() {
            *load.entry(a.to_string()).or_default() += 1;
        }
    }
    let (victim, _) = load.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let after = history
        .wait(
            WAIT,
            "every sandbox Running again, on the image's node, not on the lost agent",
            |t| {
                all_running_on(t, &names, &holder)
                    && names.iter().all(|n| t[n].agent() != Some(victim.as_str()))
            },
        )
        .await
        .unwrap();
    for n in &names {
        let t = &after[n];
        assert!(
            !t.phases.contains(&SandboxPhase::Failed),
            "{n} failed on the way: {:?}",
            t.sandbox.status
        );
        let reason = t.sandbox.status.as_ref().and_then(|s| s.reason.clone());
        assert_ne!(reason.as_deref(), Some(reason::IMAGE_NOT_PRESENT), "{n}");
    }
    let moved = names
        .iter()
        .filter(|n| after[*n].agents.contains(&victim))
        .count();
    assert!(moved >= 1, "the lost agent held some of them");

    // Exactly one container per sandbox, on the image's node (the dead
    // ones of the lost agent are swept by the node's other agents).
    let uids: Vec<String> = names.iter().map(|n| after[n].uid.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = containers_by_uid(&ns).await;
        let settled = uids.iter().all(|u| {
            found
                .get(u)
                .is_some_and(|c| c.len() == 1 && c[0].0 == holder)
        }) && found.keys().all(|u| uids.contains(u));
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not exactly one container per sandbox on {holder} after 60 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    for n in &names {
        sbx.delete(n, &DeleteParams::default()).await.unwrap();
    }
    history
        .wait(WAIT, "every sandbox deleted", |t| {
            names.iter().all(|n| t.get(n).is_some_and(|t| t.deleted))
        })
        .await
        .unwrap();
    let left = containers_by_uid(&ns).await;
    assert!(left.is_empty(), "containers left: {left:?}");
    delete_namespace(&client, &ns).await;
    ctr_on(&holder_socket, &["images", "rm", &only_here])
        .await
        .unwrap();
}
