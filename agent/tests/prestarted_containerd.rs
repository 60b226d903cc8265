//! containerd restarts while the agent holds a full stock of pre-started
//! sandboxes and a claimed one runs: the claimed sandbox keeps running,
//! the stock survives (the next creates are all claims), refills, and
//! nothing is left once it is released. Alone in its test binary: it
//! restarts the private containerd every other test uses.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fast_sandbox_api::agent::{ContainerState, ErrorCode};
use support::{Env, TestAgent, env, request, wait_for};

const STOCK: usize = 4;

/// Stops the private containerd `agent/tests/containerd.sh` started and
/// starts it again with the same config, recording the new PID where the
/// script stops it.
async fn restart_containerd(env: &Env) {
    let dir = PathBuf::from(std::env::var("FAST_SANDBOX_TEST_DIR").unwrap_or_else(|_| {
        panic!("FAST_SANDBOX_TEST_DIR is not set: start containerd with agent/tests/containerd.sh")
    }));
    let pid_file = dir.join("containerd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("containerd.pid of the private containerd")
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(
        "containerd to exit",
        Duration::from_secs(20),
        || async move { !std::path::Path::new(&format!("/proc/{pid}")).exists() },
    )
    .await;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    // Outlives this test: containerd.sh stops it by the PID file, as it
    // does the containerd it started.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting containerd again");
    std::fs::write(&pid_file, child.id().to_string()).unwrap();
    let socket = env.socket.clone();
    wait_for(
        "containerd to answer again",
        Duration::from_secs(20),
        || {
            let socket = socket.clone();
            async move {
                Command::new("ctr")
                    .arg("-a")
                    .arg(&socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_stock_survives_a_containerd_restart() {
    let env = env();
    let a = TestAgent::start_stocked(&env, "cd-restart", 8, STOCK).await;
    let keep = a
        .client
        .create(&request(&env, "cd-keep", &["sleep", "600"]))
        .await
        .unwrap()
        .1
        .unwrap();
    assert!(keep.container_id.starts_with("stock-"), "{keep:?}");
    a.wait_stock(STOCK).await;

    restart_containerd(&env).await;

    // Creates right after the restart may meet the agent re-syncing.
    for i in 0..STOCK {
        let req = request(&env, &format!("cd-after-{i}"), &["sleep", "600"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let info = loop {
            match a.client.create(&req).await {
                Ok((_, Ok(info))) => break info,
                Ok((_, Err(e))) if e.code != ErrorCode::Unavailable => {
                    panic!("create after the restart: {e:?}")
                }
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no create succeeded within 30s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(info.state, ContainerState::Running);
        assert!(
            info.container_id.starts_with("stock-"),
            "the stock did not survive: {info:?}"
        );
    }
    let kept = a.client.get("cd-keep").await.unwrap().unwrap();
    assert_eq!(kept.state, ContainerState::Running);
    assert_eq!(kept.pid, keep.pid);
    let o = support::exec(&a.client, "cd-keep", &["echo", "alive"]).await;
    assert_eq!(support::stdout(&o), "alive\n");

    for i in 0..STOCK {
        a.client
            .delete(&format!("cd-after-{i}"), 0)
            .await
            .unwrap()
            .1
            .unwrap();
    }
    a.client.delete("cd-keep", 0).await.unwrap().1.unwrap();
    a.wait_stock(STOCK).await;
    a.release_and_assert_nothing_left().await;
}
