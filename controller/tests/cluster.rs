//! The reconcilers against a real kube-apiserver (the local cluster of
//! `test/cluster/`), named by `FAST_SANDBOX_KUBECONFIG`. Ignored by
//! default; `hack/test.sh` runs them with `--ignored`, and without the
//! cluster they fail. Each test works in namespaces of its own and removes them.
//!
//! - `pool_scales_agent_pods_and_reports_status`: agent pods built in the
//!   operator's namespace and kept within bounds, `/scale`-style replicas
//!   honoured, growth stopped at the namespace's cap with a condition,
//!   scale-down through draining, deleted agents replaced, unbound
//!   sandboxes reported `Pending/NoCapacity`, `expireTime` honoured, and a
//!   deleted pool's agents removed before its finalizer goes.
//! - `sandbox_runs_on_a_real_agent`: additionally needs the agent image
//!   loaded into the node and named by `FAST_SANDBOX_AGENT_IMAGE` (and the
//!   cluster's containerd socket in `FAST_SANDBOX_CONTAINERD_SOCK`, as
//!   `test/cluster/cluster.sh env` exports); makes its own CA and
//!   certificates, runs a sandbox to `Succeeded` and deletes it through the
//!   finalizer.

use std::path::PathBuf;
use std::time::Duration;

use fast_sandbox_agent_client::ClientTls;
use fast_sandbox_api::policy::Policy;
use fast_sandbox_api::wellknown::{FINALIZER, LABEL_POOL_UID, POOL_FINALIZER, condition, reason};
use fast_sandbox_api::{
    PoolCapacity, Sandbox, SandboxPhase, SandboxPool, SandboxPoolSpec, SandboxSpec,
};
use fast_sandbox_controller::agent_pod::{AGENT_TLS_SECRET, AgentPodSettings};
use fast_sandbox_controller::context::Settings;
use fast_sandbox_controller::leader::{Elector, Timing};
use fast_sandbox_controller::metrics::Metrics;
use fast_sandbox_controller::term::{self, Components};
use fast_sandbox_k8s::decode::Undecodable;
use fast_sandbox_k8s::policy::SharedPolicy;
use fast_sandbox_server::{Health, Registry};
use futures::FutureExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

/// The cluster's client. These tests are ignored by default (they need
/// the local cluster without a deployed controller); run on purpose, they
/// fail when it is missing.
async fn client() -> Client {
    let Some(path) = std::env::var_os("FAST_SANDBOX_KUBECONFIG") else {
        panic!(
            "FAST_SANDBOX_KUBECONFIG is not set; hack/test.sh runs these tests on the local cluster"
        );
    };
    fast_sandbox_server::telemetry::init(fast_sandbox_server::telemetry::LogFormat::Text);
    let kc = Kubeconfig::read_from(PathBuf::from(path)).expect("reading FAST_SANDBOX_KUBECONFIG");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("client")
}

async fn ensure_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Sandbox::crd(), SandboxPool::crd()] {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("fast-sandbox-controller-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("applying CRD");
        tokio::time::timeout(
            WAIT,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD not established within 60s")
        .unwrap();
    }
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{n:08x}")
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("creating namespace");
}

/// Deletes the test's namespaces when dropped, also when the test fails.
struct Cleanup {
    client: Client,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let names = std::mem::take(&mut self.namespaces);
        let client = self.client.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for n in names {
                    // The controller is stopped: release what it would have.
                    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &n);
                    if let Ok(list) = sandboxes.list(&ListParams::default()).await {
                        for sb in list.items {
                            let patch = json!({"metadata": {"finalizers": null}});
                            let _ = sandboxes
                                .patch(
                                    &sb.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(patch),
                                )
                                .await;
                        }
                    }
                    let _ = api.delete(&n, &DeleteParams::default()).await;
                }
            })
        });
    }
}

/// Runs one leadership term in the background; dropping the sender stops it.
fn start(components: Components) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(false);
    let stop = async move {
        let _ = rx.wait_for(|s| *s).await;
    }
    .boxed()
    .shared();
    let handle = tokio::spawn(async move { term::run(&components, stop).await });
    (tx, handle)
}

