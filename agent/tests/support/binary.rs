//! The built agent binary, spawned as a deployed agent runs (flags, its
//! own state dir), and killed with SIGKILL when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use super::{CGROUP_PARENT, Env, Pki, SERVER_NAME};

/// A running agent binary; dropping it SIGKILLs it (no chance to clean up).
pub struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test of the agent binary starts from: a CA that issued the
/// agent's certificate, a client configuration presenting `caller`, a state
/// root, a pod UID and two free ports (the API's at `addr`).
pub struct Fixture {
    pub pki: Pki,
    pub tls: Arc<rustls::ClientConfig>,
    pub state: tempfile::TempDir,
    pub pod_uid: String,
    pub api: u16,
    pub ops: u16,
    pub addr: SocketAddr,
}

/// A fixture for test `test`, calling the agent as `caller`.
pub fn fixture(test: &str, caller: &str) -> Fixture {
    let pki = Pki::new("Fast Sandbox test CA");
    pki.issue("agent", &[SERVER_NAME]);
    let tls = pki.client(caller);
    let (api, ops) = (free_port(), free_port());
    Fixture {
        pki,
        tls,
        state: tempfile::tempdir().unwrap(),
        pod_uid: super::pod_uid(test),
        api,
        ops,
        addr: SocketAddr::from(([127, 0, 0, 1], api)),
    }
}

/// Starts the agent binary as pod `pod_uid` with `slots` slots, its API on
/// `api` and ops on `ops`, with `extra` flags after the common ones.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    env: &Env,
    pki_dir: &Path,
    state: &Path,
    pod_uid: &str,
    api: u16,
    ops: u16,
    slots: u32,
    extra: &[&str],
) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_fast-sandbox-agent"))
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--ops-listen", &format!("127.0.0.1:{ops}")])
        .arg("--tls-cert")
        .arg(pki_dir.join("agent.crt"))
        .arg("--tls-key")
        .arg(pki_dir.join("agent.key"))
        .arg("--client-ca")
        .arg(pki_dir.join("ca.crt"))
        .arg("--containerd-socket")
        .arg(&env.socket)
        .args(["--namespace", &env.namespace])
        .args([
            "--pod-uid",
            pod_uid,
            "--pod-name",
            "agent-binary",
            "--node-name",
            "test-node",
        ])
        .args([
            "--slots",
            &slots.to_string(),
            "--cgroup-parent",
            CGROUP_PARENT,
        ])
        .args(["--warm-snapshots", "0"])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .spawn()
        .expect("starting the agent binary");
    Running(child)
}

/// One GET on the ops port; the whole answer, or `None`.
pub fn ops_get(ops: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", ops)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out)
}

/// Waits until the agent on `ops` answers ready.
pub async fn wait_ready(ops: u16) {
    super::wait_for(
        "agent binary ready",
        Duration::from_secs(20),
        || async move {
            tokio::task::spawn_blocking(move || {
                ops_get(ops, "/readyz").is_some_and(|o| o.starts_with("HTTP/1.1 200"))
            })
            .await
            .unwrap()
        },
    )
    .await;
}

/// The value of a metric without labels, read from the ops port.
pub fn metric(ops: u16, name: &str) -> Option<f64> {
    let text = ops_get(ops, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the agent on `ops` reports `n` pre-started sandboxes ready.
pub async fn wait_stock(ops: u16, n: usize) {
    super::wait_for(
        &format!("{n} pre-started sandboxes ready"),
        Duration::from_secs(120),
        || async move {
            tokio::task::spawn_blocking(move || {
                metric(ops, "fast_sandbox_agent_stock_ready").is_some_and(|v| v >= n as f64)
            })
            .await
            .unwrap()
        },
    )
    .await;
}
