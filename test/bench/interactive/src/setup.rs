//! What the benchmark works on: a namespace of its own with a one-agent
//! pool, one running Sandbox, and a plain Pod of the same image on the
//! sandbox's node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use fast_sandbox_api::{Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_bench_report::ctr::Ctr;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;

use crate::Args;

/// Name of the benchmark's sandbox.
pub const SANDBOX: &str = "bench";
/// Name of the plain Pod beside it.
pub const POD: &str = "bench-pod";
/// How long set-up may take (an agent pod starts first).
const READY: Duration = Duration::from_secs(180);

/// The running sandbox and Pod the series use.
pub struct Target {
    /// The benchmark's namespace.
    pub namespace: String,
    /// The sandbox's containerd container.
    pub container_id: String,
    /// The node both run on.
    pub node: String,
}

impl Target {
    /// Creates the namespace, pool, sandbox and Pod and waits, by watch,
    /// until both run.
    pub async fn create(client: &Client, args: &Args) -> anyhow::Result<Self> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"generateName": "bench-interactive-"}}))?;
        let namespace = namespaces
            .create(&PostParams::default(), &ns)
            .await?
            .metadata
            .name
            .unwrap_or_default();
        eprintln!("namespace {namespace}");
        match Self::populate(client, args, &namespace).await {
            Ok(t) => Ok(t),
            Err(e) => {
                let _ = namespaces
                    .delete(&namespace, &DeleteParams::background())
                    .await;
                Err(e)
            }
        }
    }

    async fn populate(client: &Client, args: &Args, namespace: &str) -> anyhow::Result<Self> {
        let pools: Api<SandboxPool> = Api::namespaced(client.clone(), namespace);
        let pool: SandboxPool = serde_json::from_value(json!({
            "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "metadata": {"name": "bench"},
            "spec": {"capacity": {"poolMin": 1, "poolMax": 1}, "maxSandboxesPerAgent": 4,
                     "warmImages": [args.image],
                     "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": args.agent_image}]}}}
        }))?;
        pools.create(&PostParams::default(), &pool).await?;
        wait(
            &pools,
            "bench",
            "a ready agent in pool bench",
            |p: &SandboxPool| p.status.as_ref().is_some_and(|s| s.ready_agents >= 1),
        )
        .await?;

        let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), namespace);
        let sandbox: Sandbox = serde_json::from_value(json!({
            "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": SANDBOX},
            "spec": {"image": args.image, "command": ["/bin/sleep", "3600"], "poolRef": "bench"}
        }))?;
        sandboxes.create(&PostParams::default(), &sandbox).await?;
        let running = wait(&sandboxes, SANDBOX, "the sandbox running", |s: &Sandbox| {
            s.phase() == SandboxPhase::Running
        })
        .await?;
        let status = running.status.unwrap_or_default();
        let (Some(container_id), Some(node)) = (status.container_id, status.node_name) else {
            bail!("the running sandbox reports no container id or node");
        };

        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": POD},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{
                "name": "main", "image": args.image, "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"]}]}
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        wait(&pods, POD, "the plain Pod running", |p: &Pod| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await?;
        Ok(Self {
            namespace: namespace.to_string(),
            container_id,
            node,
        })
    }

    /// `ctr` on the containerd of the sandbox's node.
    pub fn ctr(&self, args: &Args) -> Ctr {
        let socket = args
            .node_containerd
            .split(',')
            .filter_map(|p| p.split_once('='))
            .find(|(n, _)| n.trim() == self.node)
            .map_or_else(
                || args.containerd_socket.clone(),
                |(_, s)| PathBuf::from(s.trim()),
            );
        Ctr {
            socket,
            namespace: "k8s.io".into(),
            image: args.image.clone(),
        }
    }

    /// Deletes the namespace and everything in it.
    pub async fn remove(&self, client: &Client) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::background())
            .await;
    }
}

/// Waits by watch until `name` satisfies `cond`, returning it.
async fn wait<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let found = tokio::time::timeout(
        READY,
        await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(&cond)),
    )
    .await
    .with_context(|| format!("no {what} after {READY:?}"))??;
    found.with_context(|| format!("{name} is gone"))
}
