//! Building blocks of the burst and fault scenarios: a pool with ready
//! agents, many sandboxes created at once (retrying what a fault makes
//! fail), faults injected the way a node or an operator would (SIGKILL
//! through the kubelet, SIGKILL of a host PID), and the end-state checks
//! against containerd.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fast_sandbox_api::{FailurePolicy, Sandbox, SandboxPhase, SandboxPool};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::Notify;

use crate::history::{History, Tracks, percentile};
use crate::{E2eError, containerd, wait_for};

/// The test workload image (busybox-static), present on the node.
pub const BUSYBOX: &str = "docker.io/fast-sandbox/busybox:dev";
/// The agent image.
pub const AGENT_IMAGE: &str = "fast-sandbox/agent:dev";
/// Namespace Fast Sandbox is deployed in.
pub const SYSTEM_NAMESPACE: &str = "fast-sandbox-system";

/// Creates sandbox `name` running `command` from `image` in pool `p` of
/// `ns` and waits (at most `timeout`) until it is Ready.
pub async fn running_sandbox(
    client: &Client,
    ns: &str,
    name: &str,
    image: &str,
    command: &[&str],
    timeout: Duration,
) -> Result<Sandbox, E2eError> {
    let api: Api<Sandbox> = Api::namespaced(client.clone(), ns);
    let sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": name},
        "spec": {"image": image, "command": command, "poolRef": "p"}
    }))
    .expect("a Sandbox");
    api.create(&PostParams::default(), &sb).await?;
    wait_for(&api, name, timeout, "Ready", |s: &Sandbox| {
        s.condition(fast_sandbox_api::wellknown::condition::READY)
            .is_some_and(|c| c.status == "True")
    })
    .await
}

/// Creates a pool of `min..=max` agents with `slots` each and waits until
/// `min` agents are ready.
pub async fn ready_pool(
    client: &Client,
    ns: &str,
    name: &str,
    bounds: (i32, i32),
    slots: i32,
    timeout: Duration,
) -> Result<Api<SandboxPool>, E2eError> {
    ready_pool_of(client, ns, name, bounds, slots, BUSYBOX, timeout).await
}

/// [`ready_pool`] whose warm image is `image`.
pub async fn ready_pool_of(
    client: &Client,
    ns: &str,
    name: &str,
    bounds: (i32, i32),
    slots: i32,
    image: &str,
    timeout: Duration,
) -> Result<Api<SandboxPool>, E2eError> {
    ready_pool_on(client, ns, name, bounds, slots, image, None, timeout).await
}

/// [`ready_pool_of`] whose agents all run on `node` when one is named.
#[allow(clippy::too_many_arguments)]
pub async fn ready_pool_on(
    client: &Client,
    ns: &str,
    name: &str,
    (min, max): (i32, i32),
    slots: i32,
    image: &str,
    node: Option<&str>,
    timeout: Duration,
) -> Result<Api<SandboxPool>, E2eError> {
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), ns);
    let mut template = json!({"containers": [{"name": "agent", "image": AGENT_IMAGE}]});
    if let Some(node) = node {
        template["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    let p: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {"capacity": {"poolMin": min, "poolMax": max}, "maxSandboxesPerAgent": slots,
                 "warmImages": [image],
                 "agentTemplate": {"spec": template}}
    }))
    .map_err(|e| E2eError::Command(e.to_string()))?;
    pools.create(&PostParams::default(), &p).await?;
    wait_for(
        &pools,
        name,
        timeout,
        &format!("{min} ready agents"),
        |p: &SandboxPool| p.status.as_ref().is_some_and(|s| s.ready_agents >= min),
    )
    .await?;
    Ok(pools)
}

/// What every burst or fault test starts from: its own namespace, a ready
/// pool `p`, and a history of every sandbox's transitions.
pub struct Stage {
    /// The test's namespace.
    pub ns: String,
    /// Sandboxes of that namespace.
    pub sbx: Api<Sandbox>,
    /// Transitions of every sandbox there since the stage was set.
    pub history: History,
}

