//! Bursts: `runs` creates issued by `concurrency` workers at once, none
//! deleted until all run, against the same burst of `ctr run -d`. What
//! counts is when the last sandbox of the burst is Running, and the
//! latency of each create on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_api::agent::CreateSandboxRequest;
use fast_sandbox_bench_report::Series;
use serde::Serialize;

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
