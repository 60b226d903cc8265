//! What both reconcilers share during one leadership term: the API client,
//! the caches fed by watches, the agent directory, metrics and settings.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fast_sandbox_api::policy::Policy;
use fast_sandbox_api::{Sandbox, SandboxPool, SandboxStatus};
use fast_sandbox_k8s::policy::SharedPolicy;
use fast_sandbox_placement::{Feed, Index};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use kube::{Client, Resource};
use tokio::sync::mpsc::UnboundedSender;

use crate::agent_pod::AgentPodSettings;
use crate::agents::Agents;
use crate::janitor::Janitor;
use crate::metrics::Metrics;

/// How often a wait for a store's first full list is polled again.
pub const STORE_REPOLL: Duration = Duration::from_millis(100);

/// Waits until `store` holds a full list; false if its writer is gone.
///
/// `Store::wait_until_ready` (kube-runtime 5.0) wakes only the latest of
/// several concurrent waiters: they all poll one shared oneshot receiver,
/// which keeps a single waker, so the others would sleep forever (every
/// reconcile started before the caches synced, after a failover). The wait
/// is polled again every [`STORE_REPOLL`] so a lost wake-up costs at most
/// that; once the store is ready it returns at once.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: 'static + Clone + Lookup,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) = tokio::time::timeout(STORE_REPOLL, store.wait_until_ready()).await {
            return r.is_ok();
        }
    }
}

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "fast-sandbox-controller";

/// Tunables of the reconcilers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace the controller runs in (its Lease, the policy ConfigMap).
    pub namespace: String,
    /// The one namespace whose pools and sandboxes are watched (`None`:
    /// all).
    pub watch_namespace: Option<String>,
    /// How long an agent may be unreachable before its sandboxes are Lost.
    pub agent_lost_grace: Duration,
    /// How long an agent stays marked draining before it may be deleted.
    pub drain_settle: Duration,
    /// What every agent pod gets from the node.
    pub agent_pod: AgentPodSettings,
}

/// Shared state of one leadership term.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Agent pods (the operator's namespace, label
    /// `sandbox.fast.io/role=agent`).
    pub pods: Store<Pod>,
    /// Sandboxes.
    pub sandboxes: Store<Sandbox>,
    /// Pools.
    pub pools: Store<SandboxPool>,
    /// Live agents and their views.
    pub agents: Arc<Agents>,
    /// The placement index (the same implementation admission uses).
    pub index: Arc<Index>,
    /// What feeds the index from the watches.
    pub feed: Arc<Mutex<Feed>>,
    /// The operator's policy: agent images, template rules, caps.
    pub policy: SharedPolicy,
    /// Collects what gone agents left on their nodes.
    pub janitor: Arc<Janitor>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Settings.
    pub settings: Settings,
    /// Asks for a pool reconcile.
    pub pool_tx: UnboundedSender<ObjectRef<SandboxPool>>,
    /// Pods created or deleted whose change the pod cache has not shown yet.
    pub expectations: Expectations,
    /// Consecutive failures per object, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// The last status written per sandbox.
    pub written: Arc<StatusCache>,
    /// One pool of a namespace plans growth at a time, so concurrent
    /// reconciles of its pools never overshoot the namespace's caps.
    pub namespace_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Context {
    /// Publishes an Event about `obj` in the background, off the hot path.
    pub fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, event: Event) {
        let recorder = self.recorder.clone();
        let reference = obj.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "cannot publish event");
            }
        });
    }

    /// Waits until the pod, sandbox and pool caches hold a full list, so
    /// no decision is made on a partial view.
    pub async fn wait_synced(&self) {
        store_ready(&self.pods).await;
        store_ready(&self.sandboxes).await;
        store_ready(&self.pools).await;
    }

    /// The lock under which pools of `namespace` plan their growth.
    pub fn namespace_lock(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .namespace_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(namespace.to_string()).or_default().clone()
    }

    /// Backoff after the n-th consecutive failure of `key`.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let ms = 100u64.saturating_mul(1 << (*n - 1).min(9));
        Duration::from_millis(ms.min(30_000))
    }

    /// The policy now.
    pub fn policy(&self) -> Policy {
        self.policy.get()
    }

    /// Applies a watch event to the placement index.
    pub fn feed(&self, change: fast_sandbox_placement::Change) {
        self.feed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(change);
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !f.is_empty() {
            f.remove(key);
        }
    }
}