/// Sets a [`Stage`]: namespace `prefix-…`, pool `p` of `bounds` agents with
/// `slots` each (waits for the minimum to be ready), history started.
pub async fn stage(
    client: &Client,
    prefix: &str,
    bounds: (i32, i32),
    slots: i32,
) -> Result<Stage, E2eError> {
    stage_on(client, prefix, bounds, slots, None).await
}

/// [`stage`] with every agent of the pool on `node` when one is named.
pub async fn stage_on(
    client: &Client,
    prefix: &str,
    bounds: (i32, i32),
    slots: i32,
    node: Option<&str>,
) -> Result<Stage, E2eError> {
    let ns = crate::namespace(client, prefix).await?;
    let wait = Duration::from_secs(120);
    ready_pool_on(client, &ns, "p", bounds, slots, BUSYBOX, node, wait).await?;
    let sbx: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let history = History::start(sbx.clone(), Duration::from_secs(10)).await?;
    Ok(Stage { ns, sbx, history })
}

/// `n` sandbox names `prefix-00`, `prefix-01`, ...
pub fn names(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// A sandbox of `pool` that sleeps long enough to outlive the test.
pub fn sleeper(name: &str, pool: &str, policy: FailurePolicy) -> Sandbox {
    let mut sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": BUSYBOX, "command": ["/bin/sleep", "3600"], "poolRef": pool}
    }))
    .unwrap_or_default();
    sb.spec.failure_policy = policy;
    sb
}

/// How a burst of creations went.
#[derive(Debug, Default)]
pub struct Burst {
    /// When the first attempt to create each sandbox started, by name.
    pub started: BTreeMap<String, Instant>,
    /// Failed attempts that were retried, with the error each gave.
    pub retried: Vec<(String, String)>,
    /// Creations the webhook left unbound (to be placed by the controller).
    pub unbound: Vec<String>,
}

/// Whether a failed create may be retried: the apiserver could not reach
/// the webhook or timed out, or an earlier attempt's answer was lost.
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code >= 500 || s.code == 429 || s.message.contains("failed calling webhook")
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// How a burst is shaped and what it tolerates.
#[derive(Clone, Debug, Default)]
pub struct BurstShape {
    /// Creation starts are spread evenly over this long (zero: all at once),
    /// so a fault injected early lands in the middle of the burst.
    pub spread: Duration,
    /// Retry a retryable failure for at most this long (counted in
    /// [`Burst::retried`]); without it any failure fails the burst.
    pub retry_for: Option<Duration>,
}

/// Creates the sandboxes concurrently, shaped by `shape`; `progress` is told
/// after each creation succeeds.
pub async fn create_all(
    api: &Api<Sandbox>,
    sandboxes: Vec<Sandbox>,
    shape: BurstShape,
    progress: Option<(Arc<AtomicUsize>, Arc<Notify>)>,
) -> Result<Burst, E2eError> {
    let n = sandboxes.len().max(1) as u32;
    let attempts = sandboxes.into_iter().enumerate().map(|(i, sb)| {
        let api = api.clone();
        let progress = progress.clone();
        let retry_for = shape.retry_for;
        let delay = shape.spread * i as u32 / n;
        async move {
            tokio::time::sleep(delay).await;
            let name = sb.metadata.name.clone().unwrap_or_default();
            let started = Instant::now();
            let mut retried = Vec::new();
            let created = loop {
                match api.create(&PostParams::default(), &sb).await {
                    Ok(c) => break c,
                    Err(kube::Error::Api(s)) if s.code == 409 && !retried.is_empty() => {
                        // An earlier attempt was stored; its answer was lost.
                        break api.get(&name).await?;
                    }
                    Err(e) if retryable(&e) && retry_for.is_some_and(|d| started.elapsed() < d) => {
                        retried.push((name.clone(), e.to_string()));
                        // A pause before retrying; there is nothing to watch
                        // for: the failure was on the apiserver's call out.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(E2eError::Command(format!("creating {name}: {e}"))),
                }
            };
            if let Some((n, notify)) = &progress {
                n.fetch_add(1, Ordering::SeqCst);
                notify.notify_waiters();
            }
            Ok::<_, E2eError>((name, started, retried, created.spec.agent_ref.is_none()))
        }
    });
    let mut burst = Burst::default();
    for r in join_all(attempts).await {
        let (name, started, retried, unbound) = r?;
        if unbound {
            burst.unbound.push(name.clone());
        }
        burst.started.insert(name, started);
        burst.retried.extend(retried);
    }
    Ok(burst)
}

/// Waits until `progress` reached `n` creations.
pub async fn wait_created(progress: &(Arc<AtomicUsize>, Arc<Notify>), n: usize) {
    loop {
        let notified = progress.1.notified();
        if progress.0.load(Ordering::SeqCst) >= n {
            return;
        }
        notified.await;
    }
}

/// create→Running latencies of `names` (those that reached Running).
pub fn latencies(burst: &Burst, tracks: &Tracks) -> Vec<Duration> {
    burst
        .started
        .iter()
        .filter_map(|(name, t0)| {
            let at = tracks.get(name)?.running_at?;
            Some(at.saturating_duration_since(*t0))
        })
        .collect()
}

/// One line summing up latencies for the test output.
pub fn latency_line(what: &str, samples: &[Duration]) -> String {
    format!(
        "{what}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(samples, 50.0),
        percentile(samples, 90.0),
        percentile(samples, 99.0),
        percentile(samples, 100.0),
    )
}

/// Whether every name is `Running` now.
pub fn all_running<'a>(tracks: &Tracks, names: impl IntoIterator<Item = &'a String>) -> bool {
    names.into_iter().all(|n| {
        tracks
            .get(n)
            .is_some_and(|t| !t.deleted && t.phase() == SandboxPhase::Running)
    })
}

