//! An agent run in process for the benchmark, served over real mutual-TLS
//! HTTPS with a throwaway CA, and the requests measured against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use fast_sandbox_agent::api::Api;
use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_agent::metrics::Metrics;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_agent::{Agent, Config};
use fast_sandbox_api::agent::CreateSandboxRequest;
use fast_sandbox_server::tls::{ServerTls, client_config};
use fast_sandbox_server::{Ops, Registry};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Args;

/// An in-process agent over real mutual-TLS HTTPS.
pub struct BenchAgent {
    /// A client holding the controller's certificate, as the controller calls.
    pub client: AgentClient,
    /// The agent itself, for what the API does not show (its stock).
    pub agent: Arc<Agent>,
    /// Set to stop its event loop and its server.
    pub shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Starts an agent named `name` on the benchmark's containerd, its
/// configuration changed by `tune`, and waits until it is ready.
pub async fn start_agent(
    args: &Args,
    name: &str,
    tune: impl FnOnce(&mut Config),
) -> anyhow::Result<BenchAgent> {
    let dir = tempfile::tempdir()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let write = |n: &str, s: String| -> anyhow::Result<PathBuf> {
        let p = dir.path().join(n);
        std::fs::write(&p, s)?;
        Ok(p)
    };
    let ca_path = write("ca.crt", ca.pem())?;
    // The common name is who the agent checks a caller is.
    let leaf = |sans: Vec<String>, n: &str, cn: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca)?;
        Ok((
            write(&format!("{n}.crt"), cert.pem())?,
            write(&format!("{n}.key"), key.serialize_pem())?,
        ))
    };
    let (scert, skey) = leaf(
        vec!["fast-sandbox-agent".into()],
        "server",
        "fast-sandbox-agent",
    )?;
    let (ccert, ckey) = leaf(vec![], "client", "fast-sandbox-controller")?;
    let registry = Registry::default();
    let ops = Ops {
        health: Default::default(),
        registry: registry.clone(),
    };
    let metrics = Metrics::register(&registry);
    let cd = Containerd::connect(
        &args.socket,
        &args.namespace,
        "overlayfs",
        "io.containerd.runc.v2",
    )
    .await?;
    let mut cfg = Config {
        pod_name: format!("bench-{name}"),
        pod_uid: format!("bench-{name}-{}", std::process::id()),
        node_name: "bench".into(),
        slots: 64,
        state_dir: dir.path().join("state"),
        cgroup_parent: "/fast-sandbox-bench".into(),
        // As the agent runs by default: a runc shim per sandbox.
        shim_group: false,
        warm_snapshots: 2,
        warm_images: 4,
        default_grace: Duration::ZERO,
        proc_root: "/proc".into(),
        advertise: None,
        max_upload_bytes: fast_sandbox_agent::agent::DEFAULT_MAX_UPLOAD_BYTES,
        stock_size: fast_sandbox_agent::agent::DEFAULT_STOCK_SIZE,
        stock_images: vec![args.image.clone()],
        stock_layer_cap: None,
        cgroup_root: "/sys/fs/cgroup".into(),
        log_max_bytes: fast_sandbox_agent::logs::DEFAULT_LOG_MAX_BYTES,
        egress: None,
        user_namespaces: None,
    };
    tune(&mut cfg);
    // Outside a pod nothing made the sandboxes' parent cgroup yet.
    fast_sandbox_agent::cgroup::limits::make_parent(&cfg.cgroup_root, &cfg.cgroup_parent)?;
    let agent = Agent::new(cfg, cd, metrics.clone(), ops.health.clone()).await?;
    let (shutdown, rx) = watch::channel(false);
    tokio::spawn(agent.clone().run_events(rx.clone()));
    let tls = ServerTls {
        cert: scert,
        key: skey,
        client_ca: Some(ca_path.clone()),
    }
    .build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let mut done = rx.clone();
    tokio::spawn(fast_sandbox_server::serve(
        listener,
        Some(tls),
        ops.clone(),
        Arc::new(Api::new(
            agent.clone(),
            metrics,
            Some(fast_sandbox_server::client_auth::AllowedNames::new([
                "fast-sandbox-controller",
            ])),
        )),
        async move {
            let _ = done.wait_for(|s| *s).await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ops.health.is_ready() {
        if Instant::now() > deadline {
            bail!("agent not ready after 20s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = AgentClient::connect(
        addr,
        "fast-sandbox-agent",
        client_config(&ca_path, Some((&ccert, &ckey)))?,
    )
    .await?;
    Ok(BenchAgent {
        client,
        agent,
        shutdown,
        _dir: dir,
    })
}

/// A request for a sandbox of the benchmark's image that sleeps, so it
/// stays Running until deleted.
pub fn request(args: &Args, uid: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        uid: uid.into(),
        name: uid.into(),
        namespace: "bench".into(),
        pool: "bench".into(),
        image: args.image.clone(),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    }
}

/// Waits (at most 60 s) until `n` pre-started sandboxes are ready.
pub async fn wait_stock(a: &BenchAgent, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.agent.stock_ready() < n {
        if Instant::now() > deadline {
            bail!("{n} pre-started sandboxes not ready after 60s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
