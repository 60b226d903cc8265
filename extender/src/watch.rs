//! The watches that feed the [`Index`]: nodes, agent pods (by label, in the
//! operator's namespace), SandboxPools and Sandboxes. Each decodes objects
//! one by one, so one our types cannot read is skipped and reported, never
//! stopping the watch. The extender is ready once every watch has listed
//! its objects once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use fast_sandbox_api::wellknown::{LABEL_ROLE, ROLE_AGENT};
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_k8s::decode::{self, Undecodable, Watched};
use fast_sandbox_server::Health;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::index::Index;

/// How the objects of one kind change the index.
trait Feed<K>: Send + Sync + 'static {
    /// The full set after a (re-)list.
    fn replace(&self, objects: &[K]);
    /// One object added or changed.
    fn apply(&self, object: &K);
    /// One object gone.
    fn delete(&self, object: &K);
}

struct Nodes(Arc<Index>);
struct AgentPods(Arc<Index>);
struct Pools(Arc<Index>);
struct Sandboxes(Arc<Index>);

impl Feed<Node> for Nodes {
    fn replace(&self, objects: &[Node]) {
        self.0.replace_nodes(objects);
    }
    fn apply(&self, object: &Node) {
        self.0.apply_node(object);
    }
    fn delete(&self, object: &Node) {
        if let Some(name) = &object.metadata.name {
            self.0.delete_node(name);
        }
    }
}

impl Feed<Pod> for AgentPods {
    fn replace(&self, objects: &[Pod]) {
        self.0.replace_agent_pods(objects);
    }
    fn apply(&self, object: &Pod) {
        self.0.apply_agent_pod(object);
    }
    fn delete(&self, object: &Pod) {
        if let (Some(ns), Some(name)) = (&object.metadata.namespace, &object.metadata.name) {
            self.0.delete_agent_pod(ns, name);
        }
    }
}

impl Feed<SandboxPool> for Pools {
    fn replace(&self, objects: &[SandboxPool]) {
        self.0.replace_pools(objects);
    }
    fn apply(&self, object: &SandboxPool) {
        self.0.apply_pool(object);
    }
    fn delete(&self, object: &SandboxPool) {
        if let (Some(ns), Some(name)) = (&object.metadata.namespace, &object.metadata.name) {
            self.0.delete_pool(ns, name);
        }
    }
}

impl Feed<Sandbox> for Sandboxes {
    /// Uses are history: a re-list adds what it sees and forgets nothing
    /// (old uses fade by recency and are pushed out by newer ones).
    fn replace(&self, objects: &[Sandbox]) {
        for s in objects {
            self.0.apply_sandbox(s);
        }
    }
    fn apply(&self, object: &Sandbox) {
        self.0.apply_sandbox(object);
    }
    fn delete(&self, object: &Sandbox) {
        self.0.delete_sandbox(object, Utc::now());
    }
}

/// Counts watches that finished their first list; sets ready at the last.
#[derive(Clone)]
struct Synced {
    done: Arc<AtomicUsize>,
    of: usize,
    health: Health,
}

impl Synced {
    fn mark(&self, kind: &str) {
        let n = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(kind, synced = n, of = self.of, "watch synced");
        if n == self.of {
            self.health.set_ready(true);
        }
    }
}

/// Where the watches look.
pub struct Scope {
    /// Namespace of the agent pods (the operator's).
    pub agent_namespace: String,
    /// Where objects that do not decode are reported.
    pub undecodable: Arc<Undecodable>,
}

/// Runs the four watches until the process ends, marking `health` ready
/// once all have synced. Watch errors are logged and retried with backoff.
pub async fn run(client: Client, index: Arc<Index>, health: Health, scope: Scope) {
    let synced = Synced {
        done: Arc::new(AtomicUsize::new(0)),
        of: 4,
        health,
    };
    let agents = watcher::Config::default().labels(&format!("{LABEL_ROLE}={ROLE_AGENT}"));
    let all = watcher::Config::default;
    let u = &scope.undecodable;
    tokio::join!(
        follow::<Node, _>(
            &client,
            None,
            all(),
            u,
            Nodes(index.clone()),
            synced.clone()
        ),
        follow::<Pod, _>(
            &client,
            Some(&scope.agent_namespace),
            agents,
            u,
            AgentPods(index.clone()),
            synced.clone(),
        ),
        follow::<SandboxPool, _>(
            &client,
            None,
            all(),
            u,
            Pools(index.clone()),
            synced.clone()
        ),
        follow::<Sandbox, _>(&client, None, all(), u, Sandboxes(index), synced),
    );
}

async fn follow<K, F>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
    undecodable: &Arc<Undecodable>,
    feed: F,
    synced: Synced,
) where
    K: Watched,
    F: Feed<K>,
{
    let kind = K::kind(&()).into_owned();
    let mut stream = std::pin::pin!(
        decode::watch::<K>(client.clone(), namespace, config, undecodable.clone())
            .default_backoff()
    );
    let mut buffer: Vec<K> = Vec::new();
    let mut first = true;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(obj)) => buffer.push(obj),
            Ok(Event::InitDone) => {
                feed.replace(&buffer);
                tracing::debug!(kind = %kind, objects = buffer.len(), "listed");
                buffer = Vec::new();
                if std::mem::take(&mut first) {
                    synced.mark(&kind);
                }
            }
            Ok(Event::Apply(obj)) => feed.apply(&obj),
            Ok(Event::Delete(obj)) => feed.delete(&obj),
            Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
        }
    }
}
