//! `fast-sandbox-webhook`: the admission webhook that binds every new
//! Sandbox to a warm agent and holds SandboxPools to the operator's policy.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fast_sandbox_k8s::cluster_trust::ClientAuthArgs;
use fast_sandbox_k8s::decode::Undecodable;
use fast_sandbox_k8s::policy::SharedPolicy;
use fast_sandbox_placement::Index;
use fast_sandbox_server::tls::ServerTls;
use fast_sandbox_server::{Ops, OpsArgs, serve, serve_ops, telemetry};
use fast_sandbox_webhook::metrics::Metrics;
use fast_sandbox_webhook::pool_defaults::PoolDefaults;
use fast_sandbox_webhook::review::{DEFAULT_CONTROLLER_USERNAME, Reviewer};
use fast_sandbox_webhook::server::Webhook;
use fast_sandbox_webhook::watch::{self, ApiPools};
use tokio::net::TcpListener;

/// The apiserver's webhook client certificate name (see deploy/ and the
/// local cluster's admission configuration).
const APISERVER_CLIENT: &str = "kube-apiserver-webhook-client";

/// Admission webhook of Fast Sandbox.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    tls: fast_sandbox_server::tls::ServingArgs,
    #[command(flatten)]
    client_auth: ClientAuthArgs,
    /// HTTPS address kube-apiserver calls (`/mutate-sandbox`,
    /// `/validate-sandboxpool`).
    #[arg(long, env = "FAST_SANDBOX_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Namespace the operator's components and agent pods run in (home of
    /// the policy ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "fast-sandbox-system")]
    namespace: String,
    /// Namespace agent pods run in; `--namespace` when unset.
    #[arg(long, env = "FAST_SANDBOX_AGENT_NAMESPACE")]
    agent_namespace: Option<String>,
    /// Username of the controller's service account, the only one allowed
    /// to change a sandbox's binding.
    #[arg(long, env = "FAST_SANDBOX_CONTROLLER_USERNAME", default_value = DEFAULT_CONTROLLER_USERNAME)]
    controller_username: String,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.ops.log_format);

    let ops = Ops::default();
    let metrics = Metrics::new();
    ops.registry.with(|r| metrics.register(r));
    let index = Arc::new(Index::new());
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (in-cluster config or KUBECONFIG)")?;

    let undecodable = Undecodable::register(&ops.registry);
    let policy = SharedPolicy::register(&ops.registry);
    tokio::spawn(fast_sandbox_k8s::policy::run(
        client.clone(),
        args.namespace.clone(),
        policy.clone(),
        || {},
    ));
    let auth = args
        .client_auth
        .setup(&client, &[APISERVER_CLIENT])
        .context("setting up client authentication")?;
    if auth.names.is_none() {
        tracing::warn!(
            "client authentication is off: any caller reaching this port is answered and reserves nothing; restrict it with the NetworkPolicy in deploy/"
        );
    }
    let defaults = Arc::new(PoolDefaults::default());
    let (index_synced_tx, mut index_synced) = tokio::sync::watch::channel(false);
    tokio::spawn(watch::run(
        client.clone(),
        args.agent_namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone()),
        index.clone(),
        defaults.clone(),
        undecodable,
        move || {
            index_synced_tx.send_replace(true);
        },
    ));
    {
        let health = ops.health.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            // Ready once the index is synced (before, it would overbook
            // agents) and the callers can be verified.
            let _ = index_synced.wait_for(|s| *s).await;
            auth.loaded().await;
            health.set_ready(true);
        });
    }

    let reviewer = Reviewer::new(index, args.controller_username)
        .with_pool_lookup(Arc::new(ApiPools(client)))
        .with_pool_defaults(defaults)
        .with_metrics(metrics.clone())
        .with_policy(policy);
    let serving = ServerTls {
        cert: args.tls.tls_cert,
        key: args.tls.tls_key,
        client_ca: None,
    };
    let tls = match &auth.verifier {
        Some(ca) => serving.build_with_client_ca(ca.clone()),
        None => serving.build(),
    }
    .context("loading the serving certificate")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ops_listener = TcpListener::bind(args.ops.ops_listen)
        .await
        .with_context(|| format!("binding {}", args.ops.ops_listen))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tokio::spawn(serve_ops(
        ops_listener,
        ops.clone(),
        stopped(stop_rx.clone()),
    ));
    let health = ops.health.clone();
    tokio::spawn(async move {
        fast_sandbox_server::shutdown::signal_then_leave_service(&health).await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(listen = %args.listen, ops = %args.ops.ops_listen, "serving admission");
    serve(
        listener,
        Some(tls),
        ops,
        Arc::new(Webhook::new(reviewer, metrics, auth.names.clone())),
        stopped(stop_rx),
    )
    .await;
    Ok(())
}
