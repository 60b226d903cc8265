//! The built agent binary is killed while sandboxes run and started again:
//! it rebuilds its state from containerd alone, the sandboxes are still
//! listed and deletable, an exposed port is forwarded again, and nothing is
//! left behind; an exec cut off by the restart fails clearly while its
//! sandbox keeps running.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_api::ExposedPort;
use fast_sandbox_api::agent::ContainerState;
use support::binary::{Fixture, Running, fixture, wait_ready};
use support::{Env, SERVER_NAME, env, request};

/// The agent binary with 4 slots and no stock.
fn spawn(env: &Env, pki_dir: &Path, state: &Path, pod_uid: &str, api: u16, ops: u16) -> Running {
    support::binary::spawn(
        env,
        pki_dir,
        state,
        pod_uid,
        api,
        ops,
        4,
        &["--stock-size", "0"],
    )
}

#[tokio::test]
async fn killed_agent_rebuilds_its_state_from_containerd() {
    let env = env();
    let Fixture {
        pki,
        tls,
        state,
        pod_uid,
        api,
        ops,
        addr,
    } = fixture("restart", "fast-sandbox-controller");

    let agent = spawn(&env, pki.dir.path(), state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls.clone())
        .await
        .unwrap();
    let mut web = request(
        &env,
        "keep",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/w && echo kept > /tmp/w/i && exec httpd -f -p 127.0.0.1:8080 -h /tmp/w",
        ],
    );
    web.exposed_ports = vec![ExposedPort {
        port: 8080,
        ..Default::default()
    }];
    let keep = client.create(&web).await.unwrap().1.unwrap();
    assert_eq!(keep.endpoints.len(), 1, "{keep:?}");
    client
        .create(&request(&env, "done", &["sh", "-c", "exit 7"]))
        .await
        .unwrap()
        .1
        .unwrap();
    support::wait_for("sandbox done to exit", Duration::from_secs(20), || {
        let c = client.clone();
        async move { c.get("done").await.unwrap().unwrap().state == ContainerState::Exited }
    })
    .await;

    // containerd 2 caps a writable layer; the restarted agent must keep
    // enforcing the cap it only knows from the container's labels.
    let capped = std::env::var("FAST_SANDBOX_TEST_CONTAINERD").as_deref() != Ok("1.6");
    if capped {
        let mut disk = request(&env, "disk", &["sleep", "300"]);
        disk.limits.ephemeral_storage_bytes = Some(4 << 20);
        client.create(&disk).await.unwrap().1.unwrap();
    }

    drop(agent); // SIGKILL: no chance to clean anything up.
    // While the agent is down the sandbox keeps running.
    assert!(Path::new(&format!("/proc/{}", keep.pid.unwrap())).exists());

    let _agent = spawn(&env, pki.dir.path(), state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls).await.unwrap();
    let list = client.list().await.unwrap().unwrap();
    assert_eq!(list.agent.slots_used, 2 + u32::from(capped));
    let by_uid = |uid: &str| {
        list.sandboxes
            .iter()
            .find(|s| s.uid == uid)
            .cloned()
            .unwrap()
    };
    let kept = by_uid("keep");
    assert_eq!(kept.state, ContainerState::Running);
    assert_eq!(kept.pid, keep.pid);
    assert_eq!(kept.name, "sbx-keep");
    assert_eq!(kept.pool, "test-pool");
    // Its exposed port is forwarded again, from a new endpoint.
    assert_eq!(kept.endpoints.len(), 1, "{kept:?}");
    let endpoint: SocketAddr = kept.endpoints[0].address.parse().unwrap();
    let answer = support::http_get(endpoint, "/i").await;
    assert!(
        answer.as_deref().is_some_and(|a| a.ends_with("kept\n")),
        "GET {endpoint}/i after the restart: {answer:?}"
    );
    let done = by_uid("done");
    assert_eq!(done.state, ContainerState::Exited);
    assert_eq!(done.exit_code, Some(7));

    if capped {
        // The exec's write is refused at the cap, and the agent then fails
        // the sandbox; the exec's own outcome does not matter.
        let fill = support::exec_request(&["dd", "if=/dev/zero", "of=/big", "bs=1M", "count=16"]);
        let _ = client.exec_collect("disk", &fill, None).await;
        support::wait_for(
            "the capped sandbox to fail",
            Duration::from_secs(20),
            || {
                let c = client.clone();
                async move { c.get("disk").await.unwrap().unwrap().state == ContainerState::Exited }
            },
        )
        .await;
        let disk = client.get("disk").await.unwrap().unwrap();
        assert_eq!(
            disk.reason.as_deref(),
            Some(fast_sandbox_api::wellknown::reason::EPHEMERAL_STORAGE_EXCEEDED)
        );
        client.delete("disk", 0).await.unwrap().1.unwrap();
    }
    client.delete("keep", 0).await.unwrap().1.unwrap();
    client.delete("done", 0).await.unwrap().1.unwrap();
    assert!(client.list().await.unwrap().unwrap().sandboxes.is_empty());
    let cd = Containerd::connect(
        &env.socket,
        &env.namespace,
        "overlayfs",
        "io.containerd.runc.v2",
    )
    .await
    .unwrap();
    support::assert_nothing_left(&cd, &pod_uid, &state.path().join(&pod_uid).join("logs")).await;
}

