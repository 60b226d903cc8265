//! What a pre-started sandbox costs while it waits: the memory its cgroup
//! is charged (what the kubelet accounts to the agent pod), the shim
//! processes its task runs under (their proportional set size: what they
//! alone hold), and the node's `MemAvailable` before the agent started
//! against after its stock is full (noisy: the node's other processes
//! move it too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Args;
use crate::bench_agent::{start_agent, wait_stock};

/// `MemAvailable` in bytes.
pub fn mem_available() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no MemAvailable in /proc/meminfo"))?;
    Ok(kb * 1024)
}

/// The cgroups directly under `parent` whose name starts with
/// `sandbox-stock-` (in the memory hierarchy), and the name of the file
/// holding their charge (cgroup v1 or v2).
fn stock_cgroups(cgroup_root: &Path, parent: &str) -> anyhow::Result<(Vec<PathBuf>, &'static str)> {
    let rel = parent.trim_start_matches('/');
    let (dir, file) = if cgroup_root.join("cgroup.controllers").exists() {
        (cgroup_root.join(rel), "memory.current")
    } else {
        (
            cgroup_root.join("memory").join(rel),
            "memory.usage_in_bytes",
        )
    };
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        if e.file_name()
            .to_string_lossy()
            .starts_with("sandbox-stock-")
        {
            dirs.push(e.path());
        }
    }
    Ok((dirs, file))
}

/// Memory charged to the stock's cgroups under `parent`: how many, and
/// their bytes.
pub fn stock_cgroups_charge(cgroup_root: &Path, parent: &str) -> anyhow::Result<(usize, u64)> {
    let (dirs, file) = stock_cgroups(cgroup_root, parent)?;
    let mut total = 0;
    for d in &dirs {
        let v: u64 = std::fs::read_to_string(d.join(file))?.trim().parse()?;
        total += v;
    }
    Ok((dirs.len(), total))
}

/// The shims the stock's tasks run under (the parents of their
/// processes): how many, and their proportional set size in bytes.
pub fn stock_shims_pss(cgroup_root: &Path, parent: &str) -> anyhow::Result<(usize, u64)> {
    let (dirs, _) = stock_cgroups(cgroup_root, parent)?;
    let mut shims = BTreeSet::new();
    for d in &dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))?.lines() {
            if let Some(ppid) = status_field(pid.trim(), "PPid:") {
                shims.insert(ppid);
            }
        }
    }
    let mut total = 0;
    for shim in &shims {
        let rollup = std::fs::read_to_string(format!("/proc/{shim}/smaps_rollup"))?;
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no Pss in /proc/{shim}/smaps_rollup"))?
            * 1024;
    }
    Ok((shims.len(), total))
}

/// A numeric field of `/proc/<pid>/status`.
fn status_field(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
}

/// The memory a pre-started sandbox holds while it waits, from a stock of
/// the largest `--stock-sizes`: with the agent's tasks in one shim, and
/// (the baseline) each in a shim of its own.
pub async fn bench(args: &Args) -> anyhow::Result<()> {
    let n = args.stock_sizes.iter().copied().max().unwrap_or(16).max(1);
    let mib = |b: f64| b / f64::from(1u32 << 20);
    let mut md = "| shims | pre-started sandboxes | charged to their cgroups, per sandbox | shim processes | shims' PSS, per sandbox | both, per sandbox | node MemAvailable drop, per sandbox (noisy) |\n|---|---:|---:|---:|---:|---:|---:|\n".to_string();
    for (name, grouped) in [("one per agent", true), ("one per sandbox", false)] {
        let before = mem_available()?;
        let a = start_agent(args, "memory", |cfg| {
            cfg.stock_size = n;
            cfg.shim_group = grouped;
        })
        .await?;
        wait_stock(&a, n).await?;
        // Let page cache and lazily freed memory settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = mem_available()?;
        let cfg = a.agent.config();
        let (cgroups, charged) = stock_cgroups_charge(&cfg.cgroup_root, &cfg.cgroup_parent)?;
        let (shims, shims_pss) = stock_shims_pss(&cfg.cgroup_root, &cfg.cgroup_parent)?;
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
