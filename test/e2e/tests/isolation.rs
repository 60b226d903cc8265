//! What confines a tenant's code on the real cluster.
//!
//! - The seccomp allow-list: `io_uring`, `clone3` and `AF_ALG` sockets are
//!   refused, an ordinary call is not (the probe is `/tool` of the image
//!   without a shell).
//! - Default limits: a pool's `sandboxDefaults` fill in what a sandbox
//!   leaves unset, the operator's maximum bounds what it asks for and
//!   limits what nobody set, and the kernel enforces the result. Agent pods
//!   are never BestEffort.
//!
//! - The writable layer's cap: `ephemeralStorage` (here a pool default)
//!   sizes the layer, writes within it work, and a sandbox writing past it
//!   fails as `EphemeralStorageExceeded`.
//!
//! - The runtime: a pool's `runtime` other than `runc` or `gvisor` is
//!   refused at admission; a `gvisor` pool's sandbox runs under gVisor's
//!   kernel, or, on a node whose containerd cannot start gVisor's shim,
//!   fails as `RuntimeUnavailable` saying why.
//!
//! The one acting is a namespace `edit` tenant, who cannot ask past the
//! maximum in a sandbox or in its pool's defaults; a user of another
//! namespace can do nothing with either.

mod tenancy;

use fast_sandbox_api::policy::{POLICY_CONFIG_MAP, POLICY_KEY, Policy};
use fast_sandbox_api::wellknown::reason;
use fast_sandbox_api::{Sandbox, SandboxPhase, SandboxPool, SandboxResources, quantity};
use fast_sandbox_e2e::scenario::{BUSYBOX, SYSTEM_NAMESPACE, agent_pods};
use fast_sandbox_e2e::wait_for;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tenancy::{Cast, WAIT, pool, ready, refusal, run, running, sandbox, try_run};

const NOSHELL: &str = "docker.io/fast-sandbox/noshell:dev";

/// The operator's maximum for `ns`, as the deployed policy says.
async fn maximum(admin: &Client, ns: &str) -> SandboxResources {
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let cm = cms.get(POLICY_CONFIG_MAP).await.unwrap();
    let doc = cm
        .data
        .unwrap_or_default()
        .remove(POLICY_KEY)
        .unwrap_or_default();
    Policy::parse(&doc).unwrap().caps(ns).max_sandbox
}

