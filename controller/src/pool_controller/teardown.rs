//! The pool's finalizer and what it guards: a deleted pool's agents go
//! before the pool does, and agents whose pool is gone anyway are swept.

use std::collections::HashSet;
use std::sync::Arc;

use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::wellknown::{LABEL_POOL_NAMESPACE, LABEL_POOL_UID, POOL_FINALIZER};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::pods_of;
use super::removal::remove_agent;
use crate::context::Context;
use crate::error::Error;

/// How often a pool being deleted is looked at again while its agent pods
/// terminate (their deletions also trigger it).
const TEARDOWN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Adds the pool finalizer, guarded by the pool's UID so a pool created
/// again under the name is never patched; a pool already gone is fine.
pub(super) async fn add_finalizer(
    pool: &SandboxPool,
    ctx: &Context,
    ns: &str,
) -> Result<(), Error> {
    let patch = match &pool.metadata.finalizers {
        None => json!([
            {"op": "test", "path": "/metadata/uid", "value": pool.metadata.uid},
            {"op": "add", "path": "/metadata/finalizers", "value": [POOL_FINALIZER]}
        ]),
        Some(_) => json!([
            {"op": "test", "path": "/metadata/uid", "value": pool.metadata.uid},
            {"op": "add", "path": "/metadata/finalizers/-", "value": POOL_FINALIZER}
        ]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    let api: Api<SandboxPool> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A pool being deleted: its agents' sandboxes and then the agents go, then
/// its finalizer.
pub(super) async fn teardown(
    pool: &SandboxPool,
    ctx: &Context,
    ns: &str,
    pool_key: &str,
) -> Result<Action, Error> {
    if !pool.finalizers().iter().any(|f| f == POOL_FINALIZER) {
        return Ok(Action::await_change());
    }
    let pods = pods_of(ctx, pool);
    let none = HashSet::new();
    let (expected_new, _) = ctx.expectations.pending(pool_key, &none, &none);
    // Once every agent's deletion is under way the pool may go: Kubernetes
    // finishes the pods' deletion (on a node that died, the pod garbage
    // collector does), and none of them can be adopted by a new pool of
    // the same name, which has another UID.
    if pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()) && expected_new.is_empty() {
        let finalizers = pool.finalizers().to_vec();
        let api: Api<SandboxPool> = Api::namespaced(ctx.client.clone(), ns);
        crate::finalizer::remove(&api, &pool.name_any(), &finalizers, POOL_FINALIZER).await?;
        tracing::info!(pool = %pool.name_any(), namespace = %ns, "pool deleted; its agents are gone");
        return Ok(Action::await_change());
    }
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        remove_agent(ctx, p).await?;
        ctx.expectations.deleted(pool_key, &p.name_any());
        tracing::info!(pool = %pool.name_any(), namespace = %ns, agent = %p.name_any(), "deleted agent pod of a deleted pool");
    }
    Ok(Action::requeue(TEARDOWN_RECHECK))
}

/// Sweeps agents whose pool no longer exists each time `rx` asks (the pool
/// list was read or a pool was deleted), once the caches are synced: a
/// pool whose finalizer was removed by force, or that went while no
/// controller ran, leaves no privileged pod behind.
pub async fn sweep_orphans_on(ctx: Arc<Context>, mut rx: UnboundedReceiver<()>) {
    while rx.recv().await.is_some() {
        while rx.try_recv().is_ok() {}
        ctx.wait_synced().await;
        let pools: HashSet<String> = ctx.pools.state().iter().filter_map(|p| p.uid()).collect();
        let scope = ctx.settings.watch_namespace.clone();
        for pod in ctx.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(ns) = &scope
                && pod.labels().get(LABEL_POOL_NAMESPACE) != Some(ns)
            {
                continue;
            }
            let owner = pod.labels().get(LABEL_POOL_UID);
            if owner.is_some_and(|uid| pools.contains(uid)) {
                continue;
            }
            tracing::warn!(agent = %pod.name_any(), pool_uid = ?owner, "agent pod has no pool; removing it");
            if let Err(e) = remove_agent(&ctx, &pod).await {
                tracing::warn!(agent = %pod.name_any(), error = %e, "cannot remove an orphaned agent pod; retried at the next sweep");
            }
        }
    }
}
