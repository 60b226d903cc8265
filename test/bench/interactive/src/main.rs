//! Using a running sandbox, as a user does, against what users compare it
//! with, in one run on one node:
//!
//! - exec round trips of `/bin/true`: the Sandbox `exec` subresource and a
//!   plain Pod's `pods/exec`, both from one in-process client (what the SDK
//!   and `kubectl sandbox` use), `kubectl sandbox exec` and `kubectl exec`
//!   as processes, and `ctr task exec` into the sandbox's own container on
//!   the node's containerd (the floor);
//! - file copies of 1 MiB and 100 MiB, both ways: the `files` subresource
//!   against `kubectl cp` into the Pod.
//!
//! Run against the local cluster with Fast Sandbox deployed:
//! `eval "$(test/cluster/cluster.sh env)"; cargo run --release -p fast-sandbox-bench-interactive`

mod copy;
mod exec;
mod setup;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fast_sandbox_bench_report::{Series, markdown};
use kube::Client;

/// Compares exec round trips and file copies of a Sandbox with a Pod's.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Exec round trips per series through an in-process client.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Exec round trips per series through a CLI process (each spawns one).
    #[arg(long, default_value_t = 40)]
    cli_runs: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// File sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    sizes: Vec<usize>,
    /// Repetitions of each copy (the best counts, so one hiccup does not decide).
    #[arg(long, default_value_t = 3)]
    copies: usize,
    /// Image the sandbox and the Pod run (present on the nodes; needs `tar`
    /// for `kubectl cp`).
    #[arg(long, default_value = "docker.io/fast-sandbox/busybox:dev")]
    image: String,
    /// Agent image of the benchmark's pool.
    #[arg(long, default_value = "fast-sandbox/agent:dev")]
    agent_image: String,
    /// Every node's containerd socket as `node=socket,...`, for `ctr task
    /// exec` (as `test/cluster/cluster.sh env` exports it).
    #[arg(long, env = "FAST_SANDBOX_NODE_CONTAINERD", default_value = "")]
    node_containerd: String,
    /// The containerd socket when no node is listed above.
    #[arg(
        long,
        env = "FAST_SANDBOX_CONTAINERD_SOCK",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: PathBuf,
    /// `kubectl`.
    #[arg(long, default_value = "kubectl")]
    kubectl: PathBuf,
    /// The `kubectl-sandbox` plugin; by default the one built beside this
    /// benchmark.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Where results go.
    #[arg(long, default_value = "target/bench-interactive")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::try_default()
        .await
        .context("no cluster: set KUBECONFIG")?;
    let target = setup::Target::create(&client, &args).await?;
    let result = bench(&args, &client, &target).await;
    target.remove(&client).await;
    result
}

async fn bench(args: &Args, client: &Client, t: &setup::Target) -> anyhow::Result<()> {
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kubectl-sandbox"),
    };
    let ctr = t.ctr(args);
    let mut api = Vec::new();
    let mut cli = Vec::new();
    for &c in &args.concurrency {
        eprintln!("exec through the API at concurrency {c}");
        let s = exec::sandbox_series(client, t, args.runs, c).await?;
        api.push(Series::new("Sandbox exec (API)", c, &s));
        let p = exec::pod_series(client, t, args.runs, c).await?;
        api.push(Series::new("pods/exec (API)", c, &p));
        let runs = args.runs;
        let container = t.container_id.clone();
        let ctr = ctr.clone();
        let d =
            tokio::task::spawn_blocking(move || ctr.exec_series(&container, runs, 2, c)).await??;
        api.push(Series::new("ctr task exec", c, &d));

        eprintln!("exec through the CLIs at concurrency {c}");
        let mut sandbox_cli = std::process::Command::new(&plugin);
        sandbox_cli.args([
            "exec",
            "-n",
            &t.namespace,
            setup::SANDBOX,
            "--",
            "/bin/true",
        ]);
        let s = exec::process_series(sandbox_cli, args.cli_runs, c).await?;
        cli.push(Series::new("kubectl sandbox exec", c, &s));
        let mut kubectl = std::process::Command::new(&args.kubectl);
        kubectl.args(["exec", "-n", &t.namespace, setup::POD, "--", "/bin/true"]);
        let k = exec::process_series(kubectl, args.cli_runs, c).await?;
        cli.push(Series::new("kubectl exec", c, &k));
    }
    eprintln!("file copies");
    let copies = copy::compare(client, t, args, &plugin).await?;

    std::fs::create_dir_all(&args.out)?;
    let mut report = String::from("### Exec round trip of /bin/true, in-process client\n\n");
    report.push_str(&markdown(&api, "pods/exec (API)"));
    report.push_str("\n### Exec round trip of /bin/true, one CLI process each\n\n");
    report.push_str(&markdown(&cli, "kubectl exec"));
    report.push_str("\n### File copies (best of ");
    report.push_str(&args.copies.to_string());
    report.push_str(")\n\n");
    report.push_str(&copy::table(&copies));
    std::fs::write(args.out.join("results.md"), &report)?;
    let json = serde_json::json!({"exec_api": api, "exec_cli": cli, "copies": copies});
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{report}");
    println!("wrote {}", args.out.display());
    Ok(())
}
