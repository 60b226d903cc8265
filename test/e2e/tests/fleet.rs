//! Many sandboxes at once in several namespaces and pools with different
//! images: a burst larger than a pool's warm capacity is admitted (the
//! excess unbound), the pool grows to fit it, every sandbox runs on an agent
//! of its own pool and namespace from the image it named; past `poolMax`
//! a sandbox waits `Scheduled=False/NoCapacity` and runs as soon as a slot
//! frees; `expireTime` and `ttlSecondsAfterFinished` delete sandboxes on
//! time and leave no container behind, and an `expireTime` moved on after
//! binding keeps its sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fast_sandbox_api::wellknown::{condition, reason};
use fast_sandbox_api::{FailurePolicy, Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_e2e::history::{History, Tracks};
use fast_sandbox_e2e::scenario::{
    BUSYBOX, BurstShape, agent_pods, all_running, create_all, delete_all, names, ready_pool,
    ready_pool_of, sleeper, violations_of_running_once,
};
use fast_sandbox_e2e::{cluster_client, containerd, delete_namespace, namespace, wait_for};
use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// A second image on the node: the agent image carries busybox too.
const OTHER_IMAGE: &str = "docker.io/fast-sandbox/agent:dev";
const SMALL_SLOTS: i32 = 4;
const SMALL_MAX: i32 = 3;
const WAIT: Duration = Duration::from_secs(180);

/// One namespace with pools `small` (1..=3 agents x 4 slots, busybox) and
/// `other` (1 agent x 8 slots, the agent image).
struct Tenant {
    ns: String,
    sbx: Api<Sandbox>,
    history: History,
}

impl Tenant {
    /// Creates `batch` at once in this namespace.
    async fn create(&self, batch: Vec<Sandbox>) {
        create_all(&self.sbx, batch, BurstShape::default(), None)
            .await
            .unwrap();
    }
}

async fn tenant(client: &Client) -> Tenant {
    let ns = namespace(client, "e2e-fleet").await.unwrap();
    let (small, other) = tokio::join!(
        ready_pool(
            client,
            &ns,
            "small",
            (1, SMALL_MAX),
            SMALL_SLOTS,
            Duration::from_secs(120)
        ),
        ready_pool_of(
            client,
            &ns,
            "other",
            (1, 1),
            8,
            OTHER_IMAGE,
            Duration::from_secs(120)
        ),
    );
    small.unwrap();
    other.unwrap();
    let sbx: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let history = History::start(sbx.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    Tenant { ns, sbx, history }
}

fn of_pool(names: &BTreeSet<String>, pool: &str, image: &str) -> Vec<Sandbox> {
    names
        .iter()
        .map(|n| {
            let mut sb = sleeper(n, pool, FailurePolicy::Manual);
            sb.spec.image = image.to_string();
            sb
        })
        .collect()
}

/// Agent pod names of pool `ns/pool`.
async fn agents_of(client: &Client, ns: &str, pool: &str) -> BTreeSet<String> {
    agent_pods(client, ns, pool)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn waiting_for_capacity(t: &Tracks, name: &str) -> bool {
    t.get(name).is_some_and(|tr| {
        tr.sandbox.spec.agent_ref.is_none()
            && tr
                .sandbox
                .condition(condition::SCHEDULED)
                .is_some_and(|c| c.status == "False" && c.reason == reason::NO_CAPACITY)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_pools_grow_place_and_expire() {
    let client = cluster_client("fleet").await;
    let tenants = [tenant(&client).await, tenant(&client).await];
    let small = names("s", 10);
    let other = names("o", 4);
    let all: BTreeSet<String> = small.union(&other).cloned().collect();

    // Both namespaces at once: 10 sandboxes where 4 slots are warm, 4 more
    // of another image in another pool.
    let bursts = join_all(tenants.iter().map(|t| {
        let mut batch = of_pool(&small, "small", BUSYBOX);
        batch.extend(of_pool(&other, "other", OTHER_IMAGE));
        create_all(&t.sbx, batch, BurstShape::default(), None)
    }))
    .await;
    for (t, b) in tenants.iter().zip(bursts) {
        let b = b.unwrap();
        assert!(
            !b.unbound.is_empty(),
            "{}: 10 sandboxes for 4 warm slots, yet admission bound them all",
            t.ns
        );
    }
    for t in &tenants {
        let tracks = t
            .history
            .wait(WAIT, &format!("{}: all 14 Running", t.ns), |tr| {
                all_running(tr, &all)
            })
            .await
            .unwrap();
        let pools: Api<SandboxPool> = Api::namespaced(client.clone(), &t.ns);
        let grown = wait_for(
            &pools,
            "small",
            Duration::from_secs(60),
            "pool small grown to 3 ready agents holding 10 sandboxes",
            |p: &SandboxPool| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.ready_agents == SMALL_MAX && s.slots_used == 10)
            },
        )
        .await
        .unwrap();
        if let Some(s) = &grown.status {
            eprintln!(
                "{}: pool small grew to {} agents, {}/{} slots used",
                t.ns, s.ready_agents, s.slots_used, s.slots_total
            );
        }

        // Each sandbox on an agent of its own pool, from its own image.
        let agents: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
            ("small", agents_of(&client, &t.ns, "small").await),
            ("other", agents_of(&client, &t.ns, "other").await),
        ]);
        for n in &all {
            let tr = &tracks[n];
            let pool = tr.sandbox.spec.pool_ref.as_str();
            let agent = tr.agent().unwrap_or_default();
            assert!(
                agents[pool].contains(agent),
                "{}/{n} of pool {pool} runs on {agent}, not one of {:?}",
                t.ns,
                agents[pool]
            );
            let id = tr.container_ids.first().cloned().unwrap_or_default();
            assert_eq!(
                containerd::container_image(&id).await.unwrap(),
                tr.sandbox.spec.image,
                "{}/{n} runs the image it named",
                t.ns
            );
        }
        let bad = violations_of_running_once(&t.ns, &tracks, &all, true)
            .await
            .unwrap();
        assert!(
            bad.is_empty(),
            "{}: not exactly once:\n{}",
            t.ns,
            bad.join("\n")
        );
    }

    // Past poolMax: 12 slots, 13 sandboxes. The last waits, unbound, and
    // runs as soon as a slot frees.
    let t = &tenants[0];
    let extra = names("x", 3);
    t.create(of_pool(&extra, "small", BUSYBOX)).await;
    let tracks = t
        .history
        .wait(
            WAIT,
            "2 of 3 extra Running, 1 waiting with Scheduled=False/NoCapacity",
            |tr| {
                let running = extra.iter().filter(|n| all_running(tr, [*n])).count();
                let waiting = extra.iter().filter(|n| waiting_for_capacity(tr, n)).count();
                running == 2 && waiting == 1
            },
        )
        .await
        .unwrap();
    let waiting = extra
        .iter()
        .find(|n| waiting_for_capacity(&tracks, n))
        .cloned()
        .unwrap_or_default();
    t.sbx
        .delete("s-00", &DeleteParams::default())
        .await
        .unwrap();
    let waiting_set = BTreeSet::from([waiting.clone()]);
    t.history
        .wait(
            WAIT,
            &format!("{waiting} Running once s-00 freed its slot"),
            |tr| all_running(tr, &waiting_set) && tr.get("s-00").is_some_and(|s| s.deleted),
        )
        .await
        .unwrap();

    // Expiry: at expireTime, and ttlSecondsAfterFinished after the end.
    let t = &tenants[1];
    let mut expiring = sleeper("expiring", "small", FailurePolicy::Manual);
    expiring.spec.expire_time = Some(Time(Timestamp::now() + SignedDuration::from_secs(5)));
    let mut finished = sleeper("finished", "other", FailurePolicy::Manual);
    finished.spec.image = OTHER_IMAGE.to_string();
    finished.spec.command = vec!["/bin/sh".into(), "-c".into(), "exit 0".into()];
    finished.spec.ttl_seconds_after_finished = Some(2);
    let mut extended = sleeper("extended", "small", FailurePolicy::Manual);
    // Due 2 s before `expiring`, so by the time that one is gone, this
    // one's first deadline is well past.
    extended.spec.expire_time = Some(Time(Timestamp::now() + SignedDuration::from_secs(3)));
    t.create(vec![expiring, finished, extended]).await;
    // Kept alive: its deadline moves an hour on before the first passes.
    let later =
        json!({"spec": {"expireTime": Time(Timestamp::now() + SignedDuration::from_secs(3600))}});
    t.sbx
        .patch("extended", &PatchParams::default(), &Patch::Merge(&later))
        .await
        .unwrap();
    let tracks = t
        .history
        .wait(
            WAIT,
            "expiring and finished deleted by the controller",
            |tr| {
                ["expiring", "finished"]
                    .iter()
                    .all(|n| tr.get(*n).is_some_and(|s| s.deleted))
            },
        )
        .await
        .unwrap();
    assert!(
        tracks["expiring"].phases.contains(&SandboxPhase::Running),
        "expiring ran before it expired: {:?}",
        tracks["expiring"].phases
    );
    assert!(
        tracks
            .get("extended")
            .is_some_and(|e| !e.deleted && e.phase() == SandboxPhase::Running),
        "extended outlived its first expireTime: {:?}",
        tracks.get("extended").map(|e| (&e.phases, e.deleted))
    );
    assert!(
        tracks["finished"].phases.contains(&SandboxPhase::Succeeded),
        "finished succeeded before its TTL: {:?}",
        tracks["finished"].phases
    );
    let left = containerd::sandbox_containers(&t.ns).await.unwrap();
    for n in ["expiring", "finished"] {
        assert!(
            !left.contains_key(&tracks[n].uid),
            "{n} deleted, its container {:?} is not",
            left.get(&tracks[n].uid)
        );
    }

    for t in &tenants {
        let left = delete_all(&t.sbx, &t.history, &t.ns, Duration::from_secs(120))
            .await
            .unwrap();
        assert!(
            left.is_empty(),
            "{}: containers outlived their sandboxes: {left:?}",
            t.ns
        );
        delete_namespace(&client, &t.ns).await;
    }
}