/// The last status the controller wrote for each sandbox (by UID). The
/// sandbox cache may trail a write by a few milliseconds; a reconcile
/// triggered in between (an agent event) starts from what was written, so
/// it neither writes the same status twice nor announces a change twice.
/// Only the controller writes sandbox status.
#[derive(Debug, Default)]
pub struct StatusCache {
    inner: Mutex<HashMap<String, SandboxStatus>>,
}

impl StatusCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, SandboxStatus>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last status written for `uid`.
    pub fn get(&self, uid: &str) -> Option<SandboxStatus> {
        self.lock().get(uid).cloned()
    }

    /// Records a status written for `uid`.
    pub fn put(&self, uid: &str, status: SandboxStatus) {
        self.lock().insert(uid.to_string(), status);
    }

    /// Forgets a deleted sandbox.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

/// How long an expected pod change is awaited before it is presumed lost.
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Pods the pool controller created or deleted but the pod cache does not
/// reflect yet, so a reconcile that runs in between neither creates them
/// twice nor counts deleted ones.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, PoolExpectations>>,
}

#[derive(Debug, Default)]
struct PoolExpectations {
    created: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
}

impl Expectations {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, PoolExpectations>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a pod created for `pool` (`namespace/name`).
    pub fn created(&self, pool: &str, pod: &str) {
        self.lock()
            .entry(pool.to_string())
            .or_default()
            .created
            .insert(pod.to_string(), Instant::now());
    }

    /// Records a pod of `pool` deleted.
    pub fn deleted(&self, pool: &str, pod: &str) {
        self.lock()
            .entry(pool.to_string())
            .or_default()
            .deleted
            .insert(pod.to_string(), Instant::now());
    }

    /// Pods created for pools whose key starts with `prefix` (a
    /// namespace's, `ns/`) that the cache does not show yet.
    pub fn created_in(&self, prefix: &str) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .flat_map(|(_, e)| {
                e.created
                    .iter()
                    .filter(|(_, at)| at.elapsed() < EXPECTATION_TIMEOUT)
                    .map(|(n, _)| n.clone())
            })
            .collect()
    }

    /// Given the pods the cache shows for `pool` (`seen`, and which of them
    /// are being deleted), returns the created pods not yet seen and the
    /// deleted pods still shown as alive; forgets settled or timed-out
    /// expectations.
    pub fn pending(
        &self,
        pool: &str,
        seen: &HashSet<String>,
        deleting: &HashSet<String>,
    ) -> (Vec<String>, HashSet<String>) {
        let mut all = self.lock();
        let Some(e) = all.get_mut(pool) else {
            return (Vec::new(), HashSet::new());
        };
        e.created
            .retain(|name, at| !seen.contains(name) && at.elapsed() < EXPECTATION_TIMEOUT);
        e.deleted.retain(|name, at| {
            seen.contains(name) && !deleting.contains(name) && at.elapsed() < EXPECTATION_TIMEOUT
        });
        let out = (
            e.created.keys().cloned().collect(),
            e.deleted.keys().cloned().collect(),
        );
        if e.created.is_empty() && e.deleted.is_empty() {
            all.remove(pool);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_concurrent_waiter_sees_the_store_ready() {
        let (reader, mut writer) = kube::runtime::reflector::store::<Pod>();
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let r = reader.clone();
                tokio::spawn(async move { store_ready(&r).await })
            })
            .collect();
        // Let every waiter register before the store fills.
        tokio::task::yield_now().await;
        tokio::time::sleep(STORE_REPOLL / 2).await;
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        for w in waiters {
            let woke = tokio::time::timeout(STORE_REPOLL * 5, w).await;
            assert!(matches!(woke, Ok(Ok(true))), "a waiter missed the wake-up");
        }
    }

    #[test]
    fn created_pod_is_expected_until_seen() {
        let e = Expectations::default();
        e.created("ns/p", "p-agent-1");
        let none = HashSet::new();
        assert_eq!(
            e.pending("ns/p", &none, &none).0,
            vec!["p-agent-1".to_string()]
        );
        let seen = HashSet::from(["p-agent-1".to_string()]);
        assert!(e.pending("ns/p", &seen, &none).0.is_empty());
    }

    #[test]
    fn deleted_pod_is_hidden_until_the_cache_shows_it_going() {
        let e = Expectations::default();
        e.deleted("ns/p", "a");
        let seen = HashSet::from(["a".to_string()]);
        let none = HashSet::new();
        assert!(e.pending("ns/p", &seen, &none).1.contains("a"));
        assert!(e.pending("ns/p", &seen, &seen).1.is_empty());
    }
}
