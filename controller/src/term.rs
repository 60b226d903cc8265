//! One leadership term: everything is rebuilt from the API and the agents
//! when a replica becomes leader, and dropped when it stops leading. A term
//! starts the watches (agent pods, nodes, sandboxes, pools; each survives
//! objects it cannot decode), the placement feed, the agent directory and
//! both controllers, and ends when `stop` resolves.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fast_sandbox_agent_client::ClientTls;
use fast_sandbox_api::wellknown::{LABEL_ROLE, ROLE_AGENT};
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_k8s::decode::{self, Undecodable};
use fast_sandbox_k8s::policy::SharedPolicy;
use fast_sandbox_placement::{Change, Feed, Index};
use fast_sandbox_server::Health;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::agents::Agents;
use crate::context::{Context, Expectations, FIELD_MANAGER, Settings, StatusCache, store_ready};
use crate::janitor::Janitor;
use crate::metrics::Metrics;
use crate::{pool_controller, sandbox_controller};

/// Pool reconciles triggered within this window run once.
pub const POOL_DEBOUNCE: Duration = Duration::from_millis(200);

/// What a term is built from.
#[derive(Clone)]
pub struct Components {
    /// API client.
    pub client: Client,
    /// Reconciler settings.
    pub settings: Settings,
    /// Client certificate for the agents.
    pub tls: ClientTls,
    /// Port of the agents' API.
    pub agent_port: u16,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness of this process.
    pub health: Health,
    /// This replica's identity (Events name it).
    pub identity: String,
    /// The operator's policy, kept current for the process's life.
    pub policy: SharedPolicy,
    /// Bumped whenever the policy changes.
    pub policy_changes: watch::Sender<()>,
    /// Where watches report objects they cannot decode.
    pub undecodable: Arc<Undecodable>,
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Components")
            .field("settings", &self.settings)
            .field("identity", &self.identity)
            .finish()
    }
}

