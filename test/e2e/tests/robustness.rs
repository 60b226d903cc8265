//! One tenant must never stop the service, and nothing is lost or run
//! twice: the scenarios of odd input and faults, each ending on what a user
//! sees (phase, reason) and what the node holds (exactly one container,
//! nothing left).
//!
//! These restart or freeze shared components, so they run one at a time
//! with the fault tests.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use fast_sandbox_api::wellknown::{FINALIZER, condition, reason};
use fast_sandbox_api::{FailurePolicy, Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_e2e::containerd::sandbox_containers;
use fast_sandbox_e2e::scenario::{
    BUSYBOX, SYSTEM_NAMESPACE, agent_pods, deployment_settled, ready_pool,
    signal_container_process, sleeper,
};
use fast_sandbox_e2e::{
    cluster_client, delete_namespace, impersonating, namespace, wait_for, wait_gone,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const COMPONENTS: [&str; 4] = [
    "fast-sandbox-webhook",
    "fast-sandbox-controller",
    "fast-sandbox-extender",
    "fast-sandbox-gateway",
];

fn running(s: &Sandbox) -> bool {
    s.phase() == SandboxPhase::Running
        && s.condition(condition::READY)
            .is_some_and(|c| c.status == "True")
}

fn job(name: &str, pool: &str, command: &[&str]) -> Sandbox {
    serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": name},
        "spec": {"image": BUSYBOX, "command": command, "poolRef": pool}
    }))
    .unwrap()
}

