//! Exposed ports. A sandbox keeps its own loopback-only network namespace;
//! for each exposed TCP port the agent listens on an ephemeral port of its
//! pod's address and forwards every connection into the sandbox's namespace,
//! to `127.0.0.1:<port>` there. Clients reach the sandbox at
//! `status.endpoints`; the sandbox still reaches nothing outside itself.
//!
//! A connection is made inside the sandbox's namespace from a short-lived
//! thread that enters it (`setns`) and exits afterwards, so no thread the
//! agent keeps ever changes namespace. The sandbox's namespace is found
//! through the host's `/proc` (mounted into the agent pod).

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fast_sandbox_api::{ExposedPort, PortProtocol, SandboxEndpoint};
use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How long a forwarded connection waits for the sandbox to accept it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The listeners of every sandbox with exposed ports.
pub struct Ports {
    proc_root: PathBuf,
    advertise: IpAddr,
    open: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
}

impl Ports {
    /// Forwards into sandboxes found under `proc_root` (the host's `/proc`),
    /// advertising endpoints at `advertise` (the agent pod's IP).
    pub fn new(proc_root: PathBuf, advertise: Option<IpAddr>) -> Self {
        Self {
            proc_root,
            advertise: advertise.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Starts forwarding `ports` of sandbox `uid`, whose init process has
    /// host PID `pid`; returns where each is reachable. TCP only (admission
    /// refuses UDP). Replaces any forwarding `uid` had; no ports, no work
    /// (the create path of most sandboxes).
    pub async fn expose(
        &self,
        uid: &str,
        pid: u32,
        ports: &[ExposedPort],
    ) -> Result<Vec<SandboxEndpoint>> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        self.close(uid);
        let netns = self.proc_root.join(pid.to_string()).join("ns/net");
        let mut tasks = Vec::new();
        let mut endpoints = Vec::new();
        for p in ports.iter().filter(|p| p.protocol == PortProtocol::TCP) {
            let Ok(target) = u16::try_from(p.port) else {
                continue;
            };
            let listener = match TcpListener::bind(SocketAddr::new(self.advertise, 0)).await {
                Ok(l) => l,
                Err(e) => {
                    tasks.iter().for_each(|t: &JoinHandle<()>| t.abort());
                    return Err(Error::io(format!("listening for port {target}"), e));
                }
            };
            let local = listener
                .local_addr()
                .map_err(|e| Error::io("reading a listener's address", e))?;
            endpoints.push(SandboxEndpoint {
                name: p.name.clone(),
                address: local.to_string(),
                protocol: PortProtocol::TCP,
            });
            tasks.push(tokio::spawn(forward(listener, netns.clone(), target)));
        }
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), tasks);
        Ok(endpoints)
    }

    /// Stops forwarding for `uid` (its process ended or it was deleted).
    /// Connections already forwarded run until either side closes.
    pub fn close(&self, uid: &str) {
        let tasks = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        for t in tasks.into_iter().flatten() {
            t.abort();
        }
    }
}

impl Drop for Ports {
    fn drop(&mut self) {
        let open = std::mem::take(self.open.get_mut().unwrap_or_else(|p| p.into_inner()));
        for t in open.into_values().flatten() {
            t.abort();
        }
    }
}

/// Accepts on `listener` and splices each connection with one to
/// `127.0.0.1:target` inside the network namespace at `netns`.
async fn forward(listener: TcpListener, netns: PathBuf, target: u16) {
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, port = target, "accepting a forwarded connection failed");
                continue;
            }
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let outbound = match connect_inside(netns, target).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, port = target, error = %e, "the sandbox did not take a forwarded connection");
                    return;
                }
            };
            let (mut a, mut b) = (inbound, outbound);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}

/// Connects to `127.0.0.1:port` inside the namespace at `netns`, from a
/// thread of its own that ends right after.
async fn connect_inside(netns: PathBuf, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fs-port-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_in_namespace(&netns, port));
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

fn connect_in_namespace(netns: &Path, port: u16) -> std::io::Result<StdTcpStream> {
    let ns = File::open(netns)?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    StdTcpStream::connect_timeout(
        &SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        CONNECT_TIMEOUT,
    )
}
