//! Where a sandbox's cgroup goes: nested under the agent pod's own cgroup,
//! so the kubelet's accounting and eviction see what sandboxes use.

/// Controller whose path names the agent's cgroup on cgroup v1; memory is
/// the one kubelet accounting and OOM decisions hinge on.
const PREFERRED_CONTROLLER: &str = "memory";

/// The agent's own cgroup path from the text of `/proc/self/cgroup`.
///
/// On cgroup v1 each hierarchy has a line `id:controllers:path`; the memory
/// hierarchy's path is used (in a pod every controller has the same path).
/// On a pure cgroup v2 host the single `0::path` line is used. Named
/// hierarchies (`name=systemd`) are skipped.
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<String> {
    let mut first_v1 = None;
    let mut unified = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            unified = Some(path.to_string());
            continue;
        }
        if controllers.starts_with("name=") {
            continue;
        }
        if controllers.split(',').any(|c| c == PREFERRED_CONTROLLER) {
            return Some(path.to_string());
        }
        first_v1.get_or_insert_with(|| path.to_string());
    }
    first_v1.or(unified)
}

/// The cgroup path of one sandbox under `parent`.
pub fn sandbox_cgroup(parent: &str, uid: &str) -> String {
    let parent = parent.trim_end_matches('/');
    format!("{parent}/sandbox-{uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_prefers_the_memory_hierarchy() {
        let text = "9:name=systemd:/kubepods/pod1/c1\n8:pids:/kubepods/pod1/c1\n4:memory:/kubepods/burstable/pod1/c1\n0::/\n";
        assert_eq!(
            own_cgroup(text).as_deref(),
            Some("/kubepods/burstable/pod1/c1")
        );
    }

    #[test]
    fn v1_without_memory_uses_the_first_controller() {
        let text = "9:name=systemd:/x\n8:pids:/a/b\n2:cpu,cpuacct:/c\n";
        assert_eq!(own_cgroup(text).as_deref(), Some("/a/b"));
    }

    #[test]
    fn v2_uses_the_unified_line() {
        assert_eq!(
            own_cgroup("0::/kubepods.slice/x.scope\n").as_deref(),
            Some("/kubepods.slice/x.scope")
        );
        assert_eq!(own_cgroup("garbage"), None);
    }

    #[test]
    fn sandbox_nests_under_the_parent() {
        assert_eq!(sandbox_cgroup("/", "u1"), "/sandbox-u1");
        assert_eq!(
            sandbox_cgroup("/kubepods/pod1/c1", "u1"),
            "/kubepods/pod1/c1/sandbox-u1"
        );
    }
}
