//! The original project's flow and the basic promises, on the real cluster
//! with Fast Sandbox deployed as a user deploys it.

use std::process::Command;
use std::time::Duration;

use fast_sandbox_api::wellknown::{condition, reason};
use fast_sandbox_api::{ExposedPort, Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_cli::{LogOptions, logs};
use fast_sandbox_e2e::scenario::{BUSYBOX, ready_pool};
use fast_sandbox_e2e::{
    cluster_client, delete_namespace, editor, impersonating, namespace, wait_for, wait_gone,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// A pool of 1..=3 agents with `slots` each, once one agent is ready.
async fn pool(client: &Client, ns: &str, name: &str, slots: i32) -> Api<SandboxPool> {
    ready_pool(client, ns, name, (1, 3), slots, Duration::from_secs(180))
        .await
        .unwrap()
}

/// The suite's client, a namespace of its own with a ready pool `p` (4
/// slots per agent), and the sandboxes there.
async fn setup(test: &str, prefix: &str) -> (Client, String, Api<Sandbox>) {
    let client = cluster_client(test).await;
    let ns = namespace(&client, prefix).await.unwrap();
    pool(&client, &ns, "p", 4).await;
    let sbx = Api::namespaced(client.clone(), &ns);
    (client, ns, sbx)
}

fn sandbox(name: &str, pool: &str, command: &[&str]) -> Sandbox {
    serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": BUSYBOX, "command": command, "poolRef": pool}
    }))
    .unwrap()
}

const MINUTE: Duration = Duration::from_secs(60);

/// Waits (at most `within`) until sandbox `name` is in `phase`.
async fn reaches(sbx: &Api<Sandbox>, name: &str, phase: SandboxPhase, within: Duration) {
    wait_for(sbx, name, within, phase.as_str(), |s: &Sandbox| {
        s.phase() == phase
    })
    .await
    .unwrap();
}

fn ready(s: &Sandbox) -> bool {
    s.condition(condition::READY)
        .is_some_and(|c| c.status == "True")
}

