//! Pre-started sandboxes on the real cluster: a pool's agents keep a stock
//! of its warm image, a create claims one and still gets exactly its own
//! command, env and working directory, a missing binary is still a
//! StartError, and the stock refills. A namespace `edit` tenant cannot ask
//! for more than the schema and the operator allow, and the stock is never
//! visible as sandboxes.

use std::time::Duration;

use fast_sandbox_api::wellknown::reason;
use fast_sandbox_api::{Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_cli::{LogOptions, logs};
use fast_sandbox_e2e::containerd::stock_of;
use fast_sandbox_e2e::scenario::{AGENT_IMAGE, BUSYBOX, SYSTEM_NAMESPACE, agent_pods};
use fast_sandbox_e2e::{cluster_client, delete_namespace, editor, namespace, wait_for, wait_gone};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
/// Pre-started sandboxes the test pool asks for.
const STOCK: usize = 2;

fn pool(name: &str, prestarted: Value) -> SandboxPool {
    serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {"capacity": {"poolMin": 1, "poolMax": 1}, "maxSandboxesPerAgent": 8,
                 "warmImages": [BUSYBOX], "prestarted": prestarted,
                 "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": AGENT_IMAGE}]}}}
    }))
    .unwrap()
}

fn sandbox(name: &str, spec: Value) -> Sandbox {
    let mut spec = spec;
    spec["image"] = json!(BUSYBOX);
    spec["poolRef"] = json!("p");
    serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Waits until the agent pod `agent_uid` holds `n` pre-started sandboxes.
async fn wait_stock(agent_uid: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        last = stock_of(agent_uid).await.unwrap();
        if last.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("agent {agent_uid} did not hold {n} pre-started sandboxes within {WAIT:?}: {last:?}");
}

/// Creates pool `p` with a stock of [`STOCK`] in `ns` and waits until its
/// agent is ready.
async fn ready_pool(client: &Client, ns: &str) -> Api<SandboxPool> {
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), ns);
    pools
        .create(&PostParams::default(), &pool("p", json!(STOCK)))
        .await
        .unwrap();
    wait_for(&pools, "p", WAIT, "1 ready agent", |p: &SandboxPool| {
        p.status.as_ref().is_some_and(|s| s.ready_agents >= 1)
    })
    .await
    .unwrap();
    pools
}

async fn finished(sbx: &Api<Sandbox>, name: &str) -> Sandbox {
    wait_for(sbx, name, WAIT, "a final phase", |s: &Sandbox| {
        matches!(s.phase(), SandboxPhase::Succeeded | SandboxPhase::Failed)
    })
    .await
    .unwrap()
}

async fn output(client: &Client, ns: &str, name: &str) -> String {
    let mut out = Vec::new();
    logs(client.clone(), ns, name, LogOptions::default(), &mut out)
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_create_claims_a_pre_started_sandbox_and_gets_exactly_its_spec() {
    let client = cluster_client("prestarted").await;
    let ns = namespace(&client, "e2e-stock").await.unwrap();
    ready_pool(&client, &ns).await;
    let sbx: Api<Sandbox> = Api::namespaced(client.clone(), &ns);

    // The first create finds the agent, whose stock then must be full.
    sbx.create(
        &PostParams::default(),
        &sandbox("first", json!({"command": ["true"]})),
    )
    .await
    .unwrap();
    let first = finished(&sbx, "first").await;
    let agent = first.spec.agent_ref.clone().expect("bound at admission");
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let agent_uid = pods
        .get(&agent.pod_name)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    wait_stock(&agent_uid, STOCK).await;
    let before = stock_of(&agent_uid).await.unwrap();

    // A claim: the command, env and working directory are the sandbox's.
    sbx.create(
        &PostParams::default(),
        &sandbox(
            "claimed",
            json!({"command": ["sh", "-c", "echo \"$GREETING\" \"$1\"; pwd; echo pid=$$; exit 7", "argv0", "two words ü"],
                   "env": [{"name": "GREETING", "value": "hello from the spec"}],
                   "workingDir": "/app/made"}),
        ),
    )
    .await
    .unwrap();
    let claimed = finished(&sbx, "claimed").await;
    let status = claimed.status.clone().unwrap();
    let cid = status.container_id.clone().unwrap();
    assert!(
        before.contains(&cid),
        "the create did not claim one of the stock {before:?}: {status:?}"
    );
    assert_eq!(status.exit_code, Some(7), "{status:?}");
    assert_eq!(
        output(&client, &ns, "claimed").await,
        "hello from the spec two words ü\n/app/made\npid=1\n"
    );

    // A binary that is not there fails the same way a cold start does.
    wait_stock(&agent_uid, 1).await;
    sbx.create(
        &PostParams::default(),
        &sandbox("nobin", json!({"command": ["/no/such/binary"]})),
    )
    .await
    .unwrap();
    let nobin = finished(&sbx, "nobin").await;
    let status = nobin.status.clone().unwrap();
    assert_eq!(status.phase, Some(SandboxPhase::Failed), "{status:?}");
    assert_eq!(
        status.reason.as_deref(),
        Some(reason::START_ERROR),
        "{status:?}"
    );
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("/no/such/binary")),
        "{status:?}"
    );

    // The stock refills, and is never listed as sandboxes.
    wait_stock(&agent_uid, STOCK).await;
    let listed: Vec<String> = sbx
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_tenant_cannot_ask_for_more_pre_started_sandboxes_than_allowed() {
    let client = cluster_client("prestarted tenant").await;
    let ns = namespace(&client, "e2e-stock-tenant").await.unwrap();
    let tenant = editor(&client, &ns, "stock-tenant").await;
    let pools: Api<SandboxPool> = Api::namespaced(tenant, &ns);
    for (bad, why) in [(json!(33), "above the most"), (json!(-1), "negative")] {
        let err = pools
            .create(&PostParams::default(), &pool("greedy", bad.clone()))
            .await
            .expect_err(why);
        let text = err.to_string();
        assert!(text.contains("prestarted"), "{why} ({bad}): {text}");
    }
    // Another namespace's user cannot create a pool here at all.
    let other = fast_sandbox_e2e::impersonating("stock-stranger").await;
    let theirs: Api<SandboxPool> = Api::namespaced(other, &ns);
    let err = theirs
        .create(&PostParams::default(), &pool("theirs", json!(1)))
        .await
        .expect_err("a user of another namespace creates nothing here");
    assert!(err.to_string().contains("forbidden"), "{err}");
    delete_namespace(&client, &ns).await;
}

