//! Every process an exec started. containerd signals one process, the
//! exec's own; what it forked outlives it, reparented to the sandbox's
//! process 1, still holding the exec's output pipe (a `sh -c 'cat'` leaves
//! its `cat` blocked writing for good). So before the exec's process is
//! killed, its whole tree is stopped (a stopped process cannot fork),
//! gathered again until nothing new appears, and killed.
//!
//! Each process is held by a pidfd from the moment it is found and checked
//! to be in the sandbox's cgroup and to have started when it did when it
//! was found, so a PID reused meanwhile is never signalled.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// Rounds of stopping and gathering again: each round stops what the last
/// one found, so only a tree growing faster than rounds run escapes, and a
/// stopped process cannot grow it.
const ROUNDS: usize = 8;

/// Stops and kills the processes below host PID `root` (not `root`
/// itself: containerd kills that one) that are in the cgroup ending with
/// `cgroup_suffix`. Best effort: what has exited meanwhile is skipped.
pub fn kill_descendants(proc_root: &Path, root: u32, cgroup_suffix: &str) {
    if !sees_host_pids(proc_root) {
        tracing::warn!(
            "the agent is not in the host's PID namespace (agent pods run with hostPID): what an exec started outlives it"
        );
        return;
    }
    let mut held: HashMap<u32, OwnedFd> = HashMap::new();
    for _ in 0..ROUNDS {
        let table = processes(proc_root);
        let parents = table.iter().map(|(&pid, p)| (pid, p.parent)).collect();
        let found = descendants(&parents, root);
        let mut new = false;
        for pid in found {
            if held.contains_key(&pid) {
                continue;
            }
            let Some(fd) =
                Pid::from_raw(pid as i32).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
            else {
                continue;
            };
            // Checked after the pidfd is open: the PID named this process
            // then, so the checks are of the process the pidfd holds (one
            // that started since the scan is another, given the same PID).
            let same =
                read_stat(proc_root, pid).map(|p| p.started) == table.get(&pid).map(|p| p.started);
            if !same || !in_cgroup(proc_root, pid, cgroup_suffix) {
                continue;
            }
            let _ = pidfd_send_signal(&fd, Signal::STOP);
            held.insert(pid, fd);
            new = true;
        }
        if !new {
            break;
        }
    }
    for fd in held.values() {
        let _ = pidfd_send_signal(fd, Signal::KILL);
    }
}

/// Whether PIDs under `proc_root` name the same processes for this
/// process: its own PID is the same there (`self` there resolves to the
/// PID it has in that /proc's namespace).
fn sees_host_pids(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .is_ok_and(|p| p.to_str() == Some(std::process::id().to_string().as_str()))
}

/// What `<proc_root>/<pid>/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    parent: u32,
    /// Clock ticks after boot: with the PID, names one process for good.
    started: u64,
}

/// Every process, from `<proc_root>/<pid>/stat`.
fn processes(proc_root: &Path) -> HashMap<u32, ProcStat> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(proc_root, pid)?)))
        .collect()
}

fn read_stat(proc_root: &Path, pid: u32) -> Option<ProcStat> {
    let mut stat = String::new();
    File::open(proc_root.join(pid.to_string()).join("stat"))
        .ok()?
        .read_to_string(&mut stat)
        .ok()?;
    parse_stat(&stat)
}

/// The parent PID and start time in a `/proc/<pid>/stat` line: the fields
/// after the command name's closing parenthesis (a name may hold spaces
/// and parentheses of its own) are the state, the parent, and the start
/// time 19 fields after the state.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let parent = fields.nth(1)?.parse().ok()?;
    let started = fields.nth(17)?.parse().ok()?;
    Some(ProcStat { parent, started })
}

/// Every process below `root`.
fn descendants(parents: &HashMap<u32, u32>, root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if seen.insert(c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

fn in_cgroup(proc_root: &Path, pid: u32, suffix: &str) -> bool {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.ends_with(suffix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_and_start_follow_the_command_name_whatever_it_holds() {
        let tail = "42 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 2000000";
        let stat = |name: &str, parent: u32| parse_stat(&format!("42 ({name}) S {parent} {tail}"));
        let want = |parent| {
            Some(ProcStat {
                parent,
                started: 987654,
            })
        };
        assert_eq!(stat("cat", 7), want(7));
        assert_eq!(stat("a) b (c) R 5", 9), want(9));
        assert_eq!(parse_stat("42 (cat) S 7 42 1 0"), None, "cut short");
        assert_eq!(parse_stat("garbage"), None);
        // This very process, as the kernel writes it.
        let own = read_stat(Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(own.parent, std::os::unix::process::parent_id());
        assert_eq!(
            own,
            read_stat(Path::new("/proc"), std::process::id()).unwrap()
        );
    }

    #[test]
    fn descendants_are_the_whole_tree_below_and_nothing_else() {
        let parents = HashMap::from([(2, 1), (3, 2), (4, 3), (5, 2), (6, 1), (7, 6)]);
        let mut d = descendants(&parents, 2);
        d.sort();
        assert_eq!(d, [3, 4, 5]);
        assert!(descendants(&parents, 4).is_empty());
    }
}
