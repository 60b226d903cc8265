//! One runc shim process per agent, against a real containerd and runc:
//! claimed and cold sandboxes of an agent run under the same shim (the
//! shim groups by an annotation of the runtime spec), the shim outlives
//! the container it was started for, and it goes with the agent's last
//! container. An agent configured without the group spawns one shim per
//! sandbox.

mod support;

use std::time::Duration;

use fast_sandbox_api::agent::{CreateSandboxRequest, SandboxInfo};
use support::{Env, TestAgent, env, noshell_image, request, wait_for};

/// The parent of a sandbox's PID 1: the shim, which reaps it.
fn shim_of(info: &SandboxInfo) -> u32 {
    let pid = info
        .pid
        .unwrap_or_else(|| panic!("sandbox {} has no pid: {info:?}", info.uid));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status of sandbox {}: {e}", info.uid));
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PPid in /proc/{pid}/status: {status}"));
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("containerd-shim-runc-v2"),
        "the parent {ppid} of sandbox {} is not a runc shim: {:?}",
        info.uid,
        String::from_utf8_lossy(&cmdline)
    );
    ppid
}

/// Creates `req` on `a`; the sandbox must start.
async fn started(a: &TestAgent, req: &CreateSandboxRequest) -> SandboxInfo {
    a.client
        .create(req)
        .await
        .unwrap()
        .1
        .unwrap_or_else(|e| panic!("create {}: {e:?}", req.uid))
}

/// A test-image sandbox that sleeps.
fn sleeper(env: &Env, uid: &str) -> CreateSandboxRequest {
    request(env, uid, &["sleep", "600"])
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn an_agents_sandboxes_share_one_shim_claimed_or_cold() {
    let env = env();
    let a = TestAgent::start_stocked(&env, "shim-group", 4, 1).await;
    let claimed = started(&a, &sleeper(&env, "shim-claimed")).await;
    assert!(claimed.container_id.starts_with("stock-"), "{claimed:?}");
    // An image without a stock goes cold.
    let mut cold = request(&env, "shim-cold", &["/tool", "sleep"]);
    cold.image = noshell_image();
    let cold = started(&a, &cold).await;
    assert!(!cold.container_id.starts_with("stock-"), "{cold:?}");
    let shim = shim_of(&claimed);
    assert_eq!(shim_of(&cold), shim, "claimed and cold sandboxes");

    // The claimed sandbox's container started the shim (as the stock's);
    // the shim serves the next one after that container is gone.
    a.client.delete("shim-claimed", 0).await.unwrap().1.unwrap();
    a.wait_stock(1).await;
    let next = started(&a, &sleeper(&env, "shim-next")).await;
    assert_eq!(
        shim_of(&next),
        shim,
        "a sandbox created after the first went"
    );
    for uid in ["shim-cold", "shim-next"] {
        a.client.delete(uid, 0).await.unwrap().1.unwrap();
    }
    a.release_and_assert_nothing_left().await;
    wait_for(
        "the shim to exit with the agent's last container",
        Duration::from_secs(10),
        || async move { !alive(shim) },
    )
    .await;
}

#[tokio::test]
async fn an_agent_without_the_group_spawns_a_shim_per_sandbox() {
    let env = env();
    let a = TestAgent::start_with(&env, "shim-apart", 4, |c| c.shim_group = false).await;
    let mut shims = Vec::new();
    for uid in ["shim-apart-1", "shim-apart-2"] {
        let info = started(&a, &sleeper(&env, uid)).await;
        shims.push(shim_of(&info));
    }
    assert_ne!(shims[0], shims[1]);
    for uid in ["shim-apart-1", "shim-apart-2"] {
        a.client.delete(uid, 0).await.unwrap().1.unwrap();
    }
    a.assert_nothing_left().await;
}

/// containerd stops a group's shim after its last task goes; a create in
/// that window would join the dying shim. Two workers create and delete
/// back to back, so the group empties and refills again and again.
#[tokio::test]
async fn creates_racing_the_last_tasks_delete_all_run() {
    let env = env();
    let a = TestAgent::start(&env, "shim-race", 4).await;
    let worker = |w: usize| {
        let (a, env) = (&a, &env);
        async move {
            for i in 0..30 {
                let uid = format!("shim-race-{w}-{i}");
                shim_of(&started(a, &sleeper(env, &uid)).await);
                a.client.delete(&uid, 0).await.unwrap().1.unwrap();
            }
        }
    };
    futures::future::join(worker(0), worker(1)).await;
    a.assert_nothing_left().await;
}