/// Container ids in every node's containerd (k8s.io namespace).
fn containerd_ids() -> Vec<String> {
    let mut ids = Vec::new();
    for (_, sock) in fast_sandbox_e2e::containerd::sockets() {
        let out = Command::new("ctr")
            .args(["-a", &sock, "-n", "k8s.io", "containers", "ls", "-q"])
            .output()
            .expect("ctr runs");
        assert!(
            out.status.success(),
            "ctr -a {sock} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    ids
}

#[tokio::test]
async fn original_flow_pool_sandbox_running_then_deleted() {
    let client = cluster_client("original flow").await;
    let ns = namespace(&client, "e2e-flow").await.unwrap();
    pool(&client, &ns, "default-pool", 4).await;
    let sbx: Api<Sandbox> = Api::namespaced(client.clone(), &ns);

    let created = sbx
        .create(
            &PostParams::default(),
            &sandbox("my-sandbox", "default-pool", &["/bin/sleep", "100"]),
        )
        .await
        .unwrap();
    let agent = created
        .spec
        .agent_ref
        .clone()
        .expect("the webhook binds at admission");
    assert!(
        !agent.pod_name.is_empty() && !agent.node_name.is_empty(),
        "{agent:?}"
    );

    let running = wait_for(
        &sbx,
        "my-sandbox",
        Duration::from_secs(60),
        "Running and Ready",
        |s: &Sandbox| s.phase() == SandboxPhase::Running && ready(s),
    )
    .await
    .unwrap();
    let status = running.status.clone().unwrap();
    let cid = status
        .container_id
        .clone()
        .expect("containerID is reported");
    assert_eq!(status.node_name.as_deref(), Some(agent.node_name.as_str()));
    assert!(status.started_at.is_some());
    assert!(
        containerd_ids().contains(&cid),
        "container {cid} must exist in containerd"
    );

    // `kubectl wait` works against the same condition.
    let out = Command::new("kubectl")
        .args([
            "-n",
            &ns,
            "wait",
            "--for=condition=Ready",
            "sandbox/my-sandbox",
            "--timeout=10s",
        ])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    sbx.delete("my-sandbox", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&sbx, "my-sandbox", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        !containerd_ids().contains(&cid),
        "container {cid} must be gone from containerd"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn exit_codes_become_phases() {
    let (client, ns, sbx) = setup("exit codes", "e2e-exit").await;
    sbx.create(
        &PostParams::default(),
        &sandbox("ok", "p", &["/bin/sh", "-c", "exit 0"]),
    )
    .await
    .unwrap();
    sbx.create(
        &PostParams::default(),
        &sandbox("bad", "p", &["/bin/sh", "-c", "exit 3"]),
    )
    .await
    .unwrap();
    let ok = wait_for(
        &sbx,
        "ok",
        Duration::from_secs(60),
        "Succeeded",
        |s: &Sandbox| s.phase() == SandboxPhase::Succeeded,
    )
    .await
    .unwrap();
    assert_eq!(ok.status.unwrap().exit_code, Some(0));
    let bad = wait_for(
        &sbx,
        "bad",
        Duration::from_secs(60),
        "Failed",
        |s: &Sandbox| s.phase() == SandboxPhase::Failed,
    )
    .await
    .unwrap();
    assert_eq!(bad.status.unwrap().exit_code, Some(3));
    // A command that is not in the image fails for good, as a Pod's would,
    // instead of being retried.
    sbx.create(
        &PostParams::default(),
        &sandbox("missing", "p", &["/no/such/binary"]),
    )
    .await
    .unwrap();
    let missing = wait_for(
        &sbx,
        "missing",
        Duration::from_secs(60),
        "Failed",
        |s: &Sandbox| s.phase() == SandboxPhase::Failed,
    )
    .await
    .unwrap()
    .status
    .unwrap();
    assert_eq!(missing.reason.as_deref(), Some(reason::START_ERROR));
    assert!(
        missing
            .message
            .as_deref()
            .is_some_and(|m| m.contains("/no/such/binary")),
        "{missing:?}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn admission_binds_dry_runs_reserve_nothing_and_refuses_bad_input() {
    let client = cluster_client("admission").await;
    let ns = namespace(&client, "e2e-admission").await.unwrap();
    let pools = pool(&client, &ns, "p", 1).await;
    let sbx: Api<Sandbox> = Api::namespaced(client.clone(), &ns);

    // A dry run is bound in the answer but takes no slot: the one slot of
    // the one agent is still free for a real sandbox afterwards.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for _ in 0..3 {
        let answer = sbx
            .create(&dry, &sandbox("dry", "p", &["/bin/sleep", "30"]))
            .await
            .unwrap();
        assert!(
            answer.spec.agent_ref.is_some(),
            "a dry run shows the binding"
        );
    }
    let real = sbx
        .create(
            &PostParams::default(),
            &sandbox("real", "p", &["/bin/sleep", "30"]),
        )
        .await
        .unwrap();
    assert!(
        real.spec.agent_ref.is_some(),
        "the slot was not taken by the dry runs"
    );
    let _ = pools;

    // Invalid input is refused with the field named.
    let mut bad = sandbox("bad-env", "p", &["/bin/true"]);
    bad.spec.env = vec![fast_sandbox_api::EnvVar {
        name: "1BAD".into(),
        value: "x".into(),
    }];
    let err = sbx
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.env[0].name"), "{err}");
    let err = sbx
        .create(
            &PostParams::default(),
            &sandbox("no-pool", "missing-pool", &["/bin/true"]),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.poolRef"), "{err}");
    delete_namespace(&client, &ns).await;
}

/// `kubectl sandbox logs` (the plugin built from `cli/`) for a sandbox on a
/// real agent: stdout and stderr apart, after the end and followed live
/// until the process exits.
#[tokio::test]
async fn logs_through_kubectl_sandbox() {
    let (client, ns, sbx) = setup("logs", "e2e-logs").await;
    sbx.create(
        &PostParams::default(),
        &sandbox(
            "done",
            "p",
            &["/bin/sh", "-c", "echo hello; echo oops >&2; echo bye"],
        ),
    )
    .await
    .unwrap();
    // Prints, pauses, prints again: a follower sees both and then the end.
    sbx.create(
        &PostParams::default(),
        &sandbox(
            "live",
            "p",
            &["/bin/sh", "-c", "echo first; sleep 2; echo second"],
        ),
    )
    .await
    .unwrap();
    reaches(&sbx, "live", SandboxPhase::Running, MINUTE).await;
    let mut followed = Vec::new();
    let follow = LogOptions {
        follow: true,
        ..LogOptions::default()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        logs(client.clone(), &ns, "live", follow, &mut followed),
    )
    .await
    .expect("following ends when the process exits")
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&followed), "first\nsecond\n");

    reaches(&sbx, "done", SandboxPhase::Succeeded, MINUTE).await;
    let mut out = Vec::new();
    logs(client.clone(), &ns, "done", LogOptions::default(), &mut out)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "hello\nbye\n");

    // As a user who may only `edit` the namespace (the built-in role our
    // ClusterRoles aggregate into), and as one who may do nothing there.
    let mut as_editor = Vec::new();
    logs(
        editor(&client, &ns, "e2e-editor").await,
        &ns,
        "done",
        LogOptions::default(),
        &mut as_editor,
    )
    .await
    .expect("an editor of the namespace reads its sandboxes' logs");
    assert_eq!(String::from_utf8_lossy(&as_editor), "hello\nbye\n");
    let refused = logs(
        impersonating("e2e-stranger").await,
        &ns,
        "done",
        LogOptions::default(),
        &mut Vec::new(),
    )
    .await;
    assert!(refused.is_err(), "a user without a role reads nothing");

    // Through kubectl itself, which finds the plugin on PATH.
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.to_path_buf()))
        .expect("the test binary's directory");
    assert!(
        bin_dir.join("kubectl-sandbox").exists(),
        "no kubectl-sandbox in {}: build it with `cargo build -p fast-sandbox-cli`",
        bin_dir.display()
    );
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args(["sandbox", "logs", "done", "-n", &ns, "--stderr"])
        .env("PATH", &path)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl sandbox logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "oops\n");
    let missing = Command::new("kubectl")
        .args(["sandbox", "logs", "nope", "-n", &ns])
        .env("PATH", &path)
        .output()
        .expect("kubectl runs");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("nope") && err.contains("not found"),
        "a missing sandbox is named: {err}"
    );
    delete_namespace(&client, &ns).await;
}