/// Checks that each named sandbox is `Running` with exactly one container in
/// containerd: the one its status names, labelled with its UID. With
/// `once`, it must also have entered `Running` once, with one container id
/// over its whole life. Returns one line per violation.
pub async fn violations_of_running_once(
    ns: &str,
    tracks: &Tracks,
    names: &BTreeSet<String>,
    once: bool,
) -> Result<Vec<String>, E2eError> {
    let containers = containerd::sandbox_containers(ns).await?;
    let mut bad = Vec::new();
    for name in names {
        let Some(t) = tracks.get(name) else {
            bad.push(format!("{name}: never seen"));
            continue;
        };
        if t.phase() != SandboxPhase::Running {
            bad.push(format!("{name}: phase {:?}", t.phase()));
        }
        if once && (t.times_running != 1 || t.container_ids.len() != 1) {
            bad.push(format!(
                "{name}: entered Running {} times with containers {:?}",
                t.times_running, t.container_ids
            ));
        }
        let ids = containers.get(&t.uid).cloned().unwrap_or_default();
        let want = t
            .sandbox
            .status
            .as_ref()
            .and_then(|s| s.container_id.clone());
        if ids.len() != 1 || want.as_ref() != ids.first() {
            bad.push(format!(
                "{name} (uid {}): containerd holds {ids:?}, status names {want:?}",
                t.uid
            ));
        }
    }
    let known: BTreeSet<&str> = tracks.values().map(|t| t.uid.as_str()).collect();
    for (uid, ids) in &containers {
        if !known.contains(uid.as_str()) {
            bad.push(format!("containers {ids:?} of unknown sandbox uid {uid}"));
        }
    }
    Ok(bad)
}

/// Deletes every sandbox of the namespace and waits until all are gone;
/// returns the containers still in containerd for the deleted UIDs.
pub async fn delete_all(
    api: &Api<Sandbox>,
    history: &History,
    ns: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<String>>, E2eError> {
    let names: Vec<String> = history.snapshot().keys().cloned().collect();
    let dp = DeleteParams::default();
    let deletes = names.iter().map(|n| api.delete(n, &dp));
    for r in join_all(deletes).await {
        match r {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    history
        .wait(timeout, "every sandbox deleted", |t| {
            t.values().all(|t| t.deleted)
        })
        .await?;
    let uids: BTreeSet<String> = history.snapshot().values().map(|t| t.uid.clone()).collect();
    Ok(containerd::sandbox_containers(ns)
        .await?
        .into_iter()
        .filter(|(uid, _)| uids.contains(uid))
        .collect())
}

/// Waits until a Deployment has all its replicas updated, ready and no
/// extra ones: the state a fault test starts from.
pub async fn deployment_settled(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<Deployment, E2eError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    wait_for(
        &api,
        name,
        timeout,
        "all replicas ready",
        |d: &Deployment| {
            let want = d.spec.replicas.unwrap_or(1);
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.replicas == Some(want)
                    && s.updated_replicas == Some(want)
                    && s.ready_replicas == Some(want)
                    && s.available_replicas == Some(want)
            })
        },
    )
    .await
}

/// Holder of a Lease in the system namespace.
pub async fn lease_holder(client: &Client, lease: &str) -> Result<Option<String>, E2eError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    Ok(api
        .get(lease)
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// Waits until the Lease is held by someone other than `old`.
pub async fn lease_taken_over(
    client: &Client,
    lease: &str,
    old: &str,
    timeout: Duration,
) -> Result<String, E2eError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let l = wait_for(&api, lease, timeout, "a new lease holder", |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty() && h != old)
    })
    .await?;
    Ok(l.spec.and_then(|s| s.holder_identity).unwrap_or_default())
}