/// Writes `object` straight into etcd, past admission and the schema: the
/// way an object stored before an upgrade, or by a component with other
/// types, looks to ours.
fn etcd_put(key: &str, object: &serde_json::Value) {
    let port = std::env::var("FAST_SANDBOX_ETCD_PORT").unwrap_or_else(|_| "12379".into());
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &format!("http://127.0.0.1:{port}"),
            "put",
            key,
        ])
        .arg(object.to_string())
        .output()
        .expect("etcdctl runs");
    assert!(
        out.status.success(),
        "etcdctl put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarts every Fast Sandbox component and waits until each is ready.
async fn restart_all(client: &Client) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let stamp = chrono::Utc::now().to_rfc3339();
    for d in COMPONENTS {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": stamp}}}}});
        api.patch(d, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    for d in COMPONENTS {
        deployment_settled(client, d, WAIT)
            .await
            .unwrap_or_else(|e| {
                panic!("{d} did not turn ready after a restart with odd objects present: {e}")
            });
    }
}

/// A namespace `prefix-…` with a pool `p` of one agent of `slots` slots,
/// and sandbox `name` running `command` there.
async fn one_running(
    client: &Client,
    prefix: &str,
    slots: i32,
    name: &str,
    command: &[&str],
) -> (String, Api<Sandbox>, Sandbox) {
    let ns = namespace(client, prefix).await.unwrap();
    ready_pool(client, &ns, "p", (1, 1), slots, WAIT)
        .await
        .unwrap();
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    sandboxes
        .create(&PostParams::default(), &job(name, "p", command))
        .await
        .unwrap();
    let sb = wait_for(&sandboxes, name, WAIT, "Running", running)
        .await
        .unwrap();
    (ns, sandboxes, sb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_objects_present_while_every_component_restarts() {
    let client = cluster_client("odd objects").await;
    let ns = namespace(&client, "e2e-odd").await.unwrap();
    ready_pool(&client, &ns, "p", (1, 2), 4, WAIT)
        .await
        .unwrap();
    // A Sandbox with ten fractional digits in a time, and a pool whose
    // capacity is not a number: stored, unreadable by our types.
    let meta = |name: &str| {
        json!({"name": name, "namespace": ns, "uid": format!("odd-{name}-{}", std::process::id()),
               "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1})
    };
    etcd_put(
        &format!("/registry/sandbox.fast.io/sandboxes/{ns}/odd"),
        &json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": meta("odd"),
                "spec": {"image": BUSYBOX, "poolRef": "p", "expireTime": "2099-01-01T00:00:00.1234567890Z"}}),
    );
    etcd_put(
        &format!("/registry/sandbox.fast.io/sandboxpools/{ns}/odd-pool"),
        &json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "metadata": meta("odd-pool"),
                "spec": {"capacity": {"poolMin": "three"}}}),
    );
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<Sandbox>(&()),
    );
    assert!(
        raw.get_opt("odd").await.unwrap().is_some(),
        "the apiserver serves the odd object"
    );

    restart_all(&client).await;

    // Everyone else is served as before.
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    sandboxes
        .create(
            &PostParams::default(),
            &job("after", "p", &["/bin/sleep", "600"]),
        )
        .await
        .unwrap();
    wait_for(
        &sandboxes,
        "after",
        WAIT,
        "Running next to odd objects",
        running,
    )
    .await
    .unwrap();
    // The odd objects can still be deleted (nothing holds them).
    raw.delete("odd", &DeleteParams::default()).await.unwrap();
    let raw_pools: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<SandboxPool>(&()),
    );
    raw_pools
        .delete("odd-pool", &DeleteParams::default())
        .await
        .unwrap();
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deleted_and_created_again_gets_working_agents() {
    let client = cluster_client("namespace recreation").await;
    let name = format!("e2e-again-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for round in 0..2 {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        ready_pool(&client, &name, "p", (1, 1), 2, WAIT)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the pool's agent never became ready: {e}"));
        let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &name);
        sandboxes
            .create(
                &PostParams::default(),
                &job("s", "p", &["/bin/sleep", "600"]),
            )
            .await
            .unwrap();
        wait_for(
            &sandboxes,
            "s",
            WAIT,
            &format!("round {round}: Running"),
            running,
        )
        .await
        .unwrap();
        namespaces
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&namespaces, &name, WAIT).await.unwrap();
        assert!(
            agent_pods(&client, &name, "p").await.unwrap().is_empty(),
            "round {round}: agents outlived their namespace"
        );
        assert!(
            sandbox_containers(&name).await.unwrap().is_empty(),
            "round {round}: containers outlived their namespace"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sandboxes_hold_their_slots_and_waiting_is_visible() {
    let client = cluster_client("finished sandboxes hold slots").await;
    let ns = namespace(&client, "e2e-slots").await.unwrap();
    ready_pool(&client, &ns, "p", (1, 1), 1, WAIT)
        .await
        .unwrap();
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    sandboxes
        .create(&PostParams::default(), &job("done", "p", &["/bin/true"]))
        .await
        .unwrap();
    wait_for(&sandboxes, "done", WAIT, "Succeeded", |s: &Sandbox| {
        s.phase() == SandboxPhase::Succeeded
    })
    .await
    .unwrap();
    // Its container (and logs) stay until it is deleted, and so does its
    // slot: the next one waits, and says why.
    sandboxes
        .create(
            &PostParams::default(),
            &job("next", "p", &["/bin/sleep", "600"]),
        )
        .await
        .unwrap();
    let waiting = wait_for(
        &sandboxes,
        "next",
        WAIT,
        "Pending with NoCapacity",
        |s: &Sandbox| {
            s.phase() == SandboxPhase::Pending
                && s.condition(condition::SCHEDULED)
                    .is_some_and(|c| c.status == "False" && c.reason == reason::NO_CAPACITY)
        },
    )
    .await
    .unwrap();
    assert!(waiting.spec.agent_ref.is_none(), "not sent to a full agent");
    sandboxes
        .delete("done", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &sandboxes,
        "next",
        WAIT,
        "Running once the slot freed",
        running,
    )
    .await
    .unwrap();
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalizer_removed_by_force_still_takes_the_container_along() {
    let client = cluster_client("finalizer removal").await;
    let (ns, sandboxes, s) =
        one_running(&client, "e2e-final", 2, "s", &["/bin/sleep", "600"]).await;
    let uid = s.uid().unwrap();
    assert_eq!(
        sandbox_containers(&ns)
            .await
            .unwrap()
            .get(&uid)
            .map(Vec::len),
        Some(1)
    );
    // Only the controller may drop the finalizer; act as it would if it
    // were tricked into it, then delete the object.
    let as_controller =
        impersonating("system:serviceaccount:fast-sandbox-system:fast-sandbox-controller").await;
    let forced: Api<Sandbox> = Api::namespaced(as_controller, &ns);
    let finalizers: Vec<String> = s
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    forced
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": finalizers}})),
        )
        .await
        .unwrap();
    sandboxes
        .delete("s", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&sandboxes, "s", WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: BTreeMap<String, Vec<String>> = sandbox_containers(&ns).await.unwrap();
        if !left.contains_key(&uid) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the container of a sandbox deleted without its finalizer is still there 30 s later: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_is_not_replaced_while_its_container_may_run() {
    let client = cluster_client("partition").await;
    let ns = namespace(&client, "e2e-partition").await.unwrap();
    ready_pool(&client, &ns, "p", (2, 2), 4, WAIT)
        .await
        .unwrap();
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    sandboxes
        .create(
            &PostParams::default(),
            &sleeper("phoenix", "p", FailurePolicy::AutoRecreate),
        )
        .await
        .unwrap();
    let before = wait_for(&sandboxes, "phoenix", WAIT, "Running", running)
        .await
        .unwrap();
    let uid = before.uid().unwrap();
    let agent = before.spec.agent_ref.clone().unwrap().pod_name;
    let pod = agent_pods(&client, &ns, "p")
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name_any() == agent)
        .expect("its agent pod");
    // Frozen: it answers nothing, its sandboxes keep running.
    signal_container_process(&pod, "agent", "STOP")
        .await
        .unwrap();
    let lost = wait_for(&sandboxes, "phoenix", WAIT, "Lost", |s: &Sandbox| {
        s.phase() == SandboxPhase::Lost
    })
    .await;
    // Watched for ten seconds more: it must stay bound to the frozen agent,
    // never started elsewhere.
    let moved = wait_for(
        &sandboxes,
        "phoenix",
        Duration::from_secs(10),
        "re-placed while its agent is frozen",
        |s: &Sandbox| {
            s.spec.agent_ref.as_ref().map(|r| r.pod_name.as_str()) != Some(agent.as_str())
        },
    )
    .await;
    let during = sandboxes.get("phoenix").await.unwrap();
    let containers = sandbox_containers(&ns).await.unwrap();
    signal_container_process(&pod, "agent", "CONT")
        .await
        .unwrap();
    let lost = lost.unwrap();
    assert!(
        moved.is_err(),
        "re-placed while its container may still run: {moved:?}"
    );
    assert_eq!(
        lost.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some(reason::AGENT_LOST)
    );
    assert_eq!(
        during.spec.agent_ref.map(|r| r.pod_name),
        Some(agent.clone()),
        "an AutoRecreate sandbox must not be re-placed while its container may run"
    );
    assert_eq!(
        containers.get(&uid).map(Vec::len),
        Some(1),
        "exactly one container: {containers:?}"
    );
    // Back: the same container, Running again.
    let after = wait_for(&sandboxes, "phoenix", WAIT, "Running again", running)
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().and_then(|s| s.container_id.clone()),
        before.status.and_then(|s| s.container_id)
    );
    assert_eq!(
        sandbox_containers(&ns)
            .await
            .unwrap()
            .get(&uid)
            .map(Vec::len),
        Some(1)
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_during_an_exec_fails_it_clearly_and_keeps_the_sandbox() {
    let client = cluster_client("agent restart during exec").await;
    let (ns, sandboxes, before) = one_running(
        &client,
        "e2e-exec-restart",
        4,
        "sb",
        &["/bin/sleep", "3600"],
    )
    .await;
    let opts = fast_sandbox_cli::exec::ExecOptions {
        command: vec!["sh".into(), "-c".into(), "echo started; sleep 600".into()],
        ..Default::default()
    };
    let (out_tx, mut out_rx) = tokio::io::duplex(1024);
    let exec = {
        let (client, ns) = (client.clone(), ns.clone());
        tokio::spawn(async move {
            let io = fast_sandbox_cli::exec::Streams {
                stdin: std::io::Cursor::new(Vec::new()),
                stdout: out_tx,
                stderr: Vec::new(),
                resize: None,
            };
            fast_sandbox_cli::exec::exec(client, &ns, "sb", &opts, io).await
        })
    };
    // Once the command runs, the agent process dies under it.
    let mut started = [0u8; 8];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut out_rx, &mut started),
    )
    .await
    .expect("the exec started within 120 s")
    .unwrap();
    let agent = before.spec.agent_ref.clone().unwrap().pod_name;
    let pod = agent_pods(&client, &ns, "p")
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name_any() == agent)
        .expect("its agent pod");
    signal_container_process(&pod, "agent", "KILL")
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, exec)
        .await
        .expect("the exec ended within 120 s of its agent's death")
        .unwrap();
    let err =
        ended.expect_err("an exec cut off by its agent's death is an error, not an exit code");
    assert!(
        err.to_string().contains("cut off") || err.to_string().contains("broke"),
        "{err}"
    );
    // The sandbox itself never stopped.
    let after = wait_for(
        &sandboxes,
        "sb",
        WAIT,
        "Running after the agent came back",
        running,
    )
    .await
    .unwrap();
    assert_eq!(
        after.status.and_then(|s| s.container_id),
        before.status.and_then(|s| s.container_id)
    );
    delete_namespace(&client, &ns).await;
}
