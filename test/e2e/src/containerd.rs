//! Every node's containerd as the suite sees it through `ctr`: which sandbox
//! containers exist, and the host PID of a pod's container. The truth the
//! fault tests check the API's account against. The local cluster has
//! several real nodes; each call looks at all of them.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fast_sandbox_api::wellknown::container_labels;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::E2eError;

/// containerd namespace the kubelet and the agents use.
pub const NAMESPACE: &str = "k8s.io";

/// The standard containerd socket, where the local cluster's first node
/// listens.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// Every node's containerd socket as seen from the host, by node name:
/// `FAST_SANDBOX_NODE_CONTAINERD` (`name=socket,...`, set by
/// `test/cluster/cluster.sh env`), else `FAST_SANDBOX_CONTAINERD_SOCK` (one
/// node), else the standard socket.
pub fn sockets() -> Vec<(String, String)> {
    if let Ok(pairs) = std::env::var("FAST_SANDBOX_NODE_CONTAINERD") {
        let parsed: Vec<(String, String)> = pairs
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, s)| (n.trim().to_string(), s.trim().to_string()))
            .filter(|(n, s)| !n.is_empty() && !s.is_empty())
            .collect();
        if !parsed.is_empty() {
            return parsed;
        }
    }
    let single =
        std::env::var("FAST_SANDBOX_CONTAINERD_SOCK").unwrap_or_else(|_| DEFAULT_SOCKET.into());
    vec![(String::new(), single)]
}

/// The name of the first real node, when `cluster.sh env` named the nodes.
pub fn first_node() -> Option<String> {
    sockets()
        .into_iter()
        .next()
        .map(|(name, _)| name)
        .filter(|n| !n.is_empty())
}

