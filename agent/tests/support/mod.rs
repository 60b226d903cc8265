//! Shared set-up of the agent's integration tests: a private containerd
//! (started by `agent/tests/containerd.sh`), real certificates, and the
//! agent served over real HTTPS with mutual TLS.
#![allow(dead_code)]

pub mod binary;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fast_sandbox_agent::api::Api;
use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_agent::metrics::Metrics;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_agent::{Agent, Config};
use fast_sandbox_api::agent::{CreateSandboxRequest, SandboxEvent};
use fast_sandbox_api::wellknown::container_labels as label;
use fast_sandbox_server::client_auth::AllowedNames;
use fast_sandbox_server::tls::{ServerTls, client_config};
use fast_sandbox_server::{Ops, Registry};
use http_body_util::BodyExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Server name in the agent's certificate, as in production.
pub const SERVER_NAME: &str = "fast-sandbox-agent";
/// cgroup parent of test sandboxes.
pub const CGROUP_PARENT: &str = "/fast-sandbox-agent-test";

/// Where the private containerd is.
/// containerd's runtime of runc, the agent's default.
pub const RUNC: &str = "io.containerd.runc.v2";
/// containerd's runtime of gVisor.
pub const GVISOR: &str = "io.containerd.runsc.v1";

#[derive(Clone, Debug)]
pub struct Env {
    pub socket: PathBuf,
    pub namespace: String,
    pub image: String,
}

/// The environment the tests run in: root and the containerd started by
/// `agent/tests/containerd.sh`. They exist to drive a real containerd, so
/// without one they fail, saying how to run them, instead of passing.
pub fn env() -> Env {
    const HOW: &str =
        "run through `agent/tests/containerd.sh run -- cargo test -p fast-sandbox-agent`";
    let Ok(socket) = std::env::var("FAST_SANDBOX_CONTAINERD_SOCK") else {
        panic!("FAST_SANDBOX_CONTAINERD_SOCK is not set; {HOW}");
    };
    // Root check from the Uid line of /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    assert!(root, "the agent's integration tests need root; {HOW}");
    assert!(
        Path::new(&socket).exists(),
        "containerd socket {socket} does not exist; {HOW}"
    );
    Env {
        socket: socket.into(),
        namespace: std::env::var("FAST_SANDBOX_TEST_NAMESPACE")
            .unwrap_or_else(|_| "fast-sandbox-test".into()),
        image: std::env::var("FAST_SANDBOX_TEST_IMAGE")
            .unwrap_or_else(|_| "docker.io/fast-sandbox/busybox:dev".into()),
    }
}

/// A CA with a server certificate for the agent and a client certificate
/// for the controller, as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(cn: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), issuer.pem()).unwrap();
        Self { dir, issuer }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues a leaf; returns (cert path, key path).
    pub fn issue(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = self.dir.path().join(format!("{name}.crt"));
        let k = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A client config presenting a certificate of this CA.
    pub fn client(&self, name: &str) -> Arc<rustls::ClientConfig> {
        let (c, k) = self.issue(name, &[]);
        client_config(&self.ca(), Some((&c, &k))).unwrap()
    }
}

/// A unique pod UID per test, so tests sharing one containerd never see
/// each other's sandboxes.
pub fn pod_uid(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// The callers a deployed agent serves (the controller and the access
/// server), by client certificate name.
pub const ALLOWED_CLIENTS: [&str; 2] = ["fast-sandbox-controller", "fast-sandbox-gateway"];

/// An agent served in-process.
pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub addr: SocketAddr,
    pub client: AgentClient,
    pub pki: Pki,
    pub cd: Containerd,
    pub registry: Registry,
    pub state: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
}

impl TestAgent {
    pub async fn start(env: &Env, test: &str, slots: u32) -> Self {
        Self::start_with(env, test, slots, |_| {}).await
    }

    pub async fn start_with(
        env: &Env,
        test: &str,
        slots: u32,
        tune: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start_on(env, test, slots, RUNC, tune).await
    }

