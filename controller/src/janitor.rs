//! The node janitor, controller side. An agent pod that is deleted takes
//! nothing with it: its sandboxes' containers stay in the node's
//! containerd, and a sandbox re-placed on another agent of the same node
//! finds its container id taken. So whenever an agent pod disappears, and
//! once per node per leadership term (the first time an agent there is
//! listed, which covers pods that disappeared while no replica led), the
//! controller asks one reachable agent of the node to collect the
//! containers of every agent pod that no longer exists (`POST /v1/janitor`).
//!
//! # Fencing
//!
//! The agent removes every managed container whose agent is not in the
//! live list it is sent, so **the live list must never be partial**: an
//! agent pod missing from it loses its sandboxes. The list is therefore
//! built only from the pod cache after its first full list (every agent pod
//! lives in the operator's namespace, which the cache covers whole);
//! otherwise the sweep is refused ([`Refusal`]). A pod counts as live while
//! it exists at all, terminating or finished included.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use fast_sandbox_api::agent::JanitorRequest;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::agents::Agents;
use crate::metrics::Metrics;
use fast_sandbox_agent_client::ClientError;

/// Why the janitor should look at a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// An agent pod on the node is gone: sweep now.
    AgentGone(String),
    /// An agent on the node was listed: sweep if the node was not swept
    /// yet in this term.
    AgentListed(String),
}

/// Why a sweep was not attempted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The pod cache has not completed its first list: live agents could
    /// be missing from it.
    #[error("the agent pod cache is not synced")]
    NotSynced,
    /// No reachable agent runs on the node to do the work.
    #[error("no reachable agent on node {0}")]
    NoAgent(String),
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Not attempted.
    #[error("janitor refused: {0}")]
    Refused(#[from] Refusal),
    /// The agent could not be reached or refused.
    #[error("agent {agent}: {source}")]
    Agent {
        /// The agent pod asked.
        agent: String,
        /// What went wrong.
        #[source]
        source: ClientError,
    },
}

/// The node of a pod, once scheduled.
fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// UIDs of every agent pod on `node` in `pods`, sorted: whatever their
/// pool, namespace or phase, a pod that exists is live.
pub fn live_agent_uids(pods: &[Arc<Pod>], node: &str) -> Vec<String> {
    let uids: BTreeSet<String> = pods
        .iter()
        .filter(|p| node_of(p) == Some(node))
        .filter_map(|p| p.uid())
        .collect();
    uids.into_iter().collect()
}

/// The janitor request for `node`, or why none may be sent: `synced` says
/// whether the pod cache completed its first list.
pub fn request_for(synced: bool, pods: &[Arc<Pod>], node: &str) -> Result<JanitorRequest, Refusal> {
    if !synced {
        return Err(Refusal::NotSynced);
    }
    Ok(JanitorRequest {
        live_agent_uids: live_agent_uids(pods, node),
        namespace: None,
    })
}

/// The node janitor of one leadership term.
pub struct Janitor {
    pods: Store<Pod>,
    agents: Arc<Agents>,
    metrics: Arc<Metrics>,
    swept: Mutex<HashSet<String>>,
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Janitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Janitor").finish_non_exhaustive()
    }
}