/// Creates a sandbox asking for no limits as the tenant, waits until it
/// runs and returns the limits admission wrote.
async fn admitted(
    sbx: &Api<Sandbox>,
    name: &str,
    image: &str,
    command: &[&str],
) -> SandboxResources {
    sbx.create(&PostParams::default(), &sandbox(name, image, command, None))
        .await
        .unwrap();
    running(sbx, name)
        .await
        .spec
        .resources
        .expect("limits written at admission")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seccomp_allow_list_refuses_calls_outside_it() {
    let cast = Cast::new("seccomp", "e2e-seccomp").await;
    let (admin, ns) = (cast.admin.clone(), cast.ns.clone());
    let (tenant, stranger) = (cast.tenant.clone(), cast.stranger.clone());
    ready(&tenant, &admin, &ns, pool("p", NOSHELL, None)).await;
    let sbx: Api<Sandbox> = Api::namespaced(tenant.clone(), &ns);
    sbx.create(
        &PostParams::default(),
        &sandbox("probe", NOSHELL, &["/tool", "sleep"], None),
    )
    .await
    .unwrap();
    running(&sbx, "probe").await;

    for (call, want, code) in [
        ("getpid", "ok", 0),
        ("io_uring_setup", "EPERM", 1),
        ("clone3", "ENOSYS", 1),
        ("socket_alg", "EPERM", 1),
    ] {
        let (got_code, out) = run(&tenant, &ns, "probe", &["/tool", "syscall", call]).await;
        assert_eq!((got_code, out.trim()), (code, want), "{call}");
    }
    let err = try_run(&stranger, &ns, "probe", &["true"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_defaults_and_the_operator_maximum_limit_every_sandbox() {
    let cast = Cast::new("sandbox defaults", "e2e-defaults").await;
    let (admin, ns) = (cast.admin.clone(), cast.ns.clone());
    let (tenant, stranger) = (cast.tenant.clone(), cast.stranger.clone());
    let max = maximum(&admin, &ns).await;
    let max_memory = quantity::bytes(max.memory.as_ref().expect("a memory maximum")).unwrap();
    let max_cpu = quantity::cpu_millis(max.cpu.as_ref().expect("a CPU maximum")).unwrap();
    let max_pids = max.pids.expect("a pids maximum");
    let twice = format!("{}", max_memory * 2);

    // A pool may not default its sandboxes past the maximum.
    let pools: Api<SandboxPool> = Api::namespaced(tenant.clone(), &ns);
    let greedy = pool("greedy", BUSYBOX, Some(json!({"memory": twice})));
    let msg = refusal(
        pools
            .create(&PostParams::default(), &greedy)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("spec.sandboxDefaults.memory"), "{msg}");
    ready(
        &tenant,
        &admin,
        &ns,
        pool("p", BUSYBOX, Some(json!({"memory": "64Mi", "pids": 100}))),
    )
    .await;

    // Agent pods count their sandboxes' default memory and are never
    // BestEffort.
    let agents = agent_pods(&admin, &ns, "p").await.unwrap();
    assert!(!agents.is_empty());
    for a in &agents {
        let qos = a.status.as_ref().and_then(|s| s.qos_class.clone());
        assert_eq!(qos.as_deref(), Some("Burstable"), "{:?}", a.metadata.name);
        let c = &a.spec.as_ref().unwrap().containers[0];
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["memory"].0, ((64u64 + 8 * 64) << 20).to_string());
    }

    let sbx: Api<Sandbox> = Api::namespaced(tenant.clone(), &ns);
    let limits = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us";
    // Nothing asked: the pool's defaults, and the maximum where the pool
    // has none.
    let r = admitted(&sbx, "plain", BUSYBOX, &["sleep", "3600"]).await;
    assert_eq!(r.memory.unwrap().0, "64Mi");
    assert_eq!(r.pids, Some(100));
    assert_eq!(r.cpu, max.cpu);
    let (_, out) = run(&tenant, &ns, "plain", &["sh", "-c", limits]).await;
    let want = format!("{}\n100\n{}\n", 64u64 << 20, max_cpu * 100);
    assert_eq!(out, want, "the kernel's limits of the sandbox");

    // What a sandbox asks for wins; the rest is filled in.
    sbx.create(
        &PostParams::default(),
        &sandbox(
            "partial",
            BUSYBOX,
            &["sleep", "3600"],
            Some(json!({"cpu": "250m"})),
        ),
    )
    .await
    .unwrap();
    let r = running(&sbx, "partial").await.spec.resources.unwrap();
    assert_eq!(
        (r.cpu.unwrap().0, r.memory.unwrap().0, r.pids),
        ("250m".to_string(), "64Mi".to_string(), Some(100))
    );

    // Past the maximum: refused, naming each field.
    for (resources, field) in [
        (json!({"memory": twice}), "spec.resources.memory"),
        (json!({"pids": max_pids + 1}), "spec.resources.pids"),
        (
            json!({"cpu": format!("{}m", max_cpu + 1)}),
            "spec.resources.cpu",
        ),
    ] {
        let greedy = sandbox("greedy", BUSYBOX, &["true"], Some(resources));
        let msg = refusal(
            sbx.create(&PostParams::default(), &greedy)
                .await
                .unwrap_err(),
        );
        assert!(
            msg.contains(field) && msg.contains("more than the operator allows"),
            "{field}: {msg}"
        );
    }

    // Another namespace's user can neither read nor add to this one.
    let theirs: Api<Sandbox> = Api::namespaced(stranger.clone(), &ns);
    let msg = refusal(theirs.get("plain").await.unwrap_err());
    assert!(msg.contains("forbidden"), "{msg}");
    let msg = refusal(
        theirs
            .create(
                &PostParams::default(),
                &sandbox("x", BUSYBOX, &["true"], None),
            )
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("forbidden"), "{msg}");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_writable_layer_fails_the_sandbox_that_writes_past_it() {
    let cast = Cast::new("writable layer cap", "e2e-layer").await;
    let (admin, ns) = (cast.admin.clone(), cast.ns.clone());
    let (tenant, stranger) = (cast.tenant.clone(), cast.stranger.clone());
    ready(
        &tenant,
        &admin,
        &ns,
        pool(
            "p",
            BUSYBOX,
            Some(json!({"memory": "256Mi", "ephemeralStorage": "16Mi"})),
        ),
    )
    .await;
    let sbx: Api<Sandbox> = Api::namespaced(tenant.clone(), &ns);

    // Caps too small or not a quantity are refused at admission.
    for (cap, says) in [("512Ki", "between 1Mi and 1Ti"), ("lots", "")] {
        let odd = sandbox(
            "odd",
            BUSYBOX,
            &["true"],
            Some(json!({"ephemeralStorage": cap})),
        );
        let msg = refusal(sbx.create(&PostParams::default(), &odd).await.unwrap_err());
        assert!(
            msg.contains("spec.resources.ephemeralStorage") && msg.contains(says),
            "{cap}: {msg}"
        );
    }

    // The pool's default sizes the layer; writes within it work.
    let r = admitted(&sbx, "disk", BUSYBOX, &["sleep", "3600"]).await;
    assert_eq!(r.ephemeral_storage.unwrap().0, "16Mi");
    let (code, out) = run(
        &tenant,
        &ns,
        "disk",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/eight bs=1M count=8 2>/dev/null && df -k / | tail -1",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let df: Vec<&str> = out.split_whitespace().skip(1).take(2).collect();
    assert_eq!(df, ["16388", "8192"], "layer size and use in KiB: {out}");

    // Past the cap: the kernel stops the writes and the sandbox fails.
    sbx.create(
        &PostParams::default(),
        &sandbox(
            "filler",
            BUSYBOX,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/big bs=1M count=64; sleep 3600",
            ],
            None,
        ),
    )
    .await
    .unwrap();
    let filler = wait_for(&sbx, "filler", WAIT, "Failed", |s: &Sandbox| {
        s.status
            .as_ref()
            .is_some_and(|st| st.phase == Some(SandboxPhase::Failed))
    })
    .await
    .unwrap();
    let st = filler.status.unwrap();
    assert_eq!(
        st.reason.as_deref(),
        Some(reason::EPHEMERAL_STORAGE_EXCEEDED),
        "{st:?}"
    );
    // The one within its cap runs on.
    let (code, _) = run(&tenant, &ns, "disk", &["true"]).await;
    assert_eq!(code, 0);

    // Another namespace's user sees neither.
    let theirs: Api<Sandbox> = Api::namespaced(stranger.clone(), &ns);
    for name in ["disk", "filler"] {
        let msg = refusal(theirs.get(name).await.unwrap_err());
        assert!(msg.contains("forbidden"), "{msg}");
    }
    cast.finish().await;
}

/// Whether this machine's root may lower an oom_score_adj, which gVisor's
/// shim does as it starts.
fn may_lower_oom_score() -> bool {
    fast_sandbox_agent::runtime::may_lower_oom_score(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
    )
}

#[tokio::test]
async fn a_gvisor_pool_runs_its_sandboxes_under_gvisor_or_fails_them_saying_why() {
    let cast = Cast::new("gvisor runtime", "e2e-gvisor").await;
    let (admin, ns) = (cast.admin.clone(), cast.ns.clone());
    let (tenant, stranger) = (cast.tenant.clone(), cast.stranger.clone());

    // A runtime that is not offered is refused at admission, naming it.
    let raw: Api<DynamicObject> =
        Api::namespaced_with(tenant.clone(), &ns, &ApiResource::erase::<SandboxPool>(&()));
    let mut odd = serde_json::to_value(pool("p", BUSYBOX, None)).unwrap();
    odd["spec"]["runtime"] = json!("kata");
    let msg = refusal(
        raw.create(
            &PostParams::default(),
            &serde_json::from_value(odd).unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        msg.contains("spec.runtime") && msg.contains("gvisor"),
        "{msg}"
    );

    let mut p = pool("p", BUSYBOX, None);
    p.spec.runtime = Some(fast_sandbox_api::pool::SandboxRuntime::Gvisor);
    ready(&tenant, &admin, &ns, p).await;
    let sbx: Api<Sandbox> = Api::namespaced(tenant.clone(), &ns);
    sbx.create(
        &PostParams::default(),
        &sandbox("g", BUSYBOX, &["sleep", "3600"], None),
    )
    .await
    .unwrap();
    let settled = wait_for(&sbx, "g", WAIT, "Running or Failed", |s: &Sandbox| {
        s.status.as_ref().is_some_and(|st| {
            matches!(st.phase, Some(SandboxPhase::Running | SandboxPhase::Failed))
        })
    })
    .await
    .unwrap();
    let st = settled.status.unwrap();
    if may_lower_oom_score() {
        assert_eq!(st.phase, Some(SandboxPhase::Running), "{st:?}");
        let (code, out) = run(&tenant, &ns, "g", &["cat", "/proc/version"]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("gvisor"), "the kernel is gVisor's: {out}");
    } else {
        // This machine's root lacks CAP_SYS_RESOURCE, so gVisor's shim
        // cannot start: the sandbox fails at once, saying so, and is not
        // retried.
        assert_eq!(st.phase, Some(SandboxPhase::Failed), "{st:?}");
        assert_eq!(
            st.reason.as_deref(),
            Some(reason::RUNTIME_UNAVAILABLE),
            "{st:?}"
        );
        let message = st.message.unwrap_or_default();
        assert!(
            message.contains("io.containerd.runsc.v1") && message.contains("OOM Score"),
            "{message}"
        );
    }

    // Another namespace's user sees neither the pool nor the sandbox.
    let theirs: Api<Sandbox> = Api::namespaced(stranger.clone(), &ns);
    let msg = refusal(theirs.get("g").await.unwrap_err());
    assert!(msg.contains("forbidden"), "{msg}");
    let their_pools: Api<SandboxPool> = Api::namespaced(stranger.clone(), &ns);
    let msg = refusal(their_pools.get("p").await.unwrap_err());
    assert!(msg.contains("forbidden"), "{msg}");
    cast.finish().await;
}
