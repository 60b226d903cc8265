//! The agent binary with user namespaces is SIGKILLed holding a stock and a
//! claimed sandbox, and started again: the sandbox keeps its namespace and
//! slot, the stock is adopted with its slots, and a claim after the restart
//! gets a slot of its own. A slot lease no container holds (an agent killed
//! between taking a slot and making its container) is swept, while the
//! leases of live containers stay. Once the agent is gone for good, the
//! janitor collects its containers and their slots go back. Alone in its
//! test binary: the janitor and the sweep see the whole node.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_agent::userns::{IdRange, SLOT_LEASE_PREFIX, lease_base};
use fast_sandbox_api::agent::{ErrorCode, JanitorRequest};
use fast_sandbox_api::wellknown::container_labels as label;
use support::binary::{
    Fixture, Running, fixture, free_port, metric, spawn, wait_ready, wait_stock,
};
use support::{Env, Pki, SERVER_NAME, TestAgent, env, exec, request, stdout};

const RANGE: &str = "3238002688:32";
const STOCK: usize = 2;

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
        8,
        &[
            "--user-namespaces",
            "true",
            "--userns-range",
            RANGE,
            "--stock-size",
            &stock,
            "--stock-images",
            &env.image,
        ],
    )
}

/// The first host id of each slot lease of [`RANGE`].
async fn leases(cd: &Containerd) -> BTreeSet<u32> {
    let range = IdRange::parse(RANGE).unwrap();
    let end = u64::from(range.first) + u64::from(range.slots) * 65536;
    cd.leases(SLOT_LEASE_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|l| lease_base(&l.id))
        .filter(|b| *b >= range.first && u64::from(*b) < end)
        .collect()
}

/// The slot (first host id) each container of `pod_uid` holds, by id.
async fn slots(cd: &Containerd, pod_uid: &str) -> HashMap<String, u32> {
    cd.list_containers(vec![format!("labels.\"{}\"=={pod_uid}", label::AGENT_UID)])
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let slot = c
                .labels
                .get(label::USERNS_SLOT)
                .unwrap_or_else(|| panic!("container {} holds no slot", c.id))
                .parse()
                .unwrap();
            (c.id, slot)
        })
        .collect()
}

/// The host id sandbox `uid`'s root is, from its uid_map.
async fn host_root(client: &AgentClient, uid: &str) -> u32 {
    let out = exec(client, uid, &["sh", "-c", "id -u; cat /proc/self/uid_map"]).await;
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"), "{uid} is root inside: {text}");
    lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("{uid}'s uid_map: {text}"))
}

#[tokio::test]
async fn slots_survive_a_killed_agent_and_go_back_when_it_is_gone() {
    let env = env();
    let Fixture {
        pki,
        tls,
        state,
        pod_uid,
        api,
        ops,
        addr,
    } = fixture("userns-kill", "fast-sandbox-controller");
    let cd = Containerd::connect(&env.socket, &env.namespace, "overlayfs", support::RUNC)
        .await
        .unwrap();
    let running = agent(&env, &pki, state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls.clone())
        .await
        .unwrap();

    if std::env::var("FAST_SANDBOX_TEST_CONTAINERD").as_deref() == Ok("1.6") {
        let refused = client
            .create(&request(&env, "ur-refused", &["true"]))
            .await
            .unwrap()
            .1
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::RuntimeUnavailable, "{refused:?}");
        assert_eq!(metric(ops, "fast_sandbox_agent_stock_ready"), Some(0.0));
        drop(running);
        support::assert_nothing_left(&cd, &pod_uid, &state.path().join(&pod_uid).join("logs"))
            .await;
        assert!(leases(&cd).await.is_empty());
        return;
    }

    wait_stock(ops, STOCK).await;
    let first = client
        .create(&request(&env, "ur-1", &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
    assert!(first.container_id.starts_with("stock-"), "{first:?}");
    let first_root = host_root(&client, "ur-1").await;
    wait_stock(ops, STOCK).await;
    let before = slots(&cd, &pod_uid).await;
    assert_eq!(before.len(), STOCK + 1, "{before:?}");
    assert_eq!(before[&first.container_id], first_root);
    assert_eq!(
        leases(&cd).await,
        before.values().copied().collect(),
        "one lease per container, and no other"
    );

    drop(running); // SIGKILL
    let running = agent(&env, &pki, state.path(), &pod_uid, api, ops);
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls.clone())
        .await
        .unwrap();
    assert_eq!(
        host_root(&client, "ur-1").await,
        first_root,
        "same namespace after the restart"
    );
    wait_stock(ops, STOCK).await;
    let second = client
        .create(&request(&env, "ur-2", &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
    assert!(second.container_id.starts_with("stock-"), "{second:?}");
    let second_root = host_root(&client, "ur-2").await;
    assert_ne!(second_root, first_root);
    assert!(
        before.values().any(|s| *s == second_root),
        "the claim after the restart took an adopted pre-started sandbox with its slot"
    );

    // A slot an agent took and never gave a container: swept; the slots
    // of live containers stay. Once the stock is full again, nothing is
    // between taking a slot and making its container.
    wait_stock(ops, STOCK).await;
    let range = IdRange::parse(RANGE).unwrap();
    let mut stray = None;
    for slot in (0..range.slots).rev() {
        let m = range.mapping(slot);
        if cd
            .claim_lease(&m.lease_id(), m.lease_labels("never-made"))
            .await
            .unwrap()
        {
            stray = Some(m);
            break;
        }
    }
    let stray = stray.expect("a free slot for the stray lease");
    let sweeper = TestAgent::start(&env, "userns-sweeper", 1).await;
    assert_eq!(sweeper.agent.sweep_slots(Duration::ZERO).await.unwrap(), 1);
    assert!(!leases(&cd).await.contains(&stray.host_base));
    let held = slots(&cd, &pod_uid).await;
    assert_eq!(
        leases(&cd).await,
        held.values().copied().collect(),
        "only the stray lease went"
    );

    // The agent is gone for good: the janitor collects its containers and
    // gives their slots back.
    drop(running);
    let (sapi, sops) = (free_port(), free_port());
    let _janitor = spawn(
        &env,
        pki.dir.path(),
        state.path(),
        &support::pod_uid("userns-janitor"),
        sapi,
        sops,
        1,
        &["--stock-size", "0"],
    );
    wait_ready(sops).await;
    let janitor = AgentClient::connect(
        format!("127.0.0.1:{sapi}").parse().unwrap(),
        SERVER_NAME,
        pki.client("fast-sandbox-controller"),
    )
    .await
    .unwrap();
    let live = JanitorRequest {
        live_agent_uids: vec![sweeper.agent.config().pod_uid.clone()],
        namespace: None,
    };
    janitor.janitor(&live).await.unwrap().unwrap();
    support::assert_nothing_left(&cd, &pod_uid, &state.path().join(&pod_uid).join("logs")).await;
    assert!(leases(&cd).await.is_empty(), "every slot went back");
}
