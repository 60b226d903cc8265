//! Where a sandbox's cgroup goes: nested under the agent pod's cgroup, so
//! the kubelet's accounting and eviction see what sandboxes use.
//!
//! The pod's cgroup, not the agent container's: when the agent container
//! restarts (a crash, an OOM kill), its own cgroup is destroyed and every
//! process in it killed, while the pod's cgroup lives as long as the pod.
//! Sandboxes must survive an agent restart.

pub mod limits;
pub mod oom;

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

/// The pod-level cgroup that holds the container cgroup `own`: its parent
/// when that parent is a kubelet pod cgroup (`pod<uid>` with the cgroupfs
/// driver, `…-pod<uid>.slice` with systemd); `own` itself otherwise (an
/// agent run outside Kubernetes).
pub fn pod_cgroup(own: &str) -> String {
    let trimmed = own.trim_end_matches('/');
    if let Some((parent, _container)) = trimmed.rsplit_once('/') {
        let base = parent.rsplit('/').next().unwrap_or_default();
        let is_pod = base.starts_with("pod") || (base.contains("-pod") && base.ends_with(".slice"));
        if is_pod && !parent.is_empty() {
            return parent.to_string();
        }
    }
    own.to_string()
}

/// The cgroup path of one sandbox under `parent`.
pub fn sandbox_cgroup(parent: &str, uid: &str) -> String {
    let parent = parent.trim_end_matches('/');
    format!("{parent}/sandbox-{uid}")
}

/// The last component of the cgroup path of sandbox `uid` in container
/// `container_id`: a cold sandbox's cgroup is named by its UID, a claimed
/// pre-started one's by its container (made before the UID was known).
pub fn leaf(uid: &str, container_id: &str) -> String {
    if container_id.starts_with(PRESTARTED_PREFIX) {
        format!("sandbox-{container_id}")
    } else {
        format!("sandbox-{uid}")
    }
}

/// Container ids of pre-started sandboxes start with this.
pub const PRESTARTED_PREFIX: &str = "stock-";

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
    fn sandboxes_nest_under_the_pod_not_the_container() {
        assert_eq!(
            pod_cgroup("/kubepods/besteffort/podabc/c1"),
            "/kubepods/besteffort/podabc"
        );
        assert_eq!(pod_cgroup("/kubepods/podabc/c1/"), "/kubepods/podabc");
        assert_eq!(
            pod_cgroup(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice/cri-containerd-c1.scope"
            ),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice"
        );
        assert_eq!(
            pod_cgroup("/user.slice/session-1.scope"),
            "/user.slice/session-1.scope"
        );
        assert_eq!(pod_cgroup("/"), "/");
    }

    #[test]
    fn leaves_name_cold_sandboxes_by_uid_and_claimed_ones_by_container() {
        assert_eq!(leaf("u1", "sandbox-u1-r2"), "sandbox-u1");
        assert_eq!(leaf("u1", "stock-a-1f"), "sandbox-stock-a-1f");
        assert_eq!(
            sandbox_cgroup("/p", "stock-a-1f"),
            format!("/p/{}", leaf("u1", "stock-a-1f"))
        );
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
