//! Create→running latency of sandboxes through the agent's HTTPS API, side
//! by side with `ctr run -d` on the same containerd (the naive floor), at
//! concurrency 1 and 8. Each agent lever can be switched off to measure
//! what it buys: pre-started sandboxes (the stock), warm snapshots; and the
//! one shared runc shim (off by default) switched on. Back to back, a create meets a stock the previous one
//! drained; "paced" waits until a pre-started sandbox is ready before each
//! (untimed), the steady state of arrivals slower than a refill.
//!
//! Needs root and a containerd with the test image; run it through the
//! agent's test script:
//!
//! ```text
//! agent/tests/containerd.sh run -- cargo run --release -p fast-sandbox-bench-agent -- --runs 100
//! ```
//!
//! Prints a Markdown table and writes it with a JSON copy to `--out-dir`.
//!
//! With `--mode burst` it issues `--runs` creates at once from
//! `--concurrency` workers and reports when all are Running, against the
//! same burst of `ctr run -d`; with `--mode memory`, what a pre-started
//! sandbox costs while it waits.
//!
//! With `--mode egress` it runs itself again in a network namespace of its
//! own (as an agent pod has) and measures create→running of sandboxes
//! with `network.mode: Egress` against ones without, claimed and cold.
//!
//! With `--mode userns` it measures create→running of sandboxes in user
//! namespaces of their own against host users, claimed and cold.
//!
//! With `--mode interactive` it measures the exec round trip of `/bin/true`
//! through the agent's API against `ctr task exec` into the same container
//! (same containerd), and file write/read throughput (1 MiB and 100 MiB).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fast_sandbox_agent::api::Api;
use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_agent::metrics::Metrics;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_agent::{Agent, Config};
use fast_sandbox_api::agent::CreateSandboxRequest;
use fast_sandbox_api::network::SandboxNetwork;
use fast_sandbox_bench_report::ctr::Ctr;
use fast_sandbox_bench_report::{Series, markdown};
use fast_sandbox_server::tls::{ServerTls, client_config};
use fast_sandbox_server::{Ops, Registry};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod burst;
mod egress;
mod interactive;
mod memory;
mod userns;

/// Benchmark settings.
#[derive(Parser, Debug, Clone)]
#[command(about)]
struct Args {
    /// containerd socket.
    #[arg(long, env = "FAST_SANDBOX_CONTAINERD_SOCK")]
    socket: PathBuf,
    /// containerd namespace holding the image.
    #[arg(
        long,
        env = "FAST_SANDBOX_TEST_NAMESPACE",
        default_value = "fast-sandbox-test"
    )]
    namespace: String,
    /// Image to start.
    #[arg(
        long,
        env = "FAST_SANDBOX_TEST_IMAGE",
        default_value = "docker.io/fast-sandbox/busybox:dev"
    )]
    image: String,
    /// Measured creates per configuration and concurrency.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Unmeasured creates before each series.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Where the Markdown and JSON results go.
    #[arg(long, default_value = "target/bench-agent")]
    out_dir: PathBuf,
    /// Pre-started sandboxes per image in `burst` mode's stock variants.
    #[arg(long, value_delimiter = ',', default_value = "4,32")]
    stock_sizes: Vec<usize>,
    /// `create` (create to running), `burst`, `memory`, `interactive`
    /// (exec and files), `egress` (create to running with and without a
    /// network, the agent in a network namespace of its own) or `userns`
    /// (create to running in user namespaces and as host users).
    #[arg(long, default_value = "create")]
    mode: String,
}

/// Changes one lever of an agent configuration.
type Tune = Box<dyn Fn(&mut Config)>;

/// The writable layer cap of the capped series (a tmpfs upper layer).
const LAYER_CAP: u64 = 64 << 20;

/// A measured agent configuration: its name, its levers, and whether each
/// create waits (untimed) for a ready pre-started sandbox.
struct Variant {
    name: &'static str,
    tune: Tune,
    paced: bool,
}

