//! `fast-sandbox-agent`: runs in every agent pod, starts sandboxes in the
//! node's containerd and serves them over mutual-TLS HTTPS, and their logs
//! read-only over plain HTTP on the pod's loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fast_sandbox_agent::api::Api;
use fast_sandbox_agent::egress::EgressConfig;
use fast_sandbox_agent::metrics::Metrics;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_agent::userns::IdRange;
use fast_sandbox_agent::{Agent, Config, cgroup};
use fast_sandbox_api::network::Ipv4Cidr;
use fast_sandbox_server::client_auth::AllowedNames;
use fast_sandbox_server::tls::ServerTls;
use fast_sandbox_server::{Ops, OpsArgs, Registry, telemetry};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Starts sandboxes as containers in the node's containerd.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the HTTPS API (mutual TLS).
    #[arg(
        long,
        env = "FAST_SANDBOX_AGENT_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    tls: fast_sandbox_server::tls::ServingArgs,
    /// CA that client certificates must chain to (the Fast Sandbox CA).
    #[arg(
        long,
        env = "FAST_SANDBOX_CLIENT_CA",
        default_value = "/etc/fast-sandbox/tls/ca.crt"
    )]
    client_ca: PathBuf,
    /// Common names of the client certificates served (comma separated):
    /// the controller and the access server. A certificate of the CA with
    /// any other name is refused.
    #[arg(
        long,
        env = "FAST_SANDBOX_ALLOWED_CLIENTS",
        value_delimiter = ',',
        default_value = "fast-sandbox-controller,fast-sandbox-gateway"
    )]
    allowed_clients: Vec<String>,
    /// containerd socket.
    #[arg(
        long,
        env = "CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: PathBuf,
    /// containerd namespace; `k8s.io` shares the kubelet's image cache.
    #[arg(
        long,
        env = "FAST_SANDBOX_CONTAINERD_NAMESPACE",
        default_value = "k8s.io"
    )]
    namespace: String,
    /// Snapshotter the node's images are unpacked for.
    #[arg(long, env = "FAST_SANDBOX_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    /// containerd runtime (shim) of sandboxes: `io.containerd.runsc.v1` for
    /// gVisor. Pre-started sandboxes are runc's only.
    #[arg(
        long,
        env = "FAST_SANDBOX_RUNTIME",
        default_value = fast_sandbox_api::pool::RUNC_RUNTIME
    )]
    runtime: String,
    /// Name of the agent pod (downward API).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    /// UID of the agent pod (downward API); labels every container.
    #[arg(long, env = "POD_UID")]
    pod_uid: String,
    /// Node name (downward API).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// Sandboxes this agent holds at most.
    #[arg(long, env = "SLOTS", default_value_t = 10)]
    slots: u32,
    /// Host directory shared by agents (same path inside the pod); this
    /// agent uses the subdirectory named by its pod UID.
    #[arg(
        long,
        env = "FAST_SANDBOX_STATE_DIR",
        default_value = "/var/lib/fast-sandbox/agents"
    )]
    state_dir: PathBuf,
    /// cgroup path sandboxes nest under; default: the agent pod's cgroup
    /// (so sandboxes survive a restart of the agent container).
    #[arg(long, env = "FAST_SANDBOX_CGROUP_PARENT")]
    cgroup_parent: Option<String>,
    /// Run all sandboxes of this agent in one runc shim process: about
    /// 4 MiB less memory per sandbox and cheaper cold creates, but that one
    /// shim reaps every exit of the agent's sandboxes and of the runc
    /// processes it runs, one at a time, so deleting tens of sandboxes at
    /// once takes minutes. Off: a shim per sandbox.
    #[arg(long, env = "FAST_SANDBOX_SHIM_GROUP", default_value_t = false, action = clap::ArgAction::Set)]
    shim_group: bool,
    /// Snapshots kept prepared per hot image (0 disables).
    #[arg(long, env = "FAST_SANDBOX_WARM_SNAPSHOTS", default_value_t = 2)]
    warm_snapshots: usize,
    /// Images that get prepared snapshots (most recently used first).
    #[arg(long, env = "FAST_SANDBOX_WARM_IMAGES", default_value_t = 4)]
    warm_images: usize,
    /// The host's /proc as mounted in the agent pod: sandboxes' network
    /// namespaces are reached through it to forward exposed ports.
    #[arg(long, env = "FAST_SANDBOX_HOST_PROC", default_value = "/proc")]
    host_proc: PathBuf,
    /// Address of the agent pod (downward API `status.podIP`): exposed ports
    /// are forwarded from ephemeral ports on it; loopback when unset.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// Largest file upload or tar extraction into a sandbox, in bytes; larger
    /// ones are refused with 413.
    #[arg(long, env = "FAST_SANDBOX_MAX_UPLOAD_BYTES", default_value_t = fast_sandbox_agent::agent::DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Pre-started sandboxes kept per warm image (0 disables): containers
    /// whose task runs already, so a create claims one in a few
    /// milliseconds. Each costs about 1.6 MiB of node memory while it waits
    /// (see the README).
    #[arg(long, env = "FAST_SANDBOX_STOCK_SIZE", default_value_t = fast_sandbox_agent::agent::DEFAULT_STOCK_SIZE)]
    stock_size: usize,
    /// Images always kept pre-started (comma separated; the pool's
    /// `warmImages`), besides the most recently used ones (--warm-images).
    #[arg(long, env = "FAST_SANDBOX_STOCK_IMAGES", value_delimiter = ',')]
    stock_images: Vec<String>,
    /// Cap in bytes of the writable layer of every pre-started sandbox
    /// (the pool's `sandboxDefaults.ephemeralStorage`): only creates asking
    /// for this cap claim one; without it, only creates asking for none.
    #[arg(long, env = "FAST_SANDBOX_STOCK_EPHEMERAL_STORAGE")]
    stock_ephemeral_storage: Option<u64>,
    /// The host's cgroup filesystem as mounted in the agent pod: a claim
    /// writes the sandbox's limits to its cgroup there.
    #[arg(
        long,
        env = "FAST_SANDBOX_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup"
    )]
    cgroup_root: PathBuf,
    /// Bytes each output (stdout, stderr) of a sandbox keeps on the node's
    /// disk; past it the oldest half is dropped (checked every second).
    /// 0 disables the cap.
    #[arg(long, env = "FAST_SANDBOX_LOG_MAX_BYTES", default_value_t = fast_sandbox_agent::logs::DEFAULT_LOG_MAX_BYTES, value_parser = log_cap)]
    log_max_bytes: u64,
    /// Give sandboxes that ask for `network.mode: Egress` a link into this
    /// pod's network namespace, NATed to the pod's address. Only inside a
    /// pod of its own: it turns forwarding on and installs an nftables
    /// table in the agent's network namespace.
    #[arg(long, env = "FAST_SANDBOX_EGRESS", default_value_t = false, action = clap::ArgAction::Set)]
    egress: bool,
    /// IPv4 CIDRs no sandbox reaches with egress (the cluster's pod,
    /// service and node ranges), comma-separated; link-local, loopback and
    /// multicast are always denied.
    #[arg(long, env = "FAST_SANDBOX_EGRESS_DENY", value_delimiter = ',')]
    egress_deny: Vec<Ipv4Cidr>,
    /// The node's IP (the downward API's `status.hostIP`): no egress
    /// sandbox reaches its own node, whatever the operator's ranges say.
    #[arg(long, env = "HOST_IP")]
    host_ip: Option<std::net::IpAddr>,
    /// The nftables program egress uses.
    #[arg(long, env = "FAST_SANDBOX_NFT", default_value = "nft")]
    nft: PathBuf,
    /// Run every sandbox in a user namespace of its own, its uid 0 an
    /// unprivileged host uid (needs containerd 2's overlayfs snapshotter on
    /// a kernel with idmapped overlay layers; elsewhere creates fail as
    /// RuntimeUnavailable). gVisor sandboxes are not mapped.
    #[arg(long, env = "FAST_SANDBOX_USER_NAMESPACES", default_value_t = false, action = clap::ArgAction::Set)]
    user_namespaces: bool,
    /// Host ids user namespaces are carved from, FIRST:SLOTS: slot n maps
    /// the sandbox's ids 0..65535 to FIRST + n*65536 onwards. Every agent of
    /// a node must use the same range; keep it apart from the kubelet's.
    #[arg(long, env = "FAST_SANDBOX_USERNS_RANGE", default_value = "2147483648:16384", value_parser = IdRange::parse)]
    userns_range: IdRange,
    /// Seconds between SIGTERM and SIGKILL when a delete names no grace period.
    #[arg(long, env = "FAST_SANDBOX_GRACE_SECONDS", default_value_t = 10)]
    grace_seconds: u64,
    #[command(flatten)]
    ops: OpsArgs,
}

