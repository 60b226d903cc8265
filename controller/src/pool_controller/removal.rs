//! Removing one agent: the containers of its sandboxes and its stock of
//! pre-started sandboxes first (a deleted pod takes nothing with it from the
//! node's containerd), then its pod.

use std::collections::HashMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};

use crate::context::Context;
use crate::error::Error;

/// Deletes agent pod `name`, only the incarnation `uid` if given; one
/// already gone or replaced counts as deleted.
pub(super) async fn delete_pod(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<String>,
) -> Result<(), Error> {
    let dp = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Asks agent `name` to remove its pre-started sandboxes before its pod
/// goes: a deleted pod takes nothing with it from the node's containerd,
/// and a restarted agent keeps its stock, so the agent cannot tell by
/// itself. One that cannot answer leaves them to the node janitor.
pub(super) async fn retire_stock(ctx: &Context, name: &str) {
    let Some(agent) = ctx.agents.get(name) else {
        return;
    };
    if !agent.view().reachable {
        return;
    }
    match agent.client.release_stock().await {
        Ok(r) => {
            tracing::info!(agent = %name, removed = r.removed, "retired the agent's stock");
        }
        Err(e) => {
            tracing::warn!(agent = %name, error = %e, "cannot retire an agent's stock before it goes; the node janitor collects it");
        }
    }
}

/// How many of a departing agent's sandboxes are stopped at once.
const REMOVE_CONCURRENCY: usize = 8;

/// Removes one agent: first the sandboxes' containers and the stock it
/// holds (a deleted pod takes nothing with it from the node's
/// containerd), then the pod.
pub(super) async fn remove_agent(ctx: &Context, pod: &Pod) -> Result<(), Error> {
    let name = pod.name_any();
    if let Some(agent) = ctx.agents.get(&name)
        && agent.view().reachable
    {
        // Each with its own grace period, several at once: one after the
        // other, an agent's sandboxes that ignore SIGTERM would take the
        // default period each.
        let graces: HashMap<String, Option<std::time::Duration>> = ctx
            .sandboxes
            .state()
            .iter()
            .filter_map(|s| Some((s.uid()?, s.termination_grace())))
            .collect();
        let uids: Vec<String> = agent.view().sandboxes.keys().cloned().collect();
        futures::stream::iter(uids)
            .for_each_concurrent(REMOVE_CONCURRENCY, |uid| {
                let agent = &agent;
                let name = &name;
                let grace = graces.get(&uid).copied().flatten();
                async move {
                    if let Err(e) = agent.client.delete(&uid, grace).await {
                        tracing::warn!(agent = %name, sandbox = %uid, error = %e, "cannot remove a container before its agent goes; the node janitor collects it");
                    }
                }
            })
            .await;
    }
    retire_stock(ctx, &name).await;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.agent_pod.namespace);
    delete_pod(&pods, &name, pod.uid()).await
}