/// An exposed port is reachable at `status.endpoints` (the agent pod's IP
/// and a port it forwards into the sandbox); the endpoint goes with the
/// sandbox.
#[tokio::test]
async fn exposed_port_is_reachable_at_the_status_endpoint() {
    let (client, ns, sbx) = setup("exposed ports", "e2e-ports").await;
    let mut web = sandbox(
        "web",
        "p",
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/w && echo hello > /tmp/w/i && exec httpd -f -p 8080 -h /tmp/w",
        ],
    );
    web.spec.exposed_ports = vec![ExposedPort {
        name: Some("http".into()),
        port: 8080,
        ..Default::default()
    }];
    sbx.create(&PostParams::default(), &web).await.unwrap();
    let running = wait_for(
        &sbx,
        "web",
        Duration::from_secs(60),
        "web Running with an endpoint",
        |s: &Sandbox| {
            s.phase() == SandboxPhase::Running
                && s.status.as_ref().is_some_and(|st| !st.endpoints.is_empty())
        },
    )
    .await
    .unwrap();
    let endpoint = running.status.unwrap().endpoints[0].clone();
    assert_eq!(endpoint.name.as_deref(), Some("http"));
    let url = format!("http://{}/i", endpoint.address);
    // httpd binds a moment after it starts; nothing to watch but its answer.
    let mut answer = String::new();
    for _ in 0..100 {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "2", &url])
            .output()
            .expect("curl runs");
        if out.status.success() {
            answer = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, "hello\n", "GET {url}");
    sbx.delete("web", &DeleteParams::default()).await.unwrap();
    wait_gone(&sbx, "web", Duration::from_secs(60))
        .await
        .unwrap();
    let after = Command::new("curl")
        .args(["-sf", "--max-time", "2", &url])
        .output()
        .expect("curl runs");
    assert!(!after.status.success(), "{url} still answers after delete");
    delete_namespace(&client, &ns).await;
}

/// `spec.terminationGracePeriodSeconds` reaches the agent. A plain `sleep`
/// as PID 1 ignores SIGTERM, so its delete waits out the whole grace period:
/// deleted together, the one whose grace was lowered to 0 after binding is
/// gone while the one keeping 30 s is still Terminating. An `edit` tenant
/// may change the field but not past its maximum, and the error names it;
/// a user without a role in the namespace may not touch it.
#[tokio::test]
async fn the_termination_grace_period_reaches_the_agent() {
    let (client, ns, _) = setup("termination grace", "e2e-grace").await;
    let sbx: Api<Sandbox> = Api::namespaced(editor(&client, &ns, "grace-tenant").await, &ns);
    let mut s = sandbox("quick", "p", &["/bin/sleep", "3600"]);
    s.spec.termination_grace_period_seconds = Some(301);
    let err = sbx.create(&PostParams::default(), &s).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.terminationGracePeriodSeconds"),
        "{err}"
    );
    s.spec.termination_grace_period_seconds = Some(30);
    sbx.create(&PostParams::default(), &s).await.unwrap();
    let mut slow = sandbox("slow", "p", &["/bin/sleep", "3600"]);
    slow.spec.termination_grace_period_seconds = Some(30);
    sbx.create(&PostParams::default(), &slow).await.unwrap();
    for name in ["quick", "slow"] {
        reaches(&sbx, name, SandboxPhase::Running, MINUTE).await;
    }

    let grace = |g: i64| Patch::Merge(json!({"spec": {"terminationGracePeriodSeconds": g}}));
    let err = sbx
        .patch("quick", &PatchParams::default(), &grace(301))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.terminationGracePeriodSeconds"),
        "{err}"
    );
    let outsider: Api<Sandbox> = Api::namespaced(impersonating("grace-outsider").await, &ns);
    let err = outsider
        .patch("quick", &PatchParams::default(), &grace(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 403),
        "{err}"
    );
    sbx.patch("quick", &PatchParams::default(), &grace(0))
        .await
        .unwrap();

    for name in ["slow", "quick"] {
        sbx.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_gone(&sbx, "quick", Duration::from_secs(20))
        .await
        .expect("a sandbox with a grace period of 0 is gone well before 20 s");
    // Deleted at the same moment, the other is still Terminating: its
    // sleep ignores SIGTERM for the 30 s grace period.
    reaches(
        &sbx,
        "slow",
        SandboxPhase::Terminating,
        Duration::from_secs(10),
    )
    .await;
    wait_gone(&sbx, "slow", Duration::from_secs(60))
        .await
        .unwrap();
    delete_namespace(&client, &ns).await;
}