fn channel_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Runs one term until `stop` resolves.
pub async fn run<S>(c: &Components, stop: S)
where
    S: Future<Output = ()> + Send + Sync + Clone + 'static,
{
    c.health.set_ready(false);
    let client = c.client.clone();
    let scope = c.settings.watch_namespace.as_deref();
    let agent_ns = c.settings.agent_pod.namespace.clone();
    let index = Arc::new(Index::new());
    let feed = Arc::new(Mutex::new(Feed::new(index.clone())));
    let apply = {
        let feed = feed.clone();
        move |change: Change| feed.lock().unwrap_or_else(|p| p.into_inner()).apply(change)
    };
    let (sandbox_tx, sandbox_rx) = mpsc::unbounded_channel::<ObjectRef<Sandbox>>();
    let (pool_tx, pool_rx) = mpsc::unbounded_channel::<ObjectRef<SandboxPool>>();
    let (janitor_tx, janitor_rx) = mpsc::unbounded_channel();
    let (orphan_tx, orphan_rx) = mpsc::unbounded_channel::<()>();

    // Sandboxes: one watch feeds the store, the placement index and the
    // sandbox controller.
    let (sb_store, sb_writer) = reflector::store::<Sandbox>();
    let written = Arc::new(StatusCache::default());
    let agents = Agents::new(
        c.tls.clone(),
        c.agent_port,
        sb_store.clone(),
        sandbox_tx.clone(),
        pool_tx.clone(),
        janitor_tx,
    );
    let sb_events = {
        let agents = agents.clone();
        let pool_tx = pool_tx.clone();
        let written = written.clone();
        let apply = apply.clone();
        decode::watch::<Sandbox>(
            client.clone(),
            scope,
            watcher::Config::default(),
            c.undecodable.clone(),
        )
        .default_backoff()
        .reflect(sb_writer)
        .inspect(move |ev| {
            let Ok(ev) = ev else { return };
            apply(Change::Sandbox(ev.clone()));
            match ev {
                watcher::Event::Apply(sb) | watcher::Event::InitApply(sb) => {
                    if let Some(ns) = sb.namespace() {
                        let _ = pool_tx.send(ObjectRef::new(&sb.spec.pool_ref).within(&ns));
                    }
                }
                watcher::Event::Delete(sb) => {
                    agents.forget_sandbox(sb);
                    if let Some(uid) = sb.metadata.uid.as_deref() {
                        written.forget(uid);
                    }
                }
                _ => {}
            }
        })
        .applied_objects()
    };

    // Agent pods, all in the operator's namespace: one watch feeds the
    // store, the agent directory and the index.
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let pod_events = {
        let agents = agents.clone();
        let store = pod_store.clone();
        let apply = apply.clone();
        let orphan_tx = orphan_tx.clone();
        let cfg = watcher::Config::default().labels(&format!("{LABEL_ROLE}={ROLE_AGENT}"));
        decode::watch::<Pod>(client.clone(), Some(&agent_ns), cfg, c.undecodable.clone())
            .default_backoff()
            .reflect(pod_writer)
            .for_each(move |ev| {
                if let Ok(ev) = &ev {
                    apply(Change::Pod(ev.clone()));
                }
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        agents.observe_pod(&p)
                    }
                    Ok(watcher::Event::Delete(p)) => agents.forget_pod(&p),
                    Ok(watcher::Event::InitDone) => {
                        let alive: HashSet<String> =
                            store.state().iter().map(|p| p.name_any()).collect();
                        agents.retain_pods(&alive);
                        let _ = orphan_tx.send(());
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(e) => tracing::warn!(error = %e, "agent pod watch failed"),
                }
                futures::future::ready(())
            })
    };

    // Nodes: only their images, for image-aware placement.
    let node_events = {
        let apply = apply.clone();
        decode::watch::<Node>(
            client.clone(),
            None,
            watcher::Config::default(),
            c.undecodable.clone(),
        )
        .default_backoff()
        .for_each(move |ev| {
            match ev {
                Ok(ev) => apply(Change::Node(ev)),
                Err(e) => tracing::warn!(error = %e, "node watch failed"),
            }
            futures::future::ready(())
        })
    };

    // Pools: one watch feeds the store, the index and the pool controller.
    let (pool_store, pool_writer) = reflector::store::<SandboxPool>();
    let pool_events = {
        let apply = apply.clone();
        let orphan_tx = orphan_tx.clone();
        decode::watch::<SandboxPool>(
            client.clone(),
            scope,
            watcher::Config::default(),
            c.undecodable.clone(),
        )
        .default_backoff()
        .reflect(pool_writer)
        .inspect(move |ev| {
            let Ok(ev) = ev else { return };
            if matches!(ev, watcher::Event::Delete(_) | watcher::Event::InitDone) {
                let _ = orphan_tx.send(());
            }
            apply(Change::Pool(ev.clone()));
        })
        .applied_objects()
    };

    let janitor = Janitor::new(pod_store.clone(), agents.clone(), c.metrics.clone());
    let janitor_run = janitor.clone().run(janitor_rx);

    let pool_ctl = Controller::for_stream(pool_events, pool_store.clone())
        .with_config(ControllerConfig::default().debounce(POOL_DEBOUNCE))
        .reconcile_on(channel_stream(pool_rx));
    let sandbox_ctl = Controller::for_stream(sb_events, sb_store.clone())
        .reconcile_on(channel_stream(sandbox_rx));

    let reporter = Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: Some(c.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store.clone(),
        sandboxes: sb_store.clone(),
        pools: pool_store.clone(),
        agents: agents.clone(),
        index,
        feed,
        policy: c.policy.clone(),
        janitor,
        metrics: c.metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        settings: c.settings.clone(),
        pool_tx,
        expectations: Expectations::default(),
        failures: Mutex::new(Default::default()),
        written,
        namespace_locks: Default::default(),
    });

    // A policy change (caps, images) may change what every pool should do.
    let policy_run = {
        let ctx = ctx.clone();
        let mut changes = c.policy_changes.subscribe();
        async move {
            while changes.changed().await.is_ok() {
                for p in ctx.pools.state() {
                    let _ = ctx.pool_tx.send(ObjectRef::from_obj(&*p));
                }
            }
        }
    };

    let orphans_run = pool_controller::sweep_orphans_on(ctx.clone(), orphan_rx);

    let readiness = {
        let (pods, sbs, pools, health) = (
            pod_store.clone(),
            sb_store.clone(),
            pool_store.clone(),
            c.health.clone(),
        );
        let stop = stop.clone();
        async move {
            let synced = async {
                store_ready(&pods).await && store_ready(&sbs).await && store_ready(&pools).await
            };
            tokio::select! {
                ok = synced => if ok {
                    tracing::info!("caches synced; reconciling");
                    health.set_ready(true);
                },
                _ = stop => {}
            }
        }
    };

    let pools_run = pool_ctl
        .graceful_shutdown_on(stop.clone())
        .run(
            pool_controller::reconcile,
            pool_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let sandboxes_run = sandbox_ctl
        .graceful_shutdown_on(stop.clone())
        .run(
            sandbox_controller::reconcile,
            sandbox_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let pods_run = until(pod_events, stop.clone());
    let nodes_run = until(node_events, stop.clone());
    let policy_run = until(policy_run, stop.clone());
    let orphans_run = until(orphans_run, stop.clone());
    let janitor_run = until(janitor_run, stop);

    tokio::join!(
        readiness,
        pools_run,
        sandboxes_run,
        pods_run,
        nodes_run,
        janitor_run,
        policy_run,
        orphans_run,
    );
    agents.shutdown();
    drop(sandbox_tx);
    tracing::info!("leadership term ended");
}

/// Runs `work` until it ends or `stop` fires, whichever comes first.
async fn until(work: impl Future<Output = ()>, stop: impl Future<Output = ()>) {
    futures::select! {
        _ = work.fuse() => {},
        _ = stop.fuse() => {},
    }
}
