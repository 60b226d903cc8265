//! The node janitor against a real containerd: containers of an agent pod
//! that is gone are collected by another agent of the node, fenced by the
//! labels; live agents' and foreign containers are never touched. Run
//! through `agent/tests/containerd.sh run -- cargo test -p
//! fast-sandbox-agent`; without it (or without root) every test fails.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fast_sandbox_api::agent::{ContainerState, ErrorCode, JanitorRequest};
use fast_sandbox_api::wellknown::container_labels as label;
use http::StatusCode;
use support::{Env, TestAgent, assert_nothing_left, env, pod_uid, request, wait_for};

/// Runs `ctr` against the test containerd.
fn ctr(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .arg("-a")
        .arg(&env.socket)
        .arg("-n")
        .arg(&env.namespace)
        .args(args)
        .output()
        .expect("running ctr")
}

/// A container started with `ctr run`, removed when dropped.
struct Foreign<'a> {
    env: &'a Env,
    id: String,
}

impl<'a> Foreign<'a> {
    fn run(env: &'a Env, id: &str, labels: &[&str]) -> Self {
        let mut args = vec!["run", "-d"];
        for l in labels {
            args.extend(["--label", l]);
        }
        args.extend([env.image.as_str(), id, "sleep", "300"]);
        let out = ctr(env, &args);
        assert!(
            out.status.success(),
            "ctr run {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            env,
            id: id.to_string(),
        }
    }
}

impl Drop for Foreign<'_> {
    fn drop(&mut self) {
        let _ = ctr(self.env, &["tasks", "kill", "-s", "SIGKILL", &self.id]);
        for _ in 0..100 {
            if ctr(self.env, &["tasks", "delete", &self.id])
                .status
                .success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = ctr(self.env, &["containers", "delete", &self.id]);
    }
}

/// Each test plays one node's agents, and a sweep judges every container of
/// the node (here, of the test containerd): the tests run one at a time.
static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn live(uids: &[&str]) -> JanitorRequest {
    JanitorRequest {
        live_agent_uids: uids.iter().map(|s| s.to_string()).collect(),
        namespace: None,
    }
}

async fn start(env: &Env, test: &str, root: &Path) -> TestAgent {
    let dir = root.join(pod_uid(test));
    TestAgent::start_with(env, test, 4, move |cfg| cfg.state_dir = dir).await
}