impl Janitor {
    /// A janitor reading live agents from `pods` (the cache of every agent
    /// pod) and asking agents of `agents`.
    pub fn new(pods: Store<Pod>, agents: Arc<Agents>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            pods,
            agents,
            metrics,
            swept: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|_, l| Arc::strong_count(l) > 1);
        running.entry(node.to_string()).or_default().clone()
    }

    fn swept(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.swept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks one reachable agent of `node` to collect the containers of agent
    /// pods that no longer exist; returns how many it removed. One sweep
    /// per node at a time.
    pub async fn sweep(&self, node: &str) -> Result<usize, SweepError> {
        let lock = self.node_lock(node);
        let _held = lock.lock().await;
        // Never wait here: a sweep on an unsynced cache is refused, and the
        // next trigger (every agent listing) tries again.
        let synced = self
            .pods
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok());
        let req = request_for(synced, &self.pods.state(), node)?;
        let agent = self
            .agents
            .on_node(node)
            .into_iter()
            .find(|a| a.view().reachable)
            .ok_or_else(|| Refusal::NoAgent(node.to_string()))?;
        let report = agent
            .client
            .janitor(&req)
            .await
            .map_err(|source| SweepError::Agent {
                agent: agent.name.clone(),
                source,
            })?;
        for r in &report.removed {
            tracing::info!(%node, agent = %agent.name, container = %r.container_id, sandbox = %r.sandbox_uid, gone_agent = %r.agent_uid, "janitor removed a container of a gone agent");
        }
        let n = report.removed.len();
        self.metrics.janitor_removed.inc_by(n as u64);
        self.swept().insert(node.to_string());
        tracing::debug!(%node, agent = %agent.name, live = req.live_agent_uids.len(), removed = n, "node swept");
        Ok(n)
    }

    /// Sweeps nodes as triggers arrive, each in its own task, until the
    /// sender is dropped.
    pub async fn run(self: Arc<Self>, mut rx: UnboundedReceiver<Trigger>) {
        while let Some(t) = rx.recv().await {
            let node = match t {
                Trigger::AgentGone(node) => {
                    self.swept().remove(&node);
                    node
                }
                Trigger::AgentListed(node) => {
                    if self.swept().contains(&node) {
                        continue;
                    }
                    node
                }
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.sweep(&node).await {
                    tracing::info!(%node, error = %e, "node not swept; retried when an agent there is listed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(ns: &str, uid: &str, node: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(format!("agent-{uid}")),
                namespace: Some(ns.into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: None,
        })
    }

    #[test]
    fn every_existing_agent_pod_on_the_node_is_live() {
        let mut terminating = (*pod("ns-b", "u3", Some("n1"))).clone();
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let pods = vec![
            pod("ns-a", "u2", Some("n1")),
            pod("ns-a", "u1", Some("n1")),
            Arc::new(terminating),
            pod("ns-a", "u4", Some("n2")),
            pod("ns-a", "u5", None),
            pod("ns-a", "u1", Some("n1")),
        ];
        assert_eq!(live_agent_uids(&pods, "n1"), ["u1", "u2", "u3"]);
        assert_eq!(live_agent_uids(&pods, "n2"), ["u4"]);
        assert!(live_agent_uids(&pods, "n3").is_empty());
    }

    #[test]
    fn no_request_from_a_partial_cache() {
        let pods = vec![pod("ns-a", "u1", Some("n1"))];
        assert_eq!(request_for(false, &pods, "n1"), Err(Refusal::NotSynced));
        assert_eq!(
            request_for(true, &pods, "n1"),
            Ok(JanitorRequest {
                live_agent_uids: vec!["u1".into()],
                namespace: None,
            })
        );
    }

    #[tokio::test]
    async fn a_sweep_is_refused_until_the_pod_cache_is_synced() {
        let (pods, mut writer) = kube::runtime::reflector::store::<Pod>();
        let (sandboxes, _sb_writer) = kube::runtime::reflector::store();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (pool_tx, _pool_rx) = tokio::sync::mpsc::unbounded_channel();
        let (node_tx, _node_rx) = tokio::sync::mpsc::unbounded_channel();
        let tls = fast_sandbox_agent_client::ClientTls {
            cert: "/nonexistent".into(),
            key: "/nonexistent".into(),
            ca: "/nonexistent".into(),
        };
        let agents = Agents::new(
            tls,
            fast_sandbox_api::agent::DEFAULT_PORT,
            sandboxes,
            tx,
            pool_tx,
            node_tx,
        );
        let metrics = Metrics::register(&fast_sandbox_server::Registry::default());
        let janitor = Janitor::new(pods, agents, metrics);
        assert!(matches!(
            janitor.sweep("n1").await,
            Err(SweepError::Refused(Refusal::NotSynced))
        ));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        // Synced now; what is missing is an agent to ask.
        assert!(matches!(
            janitor.sweep("n1").await,
            Err(SweepError::Refused(Refusal::NoAgent(_)))
        ));
    }
}
