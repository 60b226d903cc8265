//! One measured create→running series, through the agent or `ctr run -d`,
//! and the table its results make; shared by the create, egress and userns
//! modes.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fast_sandbox_agent::Config;
use fast_sandbox_api::network::SandboxNetwork;
use fast_sandbox_bench_report::ctr::Ctr;
use fast_sandbox_bench_report::{Series, markdown};

use crate::Args;
use crate::bench_agent::{BenchAgent, request, start_agent, wait_stock};

/// Create→running of `--runs` sandboxes at `concurrency` on agent `a`,
/// beside one resident sandbox; `paced` waits for a ready pre-started
/// sandbox (untimed) before each create.
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
/// `--runs` creates with `ctr run -d` at concurrency `c`: the baseline.
pub async fn ctr_series(args: &Args, c: usize) -> anyhow::Result<Series> {
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
pub struct Run<'a> {
    /// Prefix of its sandboxes' UIDs, unique per series.
    pub tag: &'a str,
    /// Its row in the table.
    pub name: &'a str,
    /// Creates in flight at once.
    pub concurrency: usize,
    /// Whether each create waits (untimed) for a ready pre-started sandbox.
    pub paced: bool,
    /// The network its sandboxes ask for; `None`: loopback only.
    pub network: Option<&'a SandboxNetwork>,
}

/// Starts an agent tuned by `tune` with its stock full, measures `run` on
/// it and lets it go.
pub async fn measure(
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
pub fn report(args: &Args, results: &[Series], stem: &str) -> anyhow::Result<()> {
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
