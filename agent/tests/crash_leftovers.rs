//! What a containerd crash in the middle of a create leaves behind: the
//! directory of a task that never got a shim. containerd refuses every
//! later task under that id (`mkdir ...: file exists`) until it restarts;
//! the agent must still start the sandbox, exactly once, and leave nothing
//! when it is deleted. So must a container record such a create could not
//! delete.

mod support;

use std::collections::HashMap;

use fast_sandbox_agent::runtime::ContainerRecord;
use fast_sandbox_api::agent::ContainerState;
use fast_sandbox_api::wellknown::container_labels as label;
use http::StatusCode;
use support::{TestAgent, env, request};

#[tokio::test]
async fn a_dead_tasks_directory_does_not_block_its_sandbox() {
    let env = env();
    let a = TestAgent::start(&env, "leftovers", 2).await;
    // The private containerd keeps its state beside its socket.
    let state = env.socket.parent().unwrap().join("state");
    assert!(
        state.is_dir(),
        "containerd state directory {} not found",
        state.display()
    );
    // What containerd kept when it died after making the task's directory
    // and before its shim ran.
    let stale = state
        .join("io.containerd.runtime.v2.task")
        .join(&env.namespace)
        .join("sandbox-leftover-1");
    std::fs::create_dir_all(stale.join("rootfs")).unwrap();
    std::fs::write(stale.join("config.json"), b"{}").unwrap();

    let req = request(&env, "leftover-1", &["sleep", "600"]);
    let (status, info) = a.client.create(&req).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{info:?}");
    let info = info.unwrap();
    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(info.container_id, "sandbox-leftover-1-1");
    let containers =
        a.cd.list_containers(vec![format!(
            "labels.\"{}\"==leftover-1",
            label::SANDBOX_UID
        )])
        .await
        .unwrap();
    let ids: Vec<_> = containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["sandbox-leftover-1-1"], "exactly one container");
    assert!(
        a.registry
            .render()
            .contains("agent_stale_task_directories_total 1"),
        "the fresh id is counted"
    );

    // A retried create finds the sandbox instead of making a second one.
    let (status, again) = a.client.create(&req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again.unwrap().container_id, "sandbox-leftover-1-1");

    a.client.delete("leftover-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
    std::fs::remove_dir_all(&stale).unwrap();
}

#[tokio::test]
async fn a_record_left_by_a_create_that_could_not_clean_up_is_replaced() {
    let env = env();
    let a = TestAgent::start(&env, "leftover-record", 2).await;
    // A create that died with containerd left its record (no task) and
    // could not delete it; the agent's table does not know it.
    let pod_uid = a.agent.config().pod_uid.clone();
    a.cd.create_container(
        ContainerRecord {
            id: "sandbox-leftover-2".into(),
            image: env.image.clone(),
            labels: HashMap::from([
                (label::SANDBOX_UID.to_string(), "leftover-2".to_string()),
                (label::AGENT_UID.to_string(), pod_uid.clone()),
                (label::MANAGED.to_string(), "true".to_string()),
            ]),
            spec_json: b"{}".to_vec(),
            snapshot_key: format!("fast-sandbox/{pod_uid}/sandbox-leftover-2"),
        },
        None,
    )
    .await
    .unwrap();
    let req = request(&env, "leftover-2", &["sleep", "600"]);

    let (status, info) = a.client.create(&req).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{info:?}");
    let info = info.unwrap();
    assert_eq!(info.state, ContainerState::Running);
    let containers =
        a.cd.list_containers(vec![format!(
            "labels.\"{}\"==leftover-2",
            label::SANDBOX_UID
        )])
        .await
        .unwrap();
    assert_eq!(containers.len(), 1, "exactly one container: {containers:?}");
    a.client.delete("leftover-2", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}
