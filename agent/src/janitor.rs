//! The node janitor's rules: which containers, snapshots and log files
//! belong to agent pods that no longer exist. Pure decisions, no I/O; the
//! agent applies them (see [`crate::Agent::janitor`]).
//!
//! Everything is fenced by what the agents themselves write: a container is
//! only ever collected when it carries the `managed` label and an agent UID
//! label naming an agent that is neither the caller nor live; a snapshot
//! only when its key is under `fast-sandbox/<agent-uid>/` for such an agent.
//! Anything else in the namespace (the kubelet's containers, other tools')
//! is never touched.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use fast_sandbox_api::wellknown::container_labels as label;

/// Prefix of every snapshot key an agent makes; the agent's pod UID follows.
pub const SNAPSHOT_PREFIX: &str = "fast-sandbox/";

/// Whose a container is, from its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// UID of the agent pod that created it.
    pub agent_uid: String,
    /// UID of the sandbox it runs (empty when unlabelled).
    pub sandbox_uid: String,
}

/// The agents a sweep must spare: the caller and every live agent.
#[derive(Clone, Debug)]
pub struct Fence {
    own: String,
    live: HashSet<String>,
    namespace: Option<String>,
}

impl Fence {
    /// Spares `own` and every UID in `live`.
    pub fn new(own: &str, live: impl IntoIterator<Item = String>) -> Self {
        Self {
            own: own.to_string(),
            live: live.into_iter().collect(),
            namespace: None,
        }
    }

    /// Limits the sweep to containers of sandboxes in `namespace` (when
    /// set): the live list then speaks for that namespace only.
    pub fn scoped(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Whether snapshots without a container may be collected: only by an
    /// unscoped sweep, since a snapshot key names an agent, not a namespace.
    pub fn sweeps_orphan_snapshots(&self) -> bool {
        self.namespace.is_none()
    }

    /// Whether agent `uid` is gone: neither the caller nor live. An empty
    /// UID is never gone (it names nobody, so nothing can be proven dead).
    pub fn is_gone(&self, uid: &str) -> bool {
        !uid.is_empty() && uid != self.own && !self.live.contains(uid)
    }

    /// The owner of a container with `labels` if the container is to be
    /// collected: it is managed by Fast Sandbox and its agent is gone.
    pub fn collectable(&self, labels: &HashMap<String, String>) -> Option<Owner> {
        if labels.get(label::MANAGED).map(String::as_str) != Some("true") {
            return None;
        }
        if let Some(ns) = &self.namespace
            && labels.get(label::SANDBOX_NAMESPACE) != Some(ns)
        {
            return None;
        }
        let agent_uid = labels.get(label::AGENT_UID)?;
        self.is_gone(agent_uid).then(|| Owner {
            agent_uid: agent_uid.clone(),
            sandbox_uid: labels.get(label::SANDBOX_UID).cloned().unwrap_or_default(),
        })
    }

    /// Whether snapshot `key` was made by an agent that is gone.
    pub fn snapshot_collectable(&self, key: &str) -> bool {
        snapshot_agent(key).is_some_and(|uid| self.is_gone(uid))
    }
}

/// The agent UID a snapshot key names (`fast-sandbox/<uid>/...`).
pub fn snapshot_agent(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(SNAPSHOT_PREFIX)?;
    let (uid, tail) = rest.split_once('/')?;
    (!uid.is_empty() && !tail.is_empty()).then_some(uid)
}

/// Whether `uid` can name a directory: a pod UID, never a path.
fn is_plain_name(uid: &str) -> bool {
    !uid.is_empty()
        && uid != "."
        && uid != ".."
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The state directory of agent `agent_uid`, when agents share the layout
/// `<root>/<pod-uid>` and `own_state_dir` is the caller's own in it; `None`
/// otherwise (the janitor then leaves files alone).
pub fn state_dir_of(own_state_dir: &Path, own_uid: &str, agent_uid: &str) -> Option<PathBuf> {
    if !is_plain_name(agent_uid) || own_state_dir.file_name()? != own_uid {
        return None;
    }
    Some(own_state_dir.parent()?.join(agent_uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fence() -> Fence {
        Fence::new("me", ["b".to_string()])
    }

    #[test]
    fn only_managed_containers_of_gone_agents_are_collected() {
        let f = fence();
        let dead = labels(&[
            (label::MANAGED, "true"),
            (label::AGENT_UID, "a"),
            (label::SANDBOX_UID, "s1"),
        ]);
        assert_eq!(
            f.collectable(&dead),
            Some(Owner {
                agent_uid: "a".into(),
                sandbox_uid: "s1".into()
            })
        );
        for spared in [
            labels(&[(label::MANAGED, "true"), (label::AGENT_UID, "me")]),
            labels(&[(label::MANAGED, "true"), (label::AGENT_UID, "b")]),
            labels(&[(label::MANAGED, "true"), (label::AGENT_UID, "")]),
            labels(&[(label::MANAGED, "true")]),
            labels(&[(label::AGENT_UID, "a")]),
            labels(&[(label::MANAGED, "false"), (label::AGENT_UID, "a")]),
            labels(&[]),
        ] {
            assert_eq!(f.collectable(&spared), None, "{spared:?}");
        }
    }

    #[test]
    fn snapshots_are_fenced_by_their_key() {
        let f = fence();
        assert!(f.snapshot_collectable("fast-sandbox/a/sandbox-s1"));
        assert!(f.snapshot_collectable("fast-sandbox/a/warm-1-2"));
        assert!(!f.snapshot_collectable("fast-sandbox/me/sandbox-s1"));
        assert!(!f.snapshot_collectable("fast-sandbox/b/sandbox-s1"));
        assert!(!f.snapshot_collectable("fast-sandbox/a"));
        assert!(!f.snapshot_collectable("sha256:abc"));
        assert!(!f.snapshot_collectable("k8s.io/1/a/x"));
    }

    #[test]
    fn state_dirs_only_in_the_shared_layout() {
        let own = Path::new("/var/lib/fast-sandbox/agents/me");
        assert_eq!(
            state_dir_of(own, "me", "a"),
            Some(PathBuf::from("/var/lib/fast-sandbox/agents/a"))
        );
        assert_eq!(state_dir_of(Path::new("/tmp/xyz"), "me", "a"), None);
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert_eq!(state_dir_of(own, "me", bad), None, "{bad:?}");
        }
    }
}
