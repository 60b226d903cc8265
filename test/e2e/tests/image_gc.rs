//! The kubelet's image garbage collection spares the images sandboxes use.
//!
//! A tenant's pool runs its agent on node 2, and a sandbox there runs an
//! image no pod uses (the pool keeps no warm image, so only the sandbox
//! needs it). The agent pins it. Node 2's kubelet is then restarted with
//! image GC on, and the pass it makes as it starts removes a decoy image
//! nothing uses (the pass happened) but not the sandbox's image, and a new
//! sandbox of that image still starts. Once the sandboxes are deleted, the
//! agent lets the image go. Node 2 gets its kubelet configuration and every
//! image the pass removed back.
//!
//! Runs with the fault tests, one test at a time: the restarted kubelet and
//! the pass touch the whole node.

mod tenancy;

use std::time::Duration;

use fast_sandbox_api::wellknown::{LABEL_POOL_NAMESPACE, condition};
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_e2e::cluster::{up, up_with_image_gc};
use fast_sandbox_e2e::containerd::{ctr_on, sockets};
use fast_sandbox_e2e::scenario::{AGENT_IMAGE, BUSYBOX};
use fast_sandbox_e2e::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tenancy::{Cast, WAIT, ready, running, sandbox};

const PINNED: &str = "io.cri-containerd.pinned=pinned";

/// Named images of the node at `socket`, with their labels column.
async fn images(socket: &str) -> Vec<(String, String)> {
    ctr_on(socket, &["images", "ls"])
        .await
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let labels = l.split_whitespace().last()?;
            (!name.starts_with("sha256:")).then(|| (name.to_string(), labels.to_string()))
        })
        .collect()
}

async fn labels_of(socket: &str, image: &str) -> Option<String> {
    images(socket)
        .await
        .into_iter()
        .find(|(n, _)| n == image)
        .map(|(_, l)| l)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_kubelets_image_gc_spares_what_sandboxes_use() {
    let nodes = sockets();
    assert!(
        nodes.len() >= 2,
        "needs the local cluster's two nodes (run `eval \"$(test/cluster/cluster.sh env)\"`): {nodes:?}"
    );
    let (node, socket) = nodes[1].clone();
    let cast = Cast::new("image gc", "e2e-imagegc").await;

    // A decoy nothing uses, unique to this run: the pass must remove it.
    let stamp = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let decoy_file = std::env::temp_dir().join(format!("fsb-gc-decoy-{stamp}"));
    std::fs::write(&decoy_file, &stamp).unwrap();
    let decoy = "docker.io/fast-sandbox/gc-decoy:dev";
    let loaded = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster/load-image.sh"),
    )
    .args(["--node", &node, "fast-sandbox/gc-decoy:dev"])
    .arg(format!("{}=/decoy", decoy_file.display()))
    .output()
    .unwrap();
    assert!(
        loaded.status.success(),
        "loading the decoy: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    std::fs::remove_file(&decoy_file).unwrap();

    // Everything named on the node, kept to put back what the pass takes.
    let before: Vec<String> = images(&socket)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != decoy)
        .collect();
    let backup = std::env::temp_dir().join(format!("fsb-gc-backup-{stamp}.tar"));
    let mut export = vec!["images", "export", backup.to_str().unwrap()];
    export.extend(before.iter().map(String::as_str));
    ctr_on(&socket, &export).await.unwrap();

    let pool: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": "p"},
        "spec": {
            "capacity": {"poolMin": 1, "poolMax": 1}, "maxSandboxesPerAgent": 4,
            "warmImages": [],
            "agentTemplate": {"spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "agent", "image": AGENT_IMAGE}]
            }}
        }
    }))
    .unwrap();
    ready(&cast.tenant, &cast.admin, &cast.ns, pool).await;
    let sandboxes: Api<Sandbox> = Api::namespaced(cast.tenant.clone(), &cast.ns);
    sandboxes
        .create(
            &PostParams::default(),
            &sandbox("before", BUSYBOX, &["sleep", "100000"], None),
        )
        .await
        .unwrap();
    running(&sandboxes, "before").await;
    wait_until("the sandbox's image pinned on its node", WAIT, || async {
        labels_of(&socket, BUSYBOX)
            .await
            .is_some_and(|l| l.contains(PINNED))
    })
    .await;

    // The pass.
    up_with_image_gc(&[2]).await.unwrap();
    wait_until(
        "the kubelet's pass removing the decoy",
        Duration::from_secs(120),
        || async { labels_of(&socket, decoy).await.is_none() },
    )
    .await;
    let after = images(&socket).await;
    let kept = after.iter().any(|(n, _)| n == BUSYBOX);
    let started = if kept {
        sandboxes
            .create(
                &PostParams::default(),
                &sandbox("after", BUSYBOX, &["sleep", "100000"], None),
            )
            .await
            .map_err(|e| e.to_string())
            .map(|_| ())
            .and(
                wait_for(&sandboxes, "after", WAIT, "Ready", |s: &Sandbox| {
                    s.condition(condition::READY)
                        .is_some_and(|c| c.status == "True")
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            )
    } else {
        Err("not tried".into())
    };
    // Whatever the outcome, the node gets its configuration and images
    // back before anything is asserted.
    up().await.unwrap();
    ctr_on(&socket, &["images", "import", backup.to_str().unwrap()])
        .await
        .unwrap();
    std::fs::remove_file(&backup).unwrap();
    let restored: Vec<String> = images(&socket).await.into_iter().map(|(n, _)| n).collect();
    for name in &before {
        assert!(restored.contains(name), "{name} not restored on {node}");
    }
    assert!(kept, "the pass removed the sandbox's image: {after:?}");
    started.expect("a new sandbox of the pinned image starts after the pass");

    // Deleted sandboxes: the agent lets the image go.
    let agent_uid = Api::<Pod>::namespaced(cast.admin.clone(), "fast-sandbox-system")
        .list(&ListParams::default().labels(&format!("{LABEL_POOL_NAMESPACE}={}", cast.ns)))
        .await
        .unwrap()
        .items
        .into_iter()
        .find_map(|p| p.metadata.uid)
        .expect("the pool's agent pod");
    for name in ["before", "after"] {
        sandboxes.delete(name, &Default::default()).await.unwrap();
    }
    let mark = format!("sandbox.fast.io/in-use.{agent_uid}");
    wait_until("the agent letting the image go", WAIT, || async {
        labels_of(&socket, BUSYBOX)
            .await
            .is_some_and(|l| !l.contains(&mark))
    })
    .await;
    cast.finish().await;
}