#[tokio::test]
async fn an_exec_cut_off_by_an_agent_restart_fails_clearly_and_the_sandbox_keeps_running() {
    use fast_sandbox_agent::client::ExecEvent;
    let env = env();
    let Fixture {
        pki,
        tls,
        state,
        pod_uid,
        api,
        ops,
        addr,
    } = fixture("restart-exec", "fast-sandbox-gateway");

    let agent = spawn(&env, pki.dir.path(), state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls.clone())
        .await
        .unwrap();
    let keep = client
        .create(&request(&env, "exec-keep", &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
    let start = |script: &str, detach: bool| {
        let mut req = support::exec_request(&["sh", "-c", script]);
        req.detach = detach;
        let client = client.clone();
        async move {
            let mut s = client.exec("exec-keep", &req).await.unwrap().unwrap();
            let mut seen = String::new();
            while !seen.contains('\n') {
                match s.output.next().await {
                    Some(Ok(ExecEvent::Stdout(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
                    other => panic!("{other:?}"),
                }
            }
            let first_line = seen.lines().next().unwrap_or_default().trim().to_string();
            (s, first_line)
        }
    };
    let (mut attached, attached_pid) = start("echo $$; exec sleep 301", false).await;
    // Writes 64 KiB blocks and counts them: it only advances while someone
    // drains its output.
    let (detached, detached_pid) = start(
        "echo $$; i=0; while true; do head -c 65536 /dev/zero; i=$((i+1)); echo $i > /tmp/blocks; sleep 0.05; done",
        true,
    )
    .await;

    drop(agent); // SIGKILL, mid-exec.
    let ended = tokio::time::timeout(Duration::from_secs(20), attached.output.next())
        .await
        .expect("the exec stream did not end when the agent died");
    let e = match ended {
        Some(Err(e)) => e,
        other => panic!("expected a clear stream error, got {other:?}"),
    };
    assert!(
        e.to_string().contains("before its status"),
        "unclear error: {e}"
    );
    drop(detached);

    let _agent = spawn(&env, pki.dir.path(), state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls).await.unwrap();
    let kept = client.get("exec-keep").await.unwrap().unwrap();
    assert_eq!(kept.state, ContainerState::Running);
    assert_eq!(kept.pid, keep.pid);
    let alive = |pid: String| {
        let client = client.clone();
        async move {
            support::exec(&client, "exec-keep", &["kill", "-0", &pid])
                .await
                .status
                .success()
        }
    };
    // The exec whose client left with the old agent is killed...
    support::wait_for(
        "the cut-off exec to be killed",
        Duration::from_secs(20),
        || {
            let alive = alive(attached_pid.clone());
            async move { !alive.await }
        },
    )
    .await;
    // ...the detached one runs on, its output drained by the new agent.
    assert!(alive(detached_pid.clone()).await);
    let blocks = || {
        let client = client.clone();
        async move {
            support::stdout(&support::exec(&client, "exec-keep", &["cat", "/tmp/blocks"]).await)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        }
    };
    let first = blocks().await;
    support::wait_for(
        "the detached exec to keep writing",
        Duration::from_secs(20),
        || {
            let b = blocks();
            async move { b.await > first + 20 }
        },
    )
    .await;
    support::exec(&client, "exec-keep", &["kill", &detached_pid]).await;
    let exec_dir = state.path().join(&pod_uid).join("exec");
    support::wait_for("leftover FIFOs removed", Duration::from_secs(20), || {
        let dir = exec_dir.clone();
        async move {
            std::fs::read_dir(&dir)
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        }
    })
    .await;
    let o = support::exec(&client, "exec-keep", &["echo", "still here"]).await;
    assert_eq!(support::stdout(&o), "still here\n");

    client.delete("exec-keep", 0).await.unwrap().1.unwrap();
    let cd = Containerd::connect(
        &env.socket,
        &env.namespace,
        "overlayfs",
        "io.containerd.runc.v2",
    )
    .await
    .unwrap();
    support::assert_nothing_left(&cd, &pod_uid, &state.path().join(&pod_uid).join("logs")).await;
}
