//! End-to-end create→Running latency on a real cluster, as a user sees it:
//! the time from the create call to the watch event that shows the object
//! running. Three series in the same run, on the same node and containerd:
//! Sandboxes through Fast Sandbox, plain Pods of the same image, and
//! `ctr run -d` (the naive floor). Writes JSON, a Markdown table and an SVG
//! plot of the distributions, and for each Sandbox series where its time
//! went, stage by stage (the create call, then the components' own
//! histograms; see `stages`) and which path the agents' creates took
//! (claimed or cold). Each series also reports the time from its first
//! create to its last Running (a burst's makespan), and a last series
//! creates sandboxes back to back for `--sustained-secs`, deleting each
//! once it runs, for the sustained rate. Sandbox series start once the
//! pool's stocks of pre-started sandboxes are full. The sandboxes run a
//! plain `sleep`, which ignores SIGTERM as PID 1, with a termination grace
//! period of 0, so a deleted one frees its slot at once.
//!
//! Run against the local cluster with Fast Sandbox deployed:
//! `eval "$(test/cluster/cluster.sh env)"; cargo run --release -p fast-sandbox-bench-e2e`

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fast_sandbox_api::pool::DEFAULT_PRESTARTED;
use fast_sandbox_api::{Sandbox, SandboxPhase, SandboxPool};
use fast_sandbox_bench_report::{Series, ctr::Ctr, markdown, plot};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::oneshot;

mod stages;

/// Compares Sandbox, plain Pod and `ctr run -d` start latency.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Sandboxes per concurrency level.
    #[arg(long, default_value_t = 200)]
    sandboxes: usize,
    /// Plain Pods per concurrency level (each takes about a second).
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// `ctr run -d` runs per concurrency level.
    #[arg(long, default_value_t = 100)]
    ctr_runs: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// Image all three run (present on the node).
    #[arg(long, default_value = "docker.io/fast-sandbox/busybox:dev")]
    image: String,
    /// Agent image of the benchmark's pool.
    #[arg(long, default_value = "fast-sandbox/agent:dev")]
    agent_image: String,
    /// The node's containerd socket, for the `ctr run -d` baseline.
    #[arg(
        long,
        env = "FAST_SANDBOX_CONTAINERD_SOCK",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: PathBuf,
    /// Pre-started sandboxes per warm image of the benchmark's pool
    /// (`spec.prestarted`; 0 measures the cold path). Unset: the default.
    #[arg(long)]
    prestarted: Option<i32>,
    /// Also create sandboxes back to back for this many seconds at the
    /// highest concurrency, each deleted once Running, and report the
    /// sustained rate (0: skip).
    #[arg(long, default_value_t = 30)]
    sustained_secs: u64,
    /// Where results go.
    #[arg(long, default_value = "target/bench-e2e")]
    out: PathBuf,
}

/// Waiters for the first Running event of each object, fed by one watch.
#[derive(Clone, Default)]
struct Arrivals {
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>,
}

impl Arrivals {
    fn expect(&self, name: &str) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), tx);
        rx
    }

    fn arrived(&self, name: &str) {
        let now = Instant::now();
        if let Some(tx) = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        {
            let _ = tx.send(now);
        }
    }
}

/// Feeds `arrivals` from a watch on `api`, calling `running` on each object.
fn follow<K>(
    api: Api<K>,
    arrivals: Arrivals,
    running: fn(&K) -> bool,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev
                && running(&o)
            {
                arrivals.arrived(&o.meta().name.clone().unwrap_or_default());
            }
        }
    })
}

fn sandbox_running(s: &Sandbox) -> bool {
    s.phase() == SandboxPhase::Running
}

fn pod_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// One series' creates: each one's create call and create→Running, and
/// the time from the first create to the last Running.
struct Timed {
    samples: Vec<(Duration, Duration)>,
    makespan: Duration,
}

/// The names of a series of `n` objects.
fn series_names(prefix: &str, n: usize) -> impl Iterator<Item = String> + use<> {
    let prefix = prefix.to_string();
    (0..n).map(move |i| format!("{prefix}-{i}"))
}

