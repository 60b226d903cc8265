//! Feeds the placement [`Index`] from the apiserver through the shared
//! [`Feed`]: agent pods (in the operator's namespace), the nodes they run
//! on, SandboxPools and Sandboxes. Every watch decodes objects one by one,
//! so an object our types cannot read is skipped and reported, never
//! stopping admission.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fast_sandbox_api::{Sandbox, SandboxPool, wellknown};
use fast_sandbox_k8s::decode::{self, Undecodable};
use fast_sandbox_placement::{Change, Feed, Index};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::pool_defaults::PoolDefaults;
use crate::review::PoolLookup;

/// A reservation whose sandbox has not appeared on the watch after this long
/// was never stored (another admission step refused it); its slot is freed.
pub const RESERVATION_TTL: Duration = Duration::from_secs(30);
/// How often stale reservations are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(10);

/// Watches the apiserver and keeps `index` current until the process ends.
/// Agent pods are watched in `agent_namespace` only. Calls `on_synced`
/// once, when every watch has listed its objects.
pub async fn run(
    client: Client,
    agent_namespace: String,
    index: Arc<Index>,
    defaults: Arc<PoolDefaults>,
    undecodable: Arc<Undecodable>,
    on_synced: impl FnOnce() + Send,
) {
    let agents = watcher::Config::default().labels(&format!(
        "{}={}",
        wellknown::LABEL_ROLE,
        wellknown::ROLE_AGENT
    ));
    let all = watcher::Config::default;
    let u = || undecodable.clone();
    let pods = decode::watch::<Pod>(client.clone(), Some(&agent_namespace), agents, u())
        .default_backoff()
        .map(|e| e.map(Change::Pod));
    let nodes = decode::watch::<Node>(client.clone(), None, all(), u())
        .default_backoff()
        .map(|e| e.map(Change::Node));
    let pools = decode::watch::<SandboxPool>(client.clone(), None, all(), u())
        .default_backoff()
        .map(|e| e.map(Change::Pool));
    let sandboxes = decode::watch::<Sandbox>(client, None, all(), u())
        .default_backoff()
        .map(|e| e.map(Change::Sandbox));
    let mut changes = stream::select_all([
        pods.boxed(),
        nodes.boxed(),
        pools.boxed(),
        sandboxes.boxed(),
    ]);

    let mut feed = Feed::new(index.clone());
    let mut on_synced = Some(on_synced);
    let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tokio::select! {
            next = changes.next() => match next {
                Some(Ok(change)) => {
                    // Before the index: a pool admission finds it has
                    // defaults once it finds the pool.
                    if let Change::Pool(event) = &change {
                        defaults.observe(event);
                    }
                    feed.apply(change);
                    if feed.synced() && let Some(f) = on_synced.take() {
                        tracing::info!(agents = index.agent_count(), "placement index synced");
                        f();
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
                None => break,
            },
            _ = expiry.tick() => {
                let n = index.expire_tentative(Instant::now(), RESERVATION_TTL);
                if n > 0 {
                    tracing::info!(dropped = n, "freed reservations whose sandbox was never stored");
                }
            }
        }
    }
}

/// Looks pools up on the apiserver: whether one exists when the index has
/// not seen it yet, and a namespace's pools for the caps check.
pub struct ApiPools(pub Client);

impl PoolLookup for ApiPools {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SandboxPool>, String>> {
        Box::pin(async move {
            Api::<SandboxPool>::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await
                .map(|p| p.filter(|p| p.metadata.deletion_timestamp.is_none()))
                .map_err(|e| e.to_string())
        })
    }

    fn in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SandboxPool>, String>> {
        Box::pin(async move {
            // Untyped and decoded one by one: one odd pool must not make
            // every pool admission of the namespace fail.
            let ar = kube::api::ApiResource::erase::<SandboxPool>(&());
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(self.0.clone(), namespace, &ar);
            let list = api
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| decode::from_value::<SandboxPool>(v).ok())
                .collect())
        })
    }
}
