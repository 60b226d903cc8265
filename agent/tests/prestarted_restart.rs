//! The built agent binary, holding a full stock of pre-started sandboxes,
//! is SIGKILLed in the middle of a burst of 50 creates (claims in flight,
//! cold creates behind them) and started again; the creates are retried,
//! as the controller does. Every sandbox then runs exactly once (one
//! container per UID, its command started once), the stock is adopted and
//! refills, and the node janitor collects everything the killed agent
//! leaves once it is gone. Alone in its test binary: the janitor sweep
//! would collect other tests' agents.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_api::agent::{ContainerState, JanitorRequest};
use fast_sandbox_api::wellknown::container_labels as label;
use support::binary::{Fixture, Running, fixture, free_port, spawn, wait_ready, wait_stock};
use support::{Env, Pki, SERVER_NAME, env, request};

const STOCK: usize = 8;
const BURST: usize = 50;
const CONCURRENCY: usize = 16;
/// The command's distinctive argument: its processes are counted on the host.
const MARK: &str = "100017";

fn agent(
    env: &Env,
    pki: &Pki,
    state: &std::path::Path,
    pod_uid: &str,
    api: u16,
    ops: u16,
) -> Running {
    let stock = STOCK.to_string();
    spawn(
        env,
        pki.dir.path(),
        state,
        pod_uid,
        api,
        ops,
        64,
        &["--stock-size", &stock, "--stock-images", &env.image],
    )
}

/// Host processes running the burst's command.
fn marked_processes() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c == format!("sleep\0{MARK}\0").as_bytes())
        .count()
}

#[tokio::test]
async fn an_agent_killed_mid_burst_runs_every_sandbox_exactly_once() {
    let env = env();
    let Fixture {
        pki,
        tls,
        state,
        pod_uid,
        api,
        ops,
        addr,
    } = fixture("stock-kill", "fast-sandbox-controller");

    let running = agent(&env, &pki, state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    wait_stock(ops, STOCK).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls.clone())
        .await
        .unwrap();
    let reqs: Arc<Vec<_>> = Arc::new(
        (0..BURST)
            .map(|i| {
                request(
                    &env,
                    &format!("burst-{i}"),
                    &["sh", "-c", &format!("echo started; exec sleep {MARK}")],
                )
            })
            .collect(),
    );
    // The burst; the agent dies once a few claims have answered.
    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, reqs, next, tx) = (
            client.clone(),
            reqs.clone(),
            next.clone(),
            answered_tx.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(req) = reqs.get(i) else { return };
                if let Ok((_, Ok(_))) = client.create(req).await {
                    let _ = tx.send(i);
                }
            }
        }));
    }
    drop(answered_tx);
    for _ in 0..4 {
        answered_rx.recv().await.expect("no create answered");
    }
    drop(running); // SIGKILL, claims and cold creates in flight.
    for w in workers {
        w.await.unwrap();
    }

    let _running = agent(&env, &pki, state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls).await.unwrap();
    // The controller retries every create it did not see answered.
    for req in reqs.iter() {
        let info = client.create(req).await.unwrap().1.unwrap();
        assert_eq!(info.state, ContainerState::Running, "{info:?}");
    }
    let cd = fast_sandbox_agent::runtime::Containerd::connect(
        &env.socket,
        &env.namespace,
        "overlayfs",
        "io.containerd.runc.v2",
    )
    .await
    .unwrap();
    let containers = cd
        .list_containers(vec![format!("labels.\"{}\"=={pod_uid}", label::AGENT_UID)])
        .await
        .unwrap();
    let mut per_uid: HashMap<String, usize> = HashMap::new();
    for c in &containers {
        if let Some(uid) = c.labels.get(label::SANDBOX_UID) {
            *per_uid.entry(uid.clone()).or_default() += 1;
        }
    }
    assert_eq!(per_uid.len(), BURST, "{per_uid:?}");
    assert!(
        per_uid.values().all(|n| *n == 1),
        "a sandbox has two containers: {per_uid:?}"
    );
    let list = client.list().await.unwrap().unwrap();
    assert_eq!(list.sandboxes.len(), BURST);
    let claimed = list
        .sandboxes
        .iter()
        .filter(|s| s.container_id.starts_with("stock-"))
        .count();
    assert!(claimed >= 1, "no sandbox came from the stock");
    for s in &list.sandboxes {
        assert_eq!(s.state, ContainerState::Running, "{s:?}");
        let resp = client
            .send(
                http::Method::GET,
                &fast_sandbox_api::agent::logs_path(&s.uid),
                None,
            )
            .await
            .unwrap();
        let text = support::body_text(resp).await;
        assert_eq!(text, "started\n", "{} started other than once", s.uid);
    }
    assert_eq!(marked_processes(), BURST, "each command runs once");
    wait_stock(ops, STOCK).await;

    // The agent pod goes away for good: another agent's janitor collects
    // its sandboxes and its stock, and nothing of it is left.
    drop(_running);
    let sweeper_uid = support::pod_uid("stock-sweeper");
    let (sapi, sops) = (free_port(), free_port());
    let _sweeper = spawn(
        &env,
        pki.dir.path(),
        state.path(),
        &sweeper_uid,
        sapi,
        sops,
        1,
        &["--stock-size", "0"],
    );
    wait_ready(sops).await;
    let sweeper = AgentClient::connect(
        format!("127.0.0.1:{sapi}").parse().unwrap(),
        SERVER_NAME,
        pki.client("fast-sandbox-controller"),
    )
    .await
    .unwrap();
    let live = JanitorRequest {
        live_agent_uids: vec![],
        namespace: None,
    };
    let report = sweeper.janitor(&live).await.unwrap().unwrap();
    let stock_removed = report
        .removed
        .iter()
        .filter(|r| r.agent_uid == pod_uid && r.sandbox_uid.is_empty())
        .count();
    assert_eq!(stock_removed, STOCK, "{report:?}");
    assert_eq!(marked_processes(), 0);
    support::assert_nothing_left(&cd, &pod_uid, &state.path().join(&pod_uid).join("logs")).await;
    assert!(
        !state.path().join(&pod_uid).exists(),
        "the gone agent's state dir is left"
    );
}