/// Sandboxes created back to back for `secs` with `concurrency` in flight,
/// each deleted (in the background) as soon as it runs.
async fn sustained(
    api: &Api<Sandbox>,
    arrivals: &Arrivals,
    secs: u64,
    concurrency: usize,
    make: impl Fn(&str) -> Sandbox + Send + Sync + 'static,
) -> anyhow::Result<Timed> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let names = (0..)
        .take_while(move |_| Instant::now() < deadline)
        .map(|i| format!("sustained-{i}"));
    create_all(api, arrivals, names, concurrency, make, true).await
}

/// Creates an object per name with `concurrency` in flight and times each
/// from its create call to its Running event (and the create call alone:
/// the apiserver's write with admission). Unless `delete_running` deletes
/// each (grace 0, in the background) once it runs, they stay until
/// [`delete_series`], so that deletions never compete with the creations
/// being timed.
async fn create_all<K>(
    api: &Api<K>,
    arrivals: &Arrivals,
    names: impl Iterator<Item = String>,
    concurrency: usize,
    make: impl Fn(&str) -> K + Send + Sync + 'static,
    delete_running: bool,
) -> anyhow::Result<Timed>
where
    K: Resource
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let make = Arc::new(make);
    let first = Instant::now();
    let samples = futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            let arrivals = arrivals.clone();
            let make = make.clone();
            async move {
                let rx = arrivals.expect(&name);
                let start = Instant::now();
                api.create(&PostParams::default(), &make(&name))
                    .await
                    .with_context(|| format!("creating {name}"))?;
                let created = start.elapsed();
                let at = tokio::time::timeout(Duration::from_secs(120), rx)
                    .await
                    .with_context(|| format!("{name} not running after 120 s"))??;
                if delete_running {
                    tokio::spawn(async move {
                        let _ = api.delete(&name, &now()).await;
                    });
                }
                anyhow::Ok((created, at - start))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(Timed {
        samples,
        makespan: first.elapsed(),
    })
}

/// Delete at once, without a grace period.
fn now() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    }
}

/// Deletes the `n` objects [`run_series`] made under `prefix`.
async fn delete_series<K>(api: &Api<K>, prefix: &str, n: usize)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let deletes = (0..n).map(|i| {
        let api = api.clone();
        async move {
            let _ = api.delete(&format!("{prefix}-{i}"), &now()).await;
        }
    });
    futures::stream::iter(deletes)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Agents of the benchmark pool.
const AGENTS: i32 = 4;

