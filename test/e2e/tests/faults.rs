//! Faults on the real cluster: the controller leader, a webhook replica, an
//! agent pod, the agent process, the node's containerd or the whole control
//! plane SIGKILLed while sandboxes are created or running, a node's kubelet
//! stopped under running sandboxes, and every certificate renewed at once. After each, every sandbox ends as its
//! failure policy says with exactly one container in containerd (nothing
//! lost, nothing run twice), and deleting them leaves no container behind.
//!
//! Each test kills something the whole cluster shares (the controller, a
//! webhook) or that its own pool owns, so run them one at a time:
//! `--test-threads=1`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fast_sandbox_api::{FailurePolicy, Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_e2e::cluster;
use fast_sandbox_e2e::containerd::{self, TaskExits};
use fast_sandbox_e2e::history::{History, Tracks, census};
use fast_sandbox_e2e::scenario::{
    Burst, BurstShape, SYSTEM_NAMESPACE, Stage, agent_pods, all_running, container_of, create_all,
    delete_all, deployment_settled, force_delete_pod, kill_container_process, latencies,
    latency_line, lease_holder, lease_taken_over, names, pods, sleeper, stage, stage_on,
    violations_of_running_once, wait_created,
};
use fast_sandbox_e2e::{E2eError, cluster_client, delete_namespace, wait_for};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::Notify;

const BURST: usize = 50;
const CONTROLLER: &str = "fast-sandbox-controller";
const WEBHOOK: &str = "fast-sandbox-webhook";
const SETTLE: Duration = Duration::from_secs(120);
/// The agent TLS secret, copied into every pool namespace.
const AGENT_TLS: &str = "fast-sandbox-agent-tls";

/// The components a test is about to hurt, all ready first.
async fn settled(client: &Client) {
    for d in [CONTROLLER, WEBHOOK] {
        deployment_settled(client, d, SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{d} did not settle: {e}"));
    }
}

fn sleepers(names: &BTreeSet<String>, pool: &str, policy: FailurePolicy) -> Vec<Sandbox> {
    names.iter().map(|n| sleeper(n, pool, policy)).collect()
}

/// Three `AutoRecreate` and three `Manual` sleepers of pool `p`, all
/// Running: (auto, manual, all, the record then).
async fn both_policies_running(
    sbx: &Api<Sandbox>,
    history: &History,
) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>, Tracks) {
    let auto = names("auto", 3);
    let manual = names("manual", 3);
    let mut batch = sleepers(&auto, "p", FailurePolicy::AutoRecreate);
    batch.extend(sleepers(&manual, "p", FailurePolicy::Manual));
    let all: BTreeSet<String> = auto.union(&manual).cloned().collect();
    // One at a time, the three of one policy first: placement spreads them
    // round-robin over the pool's two or three agents, so every agent
    // hosts sandboxes of both policies.
    for sb in batch {
        sbx.create(&PostParams::default(), &sb).await.unwrap();
    }
    let before = history
        .wait(Duration::from_secs(60), "all 6 Running", |t| {
            all_running(t, &all)
        })
        .await
        .unwrap();
    (auto, manual, all, before)
}

type Progress = (Arc<AtomicUsize>, Arc<Notify>);

fn progress() -> Progress {
    (Arc::default(), Arc::default())
}

/// Starts creating a `Manual` sleeper per name in pool `p`, spread over
/// `shape`, in the background; the progress counts creations so a fault can
/// land mid-burst.
fn spawn_burst(
    sbx: &Api<Sandbox>,
    names: &BTreeSet<String>,
    shape: BurstShape,
) -> (tokio::task::JoinHandle<Result<Burst, E2eError>>, Progress) {
    let p = progress();
    let batch = sleepers(names, "p", FailurePolicy::Manual);
    let (sbx, counter) = (sbx.clone(), p.clone());
    let handle = tokio::spawn(async move { create_all(&sbx, batch, shape, Some(counter)).await });
    (handle, p)
}