/// Every exec, log follow and file transfer holds descriptors: take the
/// hard limit rather than the soft one a runtime may leave at 1024, so one
/// tenant's burst of them does not fail everyone's with EMFILE.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

async fn shutdown_signal(tx: watch::Sender<bool>) {
    fast_sandbox_server::shutdown::signal().await;
    tracing::info!("sandboxes keep running");
    tx.send_replace(true);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.ops.log_format);
    raise_open_files_limit();
    let cgroup_parent = match args.cgroup_parent {
        Some(p) => p,
        None => {
            let text = std::fs::read_to_string("/proc/self/cgroup")
                .context("reading /proc/self/cgroup")?;
            let own = cgroup::own_cgroup(&text).context("no cgroup in /proc/self/cgroup")?;
            cgroup::pod_cgroup(&own)
        }
    };
    let registry = Registry::default();
    let ops = Ops {
        health: Default::default(),
        registry: registry.clone(),
    };
    let metrics = Metrics::register(&registry);
    let cd = Containerd::connect(
        &args.containerd_socket,
        &args.namespace,
        &args.snapshotter,
        &args.runtime,
    )
    .await
    .context("connecting to containerd")?;
    let cfg = Config {
        pod_name: args.pod_name,
        state_dir: args.state_dir.join(&args.pod_uid),
        pod_uid: args.pod_uid,
        node_name: args.node_name,
        slots: args.slots,
        cgroup_parent,
        shim_group: args.shim_group,
        warm_snapshots: args.warm_snapshots,
        warm_images: args.warm_images,
        default_grace: Duration::from_secs(args.grace_seconds),
        proc_root: args.host_proc,
        advertise: args.pod_ip,
        max_upload_bytes: args.max_upload_bytes,
        stock_size: args.stock_size,
        stock_layer_cap: args.stock_ephemeral_storage,
        stock_images: args
            .stock_images
            .into_iter()
            .filter(|i| !i.is_empty())
            .collect(),
        cgroup_root: args.cgroup_root,
        log_max_bytes: args.log_max_bytes,
        egress: args.egress.then(|| EgressConfig {
            nft: args.nft,
            denied: args
                .egress_deny
                .into_iter()
                .chain(args.host_ip.and_then(|ip| match ip {
                    std::net::IpAddr::V4(v4) => Some(Ipv4Cidr::containing(v4, 32)),
                    std::net::IpAddr::V6(_) => None,
                }))
                .collect(),
            resolv_conf: "/etc/resolv.conf".into(),
            sysctl_net: "/proc/sys/net".into(),
        }),
        // gVisor's sandbox is its own kernel: its shim maps no ids.
        user_namespaces: (args.user_namespaces
            && args.runtime != fast_sandbox_api::pool::GVISOR_RUNTIME)
            .then_some(args.userns_range),
    };
    if args.runtime == fast_sandbox_api::pool::GVISOR_RUNTIME
        && !fast_sandbox_agent::runtime::may_lower_oom_score(
            &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        )
    {
        tracing::warn!(
            "this node's root lacks CAP_SYS_RESOURCE, which gVisor's shim needs to start: sandboxes will fail as RuntimeUnavailable"
        );
    }
    tracing::info!(?cfg, "starting agent");
    let agent = Agent::new(cfg, cd, metrics.clone(), ops.health.clone())
        .await
        .context("creating the agent")?;
    let tls = ServerTls {
        cert: args.tls.tls_cert,
        key: args.tls.tls_key,
        client_ca: Some(args.client_ca),
    }
    .build()
    .context("loading TLS material")?;

    let (tx, rx) = watch::channel(false);
    let events = tokio::spawn(agent.clone().run_events(rx.clone()));
    let api_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ops_listener = TcpListener::bind(args.ops.ops_listen)
        .await
        .with_context(|| format!("binding {}", args.ops.ops_listen))?;
    let done = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api = fast_sandbox_server::serve(
        api_listener,
        Some(tls),
        ops.clone(),
        Arc::new(Api::new(
            agent.clone(),
            metrics.clone(),
            Some(AllowedNames::new(args.allowed_clients)),
        )),
        done(rx.clone()),
    );
    let ops_server = fast_sandbox_server::serve_ops(ops_listener, ops, done(rx.clone()));
    tokio::spawn(shutdown_signal(tx));
    tokio::join!(api, ops_server);
    events.abort();
    agent.release_warm().await;
    Ok(())
}

/// `--log-max-bytes`: 0, or at least two units of what is dropped at once.
fn log_cap(s: &str) -> Result<u64, String> {
    let n: u64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let min = 2 * fast_sandbox_agent::logs::LOG_CAP_UNIT;
    if n != 0 && n < min {
        return Err(format!("must be 0 (no cap) or at least {min}"));
    }
    Ok(n)
}
