//! The sandbox's process as the host's `/proc` shows it: checked through
//! its cgroup to still be the sandbox's (a reused PID never is), with the
//! ids it runs as and the host id root is in its user namespace.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The host id root is in the user namespace of the process whose `/proc`
/// directory is `dir`, from its `map` file (`uid_map`, `gid_map`); 0 when
/// unreadable (the process is gone: nothing is created then anyway).
pub(super) fn host_root_of(dir: &OwnedFd, map: &str) -> u32 {
    rustix::fs::openat(dir, map, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .ok()
        .and_then(|f| std::io::read_to_string(File::from(f)).ok())
        .and_then(|t| crate::userns::host_root(&t))
        .unwrap_or(0)
}

/// The real user and group ids in a `/proc/<pid>/status` text (0 when absent).
pub(super) fn uid_gid(status: &str) -> (u32, u32) {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

/// Maps an errno of reaching `/proc/<pid>` to the sandbox's process being gone.
pub(super) fn proc_gone(proc_root: &Path, pid: u32) -> impl Fn(Errno) -> Error {
    let proc_dir = proc_root.join(pid.to_string());
    move |e: Errno| {
        Error::SandboxNotRunning(format!(
            "the sandbox's process ({}) is gone: {}",
            proc_dir.display(),
            std::io::Error::from(e)
        ))
    }
}

/// Opens `/proc/<pid>` under `proc_root` (the host's `/proc`) after checking
/// through it that the process is still the sandbox's: one of its cgroup
/// paths ends with `cgroup_suffix`, so a reused PID is never taken for it.
/// Everything opened through the returned directory is that process's, or
/// fails once it is gone.
pub fn process_dir(proc_root: &Path, pid: u32, cgroup_suffix: &str) -> Result<OwnedFd> {
    let gone = proc_gone(proc_root, pid);
    let dir = rustix::fs::open(
        proc_root.join(pid.to_string()),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(&gone)?;
    let fd = rustix::fs::openat(
        &dir,
        "cgroup",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(&gone)?;
    let cgroup = std::io::read_to_string(File::from(fd))
        .map_err(|e| Error::io(format!("reading {}/{pid}/cgroup", proc_root.display()), e))?;
    if !cgroup.lines().any(|l| l.ends_with(cgroup_suffix)) {
        return Err(Error::SandboxNotRunning(format!(
            "process {pid} is no longer the sandbox's"
        )));
    }
    Ok(dir)
}
