//! `fast-sandbox-gateway`: the access server (aggregated API server) of
//! Fast Sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fast_sandbox_agent_client::ClientTls;
use fast_sandbox_api::Sandbox;
use fast_sandbox_api::wellknown::{LABEL_ROLE, ROLE_AGENT};
use fast_sandbox_gateway::metrics::Metrics;
use fast_sandbox_gateway::resolve::Resolver;
use fast_sandbox_gateway::server::Gateway;
use fast_sandbox_k8s::access_review::Authorizer;
use fast_sandbox_k8s::cluster_trust::{self, ClusterTrust};
use fast_sandbox_k8s::decode::{self, Undecodable};
use fast_sandbox_server::tls::{ServerTls, ServingArgs};
use fast_sandbox_server::{Ops, OpsArgs, serve, serve_ops, telemetry};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::net::TcpListener;

/// Access server of Fast Sandbox: sandboxes' logs through the Kubernetes
/// API, for users RBAC allows.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    tls: ServingArgs,
    /// HTTPS address kube-apiserver calls.
    #[arg(long, env = "FAST_SANDBOX_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Namespace agent pods run in.
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_NAMESPACE",
        default_value = "fast-sandbox-system"
    )]
    agent_namespace: String,
    /// Client certificate presented to agents (PEM); its name must be one
    /// agents accept.
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_CLIENT_CERT",
        default_value = "/etc/fast-sandbox/client/tls.crt"
    )]
    agent_client_cert: PathBuf,
    /// Key of that certificate (PEM).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_CLIENT_KEY",
        default_value = "/etc/fast-sandbox/client/tls.key"
    )]
    agent_client_key: PathBuf,
    /// CA of the agents' serving certificates (PEM).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_CA",
        default_value = "/etc/fast-sandbox/client/ca.crt"
    )]
    agent_ca: PathBuf,
    /// Port of the agents' API.
    #[arg(long, env = "FAST_SANDBOX_AGENT_PORT", default_value_t = fast_sandbox_api::agent::DEFAULT_PORT)]
    agent_port: u16,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.ops.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (in-cluster config or KUBECONFIG)")?;
    let ops = Ops::default();
    let metrics = Metrics::register(&ops.registry);
    let undecodable = Undecodable::register(&ops.registry);

    let trust = ClusterTrust::new();
    tokio::spawn(cluster_trust::run(client.clone(), trust.clone()));

    let agent_tls = ClientTls {
        cert: args.agent_client_cert,
        key: args.agent_client_key,
        ca: args.agent_ca,
    };
    agent_tls
        .config()
        .context("loading the agent client certificate")?;

    let (sandboxes, sb_writer) = reflector::store::<Sandbox>();
    let sb_watch = decode::watch::<Sandbox>(
        client.clone(),
        None,
        watcher::Config::default(),
        undecodable.clone(),
    )
    .default_backoff()
    .reflect(sb_writer)
    .for_each(|_| futures::future::ready(()));
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_watch = decode::watch::<Pod>(
        client.clone(),
        Some(&args.agent_namespace),
        watcher::Config::default().labels(&format!("{LABEL_ROLE}={ROLE_AGENT}")),
        undecodable,
    )
    .default_backoff()
    .reflect(pod_writer)
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(sb_watch);
    tokio::spawn(pod_watch);
    {
        let (health, trust, sandboxes, pods) = (
            ops.health.clone(),
            trust.clone(),
            sandboxes.clone(),
            pods.clone(),
        );
        tokio::spawn(async move {
            trust.loaded().await;
            let _ = sandboxes.wait_until_ready().await;
            let _ = pods.wait_until_ready().await;
            tracing::info!("front-proxy trust loaded and caches synced; ready");
            health.set_ready(true);
        });
    }

    let resolver = Arc::new(Resolver::new(
        client.clone(),
        sandboxes,
        pods,
        args.agent_namespace.clone(),
        agent_tls,
        args.agent_port,
    ));
    let gateway = Gateway::new(
        trust.clone(),
        Arc::new(Authorizer::new(client)),
        resolver,
        metrics,
    );
    let tls = ServerTls {
        cert: args.tls.tls_cert,
        key: args.tls.tls_key,
        client_ca: None,
    }
    .build_with_client_ca(trust.front_proxy_ca.clone())
    .context("loading the serving certificate")?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ops_listener = TcpListener::bind(args.ops.ops_listen)
        .await
        .with_context(|| format!("binding {}", args.ops.ops_listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
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
    tracing::info!(listen = %args.listen, ops = %args.ops.ops_listen, "serving the access API");
    serve(
        listener,
        Some(tls),
        ops,
        Arc::new(gateway),
        stopped(stop_rx),
    )
    .await;
    Ok(())
}