    /// An agent whose sandboxes run in the containerd runtime `runtime`.
    pub async fn start_on(
        env: &Env,
        test: &str,
        slots: u32,
        runtime: &str,
        tune: impl FnOnce(&mut Config),
    ) -> Self {
        fast_sandbox_server::telemetry::init(fast_sandbox_server::telemetry::LogFormat::Text);
        let pki = Pki::new("Fast Sandbox test CA");
        let (cert, key) = pki.issue("agent", &[SERVER_NAME]);
        let state = tempfile::tempdir().unwrap();
        let registry = Registry::default();
        let ops = Ops {
            health: Default::default(),
            registry: registry.clone(),
        };
        let metrics = Metrics::register(&registry);
        let cd = Containerd::connect(&env.socket, &env.namespace, "overlayfs", runtime)
            .await
            .unwrap();
        let mut cfg = Config {
            pod_name: format!("agent-{test}"),
            pod_uid: pod_uid(test),
            node_name: "test-node".into(),
            slots,
            state_dir: state.path().to_path_buf(),
            cgroup_parent: CGROUP_PARENT.into(),
            shim_group: true,
            warm_snapshots: 0,
            warm_images: 2,
            default_grace: Duration::from_secs(1),
            proc_root: "/proc".into(),
            advertise: None,
            max_upload_bytes: fast_sandbox_agent::agent::DEFAULT_MAX_UPLOAD_BYTES,
            stock_size: 0,
            stock_images: Vec::new(),
            stock_layer_cap: None,
            cgroup_root: "/sys/fs/cgroup".into(),
            log_max_bytes: fast_sandbox_agent::logs::DEFAULT_LOG_MAX_BYTES,
            egress: None,
            user_namespaces: None,
        };
        tune(&mut cfg);
        fast_sandbox_agent::cgroup::limits::make_parent(&cfg.cgroup_root, &cfg.cgroup_parent)
            .unwrap();
        let agent = Agent::new(cfg, cd.clone(), metrics.clone(), ops.health.clone())
            .await
            .unwrap();
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(agent.clone().run_events(rx.clone()));
        let tls = ServerTls {
            cert,
            key,
            client_ca: Some(pki.ca()),
        }
        .build()
        .unwrap();
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut done = rx.clone();
        tokio::spawn(fast_sandbox_server::serve(
            listener,
            Some(tls),
            ops.clone(),
            Arc::new(Api::new(
                agent.clone(),
                metrics.clone(),
                Some(AllowedNames::new(ALLOWED_CLIENTS)),
            )),
            async move {
                let _ = done.wait_for(|s| *s).await;
            },
        ));
        let health = ops.health.clone();
        wait_for("agent ready", Duration::from_secs(20), || {
            let h = health.clone();
            async move { h.is_ready() }
        })
        .await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let client = AgentClient::connect(addr, SERVER_NAME, pki.client("fast-sandbox-controller"))
            .await
            .unwrap();
        Self {
            agent,
            addr,
            client,
            pki,
            cd,
            registry,
            state,
            shutdown,
        }
    }

    /// An agent keeping `size` pre-started sandboxes of the test image,
    /// started once they are all ready.
    pub async fn start_stocked(env: &Env, test: &str, slots: u32, size: usize) -> Self {
        let image = env.image.clone();
        let a = Self::start_with(env, test, slots, |c| {
            c.stock_size = size;
            c.stock_images = vec![image];
        })
        .await;
        a.wait_stock(size).await;
        a
    }

    /// Waits until `n` pre-started sandboxes are ready.
    pub async fn wait_stock(&self, n: usize) {
        let agent = self.agent.clone();
        wait_for(
            &format!("{n} pre-started sandboxes ready"),
            Duration::from_secs(60),
            || {
                let a = agent.clone();
                async move { a.stock_ready() >= n }
            },
        )
        .await;
    }

    /// Destroys the stock, then fails if anything of this agent is left.
    pub async fn release_and_assert_nothing_left(&self) {
        self.agent.release_stock().await;
        self.assert_nothing_left().await;
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state.path().join("logs")
    }