/// Waits until the benchmark pool's agents hold `want` pre-started
/// sandboxes, so each series starts with full stocks as a pool that has
/// been idle a moment does.
async fn wait_stock(client: &Client, ns: &str, want: f64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ready = stages::stock_ready(client, ns, "bench").await?;
        if ready >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the pool's agents hold {ready} pre-started sandboxes after {timeout:?}, not {want}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the pool reports no slot in use (the previous series'
/// sandboxes are gone).
async fn wait_slots_free(pools: &Api<SandboxPool>, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = pools.get("bench").await?;
        if p.status.as_ref().is_some_and(|s| s.slots_used == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("sandboxes of the previous series still hold slots after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::try_default()
        .await
        .context("no cluster: set KUBECONFIG")?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_obj: Namespace =
        serde_json::from_value(json!({"metadata": {"generateName": "bench-e2e-"}}))?;
    let ns = namespaces
        .create(&PostParams::default(), &ns_obj)
        .await?
        .metadata
        .name
        .unwrap_or_default();
    eprintln!("namespace {ns}");
    let result = bench(&args, &client, &ns).await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    result
}

/// The Sandbox series' name: which path its creates took.
fn sandbox_series(args: &Args) -> &'static str {
    if args.prestarted == Some(0) {
        "sandbox, no pre-started"
    } else {
        "sandbox"
    }
}

async fn bench(args: &Args, client: &Client, ns: &str) -> anyhow::Result<()> {
    // Enough slots for a whole series, so no creation waits for capacity.
    // The sustained series holds its creates in flight and its deletes in
    // progress at once: 64 each leaves room for both.
    let slots = args.sandboxes.div_ceil(AGENTS as usize).max(64) as i32;
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), ns);
    let pool: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "metadata": {"name": "bench"},
        "spec": {"capacity": {"poolMin": AGENTS, "poolMax": AGENTS}, "maxSandboxesPerAgent": slots,
                 "warmImages": [args.image], "prestarted": args.prestarted,
                 "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": args.agent_image}]}}}
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let p = pools.get("bench").await?;
        if p.status.as_ref().is_some_and(|s| s.ready_agents >= 2) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "pool bench has no two ready agents after 180 s: {:?}",
                p.status
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let arrivals = Arrivals::default();
    let watches = [
        follow(sandboxes.clone(), arrivals.clone(), sandbox_running),
        follow(pods.clone(), arrivals.clone(), pod_running),
    ];
    let ctr = Ctr {
        socket: args.containerd_socket.clone(),
        namespace: "k8s.io".into(),
        image: args.image.clone(),
    };
    let sandbox = {
        let image = args.image.clone();
        move |name: &str| -> Sandbox {
            serde_json::from_value(json!({
                "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": name},
                "spec": {"image": image, "command": ["/bin/sleep", "3600"], "poolRef": "bench",
                         "terminationGracePeriodSeconds": 0}
            }))
            .unwrap_or_default()
        }
    };
    let stock = f64::from(AGENTS * args.prestarted.unwrap_or(DEFAULT_PRESTARTED));
    let mut results = Vec::new();
    let mut stage_tables = Vec::new();
    let mut stage_json = Vec::new();
    let mut makespans = Vec::new();
    for &c in &args.concurrency {
        wait_stock(client, ns, stock, Duration::from_secs(300)).await?;
        eprintln!("sandboxes: {} at concurrency {c}", args.sandboxes);
        let before = stages::snapshot(client).await?;
        let prefix = format!("sbx-c{c}");
        let names = series_names(&prefix, args.sandboxes);
        let s = create_all(&sandboxes, &arrivals, names, c, sandbox.clone(), false).await?;
        eprintln!("sandboxes: all Running after {:?}", s.makespan);
        let after = stages::snapshot(client).await?;
        delete_series(&sandboxes, &prefix, args.sandboxes).await;
        let calls: Vec<Duration> = s.samples.iter().map(|(call, _)| *call).collect();
        let totals: Vec<Duration> = s.samples.iter().map(|(_, total)| *total).collect();
        let call = Series::new("create call", c, &calls);
        let mut table = format!(
            "| client: the create call (apiserver write, webhook) | {} | {:.1} | {:.1} |\n",
            call.runs, call.p50_ms, call.p99_ms
        );
        let parts = stages::between(&before, &after);
        table = stages::table(
            &format!("Where a Sandbox's time went at concurrency {c} (the create call measured here; the rest from the components' histograms, as bucket bounds)"),
            &parts,
        )
        .replacen("|---|---:|---:|---:|\n", &format!("|---|---:|---:|---:|\n{table}"), 1);
        let paths = stages::paths_between(&before, &after);
        table.push_str(&format!(
            "\nCreates by path at the agents: {}.\n",
            paths
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        stage_tables.push(table);
        stage_json.push(
            json!({"concurrency": c, "create_call": call, "stages": parts, "create_paths": paths}),
        );
        results.push(Series::new(sandbox_series(args), c, &totals));
        makespans.push((sandbox_series(args), c, args.sandboxes, s.makespan));
        wait_slots_free(&pools, Duration::from_secs(120)).await?;

        let image = args.image.clone();
        eprintln!("plain pods: {} at concurrency {c}", args.pods);
        let prefix = format!("pod-c{c}");
        let names = series_names(&prefix, args.pods);
        let p = create_all(&pods, &arrivals, names, c, move |name| {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                    "name": "main", "image": image, "imagePullPolicy": "Never", "command": ["/bin/sleep", "3600"]}]}
            }))
            .unwrap_or_default()
        }, false)
        .await?;
        delete_series(&pods, &prefix, args.pods).await;
        let totals: Vec<Duration> = p.samples.iter().map(|(_, total)| *total).collect();
        results.push(Series::new("plain Pod", c, &totals));
        makespans.push(("plain Pod", c, args.pods, p.makespan));

        eprintln!("ctr run -d: {} at concurrency {c}", args.ctr_runs);
        let ctr = ctr.clone();
        let runs = args.ctr_runs;
        // Like the series above, nothing is removed until all run.
        let (d, makespan) = tokio::task::spawn_blocking(move || {
            ctr.series(2, 0, 1)?;
            ctr.burst(runs, c)
        })
        .await??;
        results.push(Series::new("ctr run -d", c, &d));
        makespans.push(("ctr run -d", c, runs, makespan));
    }
    let mut sustained_line = String::new();
    if let Some(&c) = args.concurrency.iter().max()
        && args.sustained_secs > 0
    {
        wait_slots_free(&pools, Duration::from_secs(120)).await?;
        wait_stock(client, ns, stock, Duration::from_secs(300)).await?;
        eprintln!(
            "sandboxes back to back for {} s at concurrency {c}",
            args.sustained_secs
        );
        let timed = sustained(&sandboxes, &arrivals, args.sustained_secs, c, sandbox).await?;
        let (d, took): (Vec<Duration>, Duration) = (
            timed.samples.iter().map(|(_, total)| *total).collect(),
            timed.makespan,
        );
        let series = Series::new("sandbox, sustained", c, &d);
        sustained_line = format!(
            "Back to back for {} s at concurrency {c}, each deleted once Running: {} sandboxes Running, {:.1}/s; create→Running p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms.\n",
            args.sustained_secs,
            series.runs,
            series.runs as f64 / took.as_secs_f64(),
            series.p50_ms,
            series.p95_ms,
            series.p99_ms
        );
        results.push(series);
    }
    for w in watches {
        w.abort();
    }

    std::fs::create_dir_all(&args.out)?;
    let mut table = markdown(&results, "ctr run -d");
    table.push('\n');
    for &c in &args.concurrency {
        let get = |n: &str| {
            results
                .iter()
                .find(|r| r.name == n && r.concurrency == c)
                .map(|r| r.p50_ms)
        };
        if let (Some(s), Some(p)) = (get(sandbox_series(args)), get("plain Pod")) {
            table.push_str(&format!("At concurrency {c}, a Sandbox reaches Running {:.1}x faster than a plain Pod at p50.\n", p / s));
        }
    }
    table.push('\n');
    table.push_str(&makespan_table(&makespans));
    table.push('\n');
    table.push_str(&sustained_line);
    for t in &stage_tables {
        table.push('\n');
        table.push_str(t);
    }
    std::fs::write(args.out.join("results.md"), &table)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json!({
            "series": results,
            "stages": stage_json,
            "all_running_ms": makespans.iter().map(|(name, c, n, d)| json!({
                "name": name, "concurrency": c, "creates": n, "ms": d.as_secs_f64() * 1000.0,
            })).collect::<Vec<_>>(),
        }))?,
    )?;
    std::fs::write(
        args.out.join("latency.svg"),
        plot::cdf_svg(
            "Create → Running on one node: Sandbox vs plain Pod vs ctr run -d",
            &results,
        ),
    )?;
    println!("{table}");
    println!("wrote {}", args.out.display());
    Ok(())
}

/// A Markdown table of how long each series took from its first create to
/// its last Running, as a ratio to `ctr run -d` per created object at the
/// same concurrency (the series differ in size).
fn makespan_table(makespans: &[(&str, usize, usize, Duration)]) -> String {
    let per_object = |name: &str, c: usize| {
        makespans
            .iter()
            .find(|(n, cc, _, _)| *n == name && *cc == c)
            .map_or(f64::NAN, |(_, _, n, d)| {
                d.as_secs_f64() / (*n).max(1) as f64
            })
    };
    let mut s = String::from(
        "| configuration | concurrency | creates | all Running after ms | per create ms | per create / ctr run -d |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (name, c, n, d) in makespans {
        let per = per_object(name, *c);
        s.push_str(&format!(
            "| {name} | {c} | {n} | {:.0} | {:.1} | {:.2} |\n",
            d.as_secs_f64() * 1000.0,
            per * 1000.0,
            per / per_object("ctr run -d", *c)
        ));
    }
    s
}