/// Deleting a pool (as the namespace's `edit` tenant; a user of another
/// namespace cannot) takes its agents' pre-started sandboxes off the node
/// too: the controller retires each agent's stock before it deletes the
/// agent's pod, so nothing waits for a janitor that may never come to that
/// node. A sandbox the deletion stopped says so.
#[tokio::test]
async fn deleting_a_pool_leaves_no_pre_started_sandbox_on_the_node() {
    let client = cluster_client("prestarted retire").await;
    let ns = namespace(&client, "e2e-stock-retire").await.unwrap();
    let pools = ready_pool(&client, &ns).await;
    let agents = agent_pods(&client, &ns, "p").await.unwrap();
    assert_eq!(agents.len(), 1, "the pool's agent pods: {agents:?}");
    let agent_uid = agents[0].metadata.uid.clone().unwrap();
    // One sandbox the pool's deletion will stop.
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    sandboxes
        .create(
            &PostParams::default(),
            &sandbox("sb", json!({"command": ["/bin/sleep", "3600"]})),
        )
        .await
        .unwrap();
    wait_for(&sandboxes, "sb", WAIT, "Running", |s: &Sandbox| {
        s.phase() == SandboxPhase::Running
    })
    .await
    .unwrap();
    wait_stock(&agent_uid, STOCK).await;

    // A user of another namespace cannot delete the pool; its stock stays.
    let stranger = fast_sandbox_e2e::impersonating("stock-retire-stranger").await;
    let err = Api::<SandboxPool>::namespaced(stranger, &ns)
        .delete("p", &DeleteParams::default())
        .await
        .expect_err("a user of another namespace deletes nothing here");
    assert!(err.to_string().contains("forbidden"), "{err}");
    assert_eq!(stock_of(&agent_uid).await.unwrap().len(), STOCK);

    // The namespace's edit tenant deletes it.
    let tenant = editor(&client, &ns, "stock-retire-tenant").await;
    Api::<SandboxPool>::namespaced(tenant, &ns)
        .delete("p", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pools, "p", WAIT).await.unwrap();
    let left = stock_of(&agent_uid).await.unwrap();
    assert!(
        left.is_empty(),
        "pre-started sandboxes of the deleted pool's agent left on the node: {left:?}"
    );
    // The sandbox says what stopped it, not just a kill's exit code.
    let sb = wait_for(
        &sandboxes,
        "sb",
        WAIT,
        "stopped by its pool's deletion",
        |s: &Sandbox| {
            s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some(reason::POOL_DELETED)
        },
    )
    .await
    .unwrap();
    let message = sb.status.and_then(|st| st.message).unwrap_or_default();
    assert!(message.starts_with("pool p was deleted"), "{message}");
    delete_namespace(&client, &ns).await;
}
