//! What a pre-started sandbox costs while it waits: the memory its cgroup
//! is charged (what the kubelet accounts to the agent pod), and the node's
//! `MemAvailable` before the agent started against after its stock is
//! full, per sandbox (one shared shim included).

use std::path::Path;

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

/// Memory charged to every cgroup directly under `parent` whose name
/// starts with `sandbox-stock-`, in bytes (cgroup v1 or v2).
pub fn stock_cgroups_charge(cgroup_root: &Path, parent: &str) -> anyhow::Result<(usize, u64)> {
    let rel = parent.trim_start_matches('/');
    let (dir, file) = if cgroup_root.join("cgroup.controllers").exists() {
        (cgroup_root.join(rel), "memory.current")
    } else {
        (
            cgroup_root.join("memory").join(rel),
            "memory.usage_in_bytes",
        )
    };
    let mut n = 0;
    let mut total = 0;
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        if !e
            .file_name()
            .to_string_lossy()
            .starts_with("sandbox-stock-")
        {
            continue;
        }
        let v: u64 = std::fs::read_to_string(e.path().join(file))?
            .trim()
            .parse()?;
        n += 1;
        total += v;
    }
    Ok((n, total))
}