    /// Fails the test if containerd or the state dir still hold anything of
    /// this agent.
    pub async fn assert_nothing_left(&self) {
        assert_nothing_left(&self.cd, &self.agent.config().pod_uid, &self.log_dir()).await;
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Fails if containerd holds containers, tasks or snapshots of `pod_uid`,
/// or `log_dir` holds log files.
pub async fn assert_nothing_left(cd: &Containerd, pod_uid: &str, log_dir: &Path) {
    let containers = cd
        .list_containers(vec![format!("labels.\"{}\"=={pod_uid}", label::AGENT_UID)])
        .await
        .unwrap();
    assert!(
        containers.is_empty(),
        "containers left: {:?}",
        containers.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
    let snaps = cd
        .snapshot_keys(&format!("fast-sandbox/{pod_uid}/"))
        .await
        .unwrap()
        .into_iter()
        .filter(|k| !k.contains("/warm-"))
        .collect::<Vec<_>>();
    assert!(snaps.is_empty(), "snapshots left: {snaps:?}");
    let logs: Vec<_> = std::fs::read_dir(log_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(logs.is_empty(), "log files left: {logs:?}");
    if let Some(state) = log_dir.parent() {
        let dirs: Vec<_> = std::fs::read_dir(state.join("stock"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            dirs.is_empty(),
            "pre-started sandbox directories left: {dirs:?}"
        );
    }
}

/// Polls `cond` every 50 ms until true or `timeout`, then fails naming `what`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A create request for the test image.
pub fn request(env: &Env, uid: &str, command: &[&str]) -> CreateSandboxRequest {
    CreateSandboxRequest {
        uid: uid.into(),
        name: format!("sbx-{uid}"),
        namespace: "default".into(),
        pool: "test-pool".into(),
        image: env.image.clone(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Reads a whole (finite) body as text.
pub async fn body_text(resp: http::Response<hyper::body::Incoming>) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body did not end within 30s")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads NDJSON events from a stream until `stop` says enough.
pub async fn read_events(
    resp: http::Response<hyper::body::Incoming>,
    timeout: Duration,
    mut stop: impl FnMut(&[SandboxEvent]) -> bool,
) -> Vec<SandboxEvent> {
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !stop(&events) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for events; got {events:?}"));
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.unwrap().into_data() {
            buf.extend_from_slice(&data);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                events.push(serde_json::from_slice(&line).unwrap());
            }
        }
    }
    events
}

/// One HTTP/1.0 GET; `None` when the connection fails or closes empty.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    (!out.is_empty()).then_some(out)
}

/// An exec request for `command`.
pub fn exec_request(command: &[&str]) -> fast_sandbox_api::exec::ExecRequest {
    fast_sandbox_api::exec::ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Runs `command` in sandbox `uid` to its end (30 s at most).
pub async fn exec(
    client: &AgentClient,
    uid: &str,
    command: &[&str],
) -> fast_sandbox_agent::client::ExecOutcome {
    tokio::time::timeout(
        Duration::from_secs(30),
        client.exec_collect(uid, &exec_request(command), None),
    )
    .await
    .unwrap_or_else(|_| panic!("exec {command:?} did not end within 30s"))
    .unwrap()
    .unwrap()
}

/// Text of an exec's stdout.
pub fn stdout(o: &fast_sandbox_agent::client::ExecOutcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The busybox test image run as uid and gid 1000. Fails, never skips,
/// when the environment has containerd but not this image.
pub fn nonroot_image() -> String {
    std::env::var("FAST_SANDBOX_TEST_NONROOT_IMAGE").unwrap_or_else(|_| {
        panic!(
            "FAST_SANDBOX_TEST_NONROOT_IMAGE is not set: start containerd with agent/tests/containerd.sh, which builds the image"
        )
    })
}

/// The test image without a shell (only `/tool`, from
/// `agent/tests/noshell/tool.c`). Fails, never skips, when the environment
/// has containerd but not this image.
pub fn noshell_image() -> String {
    std::env::var("FAST_SANDBOX_TEST_NOSHELL_IMAGE").unwrap_or_else(|_| {
        panic!(
            "FAST_SANDBOX_TEST_NOSHELL_IMAGE is not set: start containerd with agent/tests/containerd.sh, which builds the image without a shell"
        )
    })
}

/// The tar stream of the tree at `path` in sandbox `uid`.
pub async fn tar_of(client: &AgentClient, uid: &str, path: &str) -> Vec<u8> {
    client
        .tar(uid, path)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("tar of {path} in {uid}: {e:?}"))
        .bytes()
        .await
        .unwrap()
}