/// Runs `ctr -a <socket> -n k8s.io <args>` and returns its stdout.
pub async fn ctr_on(socket: &str, args: &[&str]) -> Result<String, E2eError> {
    let out = Command::new("ctr")
        .args(["-a", socket, "-n", NAMESPACE])
        .args(args)
        .output()
        .await
        .map_err(|e| E2eError::Command(format!("ctr {args:?} did not run: {e}")))?;
    if !out.status.success() {
        return Err(E2eError::Command(format!(
            "ctr -a {socket} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ctr <args>` against every node and returns each node's stdout.
async fn ctr_all(args: &[&str]) -> Result<Vec<(String, String)>, E2eError> {
    let mut outs = Vec::new();
    for (_, socket) in sockets() {
        let out = ctr_on(&socket, args).await?;
        outs.push((socket, out));
    }
    Ok(outs)
}

fn ids(out: &str) -> impl Iterator<Item = String> + '_ {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// Ids of the containers whose label `key` equals `value`, on every node.
pub async fn containers_labelled(key: &str, value: &str) -> Result<Vec<String>, E2eError> {
    let filter = format!("labels.\"{key}\"==\"{value}\"");
    let mut found = Vec::new();
    for (_, out) in ctr_all(&["containers", "ls", "-q", &filter]).await? {
        found.extend(ids(&out));
    }
    Ok(found)
}

/// Ids of the pre-started containers (stock, never a sandbox) agent pod
/// `agent_uid` keeps, on every node.
pub async fn stock_of(agent_uid: &str) -> Result<Vec<String>, E2eError> {
    use fast_sandbox_api::wellknown::container_labels as label;
    let filter = format!(
        "labels.\"{}\"==\"{agent_uid}\",labels.\"{}\"",
        label::AGENT_UID,
        label::PRESTARTED
    );
    let mut found = Vec::new();
    for (_, out) in ctr_all(&["containers", "ls", "-q", &filter]).await? {
        found.extend(ids(&out));
    }
    let mut stock = Vec::new();
    for id in found {
        if !container_labels(&id)
            .await?
            .contains_key(label::SANDBOX_UID)
        {
            stock.push(id);
        }
    }
    Ok(stock)
}

/// The socket of the node whose containerd holds container `id`.
async fn socket_of(id: &str) -> Result<Option<String>, E2eError> {
    for (socket, out) in ctr_all(&["containers", "ls", "-q"]).await? {
        if ids(&out).any(|c| c == id) {
            return Ok(Some(socket));
        }
    }
    Ok(None)
}

/// What `ctr containers info` says of one container.
async fn container_info(id: &str) -> Result<serde_json::Value, E2eError> {
    let socket = socket_of(id)
        .await?
        .ok_or_else(|| E2eError::Command(format!("no node's containerd has container {id}")))?;
    let out = ctr_on(&socket, &["containers", "info", id]).await?;
    serde_json::from_str(&out)
        .map_err(|e| E2eError::Command(format!("ctr containers info {id}: {e}")))
}

/// The labels of one container.
pub async fn container_labels(id: &str) -> Result<BTreeMap<String, String>, E2eError> {
    Ok(container_info(id)
        .await?
        .get("Labels")
        .and_then(|l| l.as_object())
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// The image a container was created from, as containerd names it.
pub async fn container_image(id: &str) -> Result<String, E2eError> {
    Ok(container_info(id)
        .await?
        .get("Image")
        .and_then(|i| i.as_str())
        .unwrap_or_default()
        .to_string())
}

/// Every sandbox container of the Kubernetes namespace `namespace`, grouped
/// by the sandbox UID on its label: `uid -> [container id]`. More than one id
/// under a UID means the sandbox runs twice.
pub async fn sandbox_containers(
    namespace: &str,
) -> Result<BTreeMap<String, Vec<String>>, E2eError> {
    let mut by_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in containers_labelled(container_labels::SANDBOX_NAMESPACE, namespace).await? {
        let labels = match container_labels(&id).await {
            Ok(l) => l,
            // Deleted between the listing and the look-up.
            Err(_) if !exists(&id).await? => continue,
            Err(e) => return Err(e),
        };
        let uid = labels
            .get(container_labels::SANDBOX_UID)
            .cloned()
            .unwrap_or_default();
        by_uid.entry(uid).or_default().push(id);
    }
    Ok(by_uid)
}

/// Whether a container with this id exists on any node.
pub async fn exists(id: &str) -> Result<bool, E2eError> {
    Ok(socket_of(id).await?.is_some())
}

/// Host PID of the running task of container `id`, if it has one (every
/// node shares the host's PID namespace).
pub async fn task_pid(id: &str) -> Result<Option<u32>, E2eError> {
    for (_, out) in ctr_all(&["tasks", "ls"]).await? {
        let pid = out.lines().skip(1).find_map(|line| {
            let mut cols = line.split_whitespace();
            let (task, pid, status) = (cols.next()?, cols.next()?, cols.next()?);
            (task == id && status == "RUNNING")
                .then(|| pid.parse().ok())
                .flatten()
        });
        if pid.is_some() {
            return Ok(pid);
        }
    }
    Ok(None)
}

/// Task exits in every node's containerd, from `ctr events`, with the
/// moment each was seen: tells a test when a process it killed really died.
pub struct TaskExits {
    exits: Arc<Mutex<BTreeMap<String, Instant>>>,
    changed: watch::Receiver<u64>,
    _children: Vec<Child>,
}

impl TaskExits {
    /// Starts following the event streams; exits from now on are recorded.
    pub fn start() -> Result<Self, E2eError> {
        let exits: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut children = Vec::new();
        for (_, socket) in sockets() {
            let mut child = Command::new("ctr")
                .args(["-a", &socket, "events"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| E2eError::Command(format!("ctr events did not run: {e}")))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| E2eError::Command("ctr events has no stdout".into()))?;
            let (e, tx) = (exits.clone(), tx.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // `<time> <namespace> /tasks/exit {"container_id": ...}`
                    let Some((_, json)) = line.split_once(&format!(" {NAMESPACE} /tasks/exit "))
                    else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                        continue;
                    };
                    if let Some(id) = v.get("container_id").and_then(|i| i.as_str()) {
                        e.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id.to_string())
                            .or_insert_with(Instant::now);
                        tx.send_modify(|n| *n += 1);
                    }
                }
            });
            children.push(child);
        }
        Ok(Self {
            exits,
            changed,
            _children: children,
        })
    }

    /// When the task of container `id` exited, waiting for it up to `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Instant, E2eError> {
        let mut changed = self.changed.clone();
        let fut = async {
            loop {
                changed.borrow_and_update();
                if let Some(at) = self.exits.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
                    return Ok(*at);
                }
                changed
                    .changed()
                    .await
                    .map_err(|_| E2eError::Watch("ctr events ended".into()))?;
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| E2eError::Timeout(timeout, format!("the task of {id} to exit")))?
    }
}
