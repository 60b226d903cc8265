//! `fast-sandbox-controller`: keeps SandboxPools' agent pods warm and runs
//! bound Sandboxes on their agents. Leader-elected; see the library docs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fast_sandbox_agent_client::ClientTls;
use fast_sandbox_controller::agent_pod::AgentPodSettings;
use fast_sandbox_controller::context::Settings;
use fast_sandbox_controller::leader::{Elector, Timing};
use fast_sandbox_controller::metrics::Metrics;
use fast_sandbox_controller::term::Components;
use fast_sandbox_k8s::decode::Undecodable;
use fast_sandbox_k8s::policy::SharedPolicy;
use fast_sandbox_server::{Ops, OpsArgs, telemetry};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// Pool and sandbox controller of Fast Sandbox.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    ops: OpsArgs,
    /// Namespace the controller runs in: home of its Lease and of the
    /// policy ConfigMap.
    #[arg(long, env = "POD_NAMESPACE", default_value = "fast-sandbox-system")]
    namespace: String,
    /// Namespace agent pods run in (privileged: only the operator may use
    /// it); the controller's own namespace when unset.
    #[arg(long, env = "FAST_SANDBOX_AGENT_NAMESPACE")]
    agent_namespace: Option<String>,
    /// Service account of agent pods (they need no API access).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_SERVICE_ACCOUNT",
        default_value = "fast-sandbox-agent"
    )]
    agent_service_account: String,
    /// Scheduler of agent pods, e.g. a second profile that calls the
    /// extender (deploy/scheduler/second-profile.yaml); the default when
    /// unset.
    #[arg(long, env = "FAST_SANDBOX_AGENT_SCHEDULER_NAME")]
    agent_scheduler_name: Option<String>,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace's pools and sandboxes; all namespaces when
    /// unset.
    #[arg(long, env = "FAST_SANDBOX_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "FAST_SANDBOX_LEASE_NAME",
        default_value = "fast-sandbox-controller"
    )]
    lease_name: String,
    /// Host path of containerd's socket, mounted into every agent pod.
    #[arg(
        long,
        env = "FAST_SANDBOX_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: String,
    /// Host path of the agents' state directory, mounted into every agent pod.
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_STATE_DIR",
        default_value = "/var/lib/fast-sandbox/agents"
    )]
    agent_state_dir: String,
    /// containerd namespace the agents run sandboxes in.
    #[arg(
        long,
        env = "FAST_SANDBOX_CONTAINERD_NAMESPACE",
        default_value = "k8s.io"
    )]
    containerd_namespace: String,
    /// Client certificate presented to agents (PEM).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_CLIENT_CERT",
        default_value = "/etc/fast-sandbox/client/tls.crt"
    )]
    agent_client_cert: PathBuf,
    /// Key of the client certificate (PEM).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_CLIENT_KEY",
        default_value = "/etc/fast-sandbox/client/tls.key"
    )]
    agent_client_key: PathBuf,
    /// CA that signed the agents' serving certificates (PEM).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_CA",
        default_value = "/etc/fast-sandbox/client/ca.crt"
    )]
    agent_ca: PathBuf,
    /// Port of the agents' HTTPS API.
    #[arg(long, env = "FAST_SANDBOX_AGENT_PORT", default_value_t = fast_sandbox_api::agent::DEFAULT_PORT)]
    agent_port: u16,
    /// How long an agent may be gone or unreachable before its sandboxes
    /// become Lost (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "FAST_SANDBOX_AGENT_LOST_GRACE", default_value = "30s", value_parser = parse_duration)]
    agent_lost_grace: Duration,
    /// How long an agent stays marked draining before it is deleted if still
    /// empty, so admission stops choosing it first.
    #[arg(long, env = "FAST_SANDBOX_DRAIN_SETTLE", default_value = "2s", value_parser = parse_duration)]
    drain_settle: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {s}; use ms, s or m")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.ops.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = Client::try_default()
        .await
        .context("building the Kubernetes client")?;
    let ops = Ops::default();
    let metrics = Metrics::register(&ops.registry);
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("controller-{}", std::process::id()))
    });

    let listener = tokio::net::TcpListener::bind(args.ops.ops_listen)
        .await
        .with_context(|| format!("binding {}", args.ops.ops_listen))?;
    tokio::spawn(fast_sandbox_server::serve_ops(
        listener,
        ops.clone(),
        std::future::pending(),
    ));

    let tls = ClientTls {
        cert: args.agent_client_cert,
        key: args.agent_client_key,
        ca: args.agent_ca,
    };
    tls.config()
        .context("loading the agent client certificate")?;

    let policy = SharedPolicy::register(&ops.registry);
    let (policy_changes, _) = tokio::sync::watch::channel(());
    tokio::spawn(fast_sandbox_k8s::policy::run(
        client.clone(),
        args.namespace.clone(),
        policy.clone(),
        {
            let tx = policy_changes.clone();
            move || tx.send_replace(())
        },
    ));
    let components = Components {
        client: client.clone(),
        settings: Settings {
            namespace: args.namespace.clone(),
            watch_namespace: args.watch_namespace.clone(),
            agent_lost_grace: args.agent_lost_grace,
            drain_settle: args.drain_settle,
            agent_pod: AgentPodSettings {
                namespace: args
                    .agent_namespace
                    .clone()
                    .unwrap_or_else(|| args.namespace.clone()),
                containerd_socket: args.containerd_socket,
                state_dir: args.agent_state_dir,
                containerd_namespace: args.containerd_namespace,
                service_account: args.agent_service_account,
                scheduler_name: args.agent_scheduler_name,
            },
        },
        tls,
        agent_port: args.agent_port,
        metrics,
        health: ops.health.clone(),
        identity: identity.clone(),
        policy,
        policy_changes,
        undecodable: Undecodable::register(&ops.registry),
    };
    let elector = Elector::new(
        Api::<Lease>::namespaced(client, &args.namespace),
        args.lease_name,
        identity.clone(),
        Timing::default(),
    );
    tracing::info!(%identity, namespace = %args.namespace, "starting controller");
    fast_sandbox_controller::run(components, elector, fast_sandbox_server::shutdown::signal())
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn args_parse_with_defaults() {
        let a = Args::try_parse_from(["fast-sandbox-controller"]).unwrap();
        assert_eq!(a.agent_lost_grace, Duration::from_secs(30));
        assert_eq!(a.containerd_socket, "/run/containerd/containerd.sock");
    }
}
