//! Recognising the pods this extender cares about: agent pods of a pool.

use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE, LABEL_ROLE, ROLE_AGENT};

use crate::protocol::PodView;

/// Identifies a SandboxPool. Agent pods live in the operator's namespace
/// and name their pool's namespace and name in labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Namespace of the pool.
    pub namespace: String,
    /// Name of the pool.
    pub name: String,
}

impl PoolKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An agent pod being scheduled: its pool and the images it runs itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    /// The pool the agent serves.
    pub pool: PoolKey,
    /// Normalised images of the pod's containers and init containers.
    pub images: Vec<String>,
    /// The subset of `images` with `imagePullPolicy: Never`: a node without
    /// them cannot start the pod at all.
    pub never_pulled: Vec<String>,
    /// The pod's name (empty when the scheduler sent none): the node it
    /// scores best is assumed for it until the pod watch says where it went.
    pub name: String,
    /// The pod's own namespace (the operator's).
    pub namespace: String,
}

impl AgentPod {
    /// The agent view of `pod`, or `None` when it is not an agent pod (then
    /// the extender stays neutral).
    pub fn recognise(pod: &PodView) -> Option<Self> {
        let labels = &pod.metadata.labels;
        if labels.get(LABEL_ROLE).map(String::as_str) != Some(ROLE_AGENT) {
            return None;
        }
        let pool = labels.get(LABEL_POOL).filter(|p| !p.is_empty())?;
        let pool_namespace = labels.get(LABEL_POOL_NAMESPACE).filter(|p| !p.is_empty())?;
        let namespace = if pod.metadata.namespace.is_empty() {
            "default"
        } else {
            pod.metadata.namespace.as_str()
        };
        let mut images = Vec::new();
        let mut never_pulled = Vec::new();
        for c in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
            let Some(image) = c.image.as_deref().filter(|i| !i.trim().is_empty()) else {
                continue;
            };
            let image = normalize(image);
            if c.image_pull_policy.as_deref() == Some("Never") && !never_pulled.contains(&image) {
                never_pulled.push(image.clone());
            }
            if !images.contains(&image) {
                images.push(image);
            }
        }
        Some(AgentPod {
            pool: PoolKey::new(pool_namespace.as_str(), pool.as_str()),
            images,
            never_pulled,
            name: pod.metadata.name.clone(),
            namespace: namespace.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ContainerView;

    fn pod(labels: &[(&str, &str)]) -> PodView {
        let mut p = PodView::default();
        p.metadata.namespace = "fast-sandbox-system".into();
        for (k, v) in labels {
            p.metadata.labels.insert(k.to_string(), v.to_string());
        }
        p.spec.containers.push(ContainerView {
            image: Some("fast-sandbox/agent:dev".into()),
            image_pull_policy: Some("Never".into()),
        });
        p.spec.containers.push(ContainerView {
            image: Some("busybox".into()),
            image_pull_policy: None,
        });
        p
    }

    #[test]
    fn agent_pods_need_role_and_pool() {
        let ns = (LABEL_POOL_NAMESPACE, "team");
        assert!(AgentPod::recognise(&pod(&[])).is_none());
        assert!(AgentPod::recognise(&pod(&[(LABEL_ROLE, ROLE_AGENT)])).is_none());
        assert!(AgentPod::recognise(&pod(&[(LABEL_POOL, "p"), ns])).is_none());
        assert!(
            AgentPod::recognise(&pod(&[(LABEL_ROLE, "other"), (LABEL_POOL, "p"), ns])).is_none()
        );
        assert!(
            AgentPod::recognise(&pod(&[(LABEL_ROLE, ROLE_AGENT), (LABEL_POOL, "p")])).is_none(),
            "an agent names its pool's namespace"
        );
        let a =
            AgentPod::recognise(&pod(&[(LABEL_ROLE, ROLE_AGENT), (LABEL_POOL, "p"), ns])).unwrap();
        assert_eq!(a.pool, PoolKey::new("team", "p"));
        assert_eq!(a.namespace, "fast-sandbox-system");
        assert_eq!(
            a.images,
            vec![
                "docker.io/fast-sandbox/agent:dev".to_string(),
                "docker.io/library/busybox:latest".to_string()
            ]
        );
        assert_eq!(
            a.never_pulled,
            vec!["docker.io/fast-sandbox/agent:dev".to_string()]
        );
    }
}
