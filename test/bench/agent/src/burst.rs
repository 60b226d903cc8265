//! Bursts: `runs` creates issued by `concurrency` workers at once, none
//! deleted until all run, against the same burst of `ctr run -d`. What
//! counts is when the last sandbox of the burst is Running, and the
//! latency of each create on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_api::agent::CreateSandboxRequest;
use fast_sandbox_bench_report::Series;
use fast_sandbox_bench_report::ctr::Ctr;
use serde::Serialize;

use crate::Args;
use crate::bench_agent::{request, start_agent, wait_stock};

/// One burst's result.
#[derive(Serialize, Clone, Debug)]
pub struct Burst {
    /// Latencies of the creates.
    pub series: Series,
    /// From the first create issued to the last one Running, milliseconds.
    pub all_running_ms: f64,
    /// Creates that claimed a pre-started sandbox.
    pub claimed: usize,
}

impl Burst {
    /// A burst's result from its samples.
    pub fn new(
        name: &str,
        concurrency: usize,
        samples: &[Duration],
        all: Duration,
        claimed: usize,
    ) -> Self {
        Self {
            series: Series::new(name, concurrency, samples),
            all_running_ms: all.as_secs_f64() * 1000.0,
            claimed,
        }
    }
}

/// Runs `reqs` through `client` with `concurrency` workers; returns the
/// latencies, the time until all answered Running, and how many claimed.
pub async fn agent_burst(
    client: &AgentClient,
    reqs: Vec<CreateSandboxRequest>,
    concurrency: usize,
) -> anyhow::Result<(Vec<Duration>, Duration, usize)> {
    let reqs = Arc::new(reqs);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, reqs, next) = (client.clone(), reqs.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(req) = reqs.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    return anyhow::Ok(out);
                };
                let t = Instant::now();
                let info = client
                    .create(req)
                    .await?
                    .1
                    .map_err(|e| anyhow::anyhow!("create failed: {e}"))?;
                out.push((t.elapsed(), info.container_id.starts_with("stock-")));
            }
        }));
    }
    let mut samples = Vec::new();
    let mut claimed = 0;
    for w in workers {
        for (d, c) in w.await?? {
            samples.push(d);
            claimed += usize::from(c);
        }
    }
    let all = t.elapsed();
    for r in reqs.iter() {
        client
            .delete(&r.uid, 0)
            .await?
            .1
            .map_err(|e| anyhow::anyhow!("delete failed: {e}"))?;
    }
    Ok((samples, all, claimed))
}

/// A Markdown table of bursts, each against the `ctr run -d` burst.
pub fn table(bursts: &[Burst], baseline: &str) -> String {
    let base = bursts
        .iter()
        .find(|b| b.series.name == baseline)
        .map(|b| b.all_running_ms);
    let mut s = format!(
        "| configuration | creates | concurrency | claimed | all Running after ms | p50 ms | p95 ms | p99 ms | all Running / {baseline} |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for b in bursts {
        let ratio = base.map_or("".to_string(), |base| {
            format!("{:.2}", b.all_running_ms / base)
        });
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {ratio} |\n",
            b.series.name,
            b.series.runs,
            b.series.concurrency,
            b.claimed,
            b.all_running_ms,
            b.series.p50_ms,
            b.series.p95_ms,
            b.series.p99_ms,
        ));
    }
    s
}

/// A burst of `--runs` creates at `--concurrency` (its first value):
/// `ctr run -d`, the agent with each stock size, the agent without stock.
pub async fn bench(args: &Args) -> anyhow::Result<()> {
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
    let mut bursts = vec![Burst::new("ctr run -d", c, &samples, all, 0)];
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
        let (samples, all, claimed) = agent_burst(&a.client, reqs, c).await?;
        eprintln!("{name} burst: all running after {all:?}, {claimed} claimed");
        bursts.push(Burst::new(&name, c, &samples, all, claimed));
        a.client
            .delete(&resident.uid, 0)
            .await?
            .1
            .map_err(|e| anyhow::anyhow!("resident delete failed: {e}"))?;
        a.agent.release_warm().await;
        a.agent.release_stock().await;
        a.shutdown.send_replace(true);
    }
    let md = table(&bursts, "ctr run -d");
    println!("{md}");
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(args.out_dir.join("agent-burst.md"), &md)?;
    std::fs::write(
        args.out_dir.join("agent-burst.json"),
        serde_json::to_string_pretty(&bursts)?,
    )?;
    Ok(())
}
