//! Sandboxes in a runtime other than runc, against a real containerd:
//! gVisor (containerd's runtime `io.containerd.runsc.v1`, runsc and its shim
//! built by test/cluster/build-gvisor.sh and put on containerd's PATH by
//! containerd.sh), and a runtime the node does not have.

mod support;

use fast_sandbox_api::agent::{ContainerState, ErrorCode};
use fast_sandbox_api::files::FileType;
use http::StatusCode;
use support::{GVISOR, TestAgent, env, exec, request, stdout};

/// Whether this machine's root may lower an oom_score_adj, which gVisor's
/// shim does as it starts.
fn may_lower_oom_score() -> bool {
    fast_sandbox_agent::runtime::may_lower_oom_score(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
    )
}

/// Fails unless the refused create of `uid` left nothing: no sandbox on
/// the agent, nothing in containerd or the state dir.
async fn assert_refused_and_gone(a: &TestAgent, uid: &str) {
    let e = a.client.get(uid).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    a.release_and_assert_nothing_left().await;
}

#[tokio::test]
async fn a_runtime_the_node_lacks_fails_the_create_naming_it() {
    let env = env();
    let a = TestAgent::start_on(&env, "no-runtime", 2, "io.containerd.nosuch.v1", |_| {}).await;
    let (code, created) = a
        .client
        .create(&request(&env, "nr", &["sleep", "100000"]))
        .await
        .unwrap();
    let e = created.unwrap_err();
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e.code, ErrorCode::RuntimeUnavailable, "{e:?}");
    assert!(
        e.message
            .contains("the node's containerd cannot run runtime io.containerd.nosuch.v1")
            && e.message.contains("containerd-shim-nosuch-v1"),
        "the message names the runtime and its shim: {}",
        e.message
    );
    assert_refused_and_gone(&a, "nr").await;
}

#[tokio::test]
async fn a_sandbox_runs_under_gvisor_with_exec_and_files() {
    let env = env();
    let a = TestAgent::start_on(&env, "gvisor", 2, GVISOR, |_| {}).await;
    let (_, created) = a
        .client
        .create(&request(&env, "gv", &["sleep", "100000"]))
        .await
        .unwrap();
    if !may_lower_oom_score() {
        // Where root lacks CAP_SYS_RESOURCE (a container without it in its
        // bounding set), gVisor's shim cannot start: the create fails
        // saying so, and nothing is left behind.
        let e = created.unwrap_err();
        assert_eq!(e.code, ErrorCode::RuntimeUnavailable, "{e:?}");
        assert!(e.message.contains("OOM Score"), "{}", e.message);
        assert_refused_and_gone(&a, "gv").await;
        return;
    }
    let info = created.unwrap();
    assert_eq!(info.state, ContainerState::Running, "{info:?}");
    let version = exec(&a.client, "gv", &["cat", "/proc/version"]).await;
    assert!(stdout(&version).contains("gvisor"), "{}", stdout(&version));
    let failed = exec(&a.client, "gv", &["sh", "-c", "exit 7"]).await;
    assert_eq!(failed.status.exit_code, Some(7));
    let written = a
        .client
        .write_file(
            "gv",
            "/tmp/note",
            Some(0o600),
            fast_sandbox_server::body::full(bytes::Bytes::from_static(b"hi")),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written.file_type, FileType::File);
    let inside = exec(&a.client, "gv", &["cat", "/tmp/note"]).await;
    assert_eq!(stdout(&inside), "hi");
    let (code, _) = a.client.delete("gv", 0).await.unwrap();
    assert!(code.is_success(), "delete: {code}");
    a.release_and_assert_nothing_left().await;
}
