//! A claimed pre-started sandbox's resource limits, written straight to
//! its cgroup (its task runs already, so runc will not write them): the
//! same values the cold path's spec hands runc, on cgroup v1 (these
//! machines) and v2 (real nodes). The low CPU weight a pre-started sandbox
//! waits with goes back to the default.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};

/// CPU shares (v1) of a pre-started sandbox while it waits: the lowest
/// the kernel takes, so building stock yields to claims and cold creates.
pub const WAITING_CPU_SHARES: u64 = 2;
/// The kernel's default CPU shares (v1), what a cold sandbox has.
const DEFAULT_CPU_SHARES: u64 = 1024;
/// The kernel's default CPU weight (v2).
const DEFAULT_CPU_WEIGHT: u64 = 100;

/// The limits of one sandbox, from its spec's resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CFS quota and period in microseconds.
    pub cpu: Option<(i64, u64)>,
    /// Most processes.
    pub pids: Option<i64>,
}

impl Limits {
    /// The limits a spec's `linux.resources` sets.
    pub fn of(resources: Option<&LinuxResources>) -> Self {
        let Some(r) = resources else {
            return Self::default();
        };
        Self {
            memory_bytes: r.memory().as_ref().and_then(|m| m.limit()),
            cpu: r
                .cpu()
                .as_ref()
                .and_then(|c| Some((c.quota()?, c.period()?))),
            pids: r.pids().as_ref().map(|p| p.limit()),
        }
    }
}

/// The files to write, in order, for `limits` on the cgroup at `path`
/// under the cgroup filesystem mounted at `root`.
pub fn writes(root: &Path, v2: bool, path: &str, limits: &Limits) -> Vec<(PathBuf, String)> {
    let rel = path.trim_start_matches('/');
    let at = |controller: &str, file: &str| {
        if v2 {
            root.join(rel).join(file)
        } else {
            root.join(controller).join(rel).join(file)
        }
    };
    let mut out = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        out.push((at("memory", file), bytes.to_string()));
    }
    if v2 {
        out.push((at("cpu", "cpu.weight"), DEFAULT_CPU_WEIGHT.to_string()));
        if let Some((quota, period)) = limits.cpu {
            out.push((at("cpu", "cpu.max"), format!("{quota} {period}")));
        }
    } else {
        out.push((at("cpu", "cpu.shares"), DEFAULT_CPU_SHARES.to_string()));
        if let Some((quota, period)) = limits.cpu {
            out.push((at("cpu", "cpu.cfs_period_us"), period.to_string()));
            out.push((at("cpu", "cpu.cfs_quota_us"), quota.to_string()));
        }
    }
    if let Some(pids) = limits.pids {
        out.push((at("pids", "pids.max"), pids.to_string()));
    }
    out
}

/// Whether the cgroup filesystem at `root` is v2 (unified).
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// Checks that cgroups nested under `parent` are visible under `root`, as
/// claims need: in a pod the cgroup filesystem shows only the pod's own
/// cgroup unless the host's is mounted.
pub fn reachable(root: &Path, parent: &str) -> Result<()> {
    let rel = parent.trim_start_matches('/');
    let dir = if is_v2(root) {
        root.join(rel)
    } else {
        root.join("memory").join(rel)
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::io(
            format!("finding the sandboxes' parent cgroup at {}", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
    }
}

/// Makes the parent cgroup `parent` under `root` in the hierarchies claims
/// write to, for an agent run outside a pod (tests, benchmarks), where no
/// pod cgroup exists yet. Never used in a pod: there a missing parent means
/// the host's cgroup filesystem is not mounted, and a cgroup made in the
/// pod's own view would take limits the sandboxes never see.
pub fn make_parent(root: &Path, parent: &str) -> Result<()> {
    let rel = parent.trim_start_matches('/');
    let dirs = if is_v2(root) {
        vec![root.join(rel)]
    } else {
        ["memory", "cpu", "pids"]
            .iter()
            .map(|c| root.join(c).join(rel))
            .collect()
    };
    for d in dirs {
        std::fs::create_dir_all(&d)
            .map_err(|e| Error::io(format!("creating the cgroup {}", d.display()), e))?;
    }
    Ok(())
}

/// Writes `limits` to the cgroup at `path`.
pub fn apply(root: &Path, path: &str, limits: &Limits) -> Result<()> {
    for (file, value) in writes(root, is_v2(root), path, limits) {
        std::fs::write(&file, &value)
            .map_err(|e| Error::io(format!("writing {value} to {}", file.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            cpu: Some((50_000, 100_000)),
            pids: Some(32),
        }
    }

    fn names(w: &[(PathBuf, String)]) -> Vec<(String, String)> {
        w.iter()
            .map(|(p, v)| (p.display().to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn v1_writes_each_controller_and_period_before_quota() {
        let w = writes(Path::new("/sys/fs/cgroup"), false, "/p/stock-1", &all());
        let s = |p: &str, v: &str| (p.to_string(), v.to_string());
        assert_eq!(
            names(&w),
            [
                s(
                    "/sys/fs/cgroup/memory/p/stock-1/memory.limit_in_bytes",
                    "67108864"
                ),
                s("/sys/fs/cgroup/cpu/p/stock-1/cpu.shares", "1024"),
                s("/sys/fs/cgroup/cpu/p/stock-1/cpu.cfs_period_us", "100000"),
                s("/sys/fs/cgroup/cpu/p/stock-1/cpu.cfs_quota_us", "50000"),
                s("/sys/fs/cgroup/pids/p/stock-1/pids.max", "32"),
            ]
        );
    }

    #[test]
    fn v2_writes_the_unified_files() {
        let w = writes(Path::new("/sys/fs/cgroup"), true, "/p/stock-1", &all());
        let files: Vec<String> = names(&w)
            .into_iter()
            .map(|(p, v)| format!("{p}={v}"))
            .collect();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/p/stock-1/memory.max=67108864",
                "/sys/fs/cgroup/p/stock-1/cpu.weight=100",
                "/sys/fs/cgroup/p/stock-1/cpu.max=50000 100000",
                "/sys/fs/cgroup/p/stock-1/pids.max=32",
            ]
        );
    }

    #[test]
    fn the_parent_cgroup_must_be_visible() {
        let root = tempfile::tempdir().unwrap();
        assert!(reachable(root.path(), "/kubepods/pod1").is_err());
        std::fs::create_dir_all(root.path().join("memory/kubepods/pod1")).unwrap();
        reachable(root.path(), "/kubepods/pod1").unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "").unwrap();
        assert!(reachable(root.path(), "/kubepods/pod1").is_err());
        std::fs::create_dir_all(root.path().join("kubepods/pod1")).unwrap();
        reachable(root.path(), "/kubepods/pod1").unwrap();
    }

    #[test]
    fn no_limits_only_restore_the_cpu_weight() {
        let w = writes(Path::new("/c"), false, "/p/s", &Limits::default());
        assert_eq!(
            names(&w),
            [("/c/cpu/p/s/cpu.shares".to_string(), "1024".to_string())]
        );
    }
}
