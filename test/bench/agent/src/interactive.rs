//! The interactive half of the agent: exec round trips of `/bin/true`
//! through the agent's API against `ctr task exec` into the same container
//! on the same containerd, and file write/read throughput.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_api::exec::ExecRequest;
use fast_sandbox_bench_report::Series;
use fast_sandbox_bench_report::ctr::Ctr;
use fast_sandbox_bench_report::markdown;

use crate::Args;
use crate::bench_agent::{request, start_agent};

/// `runs` exec round trips of `/bin/true` in sandbox `uid`, `concurrency`
/// at a time, each over the one warm connection.
pub async fn exec_series(
    client: &AgentClient,
    uid: &str,
    runs: usize,
    warmup: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let req = ExecRequest {
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let per_worker = runs.div_ceil(concurrency);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, req, uid) = (client.clone(), req.clone(), uid.to_string());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in 0..warmup + per_worker {
                let t = Instant::now();
                let out = client
                    .exec_collect(&uid, &req, None)
                    .await?
                    .map_err(|e| anyhow!("exec refused: {e}"))?;
                let elapsed = t.elapsed();
                if !out.status.success() {
                    return Err(anyhow!("exec failed: {:?}", out.status));
                }
                if i >= warmup {
                    samples.push(elapsed);
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    all.truncate(runs);
    Ok(all)
}

/// The same round trips with `ctr task exec` into `container`.
pub async fn ctr_exec_series(
    ctr: Ctr,
    container: String,
    runs: usize,
    warmup: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    tokio::task::spawn_blocking(move || ctr.exec_series(&container, runs, warmup, concurrency))
        .await?
        .context("ctr task exec series")
}

/// Megabytes per second of writing then reading `size` bytes, `reps`
/// times each (best of the repetitions, so one hiccup does not decide).
pub async fn file_throughput(
    client: &AgentClient,
    uid: &str,
    size: usize,
    reps: usize,
) -> anyhow::Result<(f64, f64)> {
    let data = bytes::Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let path = format!("/tmp/bench-{size}");
    let (mut write, mut read) = (0f64, 0f64);
    for _ in 0..reps {
        let t = Instant::now();
        client
            .write_file(
                uid,
                &path,
                None,
                fast_sandbox_server::body::full(data.clone()),
            )
            .await?
            .map_err(|e| anyhow!("write refused: {e}"))?;
        write = write.max(size as f64 / t.elapsed().as_secs_f64() / 1e6);
        let t = Instant::now();
        let mut stream = client
            .read_file(uid, &path)
            .await?
            .map_err(|e| anyhow!("read refused: {e}"))?;
        let mut got = 0usize;
        while let Some(chunk) = stream.next_chunk().await {
            got += chunk?.len();
        }
        read = read.max(size as f64 / t.elapsed().as_secs_f64() / 1e6);
        if got != size {
            return Err(anyhow!("read {got} bytes of {size}"));
        }
    }
    client
        .remove(uid, &path, false)
        .await?
        .map_err(|e| anyhow!("remove refused: {e}"))?;
    Ok((write, read))
}

/// A Markdown table of file throughput.
pub fn throughput_table(rows: &[(usize, f64, f64)]) -> String {
    let mut s = "| file size | write MB/s | read MB/s |\n|---:|---:|---:|\n".to_string();
    for (size, w, r) in rows {
        s.push_str(&format!("| {} MiB | {w:.0} | {r:.0} |\n", size >> 20));
    }
    s
}

/// Names the exec series.
pub fn series(name: &str, concurrency: usize, samples: &[Duration]) -> Series {
    Series::new(name, concurrency, samples)
}

/// Exec round trips (agent API vs `ctr task exec`) and file throughput.
pub async fn bench(args: &Args) -> anyhow::Result<()> {
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
            ctr_exec_series(ctr.clone(), container.clone(), args.runs, args.warmup, c).await?;
        let s = series("ctr task exec", c, &samples);
        eprintln!(
            "ctr task exec c={c}: p50 {:.1} ms p99 {:.1} ms",
            s.p50_ms, s.p99_ms
        );
        results.push(s);
        let samples = exec_series(&a.client, uid, args.runs, args.warmup, c).await?;
        let s = series("agent exec", c, &samples);
        eprintln!(
            "agent exec c={c}: p50 {:.1} ms p99 {:.1} ms",
            s.p50_ms, s.p99_ms
        );
        results.push(s);
    }
    let mut rows = Vec::new();
    for (size, reps) in [(1usize << 20, 10), (100 << 20, 3)] {
        let (w, r) = file_throughput(&a.client, uid, size, reps).await?;
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
        throughput_table(&rows)
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