/// Deletes a pod with grace period 0 (`kubectl delete --grace-period=0
/// --force`): the object goes at once and the kubelet SIGKILLs its
/// containers.
pub async fn force_delete_pod(client: &Client, ns: &str, name: &str) -> Result<(), E2eError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    api.delete(name, &dp).await?;
    Ok(())
}

/// Names of the running pods matching a label selector.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> Result<Vec<Pod>, E2eError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// The label selector of the agent pods of pool `pool_ns/pool` (they live
/// in [`SYSTEM_NAMESPACE`]).
pub fn agent_selector(pool_ns: &str, pool: &str) -> String {
    use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE, LABEL_ROLE, ROLE_AGENT};
    format!("{LABEL_ROLE}={ROLE_AGENT},{LABEL_POOL_NAMESPACE}={pool_ns},{LABEL_POOL}={pool}")
}

/// The live agent pods of pool `pool_ns/pool`.
pub async fn agent_pods(client: &Client, pool_ns: &str, pool: &str) -> Result<Vec<Pod>, E2eError> {
    pods(client, SYSTEM_NAMESPACE, &agent_selector(pool_ns, pool)).await
}

/// The containerd id of a pod's container and its restart count.
pub fn container_of(pod: &Pod, container: &str) -> Option<(String, i32)> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| {
            let id = c.container_id.as_deref()?.strip_prefix("containerd://")?;
            Some((id.to_string(), c.restart_count))
        })
}

/// SIGKILLs the host process of a pod's container (found through
/// containerd); the kubelet restarts the container in the same pod.
pub async fn kill_container_process(pod: &Pod, container: &str) -> Result<u32, E2eError> {
    signal_container_process(pod, container, "KILL").await
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to the host process of a pod's
/// container; returns its PID. `STOP` freezes it the way a partition looks
/// from outside: nothing answers, nothing dies.
pub async fn signal_container_process(
    pod: &Pod,
    container: &str,
    signal: &str,
) -> Result<u32, E2eError> {
    let (id, _) = container_of(pod, container)
        .ok_or_else(|| E2eError::Command(format!("pod has no running {container} container")))?;
    let pid = containerd::task_pid(&id)
        .await?
        .ok_or_else(|| E2eError::Command(format!("container {id} has no running task")))?;
    let out = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .output()
        .await
        .map_err(|e| E2eError::Command(format!("kill did not run: {e}")))?;
    if !out.status.success() {
        return Err(E2eError::Command(format!(
            "kill -{signal} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(pid)
}

/// Port of every component's and agent's `/metrics`.
pub const OPS_PORT: u16 = 9090;

/// The value of counter `name` with `labels` (as written in the text
/// format, `outcome="ended"`) in agent pod `pod`'s `/metrics`, read through
/// the apiserver's pod proxy; 0 until the agent first counts it.
pub async fn agent_counter(
    client: &Client,
    pod: &str,
    name: &str,
    labels: &str,
) -> Result<f64, E2eError> {
    let path = format!("/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{pod}:{OPS_PORT}/proxy/metrics");
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| E2eError::Command(format!("metrics request of {pod}: {e}")))?;
    let text = client.request_text(req).await?;
    let series = format!("{name}{{{labels}}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}
