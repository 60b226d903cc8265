//! How many processes the kernel OOM-killed in a sandbox's cgroup. The
//! task's exit event and its OOM event are separate and may arrive in
//! either order (containerd 1.6 often sends the exit first); the counter
//! is already set when the exit comes, so an exit is reported with its
//! true reason the first time, never as `Error` then `OOMKilled`.

use std::path::Path;

/// The `oom_kill` count in the text of `memory.events` (v2) or
/// `memory.oom_control` (v1); both are `key value` lines.
pub fn kills_in(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// The OOM kill count of the cgroup at `path` under the cgroup filesystem
/// mounted at `root`; `None` when the cgroup is gone or the kernel does
/// not count.
pub fn kills(root: &Path, path: &str) -> Option<u64> {
    let rel = path.trim_start_matches('/');
    let file = if super::limits::is_v2(root) {
        root.join(rel).join("memory.events")
    } else {
        root.join("memory").join(rel).join("memory.oom_control")
    };
    kills_in(&std::fs::read_to_string(file).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(kills_in(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(kills_in(v2), Some(1));
        assert_eq!(kills_in("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(kills_in("oom_kill x\n"), None);
    }

    #[test]
    fn a_missing_cgroup_counts_nothing() {
        let dir = std::env::temp_dir().join(format!("fsb-oom-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory/p/s")).unwrap();
        std::fs::write(dir.join("memory/p/s/memory.oom_control"), "oom_kill 3\n").unwrap();
        assert_eq!(kills(&dir, "/p/s"), Some(3));
        assert_eq!(kills(&dir, "/p/gone"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