fn components(
    registry: &Registry,
    client: &Client,
    system_ns: &str,
    watch_ns: &str,
    tls: ClientTls,
    socket: &str,
    policy: Policy,
) -> Components {
    Components {
        client: client.clone(),
        settings: Settings {
            namespace: system_ns.to_string(),
            watch_namespace: Some(watch_ns.to_string()),
            agent_lost_grace: Duration::from_secs(5),
            drain_settle: Duration::from_millis(300),
            agent_pod: AgentPodSettings {
                namespace: system_ns.to_string(),
                containerd_socket: socket.to_string(),
                state_dir: "/var/lib/fast-sandbox/agents".into(),
                containerd_namespace: "k8s.io".into(),
                service_account: "default".into(),
                scheduler_name: None,
            },
        },
        tls,
        agent_port: fast_sandbox_api::agent::DEFAULT_PORT,
        metrics: Metrics::register(registry),
        health: Health::new(),
        identity: "test".into(),
        policy: SharedPolicy::fixed(policy),
        policy_changes: watch::channel(()).0,
        undecodable: Undecodable::register(registry),
    }
}

fn pool(name: &str, capacity: PoolCapacity, replicas: Option<i32>) -> SandboxPool {
    SandboxPool::new(
        name,
        SandboxPoolSpec {
            capacity,
            max_sandboxes_per_agent: Some(4),
            replicas,
            agent_template: Some(PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some("fast-sandbox/agent:dev".into()),
                        image_pull_policy: Some("Never".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            warm_images: vec![],
            prestarted: None,
            runtime: None,
            sandbox_defaults: None,
            default_network: None,
            host_users: None,
        },
    )
}

async fn wait_pool(
    api: &Api<SandboxPool>,
    name: &str,
    what: &str,
    f: impl Fn(&SandboxPool) -> bool,
) {
    let cond = move |p: Option<&SandboxPool>| p.is_some_and(&f);
    tokio::time::timeout(WAIT, await_condition(api.clone(), name, cond))
        .await
        .unwrap_or_else(|_| panic!("pool {name}: {what} not reached within 60s"))
        .unwrap();
}

async fn wait_sandbox(
    api: &Api<Sandbox>,
    name: &str,
    what: &str,
    f: impl Fn(&Sandbox) -> bool,
) -> Sandbox {
    let cond = move |s: Option<&Sandbox>| s.is_some_and(&f);
    tokio::time::timeout(WAIT, await_condition(api.clone(), name, cond))
        .await
        .unwrap_or_else(|_| panic!("sandbox {name}: {what} not reached within 60s"))
        .unwrap()
        .unwrap()
}

fn agents(p: &SandboxPool) -> i32 {
    p.status.as_ref().map_or(-1, |s| s.agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster without a deployed controller; hack/test.sh runs it with --ignored"]
async fn pool_scales_agent_pods_and_reports_status() {
    let client = client().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    ensure_crds(&client).await;
    let system = unique("fsc-sys");
    let ns = unique("fsc-pool");
    namespace(&client, &system).await;
    namespace(&client, &ns).await;
    let _cleanup = Cleanup {
        client: client.clone(),
        namespaces: vec![ns.clone(), system.clone()],
    };
    let secret: Secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(AGENT_TLS_SECRET.into()),
            ..Default::default()
        },
        data: Some([("tls.crt".to_string(), ByteString(b"x".to_vec()))].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &system)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let tls = ClientTls {
        cert: "/nonexistent/tls.crt".into(),
        key: "/nonexistent/tls.key".into(),
        ca: "/nonexistent/ca.crt".into(),
    };
    // Three agents at most in the namespace, whatever the pool asks.
    let policy = Policy::parse("namespaceDefaults: {maxAgents: 3}").unwrap();
    let (stop, handle) = start(components(
        &Registry::default(),
        &client,
        &system,
        &ns,
        tls,
        "/run/containerd/containerd.sock",
        policy,
    ));

    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), &ns);
    // Agent pods live in the operator's namespace, not the pool's.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system);
    let capacity = PoolCapacity {
        pool_min: Some(2),
        pool_max: Some(4),
        buffer_min: None,
        buffer_max: Some(10),
    };
    pools
        .create(&PostParams::default(), &pool("p", capacity, None))
        .await
        .unwrap();
    wait_pool(&pools, "p", "2 agents", |p| agents(p) == 2).await;

    let stored = pools.get("p").await.unwrap();
    let pool_uid = stored.uid().unwrap();
    assert!(stored.finalizers().iter().any(|f| f == POOL_FINALIZER));
    let lp = ListParams::default().labels(&format!("{LABEL_POOL_UID}={pool_uid}"));
    let listed = pods.list(&lp).await.unwrap().items;
    assert_eq!(listed.len(), 2);
    let pod = &listed[0];
    assert!(
        pod.name_any().starts_with(&format!("p-{ns}-")),
        "{}",
        pod.name_any()
    );
    assert!(
        pod.owner_references().is_empty(),
        "no owner across namespaces"
    );
    assert!(
        Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing in the tenant's namespace"
    );
    let c = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    let st = stored.status.unwrap();
    assert_eq!(
        st.selector.as_deref(),
        Some(format!("sandbox.fast.io/pool-uid={pool_uid},sandbox.fast.io/role=agent").as_str())
    );

    // kubectl scale: replicas wins, within bounds and within the
    // namespace's cap of 3, which the pool then reports.
    let scale = |n: i32| json!({"spec": {"replicas": n}});
    pools
        .patch("p", &PatchParams::default(), &Patch::Merge(scale(4)))
        .await
        .unwrap();
    wait_pool(&pools, "p", "3 agents, capped", |p| {
        agents(p) == 3
            && p.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == condition::CAPACITY_LIMITED
                        && c.status == "True"
                        && c.reason == reason::NAMESPACE_CAP_REACHED
                })
            })
    })
    .await;
    pools
        .patch("p", &PatchParams::default(), &Patch::Merge(scale(3)))
        .await
        .unwrap();
    pools
        .patch("p", &PatchParams::default(), &Patch::Merge(scale(1)))
        .await
        .unwrap();
    // poolMin 2 clamps a request for 1.
    wait_pool(&pools, "p", "2 agents after scale-down", |p| agents(p) == 2).await;

    // A deleted agent is replaced.
    let live = pods.list(&lp).await.unwrap().items;
    let victim = live
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .expect("a live agent pod")
        .clone();
    let victim_uid = victim.uid().unwrap();
    let victim = victim.name_any();
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), &victim, conditions::is_deleted(&victim_uid)),
    )
    .await
    .expect("agent pod not deleted within 60s")
    .unwrap();
    wait_pool(&pools, "p", "2 agents after a deletion", |p| agents(p) == 2).await;
    let names: Vec<String> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert!(!names.contains(&victim), "{names:?}");

    // No ready agent: an unbound sandbox waits with Scheduled=False.
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let spec = SandboxSpec {
        image: "docker.io/fast-sandbox/busybox:dev".into(),
        pool_ref: "p".into(),
        ..Default::default()
    };
    sandboxes
        .create(
            &PostParams::default(),
            &Sandbox::new("waiting", spec.clone()),
        )
        .await
        .unwrap();
    let sb = wait_sandbox(&sandboxes, "waiting", "Pending/NoCapacity", |s| {
        s.condition(condition::SCHEDULED)
            .is_some_and(|c| c.status == "False" && c.reason == reason::NO_CAPACITY)
    })
    .await;
    assert_eq!(sb.phase(), SandboxPhase::Pending);

    // expireTime is honoured at its instant.
    let expire = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expiring = SandboxSpec {
        expire_time: Some(fast_sandbox_controller::time::to_k8s(expire)),
        ..spec
    };
    let created = sandboxes
        .create(&PostParams::default(), &Sandbox::new("expiring", expiring))
        .await
        .unwrap();
    let uid = created.uid().unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(sandboxes.clone(), "expiring", conditions::is_deleted(&uid)),
    )
    .await
    .expect("expired sandbox not deleted within 60s")
    .unwrap();
    let late = chrono::Utc::now()
        - fast_sandbox_controller::time::from_k8s(&fast_sandbox_controller::time::to_k8s(expire));
    eprintln!(
        "expired sandbox deleted {} ms after its expireTime",
        late.num_milliseconds()
    );
    assert!(
        late < chrono::Duration::seconds(2),
        "deleted {late} after expireTime"
    );

    // Deleting the pool removes its agents, then the pool itself.
    pools.delete("p", &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(pools.clone(), "p", conditions::is_deleted(&pool_uid)),
    )
    .await
    .expect("deleted pool not finalized within 60s")
    .unwrap();
    let left: Vec<String> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert!(left.is_empty(), "agents left behind: {left:?}");

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster without a deployed controller; hack/test.sh runs it with --ignored"]
async fn sandbox_runs_on_a_real_agent() {
    let client = client().await;
    let Ok(agent_image) = std::env::var("FAST_SANDBOX_AGENT_IMAGE") else {
        panic!("FAST_SANDBOX_AGENT_IMAGE is not set: the agent image loaded into the node");
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    ensure_crds(&client).await;
    let socket = std::env::var("FAST_SANDBOX_CONTAINERD_SOCK")
        .unwrap_or_else(|_| "/run/containerd/containerd.sock".into());
    let system = unique("fsc-sys");
    let ns = unique("fsc-run");
    namespace(&client, &system).await;
    namespace(&client, &ns).await;
    let _cleanup = Cleanup {
        client: client.clone(),
        namespaces: vec![ns.clone(), system.clone()],
    };

    // A CA, the agents' serving certificate (as a secret in the "system"
    // namespace, where agent pods run) and the controller's client
    // certificate (as files).
    let dir = tempfile::tempdir().unwrap();
    let ca = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    };
    let leaf = |dns: &str| {
        let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (agent_crt, agent_key) = leaf("fast-sandbox-agent");
    let (client_crt, client_key) = leaf("fast-sandbox-controller");
    std::fs::write(dir.path().join("tls.crt"), client_crt).unwrap();
    std::fs::write(dir.path().join("tls.key"), client_key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(AGENT_TLS_SECRET.into()),
            ..Default::default()
        },
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(agent_crt.into_bytes())),
                ("tls.key".to_string(), ByteString(agent_key.into_bytes())),
                ("ca.crt".to_string(), ByteString(ca.pem().into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &system)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let tls = ClientTls {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca: dir.path().join("ca.crt"),
    };
    let registry = Registry::default();
    let (stop, handle) = start(components(
        &registry,
        &client,
        &system,
        &ns,
        tls,
        &socket,
        Policy::default(),
    ));

    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), &ns);
    let capacity = PoolCapacity {
        pool_min: Some(1),
        pool_max: Some(2),
        ..Default::default()
    };
    let mut p = pool("p", capacity, None);
    if let Some(t) = p.spec.agent_template.as_mut().and_then(|t| t.spec.as_mut()) {
        t.containers[0].image = Some(agent_image);
    }
    pools.create(&PostParams::default(), &p).await.unwrap();
    wait_pool(&pools, "p", "1 ready agent", |p| {
        p.status.as_ref().is_some_and(|s| s.ready_agents >= 1)
    })
    .await;

    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let spec = SandboxSpec {
        image: "docker.io/fast-sandbox/busybox:dev".into(),
        command: vec!["/bin/sh".into(), "-c".into(), "sleep 1; exit 0".into()],
        pool_ref: "p".into(),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    sandboxes
        .create(&PostParams::default(), &Sandbox::new("job", spec))
        .await
        .unwrap();
    let running = wait_sandbox(&sandboxes, "job", "Ready", |s| {
        s.condition(condition::READY)
            .is_some_and(|c| c.status == "True")
    })
    .await;
    eprintln!("create to Ready: {:?}", t0.elapsed());
    assert!(running.finalizers().iter().any(|f| f == FINALIZER));
    assert!(running.status.as_ref().unwrap().container_id.is_some());

    let done = wait_sandbox(&sandboxes, "job", "Succeeded", |s| {
        s.phase() == SandboxPhase::Succeeded
    })
    .await;
    assert_eq!(done.status.as_ref().unwrap().exit_code, Some(0));

    let uid = done.uid().unwrap();
    sandboxes
        .delete("job", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(sandboxes.clone(), "job", conditions::is_deleted(&uid)),
    )
    .await
    .expect("sandbox not finalized within 60s")
    .unwrap();

    // Five long-running sandboxes one after the other: four fill the first
    // agent's slots, the fifth waits unbound until the pool has grown.
    let mut took = Vec::new();
    for i in 0..5 {
        let name = format!("s{i}");
        let spec = SandboxSpec {
            image: "docker.io/fast-sandbox/busybox:dev".into(),
            command: vec!["/bin/sleep".into(), "30".into()],
            pool_ref: "p".into(),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        sandboxes
            .create(&PostParams::default(), &Sandbox::new(&name, spec))
            .await
            .unwrap();
        wait_sandbox(&sandboxes, &name, "Ready", |s| {
            s.condition(condition::READY)
                .is_some_and(|c| c.status == "True")
        })
        .await;
        took.push(t0.elapsed());
    }
    eprintln!("create to Ready, sequential: {took:?}");
    wait_pool(&pools, "p", "2 agents, 5 slots used", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.agents == 2 && s.slots_used == 5 && s.slots_total == 8)
    })
    .await;

    // resetRevision: the container is recreated on the same agent.
    let before = sandboxes.get("s0").await.unwrap();
    let old_id = before.status.as_ref().unwrap().container_id.clone();
    let reset = json!({"spec": {"resetRevision": 1}});
    sandboxes
        .patch("s0", &PatchParams::default(), &Patch::Merge(reset))
        .await
        .unwrap();
    let after = wait_sandbox(&sandboxes, "s0", "reset to revision 1", |s| {
        s.status.as_ref().is_some_and(|st| {
            st.observed_reset_revision == Some(1) && st.phase == Some(SandboxPhase::Running)
        })
    })
    .await;
    eprintln!(
        "reset: container {:?} -> {:?}",
        old_id,
        after.status.as_ref().unwrap().container_id
    );
    assert_eq!(after.spec.agent_ref, before.spec.agent_ref);

    // failurePolicy AutoRecreate: the agent pod goes, the sandbox is
    // re-placed on another agent and runs again; Manual ones stay Lost.
    let spec = SandboxSpec {
        image: "docker.io/fast-sandbox/busybox:dev".into(),
        command: vec!["/bin/sleep".into(), "30".into()],
        pool_ref: "p".into(),
        failure_policy: fast_sandbox_api::FailurePolicy::AutoRecreate,
        ..Default::default()
    };
    sandboxes
        .create(&PostParams::default(), &Sandbox::new("phoenix", spec))
        .await
        .unwrap();
    let first = wait_sandbox(&sandboxes, "phoenix", "Ready", |s| {
        s.condition(condition::READY)
            .is_some_and(|c| c.status == "True")
    })
    .await;
    let old_agent = first.spec.agent_ref.clone().unwrap().pod_name;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system);
    let t_kill = std::time::Instant::now();
    pods.delete(&old_agent, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let again = wait_sandbox(&sandboxes, "phoenix", "re-placed and Ready", |s| {
        s.spec
            .agent_ref
            .as_ref()
            .is_some_and(|r| r.pod_name != old_agent)
            && s.condition(condition::READY)
                .is_some_and(|c| c.status == "True")
    })
    .await;
    eprintln!(
        "re-placed from {old_agent} to {} in {:?}",
        again.spec.agent_ref.unwrap().pod_name,
        t_kill.elapsed()
    );
    for i in 0..5 {
        let sb = sandboxes.get(&format!("s{i}")).await.unwrap();
        if sb
            .spec
            .agent_ref
            .as_ref()
            .is_some_and(|r| r.pod_name == old_agent)
        {
            let lost = wait_sandbox(&sandboxes, &format!("s{i}"), "Lost", |s| {
                s.phase() == SandboxPhase::Lost
            })
            .await;
            assert_eq!(
                lost.status.unwrap().reason.as_deref(),
                Some(reason::AGENT_LOST)
            );
        }
    }
    sandboxes
        .delete("phoenix", &DeleteParams::default())
        .await
        .unwrap();
    for i in 0..5 {
        sandboxes
            .delete(&format!("s{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in ["s0", "s1", "s2", "s3", "s4", "phoenix"] {
        let gone = |s: Option<&Sandbox>| s.is_none();
        tokio::time::timeout(WAIT, await_condition(sandboxes.clone(), name, gone))
            .await
            .expect("sandbox not finalized within 60s")
            .unwrap();
    }
    for line in registry.render().lines() {
        if line.contains("_sum") || line.contains("_count") {
            eprintln!("{line}");
        }
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster without a deployed controller; hack/test.sh runs it with --ignored"]
async fn one_leader_at_a_time_and_release_hands_over() {
    let client = client().await;
    let ns = unique("fsc-lease");
    namespace(&client, &ns).await;
    let _cleanup = Cleanup {
        client: client.clone(),
        namespaces: vec![ns.clone()],
    };
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let timing = Timing::default();
    let a = Elector::new(leases.clone(), "fast-sandbox-controller", "a", timing);
    let b = Elector::new(leases.clone(), "fast-sandbox-controller", "b", timing);

    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a takes the free lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b follows a valid lease"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    a.release().await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "b takes a released lease at once"
    );
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a now follows");
    let lease = leases.get("fast-sandbox-controller").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(1));
}