/// An in-process agent over real mutual-TLS HTTPS.
struct BenchAgent {
    client: AgentClient,
    agent: Arc<Agent>,
    shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start_agent(
    args: &Args,
    name: &str,
    tune: impl FnOnce(&mut Config),
) -> anyhow::Result<BenchAgent> {
    let dir = tempfile::tempdir()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let write = |n: &str, s: String| -> anyhow::Result<PathBuf> {
        let p = dir.path().join(n);
        std::fs::write(&p, s)?;
        Ok(p)
    };
    let ca_path = write("ca.crt", ca.pem())?;
    // The common name is who the agent checks a caller is.
    let leaf = |sans: Vec<String>, n: &str, cn: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca)?;
        Ok((
            write(&format!("{n}.crt"), cert.pem())?,
            write(&format!("{n}.key"), key.serialize_pem())?,
        ))
    };
    let (scert, skey) = leaf(
        vec!["fast-sandbox-agent".into()],
        "server",
        "fast-sandbox-agent",
    )?;
    let (ccert, ckey) = leaf(vec![], "client", "fast-sandbox-controller")?;
    let registry = Registry::default();
    let ops = Ops {
        health: Default::default(),
        registry: registry.clone(),
    };
    let metrics = Metrics::register(&registry);
    let cd = Containerd::connect(
        &args.socket,
        &args.namespace,
        "overlayfs",
        "io.containerd.runc.v2",
    )
    .await?;
    let mut cfg = Config {
        pod_name: format!("bench-{name}"),
        pod_uid: format!("bench-{name}-{}", std::process::id()),
        node_name: "bench".into(),
        slots: 64,
        state_dir: dir.path().join("state"),
        cgroup_parent: "/fast-sandbox-bench".into(),
        // As the agent runs by default: a runc shim per sandbox.
        shim_group: false,
        warm_snapshots: 2,
        warm_images: 4,
        default_grace: Duration::ZERO,
        proc_root: "/proc".into(),
        advertise: None,
        max_upload_bytes: fast_sandbox_agent::agent::DEFAULT_MAX_UPLOAD_BYTES,
        stock_size: fast_sandbox_agent::agent::DEFAULT_STOCK_SIZE,
        stock_images: vec![args.image.clone()],
        stock_layer_cap: None,
        cgroup_root: "/sys/fs/cgroup".into(),
        log_max_bytes: fast_sandbox_agent::logs::DEFAULT_LOG_MAX_BYTES,
        egress: None,
        user_namespaces: None,
    };
    tune(&mut cfg);
    // Outside a pod nothing made the sandboxes' parent cgroup yet.
    fast_sandbox_agent::cgroup::limits::make_parent(&cfg.cgroup_root, &cfg.cgroup_parent)?;
    let agent = Agent::new(cfg, cd, metrics.clone(), ops.health.clone()).await?;
    let (shutdown, rx) = watch::channel(false);
    tokio::spawn(agent.clone().run_events(rx.clone()));
    let tls = ServerTls {
        cert: scert,
        key: skey,
        client_ca: Some(ca_path.clone()),
    }
    .build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let mut done = rx.clone();
    tokio::spawn(fast_sandbox_server::serve(
        listener,
        Some(tls),
        ops.clone(),
        Arc::new(Api::new(
            agent.clone(),
            metrics,
            Some(fast_sandbox_server::client_auth::AllowedNames::new([
                "fast-sandbox-controller",
            ])),
        )),
        async move {
            let _ = done.wait_for(|s| *s).await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ops.health.is_ready() {
        if Instant::now() > deadline {
            bail!("agent not ready after 20s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = AgentClient::connect(
        addr,
        "fast-sandbox-agent",
        client_config(&ca_path, Some((&ccert, &ckey)))?,
    )
    .await?;
    Ok(BenchAgent {
        client,
        agent,
        shutdown,
        _dir: dir,
    })
}

fn request(args: &Args, uid: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        uid: uid.into(),
        name: uid.into(),
        namespace: "bench".into(),
        pool: "bench".into(),
        image: args.image.clone(),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    }
}

/// Waits (at most 60 s) until `n` pre-started sandboxes are ready.
async fn wait_stock(a: &BenchAgent, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.agent.stock_ready() < n {
        if Instant::now() > deadline {
            bail!("{n} pre-started sandboxes not ready after 60s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn agent_series(
    args: &Args,
    a: &BenchAgent,
    tag: &str,
    concurrency: usize,
    paced: bool,
    network: Option<&SandboxNetwork>,
) -> anyhow::Result<Vec<Duration>> {
    // Creates ask for the layer cap the agent's stock has, as a pool's
    // sandboxes asking for nothing get their default one.
    let cap = a.agent.config().stock_layer_cap;
    let request = |uid: &str| {
        let mut r = request(args, uid);
        r.limits.ephemeral_storage_bytes = cap;
        r.network = network.cloned();
        r
    };
    // A steady-state agent holds other sandboxes: one stays resident so a
    // shared shim is not torn down between measured creates.
    let resident = request(&format!("{tag}-c{concurrency}-resident"));
    a.client
        .create(&resident)
        .await?
        .1
        .map_err(|e| anyhow::anyhow!("resident create failed: {e}"))?;
    let per_worker = args.runs.div_ceil(concurrency);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let client = a.client.clone();
        let reqs: Vec<_> = (0..args.warmup + per_worker)
            .map(|i| request(&format!("{tag}-c{concurrency}-w{w}-{i}")))
            .collect();
        let warmup = args.warmup;
        let agent = a.agent.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for (i, req) in reqs.iter().enumerate() {
                if paced {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while agent.stock_ready() == 0 {
                        if Instant::now() > deadline {
                            bail!("no pre-started sandbox ready after 60s");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let t = Instant::now();
                let (_, answer) = client.create(req).await?;
                let elapsed = t.elapsed();
                answer.map_err(|e| anyhow::anyhow!("create failed: {e}"))?;
                if i >= warmup {
                    samples.push(elapsed);
                }
                client
                    .delete(&req.uid, 0)
                    .await?
                    .1
                    .map_err(|e| anyhow::anyhow!("delete failed: {e}"))?;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    all.truncate(args.runs);
    a.client
        .delete(&resident.uid, 0)
        .await?
        .1
        .map_err(|e| anyhow::anyhow!("resident delete failed: {e}"))?;
    Ok(all)
}

/// Exec round trips (agent API vs `ctr task exec`) and file throughput.
async fn interactive_bench(args: &Args) -> anyhow::Result<()> {
    let a = start_agent(args, "interactive", |_| {}).await?;
    let uid = "interactive";
    a.client
        .create(&request(args, uid))
        .await?
        .1
        .map_err(|e| anyhow::anyhow!("create failed: {e}"))?;
    let container = a
        .client
        .get(uid)
        .await?
        .map_err(|e| anyhow::anyhow!("get failed: {e}"))?
        .container_id;
    let ctr = Ctr {
        socket: args.socket.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone(),
    };
    let mut results = Vec::new();
    for &c in &args.concurrency {
        let samples =
            interactive::ctr_exec_series(ctr.clone(), container.clone(), args.runs, args.warmup, c)
                .await?;
        let s = interactive::series("ctr task exec", c, &samples);
        eprintln!(
            "ctr task exec c={c}: p50 {:.1} ms p99 {:.1} ms",
            s.p50_ms, s.p99_ms
        );
        results.push(s);
        let samples = interactive::exec_series(&a.client, uid, args.runs, args.warmup, c).await?;
        let s = interactive::series("agent exec", c, &samples);
        eprintln!(
            "agent exec c={c}: p50 {:.1} ms p99 {:.1} ms",
            s.p50_ms, s.p99_ms
        );
        results.push(s);
    }
    let mut rows = Vec::new();
    for (size, reps) in [(1usize << 20, 10), (100 << 20, 3)] {
        let (w, r) = interactive::file_throughput(&a.client, uid, size, reps).await?;
        eprintln!(
            "files {} MiB: write {w:.0} MB/s, read {r:.0} MB/s",
            size >> 20
        );
        rows.push((size, w, r));
    }
    a.client
        .delete(uid, 0)
        .await?
        .1
        .map_err(|e| anyhow::anyhow!("delete failed: {e}"))?;
    a.shutdown.send_replace(true);
    let md = format!(
        "{}\n{}",
        markdown(&results, "ctr task exec"),
        interactive::throughput_table(&rows)
    );
    println!("{md}");
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(args.out_dir.join("agent-interactive.md"), &md)?;
    std::fs::write(
        args.out_dir.join("agent-interactive.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    Ok(())
}

/// A burst of `--runs` creates at `--concurrency` (its first value):
/// `ctr run -d`, the agent with each stock size, the agent without stock.
async fn burst_bench(args: &Args) -> anyhow::Result<()> {
    let c = args.concurrency.first().copied().unwrap_or(16);
    let ctr = Ctr {
        socket: args.socket.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone(),
    };
    let runs = args.runs;
    let (samples, all) = tokio::task::spawn_blocking(move || ctr.burst(runs, c))
        .await?
        .context("ctr burst")?;
    let mut bursts = vec![burst::Burst::new("ctr run -d", c, &samples, all, 0)];
    eprintln!("ctr run -d burst: all running after {all:?}");
    let mut sizes: Vec<Option<usize>> = args.stock_sizes.iter().copied().map(Some).collect();
    sizes.push(None);
    for (i, size) in sizes.into_iter().enumerate() {
        let name = match size {
            Some(n) => format!("agent, stock {n}"),
            None => "agent, no stock".to_string(),
        };
        let a = start_agent(args, &format!("burst{i}"), |cfg| {
            // The whole burst and the resident sandbox fit.
            cfg.slots = cfg.slots.max(runs as u32 + 1);
            cfg.stock_size = size.unwrap_or(0);
        })
        .await?;
        wait_stock(&a, size.unwrap_or(0)).await?;
        let resident = request(args, &format!("burst{i}-resident"));
        a.client
            .create(&resident)
            .await?
            .1
            .map_err(|e| anyhow::anyhow!("resident create failed: {e}"))?;
        wait_stock(&a, size.unwrap_or(0)).await?;
        let reqs = (0..runs)
            .map(|j| request(args, &format!("burst{i}-{j}")))
            .collect();
        let (samples, all, claimed) = burst::agent_burst(&a.client, reqs, c).await?;
        eprintln!("{name} burst: all running after {all:?}, {claimed} claimed");
        bursts.push(burst::Burst::new(&name, c, &samples, all, claimed));
        a.client
            .delete(&resident.uid, 0)
            .await?
            .1
            .map_err(|e| anyhow::anyhow!("resident delete failed: {e}"))?;
        a.agent.release_warm().await;
        a.agent.release_stock().await;
        a.shutdown.send_replace(true);
    }
    let md = burst::table(&bursts, "ctr run -d");
    println!("{md}");
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(args.out_dir.join("agent-burst.md"), &md)?;
    std::fs::write(
        args.out_dir.join("agent-burst.json"),
        serde_json::to_string_pretty(&bursts)?,
    )?;
    Ok(())
}

/// The memory a pre-started sandbox holds while it waits, from a stock of
/// the largest `--stock-sizes`: with the agent's tasks in one shim, and
/// (the baseline) each in a shim of its own.
async fn memory_bench(args: &Args) -> anyhow::Result<()> {
    let n = args.stock_sizes.iter().copied().max().unwrap_or(16).max(1);
    let mib = |b: f64| b / f64::from(1u32 << 20);
    let mut md = "| shims | pre-started sandboxes | charged to their cgroups, per sandbox | shim processes | shims' PSS, per sandbox | both, per sandbox | node MemAvailable drop, per sandbox (noisy) |\n|---|---:|---:|---:|---:|---:|---:|\n".to_string();
    for (name, grouped) in [("one per agent", true), ("one per sandbox", false)] {
        let before = memory::mem_available()?;
        let a = start_agent(args, "memory", |cfg| {
            cfg.stock_size = n;
            cfg.shim_group = grouped;
        })
        .await?;
        wait_stock(&a, n).await?;
        // Let page cache and lazily freed memory settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = memory::mem_available()?;
        let cfg = a.agent.config();
        let (cgroups, charged) =
            memory::stock_cgroups_charge(&cfg.cgroup_root, &cfg.cgroup_parent)?;
        let (shims, shims_pss) = memory::stock_shims_pss(&cfg.cgroup_root, &cfg.cgroup_parent)?;
        let per = |b: u64| mib(b as f64 / cgroups.max(1) as f64);
        md.push_str(&format!(
            "| {name} | {n} | {:.2} MiB | {shims} | {:.2} MiB | {:.2} MiB | {:.2} MiB |\n",
            per(charged),
            per(shims_pss),
            per(charged + shims_pss),
            mib(before.saturating_sub(after) as f64 / n as f64),
        ));
        a.agent.release_stock().await;
        a.shutdown.send_replace(true);
    }
    println!("{md}");
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(args.out_dir.join("agent-memory.md"), &md)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The agents' warnings (a stock that cannot be built) go to stderr.
    fast_sandbox_server::telemetry::init(fast_sandbox_server::telemetry::LogFormat::Text);
    match args.mode.as_str() {
        "create" => {}
        "interactive" => return interactive_bench(&args).await,
        "burst" => return burst_bench(&args).await,
        "memory" => return memory_bench(&args).await,
        "egress" => return egress::bench(&args).await,
        "userns" => return userns::bench(&args).await,
        other => {
            bail!("unknown --mode {other:?}: create, burst, memory, interactive, egress or userns")
        }
    }
    let variants = [
        Variant {
            name: "agent (all levers)",
            tune: Box::new(|_: &mut Config| {}),
            paced: false,
        },
        Variant {
            name: "agent (all levers), paced",
            tune: Box::new(|_: &mut Config| {}),
            paced: true,
        },
        Variant {
            name: "agent, 64 MiB layer cap",
            tune: Box::new(|c: &mut Config| c.stock_layer_cap = Some(LAYER_CAP)),
            paced: false,
        },
        Variant {
            name: "agent, no stock",
            tune: Box::new(|c: &mut Config| c.stock_size = 0),
            paced: false,
        },
        Variant {
            name: "agent, no stock, 64 MiB layer cap",
            tune: Box::new(|c: &mut Config| {
                c.stock_size = 0;
                c.stock_layer_cap = Some(LAYER_CAP);
            }),
            paced: false,
        },
        Variant {
            name: "agent, no stock, one shared shim (--shim-group)",
            tune: Box::new(|c: &mut Config| {
                c.stock_size = 0;
                c.shim_group = true;
            }),
            paced: false,
        },
        Variant {
            name: "agent, no stock, no warm snapshots",
            tune: Box::new(|c: &mut Config| {
                c.stock_size = 0;
                c.warm_snapshots = 0;
            }),
            paced: false,
        },
    ];
    let mut results = Vec::new();
    for &c in &args.concurrency {
        results.push(ctr_series(&args, c).await?);
        for (i, v) in variants.iter().enumerate() {
            // Pacing is the steady state of one client at a time.
            if v.paced && c > 1 {
                continue;
            }
            let run = Run {
                tag: &format!("v{i}"),
                name: v.name,
                concurrency: c,
                paced: v.paced,
                network: None,
            };
            results.push(measure(&args, &run, |cfg| (v.tune)(cfg)).await?);
        }
    }
    report(&args, &results, "agent-create")
}

/// `--runs` creates with `ctr run -d` at concurrency `c`: the baseline.
async fn ctr_series(args: &Args, c: usize) -> anyhow::Result<Series> {
    let ctr = Ctr {
        socket: args.socket.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone(),
    };
    let (runs, warmup) = (args.runs, args.warmup);
    let samples = tokio::task::spawn_blocking(move || ctr.series(runs, warmup, c))
        .await?
        .context("ctr series")?;
    let s = Series::new("ctr run -d", c, &samples);
    eprintln!("ctr run -d c={c}: p50 {:.1} ms", s.p50_ms);
    Ok(s)
}

/// One measured series: a name for its row, a tag for its sandboxes' UIDs.
struct Run<'a> {
    tag: &'a str,
    name: &'a str,
    concurrency: usize,
    paced: bool,
    network: Option<&'a SandboxNetwork>,
}

/// Starts an agent tuned by `tune` with its stock full, measures `run` on
/// it and lets it go.
async fn measure(
    args: &Args,
    run: &Run<'_>,
    tune: impl FnOnce(&mut Config),
) -> anyhow::Result<Series> {
    let a = start_agent(args, run.tag, tune).await?;
    wait_stock(&a, a.agent.config().stock_size).await?;
    let c = run.concurrency;
    let samples = agent_series(args, &a, run.tag, c, run.paced, run.network).await?;
    let s = Series::new(run.name, c, &samples);
    eprintln!("{} c={c}: p50 {:.1} ms", run.name, s.p50_ms);
    a.agent.release_warm().await;
    a.agent.release_stock().await;
    a.shutdown.send_replace(true);
    Ok(s)
}

/// Prints the table of `results` against `ctr run -d` and writes it, with
/// a JSON copy, as `<stem>.md` and `<stem>.json` in `--out-dir`.
fn report(args: &Args, results: &[Series], stem: &str) -> anyhow::Result<()> {
    let md = markdown(results, "ctr run -d");
    println!("{md}");
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(args.out_dir.join(format!("{stem}.md")), &md)?;
    std::fs::write(
        args.out_dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(results)?,
    )?;
    Ok(())
}