#[tokio::test]
async fn containers_of_a_gone_agent_are_collected_and_nothing_else() {
    let _node = NODE.lock().await;
    let env = env();
    // Agents share one state root, one subdirectory per pod UID, as on a node.
    let root = tempfile::tempdir().unwrap();
    let a = start(&env, "janitor-a", root.path()).await;
    let uid_a = a.agent.config().pod_uid.clone();
    for s in ["janitor-s1", "janitor-s2"] {
        let (status, _) = a
            .client
            .create(&request(&env, s, &["sleep", "300"]))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
    }
    let b = start(&env, "janitor-b", root.path()).await;
    let uid_b = b.agent.config().pod_uid.clone();
    let (status, _) = b
        .client
        .create(&request(&env, "janitor-s3", &["sleep", "300"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    // Not Fast Sandbox's: no label at all, and an agent UID without the
    // managed label.
    let agent_label = format!("{}={uid_a}", label::AGENT_UID);
    let plain = Foreign::run(&env, &format!("janitor-plain-{}", std::process::id()), &[]);
    let unmanaged = Foreign::run(
        &env,
        &format!("janitor-unmanaged-{}", std::process::id()),
        &[&agent_label],
    );

    // Every agent alive: nothing to collect.
    let report = b.client.janitor(&live(&[&uid_a, &uid_b])).await.unwrap();
    assert!(report.unwrap().removed.is_empty());

    // Agent A's pod is gone; its sandboxes keep running.
    drop(a);
    let a_dir = root.path().join(&uid_a);
    assert!(a_dir.join("logs/sandbox-janitor-s1.stdout").exists());
    // Re-placed on B, s1 finds A's container in the way: refused, and A's
    // container is left alone.
    let (status, answer) = b
        .client
        .create(&request(&env, "janitor-s1", &["sleep", "300"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{answer:?}");
    let err = answer.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContainerExists);
    assert!(err.message.contains(&uid_a), "{}", err.message);
    let task = b.cd.task("sandbox-janitor-s1").await.unwrap();
    assert!(
        task.is_some_and(|t| t.pid > 0),
        "a refused create must not touch the other agent's task"
    );

    // A sweep scoped to another namespace judges none of A's containers.
    let elsewhere = JanitorRequest {
        namespace: Some("another-namespace".into()),
        ..live(&[&uid_b])
    };
    let report = b.client.janitor(&elsewhere).await.unwrap().unwrap();
    assert!(report.removed.is_empty(), "{report:?}");

    let report = b.client.janitor(&live(&[&uid_b])).await.unwrap().unwrap();
    let removed: Vec<(&str, &str, &str)> = report
        .removed
        .iter()
        .map(|r| {
            (
                r.container_id.as_str(),
                r.sandbox_uid.as_str(),
                r.agent_uid.as_str(),
            )
        })
        .collect();
    assert_eq!(
        removed,
        [
            ("sandbox-janitor-s1", "janitor-s1", uid_a.as_str()),
            ("sandbox-janitor-s2", "janitor-s2", uid_a.as_str()),
        ]
    );
    for id in [&plain.id, &unmanaged.id] {
        assert!(
            b.cd.container(id).await.unwrap().is_some(),
            "{id} is not Fast Sandbox's and must stay"
        );
        assert!(b.cd.task(id).await.unwrap().is_some(), "{id}'s task stays");
    }
    drop((plain, unmanaged));
    assert_nothing_left(&b.cd, &uid_a, &a_dir.join("logs")).await;
    assert!(!a_dir.exists(), "the gone agent's state dir is removed");
    let s3 = b.client.get("janitor-s3").await.unwrap().unwrap();
    assert_eq!(s3.state, ContainerState::Running);
    assert!(
        b.registry
            .render()
            .contains("agent_janitor_removed_total 2"),
        "{}",
        b.registry.render()
    );

    // Idempotent; and the id is free again.
    let report = b.client.janitor(&live(&[&uid_b])).await.unwrap().unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let (status, _) = b
        .client
        .create(&request(&env, "janitor-s1", &["sleep", "300"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);

    for s in ["janitor-s1", "janitor-s3"] {
        let (status, _) = b.client.delete(s, 0).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    all_gone(&b, root.path()).await;
}

/// Waits until `a`'s containers are gone, then fails if anything of it is
/// left (its state directory is under `root`).
async fn all_gone(a: &TestAgent, root: &Path) {
    let uid = a.agent.config().pod_uid.clone();
    let cd = a.cd.clone();
    wait_for(
        "the agent's containers gone",
        Duration::from_secs(10),
        || {
            let (cd, uid) = (cd.clone(), uid.clone());
            async move {
                cd.list_containers(vec![format!("labels.\"{}\"=={uid}", label::AGENT_UID)])
                    .await
                    .is_ok_and(|c| c.is_empty())
            }
        },
    )
    .await;
    assert_nothing_left(&cd, &uid, &root.join(&uid).join("logs")).await;
}

/// An agent sharing `root` that keeps `size` pre-started sandboxes of the
/// test image, started once they are ready.
async fn start_stocked(env: &Env, test: &str, root: &Path, size: usize) -> TestAgent {
    let (dir, image) = (root.join(pod_uid(test)), env.image.clone());
    let a = TestAgent::start_with(env, test, 4, move |cfg| {
        cfg.state_dir = dir;
        cfg.stock_size = size;
        cfg.stock_images = vec![image];
    })
    .await;
    a.wait_stock(size).await;
    a
}

/// A claimed container has an id of its own, so containerd cannot refuse a
/// claim the way it refuses a cold create whose id is taken: the claim looks
/// for another agent's container of the sandbox itself, and leaves its stock
/// untouched when it finds one. A sandbox still where admission bound it
/// (`first_placement`) cannot have been held by another agent and is not
/// looked for.
#[tokio::test]
async fn a_claim_meets_a_gone_agents_container_unless_first_placed() {
    let _node = NODE.lock().await;
    let env = env();
    let root = tempfile::tempdir().unwrap();
    let a = start_stocked(&env, "claim-check-a", root.path(), 1).await;
    let uid_a = a.agent.config().pod_uid.clone();
    let mut req = request(&env, "claim-check-s", &["sleep", "300"]);
    req.first_placement = true;
    let info = a.client.create(&req).await.unwrap().1.unwrap();
    assert!(info.container_id.starts_with("stock-"), "{info:?}");
    assert!(
        !a.registry
            .render()
            .contains("agent_create_seconds_count{stage=\"claim_check\"}"),
        "a first placement is not looked for:\n{}",
        a.registry.render()
    );
    a.agent.release_stock().await;
    drop(a);

    // Re-placed on B (not where admission bound it): refused, B's stock
    // intact, A's container left alone.
    let b = start_stocked(&env, "claim-check-b", root.path(), 1).await;
    let uid_b = b.agent.config().pod_uid.clone();
    req.first_placement = false;
    let (status, answer) = b.client.create(&req).await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{answer:?}");
    let err = answer.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContainerExists);
    assert!(err.message.contains(&uid_a), "{}", err.message);
    assert_eq!(b.agent.stock_ready(), 1, "the refused claim took no stock");
    assert!(
        b.cd.task(&info.container_id)
            .await
            .unwrap()
            .is_some_and(|t| t.pid > 0),
        "a refused claim must not touch the other agent's task"
    );

    // Swept, the claim goes through.
    let report = b.client.janitor(&live(&[&uid_b])).await.unwrap().unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    let claimed = b.client.create(&req).await.unwrap().1.unwrap();
    assert!(claimed.container_id.starts_with("stock-"), "{claimed:?}");
    assert!(
        b.registry
            .render()
            .contains("agent_create_seconds_count{stage=\"claim_check\"} 1"),
        "{}",
        b.registry.render()
    );

    b.client.delete(&req.uid, 0).await.unwrap().1.unwrap();
    b.agent.release_stock().await;
    all_gone(&b, root.path()).await;
    assert_nothing_left(&b.cd, &uid_a, &root.path().join(&uid_a).join("logs")).await;
}