/// Every sandbox named is Running exactly once; then all are deleted and no
/// container of theirs is left.
async fn assert_once_then_clean(
    ns: &str,
    sbx: &Api<Sandbox>,
    history: &History,
    tracks: &Tracks,
    names: &BTreeSet<String>,
) {
    let bad = violations_of_running_once(ns, tracks, names, true)
        .await
        .unwrap();
    assert!(bad.is_empty(), "not exactly once:\n{}", bad.join("\n"));
    let left = delete_all(sbx, history, ns, Duration::from_secs(90))
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "containers outlived their sandboxes: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_leader_killed_during_burst() {
    let client = cluster_client("controller leader kill").await;
    settled(&client).await;
    let Stage { ns, sbx, history } = stage(&client, "e2e-kill-leader", (2, 3), 32).await.unwrap();
    let leader = lease_holder(&client, CONTROLLER)
        .await
        .unwrap()
        .expect("a controller holds the lease");
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let (leader_container, _) =
        container_of(&system_pods.get(&leader).await.unwrap(), "controller")
            .expect("the leader's container");
    let exits = TaskExits::start().unwrap();

    let all = names("c", BURST);
    let shape = BurstShape {
        spread: Duration::from_secs(2),
        ..BurstShape::default()
    };
    let (creating, p) = spawn_burst(&sbx, &all, shape);
    wait_created(&p, 10).await;
    let killed_at = Instant::now();
    force_delete_pod(&client, SYSTEM_NAMESPACE, &leader)
        .await
        .unwrap();
    let died = exits
        .wait(&leader_container, Duration::from_secs(30))
        .await
        .unwrap()
        .saturating_duration_since(killed_at);
    let created_when_died = p.0.load(Ordering::SeqCst);
    let burst = creating.await.unwrap().unwrap();
    let new_leader = lease_taken_over(&client, CONTROLLER, &leader, Duration::from_secs(60))
        .await
        .unwrap();
    let failover = killed_at.elapsed();

    let tracks = history
        .wait(Duration::from_secs(90), "all 50 Running", |t| {
            all_running(t, &all)
        })
        .await
        .unwrap();
    eprintln!(
        "leader {leader} killed: its process died {died:?} after the delete, {created_when_died}/50 created by then; {new_leader} leads after {failover:?}; {}",
        latency_line("create->Running", &latencies(&burst, &tracks))
    );
    assert_once_then_clean(&ns, &sbx, &history, &tracks, &all).await;
    delete_namespace(&client, &ns).await;
    settled(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_replica_killed_during_burst() {
    let client = cluster_client("webhook kill").await;
    settled(&client).await;
    let Stage { ns, sbx, history } = stage(&client, "e2e-kill-webhook", (2, 3), 32)
        .await
        .unwrap();
    let victim_pod = pods(
        &client,
        SYSTEM_NAMESPACE,
        "app.kubernetes.io/name=fast-sandbox-webhook",
    )
    .await
    .unwrap()
    .into_iter()
    .next()
    .expect("a webhook pod");
    let victim = victim_pod.metadata.name.clone().unwrap_or_default();
    let (victim_container, _) = container_of(&victim_pod, "webhook").expect("its container");
    let exits = TaskExits::start().unwrap();

    let all = names("w", BURST);
    // Failed admissions are retried; any other error fails the burst.
    let shape = BurstShape {
        spread: Duration::from_secs(3),
        retry_for: Some(Duration::from_secs(60)),
    };
    let (creating, p) = spawn_burst(&sbx, &all, shape);
    wait_created(&p, 10).await;
    let killed_at = Instant::now();
    force_delete_pod(&client, SYSTEM_NAMESPACE, &victim)
        .await
        .unwrap();
    let died = exits
        .wait(&victim_container, Duration::from_secs(30))
        .await
        .unwrap()
        .saturating_duration_since(killed_at);
    let created_when_died = p.0.load(Ordering::SeqCst);
    let burst = creating.await.unwrap().unwrap();

    let tracks = history
        .wait(Duration::from_secs(90), "all 50 Running", |t| {
            all_running(t, &all)
        })
        .await
        .unwrap();
    let errors: BTreeSet<&str> = burst.retried.iter().map(|(_, e)| e.as_str()).collect();
    eprintln!(
        "webhook {victim} killed: its process died {died:?} after the delete, {created_when_died}/50 created by then; {} creations retried, {} admitted unbound; {}; errors: {errors:#?}",
        burst.retried.len(),
        burst.unbound.len(),
        latency_line("create->Running", &latencies(&burst, &tracks))
    );
    assert_once_then_clean(&ns, &sbx, &history, &tracks, &all).await;
    delete_namespace(&client, &ns).await;
    settled(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pod_killed_recreates_or_loses_by_policy() {
    let client = cluster_client("agent pod kill").await;
    settled(&client).await;
    // Every agent on one node: a sandbox re-placed to another node would
    // leave the victim's dead container on its node until that node's next
    // sweep, which needs a live agent there (a gap of multi-node clusters
    // this test does not cover).
    let node = containerd::first_node();
    let Stage { ns, sbx, history } =
        stage_on(&client, "e2e-kill-agent", (2, 3), 8, node.as_deref())
            .await
            .unwrap();

    let (auto, manual, all, before) = both_policies_running(&sbx, &history).await;
    let bad = violations_of_running_once(&ns, &before, &all, true)
        .await
        .unwrap();
    assert!(bad.is_empty(), "before the kill:\n{}", bad.join("\n"));

    // An agent hosting sandboxes of both policies (every agent does; see
    // `both_policies_running`).
    let on = |set: &BTreeSet<String>, agent: &str| -> BTreeSet<String> {
        set.iter()
            .filter(|n| before[*n].agent() == Some(agent))
            .cloned()
            .collect()
    };
    let victim = before
        .values()
        .filter_map(|t| t.agent())
        .find(|a| !on(&auto, a).is_empty() && !on(&manual, a).is_empty())
        .expect("one agent hosts sandboxes of both policies")
        .to_string();
    let (auto_hit, manual_hit) = (on(&auto, &victim), on(&manual, &victim));
    let spared: BTreeSet<String> = all
        .iter()
        .filter(|n| before[*n].agent() != Some(victim.as_str()))
        .cloned()
        .collect();

    force_delete_pod(&client, SYSTEM_NAMESPACE, &victim)
        .await
        .unwrap();
    let after = history
        .wait(
            Duration::from_secs(90),
            "AutoRecreate sandboxes Running elsewhere, Manual ones Lost",
            |t| {
                auto_hit.iter().all(|n| {
                    t[n].phase() == SandboxPhase::Running
                        && t[n].agent().is_some_and(|a| a != victim)
                }) && manual_hit
                    .iter()
                    .all(|n| t[n].phase() == SandboxPhase::Lost)
            },
        )
        .await
        .unwrap();

    // Re-placed ones run once more, on another agent, with one container;
    // the others never noticed.
    let bad = violations_of_running_once(&ns, &after, &auto_hit, false)
        .await
        .unwrap();
    assert!(bad.is_empty(), "re-placed sandboxes:\n{}", bad.join("\n"));
    let bad = violations_of_running_once(&ns, &after, &spared, true)
        .await
        .unwrap();
    assert!(
        bad.is_empty(),
        "sandboxes of other agents:\n{}",
        bad.join("\n")
    );
    for n in &auto_hit {
        assert_eq!(after[n].times_running, 2, "{n}: {:?}", after[n].phases);
    }
    let lost_containers = containerd::sandbox_containers(&ns).await.unwrap();
    let left = delete_all(&sbx, &history, &ns, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "agent {victim} killed: re-placed {auto_hit:?}, lost {manual_hit:?}; containers of Lost sandboxes before deletion: {:?}",
        manual_hit
            .iter()
            .map(|n| (n, lost_containers.get(&after[n].uid)))
            .collect::<Vec<_>>()
    );
    assert!(
        left.is_empty(),
        "containers of the killed agent {victim} outlived their (deleted) sandboxes; nothing collects containers of an agent that is gone: {left:?}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_process_killed_during_burst_keeps_running_sandboxes() {
    let client = cluster_client("agent process kill").await;
    settled(&client).await;
    // One agent, so the restart touches every sandbox.
    let Stage { ns, sbx, history } = stage(&client, "e2e-kill-agent-proc", (1, 1), 40)
        .await
        .unwrap();

    let early = names("early", 10);
    create_all(
        &sbx,
        sleepers(&early, "p", FailurePolicy::Manual),
        BurstShape::default(),
        None,
    )
    .await
    .unwrap();
    let before = history
        .wait(Duration::from_secs(60), "the first 10 Running", |t| {
            all_running(t, &early)
        })
        .await
        .unwrap();
    let agent = agent_pods(&client, &ns, "p")
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the agent pod");
    let agent_name = agent.metadata.name.clone().unwrap_or_default();
    let agent_uid = agent.metadata.uid.clone();
    let (_, restarts) = container_of(&agent, "agent").expect("the agent container");

    let late = names("late", 20);
    let shape = BurstShape {
        spread: Duration::from_secs(2),
        ..BurstShape::default()
    };
    let (creating, p) = spawn_burst(&sbx, &late, shape);
    wait_created(&p, 5).await;
    let pid = kill_container_process(&agent, "agent").await.unwrap();
    let burst = creating.await.unwrap().unwrap();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let restarted = wait_for(
        &pods_api,
        &agent_name,
        Duration::from_secs(60),
        "the agent container restarted and ready",
        |p: &Pod| {
            container_of(p, "agent").is_some_and(|(_, r)| r > restarts)
                && p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        },
    )
    .await
    .unwrap();
    assert_eq!(restarted.metadata.uid, agent_uid, "the same pod");

    let all: BTreeSet<String> = early.union(&late).cloned().collect();
    let tracks = history
        .wait(Duration::from_secs(90), "all 30 Running", |t| {
            all_running(t, &all)
        })
        .await
        .unwrap();
    eprintln!(
        "agent {agent_name} (host pid {pid}) killed; {}",
        latency_line(
            "create->Running of the 20 created meanwhile",
            &latencies(&burst, &tracks)
        )
    );
    // The early ones kept their containers through the restart.
    for n in &early {
        assert_eq!(
            tracks[n].container_ids, before[n].container_ids,
            "{n} kept its container"
        );
    }
    assert_once_then_clean(&ns, &sbx, &history, &tracks, &all).await;
    delete_namespace(&client, &ns).await;
}

/// Creates `names` as `Manual` sleepers of pool `p` and waits until all run.
async fn running_sleepers(
    sbx: &Api<Sandbox>,
    history: &History,
    names: &BTreeSet<String>,
) -> Tracks {
    create_all(
        sbx,
        sleepers(names, "p", FailurePolicy::Manual),
        BurstShape::default(),
        None,
    )
    .await
    .unwrap();
    history
        .wait(
            Duration::from_secs(90),
            &format!("{} sandboxes Running", names.len()),
            |t| all_running(t, names),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_during_burst() {
    let client = cluster_client("containerd kill").await;
    settled(&client).await;
    let Stage { ns, sbx, history } = stage(&client, "e2e-kill-containerd", (2, 3), 40)
        .await
        .unwrap();
    let early = names("early", 10);
    let before = running_sleepers(&sbx, &history, &early).await;

    let late = names("k", BURST);
    let shape = BurstShape {
        spread: Duration::from_secs(4),
        ..BurstShape::default()
    };
    let (creating, p) = spawn_burst(&sbx, &late, shape);
    wait_created(&p, 10).await;
    let killed_at = Instant::now();
    let created_when_killed = p.0.load(Ordering::SeqCst);
    cluster::kill(&["containerd"]).await.unwrap();
    // A supervisor starts it again.
    cluster::up().await.unwrap();
    let down_for = killed_at.elapsed();
    let burst = creating.await.unwrap().unwrap();

    let all: BTreeSet<String> = early.union(&late).cloned().collect();
    let tracks = history
        .wait(Duration::from_secs(120), "all 60 Running", |t| {
            all_running(t, &all)
        })
        .await
        .unwrap();
    eprintln!(
        "containerd SIGKILLed with {created_when_killed}/{BURST} created, back (node Ready) after {down_for:?}; {}",
        latency_line("create->Running", &latencies(&burst, &tracks))
    );
    for n in &early {
        assert_eq!(
            tracks[n].container_ids, before[n].container_ids,
            "{n} kept its container through the containerd restart"
        );
    }
    assert_once_then_clean(&ns, &sbx, &history, &tracks, &all).await;
    delete_namespace(&client, &ns).await;
    settled(&client).await;
}

/// The Kubernetes control plane (etcd, kube-apiserver, controller-manager,
/// scheduler) and Fast Sandbox's own (controller, webhooks, extender) all
/// SIGKILLed at once while sandboxes run: they keep running through the
/// outage, one that exits meanwhile is reported with its exit code after
/// the restart, and new sandboxes start as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_control_plane_restarted_under_running_sandboxes() {
    let client = cluster_client("control plane restart").await;
    settled(&client).await;
    let Stage { ns, sbx, history } = stage(&client, "e2e-restart-cp", (2, 3), 32).await.unwrap();
    let early = names("r", 20);
    let before = running_sleepers(&sbx, &history, &early).await;
    // Exits with 3 while the control plane is down.
    let mut short = sleeper("short", "p", FailurePolicy::Manual);
    short.spec.command = vec!["/bin/sh".into(), "-c".into(), "sleep 4; exit 3".into()];
    let shorts = BTreeSet::from(["short".to_string()]);
    create_all(&sbx, vec![short], BurstShape::default(), None)
        .await
        .unwrap();
    let short_container = history
        .wait(Duration::from_secs(60), "short Running", |t| {
            all_running(t, &shorts)
        })
        .await
        .unwrap()["short"]
        .container_ids[0]
        .clone();

    let mut ours = Vec::new();
    for app in [CONTROLLER, WEBHOOK, "fast-sandbox-extender"] {
        let selector = format!("app.kubernetes.io/name={app}");
        ours.extend(pods(&client, SYSTEM_NAMESPACE, &selector).await.unwrap());
    }
    assert!(ours.len() >= 3, "controller, webhook and extender pods");
    let exits = TaskExits::start().unwrap();
    let killed_at = Instant::now();
    cluster::kill(&[
        "kube-apiserver",
        "etcd",
        "kube-controller-manager",
        "kube-scheduler",
    ])
    .await
    .unwrap();
    for pod in &ours {
        let container = pod
            .spec
            .as_ref()
            .map(|s| s.containers[0].name.clone())
            .unwrap_or_default();
        kill_container_process(pod, &container).await.unwrap();
    }
    // The sandbox ends while nothing but the agents and containerd runs.
    exits
        .wait(&short_container, Duration::from_secs(30))
        .await
        .unwrap();
    let running = containerd::sandbox_containers(&ns).await.unwrap();
    for n in &early {
        let ids = running.get(&before[n].uid).cloned().unwrap_or_default();
        assert_eq!(ids, before[n].container_ids, "{n} runs through the outage");
        assert!(
            containerd::task_pid(&ids[0]).await.unwrap().is_some(),
            "{n}'s task runs through the outage"
        );
    }
    cluster::up().await.unwrap();
    settled(&client).await;
    let back = killed_at.elapsed();

    let after = history
        .wait(
            Duration::from_secs(120),
            "short Failed with exit code 3, the 20 still Running",
            |t| {
                all_running(t, &early)
                    && t.get("short").is_some_and(|s| {
                        s.phase() == SandboxPhase::Failed
                            && s.sandbox.status.as_ref().and_then(|st| st.exit_code) == Some(3)
                    })
            },
        )
        .await
        .unwrap();
    for n in &early {
        assert_eq!(
            after[n].container_ids, before[n].container_ids,
            "{n} kept its container"
        );
    }
    let late = names("new", 20);
    let tracks = running_sleepers(&sbx, &history, &late).await;
    eprintln!(
        "control plane SIGKILLed; back and settled after {back:?}; short ended {:?}",
        tracks["short"]
            .sandbox
            .status
            .as_ref()
            .map(|s| (&s.reason, s.exit_code))
    );
    let all: BTreeSet<String> = early.union(&late).cloned().collect();
    assert_once_then_clean(&ns, &sbx, &history, &tracks, &all).await;
    delete_namespace(&client, &ns).await;
}

/// A node's kubelet stopped cleanly while sandboxes run there (an upgrade,
/// a crash-looping kubelet): the node goes NotReady and its agent pods not
/// ready, but the agents and their sandboxes keep running, so nothing is
/// re-placed, whatever the failure policy (the agent pod object still
/// exists: its sandboxes may be running, and here they are). When the
/// kubelet is back every sandbox is still Running once, in its first
/// container, and deletes clean up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_stopped_under_running_sandboxes() {
    let client = cluster_client("kubelet stop").await;
    settled(&client).await;
    let nodes = containerd::sockets();
    assert!(
        nodes.len() >= 2,
        "this test needs a second real node (test/cluster/cluster.sh env sets FAST_SANDBOX_NODE_CONTAINERD); got {nodes:?}"
    );
    let node = nodes[1].0.clone();
    let kubelet = "kubelet-2";
    let Stage { ns, sbx, history } = stage_on(&client, "e2e-kubelet", (1, 2), 10, Some(&node))
        .await
        .unwrap();
    let (_, _, all, before) = both_policies_running(&sbx, &history).await;

    let nodes_api: Api<Node> = Api::all(client.clone());
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), &ns);
    let stopped_at = Instant::now();
    cluster::stop(&[kubelet]).await.unwrap();
    let outage = async {
        // The node lifecycle controller notices after its grace period.
        wait_for(
            &nodes_api,
            &node,
            Duration::from_secs(120),
            "the node NotReady",
            |n: &Node| !node_ready(n),
        )
        .await?;
        // Its agent pods are marked not ready, and the controller sees that.
        wait_for(
            &pools,
            "p",
            Duration::from_secs(60),
            "the pool counting no ready agent",
            |p: &SandboxPool| p.status.as_ref().is_some_and(|s| s.ready_agents == 0),
        )
        .await?;
        Ok::<_, E2eError>(history.snapshot())
    }
    .await;
    let restarted = cluster::up().await;
    let during = outage.unwrap();
    restarted.unwrap();
    wait_for(
        &nodes_api,
        &node,
        Duration::from_secs(120),
        "the node Ready again",
        node_ready,
    )
    .await
    .unwrap();
    eprintln!(
        "{kubelet} stopped for {:?}; during the outage: {}",
        stopped_at.elapsed(),
        census(&during)
    );
    for n in &all {
        assert!(
            during[n].phase() == SandboxPhase::Running && during[n].times_running == 1,
            "{n} moved while its agent still ran it: {:?} {:?}",
            during[n].phases,
            during[n].sandbox.status
        );
    }
    let after = history
        .wait(
            Duration::from_secs(60),
            "all 6 Running after the kubelet is back",
            |t| all_running(t, &all),
        )
        .await
        .unwrap();
    for n in &all {
        assert_eq!(
            after[n].container_ids, before[n].container_ids,
            "{n} kept its container"
        );
    }
    assert_once_then_clean(&ns, &sbx, &history, &after, &all).await;
    delete_namespace(&client, &ns).await;
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Every leaf certificate renewed at once by the renewal CronJob's own
/// program (asked to renew anything valid for less than 400 days, which is
/// every leaf): the agent serves the renewed certificate from its mounted
/// Secret without a restart, and sandboxes keep starting over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renewed_reach_running_agents() {
    let client = cluster_client("certificate renewal").await;
    settled(&client).await;
    let Stage { ns, sbx, history } = stage(&client, "e2e-renew", (1, 1), 16).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let cert_of = |s: &Secret| s.data.as_ref().and_then(|d| d.get("tls.crt")).cloned();
    let before = cert_of(&secrets.get(AGENT_TLS).await.unwrap()).expect("an agent certificate");
    running_sleepers(&sbx, &history, &names("before", 5)).await;
    let agent = agent_pods(&client, &ns, "p").await.unwrap().remove(0);
    let restarts = container_of(&agent, "agent").map(|(_, n)| n);
    let ip = agent
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the agent has an IP");

    let cron: Api<CronJob> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let template = cron
        .get("fast-sandbox-certs-renew")
        .await
        .unwrap()
        .spec
        .job_template;
    let mut job = Job {
        metadata: ObjectMeta {
            generate_name: Some("e2e-renew-".into()),
            ..Default::default()
        },
        spec: template.spec,
        ..Default::default()
    };
    if let Some(c) = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
    {
        let args = c.args.get_or_insert_with(Vec::new);
        args.retain(|a| !a.starts_with("--renew-within-days"));
        args.push("--renew-within-days=400".into());
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let job = jobs.create(&PostParams::default(), &job).await.unwrap();
    let job_name = job.metadata.name.clone().unwrap_or_default();
    wait_for(
        &jobs,
        &job_name,
        Duration::from_secs(120),
        "the renewal Job to succeed",
        |j: &Job| j.status.as_ref().and_then(|s| s.succeeded) >= Some(1),
    )
    .await
    .unwrap();
    let renewed = cert_of(&secrets.get(AGENT_TLS).await.unwrap()).expect("a renewed certificate");
    assert_ne!(renewed, before, "the agent certificate was renewed");
    let want = fingerprint(&renewed.0);
    // The kubelet refreshes Secret volumes on its own period (about a
    // minute); nothing announces it, so ask the agent what it serves.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut served = served_fingerprint(&ip).await;
    while served.as_deref() != Some(want.as_str()) {
        assert!(
            Instant::now() < deadline,
            "agent {} still serves {served:?} 180 s after the renewal, not {want}",
            agent.metadata.name.as_deref().unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        served = served_fingerprint(&ip).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let now = pods
        .get(agent.metadata.name.as_deref().unwrap_or_default())
        .await
        .unwrap();
    assert_eq!(
        container_of(&now, "agent").map(|(_, n)| n),
        restarts,
        "the agent took the renewed certificate without restarting"
    );

    let after = names("after", 5);
    running_sleepers(&sbx, &history, &after).await;
    let _ = jobs
        .delete(&job_name, &kube::api::DeleteParams::background())
        .await;
    delete_namespace(&client, &ns).await;
}

/// SHA-256 fingerprint of the first certificate of a PEM bundle.
fn fingerprint(pem: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(pem)
        .expect("openssl reads the certificate");
    let out = child.wait_with_output().expect("openssl runs");
    assert!(out.status.success(), "openssl x509 of {pem:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The fingerprint of the certificate the agent at `ip` serves now, if it
/// answers.
async fn served_fingerprint(ip: &str) -> Option<String> {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("{ip}:9443"), "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start + 25;
    Some(fingerprint(text[start..end].as_bytes()))
}
