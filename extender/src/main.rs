//! `fast-sandbox-extender`: the kube-scheduler extender of Fast Sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fast_sandbox_extender::metrics::Metrics;
use fast_sandbox_extender::routes::Routes;
use fast_sandbox_extender::{Extender, Index, ScoringConfig, watch};
use fast_sandbox_k8s::cluster_trust::ClientAuthArgs;
use fast_sandbox_k8s::decode::Undecodable;
use fast_sandbox_server::tls::ServerTls;
use fast_sandbox_server::{Ops, OpsArgs, serve, serve_ops, telemetry};
use tokio::net::TcpListener;

/// Scheduler extender that places agent pods on nodes holding their pool's
/// images. Kubernetes credentials come from KUBECONFIG or the in-cluster
/// service account.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address kube-scheduler calls (`/filter`, `/prioritize`).
    #[arg(
        long,
        env = "FAST_SANDBOX_EXTENDER_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,
    /// PEM serving certificate; without it (and --tls-key) the extender
    /// speaks plain HTTP. Re-read when the file changes.
    #[arg(long, env = "FAST_SANDBOX_EXTENDER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "FAST_SANDBOX_EXTENDER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Share (0 to 1) of an agent pod's score given to spreading the pool's
    /// agents over nodes; the rest rewards nodes holding the pool's images.
    #[arg(
        long,
        env = "FAST_SANDBOX_EXTENDER_SPREAD_WEIGHT",
        default_value_t = 0.3
    )]
    spread_weight: f64,
    /// Seconds after which an image a sandbox used counts half as much.
    #[arg(
        long,
        env = "FAST_SANDBOX_EXTENDER_RECENT_HALF_LIFE_SECS",
        default_value_t = 1800
    )]
    recent_half_life_secs: u64,
    /// Rule out nodes that lack an image the agent pod never pulls
    /// (`imagePullPolicy: Never`), judged from `Node.status.images`.
    #[arg(
        long,
        env = "FAST_SANDBOX_EXTENDER_FILTER_MISSING_IMAGES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    filter_missing_images: bool,
    /// Namespace agent pods run in (the operator's).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_NAMESPACE",
        default_value = "fast-sandbox-system"
    )]
    agent_namespace: String,
    #[command(flatten)]
    client_auth: ClientAuthArgs,
    #[command(flatten)]
    ops: OpsArgs,
}

/// The scheduler's client certificate name (its kubeconfig identity, which
/// the local cluster also hands to the extender stanza's tlsConfig).
const SCHEDULER_CLIENT: &str = "system:kube-scheduler";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.ops.log_format);

    let ops = Ops::default();
    let index = Arc::new(
        Index::new(ScoringConfig {
            spread_weight: args.spread_weight,
            recent_half_life: Duration::from_secs(args.recent_half_life_secs),
        })
        .with_never_pulled_check(args.filter_missing_images),
    );
    let extender = Extender::new(index.clone(), Some(Metrics::register(&ops.registry)));

    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (KUBECONFIG or in-cluster)")?;
    let auth = args
        .client_auth
        .setup(&client, &[SCHEDULER_CLIENT])
        .context("setting up client authentication")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let serving = ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            };
            Some(
                match &auth.verifier {
                    Some(ca) => serving.build_with_client_ca(ca.clone()),
                    None => serving.build(),
                }
                .context("loading the serving certificate")?,
            )
        }
        _ => None,
    };
    let callers = if tls.is_some() {
        auth.names.clone()
    } else {
        None
    };
    if callers.is_none() {
        tracing::warn!(
            "scheduler calls are not authenticated (no TLS or --client-auth=none); restrict the port with the NetworkPolicy in deploy/"
        );
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ops_listener = TcpListener::bind(args.ops.ops_listen)
        .await
        .with_context(|| format!("binding {}", args.ops.ops_listen))?;
    tracing::info!(listen = %args.listen, tls = tls.is_some(), ops = %args.ops.ops_listen, "serving");

    let health = fast_sandbox_server::Health::new();
    let watches = tokio::spawn(watch::run(
        client,
        index,
        health.clone(),
        watch::Scope {
            agent_namespace: args.agent_namespace.clone(),
            undecodable: Undecodable::register(&ops.registry),
        },
    ));
    {
        // Ready once every watch listed and the callers can be verified.
        let (auth, ready) = (auth.clone(), ops.health.clone());
        tokio::spawn(async move {
            auth.loaded().await;
            while !health.is_ready() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ready.set_ready(true);
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::join!(
        serve(
            listener,
            tls,
            ops.clone(),
            Arc::new(Routes::new(extender, callers)),
            wait(stop_rx.clone()),
        ),
        serve_ops(ops_listener, ops.clone(), wait(stop_rx)),
        async {
            fast_sandbox_server::shutdown::signal_then_leave_service(&ops.health).await;
            let _ = stop_tx.send(true);
        },
    );
    watches.abort();
    Ok(())
}
