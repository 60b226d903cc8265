//! One leadership term: everything is rebuilt from the API and the agents
//! when a replica becomes leader, and dropped when it stops leading. A term
//! starts the watches (agent pods, sandboxes, pools), the agent directory
//! and both controllers, and ends when `stop` resolves.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fast_sandbox_api::wellknown::{LABEL_ROLE, ROLE_AGENT};
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_server::Health;
use fast_sandbox_webhook::placement::Index;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::agent_client::ClientTls;
use crate::agent_pod::AGENT_TLS_SECRET;
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
    /// Watch only this namespace (pools, sandboxes and agent pods); all
    /// namespaces when `None`.
    pub watch_namespace: Option<String>,
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Components")
            .field("settings", &self.settings)
            .field("identity", &self.identity)
            .finish()
    }
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
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
    let scope = c.watch_namespace.as_deref();
    let index = Arc::new(Index::new());
    let (sandbox_tx, sandbox_rx) = mpsc::unbounded_channel::<ObjectRef<Sandbox>>();
    let (pool_tx, pool_rx) = mpsc::unbounded_channel::<ObjectRef<SandboxPool>>();
    let (janitor_tx, janitor_rx) = mpsc::unbounded_channel();

    // Sandboxes: one watch feeds the store, the placement index and the
    // sandbox controller.
    let (sb_store, sb_writer) = reflector::store::<Sandbox>();
    let written = Arc::new(StatusCache::default());
    let agents = Agents::new(
        c.tls.clone(),
        c.agent_port,
        sb_store.clone(),
        index.clone(),
        sandbox_tx.clone(),
        pool_tx.clone(),
        janitor_tx,
    );
    let sb_events = {
        let agents = agents.clone();
        let store = sb_store.clone();
        let pool_tx = pool_tx.clone();
        let written = written.clone();
        watcher(
            scoped::<Sandbox>(&client, scope),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(sb_writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(sb) | watcher::Event::InitApply(sb)) => {
                agents.observe_sandbox(sb);
                if let Some(ns) = sb.namespace() {
                    let _ = pool_tx.send(ObjectRef::new(&sb.spec.pool_ref).within(&ns));
                }
            }
            Ok(watcher::Event::Delete(sb)) => {
                agents.forget_sandbox(sb);
                if let Some(uid) = sb.metadata.uid.as_deref() {
                    written.forget(uid);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let alive: HashSet<String> = store.state().iter().filter_map(|s| s.uid()).collect();
                agents.index().retain_sandboxes(|uid| alive.contains(uid));
            }
            _ => {}
        })
        .applied_objects()
    };

    // Agent pods: one watch feeds the store, the directory and the index.
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let pod_events = {
        let agents = agents.clone();
        let store = pod_store.clone();
        let cfg = watcher::Config::default().labels(&format!("{LABEL_ROLE}={ROLE_AGENT}"));
        watcher(scoped::<Pod>(&client, scope), cfg)
            .default_backoff()
            .reflect(pod_writer)
            .for_each(move |ev| {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        agents.observe_pod(&p)
                    }
                    Ok(watcher::Event::Delete(p)) => agents.forget_pod(&p),
                    Ok(watcher::Event::InitDone) => {
                        let alive: HashSet<String> = store
                            .state()
                            .iter()
                            .map(|p| {
                                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
                            })
                            .collect();
                        agents.retain_pods(&alive);
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(e) => tracing::warn!(error = %e, "agent pod watch failed"),
                }
                futures::future::ready(())
            })
    };

    let janitor = Janitor::new(
        pod_store.clone(),
        agents.clone(),
        c.metrics.clone(),
        c.watch_namespace.clone(),
    );
    if let Some(ns) = &c.watch_namespace {
        tracing::warn!(namespace = %ns, "watching one namespace: the node janitor is off (it needs every agent pod of a node)");
    }
    let janitor_run = janitor.clone().run(janitor_rx);

    let pool_ctl = Controller::new(
        scoped::<SandboxPool>(&client, scope),
        watcher::Config::default(),
    )
    .with_config(ControllerConfig::default().debounce(POOL_DEBOUNCE))
    .reconcile_on(channel_stream(pool_rx));
    let pool_store = pool_ctl.store();
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
        janitor,
        metrics: c.metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        settings: c.settings.clone(),
        pool_tx,
        expectations: Expectations::default(),
        tls_copied: Mutex::new(HashSet::new()),
        failures: Mutex::new(Default::default()),
        written,
    });

    // A rotated agent certificate (the certs CronJob renews it) reaches every
    // pool namespace: each change of the source makes every copy stale and
    // every pool reconcile, which copies it again.
    let tls_source = {
        let ctx = ctx.clone();
        let pools = pool_store.clone();
        let api: Api<Secret> = Api::namespaced(client.clone(), &c.settings.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={AGENT_TLS_SECRET}"));
        let mut seen: Option<String> = None;
        watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .for_each(move |secret| {
                if let Ok(secret) = secret
                    && secret.resource_version() != seen
                {
                    seen = secret.resource_version();
                    ctx.tls_copied
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    for p in pools.state() {
                        let _ = ctx.pool_tx.send(ObjectRef::from_obj(&*p));
                    }
                }
                futures::future::ready(())
            })
    };
    let tls_run = until(tls_source, stop.clone());

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
    let janitor_run = until(janitor_run, stop);

    tokio::join!(
        readiness,
        pools_run,
        sandboxes_run,
        pods_run,
        janitor_run,
        tls_run
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
