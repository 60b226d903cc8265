//! `fast-sandbox-webhook`: the mutating admission webhook that binds every
//! new Sandbox to a warm agent.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fast_sandbox_server::tls::ServerTls;
use fast_sandbox_server::{Ops, OpsArgs, serve, serve_ops, telemetry};
use fast_sandbox_webhook::metrics::Metrics;
use fast_sandbox_webhook::placement::Index;
use fast_sandbox_webhook::review::{DEFAULT_CONTROLLER_USERNAME, Reviewer};
use fast_sandbox_webhook::server::Webhook;
use fast_sandbox_webhook::watch::{self, ApiPools};
use tokio::net::TcpListener;

/// Admission webhook of Fast Sandbox.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    tls: fast_sandbox_server::tls::ServingArgs,
    /// HTTPS address kube-apiserver calls (`/mutate-sandbox`).
    #[arg(long, env = "FAST_SANDBOX_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
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

    let health = ops.health.clone();
    tokio::spawn(watch::run(client.clone(), index.clone(), move || {
        health.set_ready(true)
    }));

    let reviewer = Reviewer::new(index, args.controller_username)
        .with_pool_lookup(Arc::new(ApiPools(client)))
        .with_metrics(metrics.clone());
    let tls = ServerTls {
        cert: args.tls.tls_cert,
        key: args.tls.tls_key,
        client_ca: None,
    }
    .build()
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
    tokio::spawn(async move {
        fast_sandbox_server::shutdown::signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    tracing::info!(listen = %args.listen, ops = %args.ops.ops_listen, "serving admission");
    serve(
        listener,
        Some(tls),
        ops,
        Arc::new(Webhook::new(reviewer, metrics)),
        stopped(stop_rx),
    )
    .await;
    Ok(())
}
