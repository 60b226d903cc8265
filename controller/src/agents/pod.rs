//! What an agent pod's object says of its agent: whether it is ready,
//! going away or draining, and its pool and node.

use fast_sandbox_api::wellknown::{ANNOTATION_DRAINING, LABEL_POOL, LABEL_POOL_NAMESPACE};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the scheduler found no node for the pod (its PodScheduled
/// condition is False with reason Unschedulable).
pub fn pod_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// Whether the pod is finished or being deleted: its agent is going away.
pub fn pod_gone(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Failed" || p == "Succeeded")
}

/// Whether the pod carries the draining annotation.
pub fn pod_draining(pod: &Pod) -> bool {
    pod.annotations().contains_key(ANNOTATION_DRAINING)
}

/// The pool an agent pod belongs to: its namespace and name, from labels.
pub fn pool_of(pod: &Pod) -> Option<(String, String)> {
    let l = pod.labels();
    Some((
        l.get(LABEL_POOL_NAMESPACE)?.clone(),
        l.get(LABEL_POOL)?.clone(),
    ))
}

/// The node of a pod, empty while unscheduled.
pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p-ns-x".into()),
                namespace: Some("fast-sandbox-system".into()),
                labels: Some(BTreeMap::from([
                    (LABEL_POOL.to_string(), "p".to_string()),
                    (LABEL_POOL_NAMESPACE.to_string(), "team".to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_pool_and_node_come_from_the_pod() {
        let p = pod(true);
        assert_eq!(pool_of(&p), Some(("team".into(), "p".into())));
        assert_eq!(node_of(&p), "node1");
        assert!(pod_ready(&p));
        assert!(!pod_ready(&pod(false)));
        let mut bare = p.clone();
        bare.metadata.labels = None;
        assert_eq!(pool_of(&bare), None);
    }

    #[test]
    fn terminating_or_failed_pods_are_gone() {
        let mut p = pod(true);
        assert!(!pod_gone(&p));
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(pod_gone(&p));
    }
}
