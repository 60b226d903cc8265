//! Fixtures shaped like what kube-scheduler v1.34 sends: Go-encoded
//! `v1.Pod` and `v1.Node` objects inside `ExtenderArgs`.
#![allow(dead_code)]

use std::sync::Arc;

use fast_sandbox_extender::{Index, ScoringConfig};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

pub const MIB: i64 = 1 << 20;

/// A Node as the kubelet reports it, with `images` as (names, size).
pub fn node(name: &str, images: &[(&[&str], i64)]) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": format!("uid-{name}"),
            "resourceVersion": "4711",
            "creationTimestamp": "2025-01-02T03:04:05Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux"
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": [{
                "manager": "kubelet",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2025-01-02T03:04:05Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:images": {}}},
                "subresource": "status"
            }]
        },
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2025-01-02T03:04:05Z",
                 "lastTransitionTime": "2025-01-02T03:04:05Z", "reason": "KubeletHasSufficientMemory",
                 "message": "kubelet has sufficient memory available"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2025-01-02T03:04:05Z",
                 "lastTransitionTime": "2025-01-02T03:04:05Z", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status"}
            ],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.6.20",
                "kubeletVersion": "v1.34.0", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64"
            },
            "images": images.iter().map(|(names, size)| json!({"names": names, "sizeBytes": size})).collect::<Vec<_>>()
        }
    })
}

/// A pod as kube-scheduler sends it; `labels` decide whether it is an agent.
pub fn pod(name: &str, labels: Value, image: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "generateName": "default-pool-team-a-",
            "namespace": "fast-sandbox-system",
            "uid": "7f0c2b8e-1d7a-4bd8-9d52-2f0e0c8d1a11",
            "resourceVersion": "812",
            "creationTimestamp": "2025-01-02T03:04:05Z",
            "labels": labels,
            "annotations": {"sandbox.fast.io/slots": "16"}
        },
        "spec": {
            "volumes": [{"name": "containerd", "hostPath": {"path": "/run/containerd/containerd.sock", "type": "Socket"}}],
            "containers": [{
                "name": "agent",
                "image": image,
                "ports": [{"containerPort": 9443, "protocol": "TCP"}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "containerd", "mountPath": "/run/containerd/containerd.sock"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "Never",
                "securityContext": {"privileged": true}
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    })
}

pub fn agent_labels(pool: &str) -> Value {
    json!({"sandbox.fast.io/role": "agent", "sandbox.fast.io/pool": pool,
           "sandbox.fast.io/pool-namespace": "team-a"})
}

/// `ExtenderArgs` with `nodeCacheCapable: true`.
pub fn names_args(pod: &Value, names: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({"Pod": pod, "Nodes": null, "NodeNames": names})).unwrap()
}

/// `ExtenderArgs` with `nodeCacheCapable: false`.
pub fn objects_args(pod: &Value, nodes: &[Value]) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}),
    )
    .unwrap()
}

/// An index fed with `nodes` (decoded as the node watch would) and a pool.
pub fn index(nodes: &[Value], pool_warm: &[&str]) -> Arc<Index> {
    let idx = Arc::new(Index::new(ScoringConfig::default()));
    let nodes: Vec<Node> = nodes
        .iter()
        .map(|n| serde_json::from_value(n.clone()).unwrap())
        .collect();
    idx.replace_nodes(&nodes);
    let pool: fast_sandbox_api::SandboxPool = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": "default-pool", "namespace": "team-a"},
        "spec": {"warmImages": pool_warm}
    }))
    .unwrap();
    idx.apply_pool(&pool);
    idx
}

/// An agent pod of `pool` already running on `node`, as the pod watch sees it.
pub fn running_agent(name: &str, pool: &str, node: &str) -> Pod {
    let mut p = pod(name, agent_labels(pool), "fast-sandbox/agent:dev");
    p["spec"]["nodeName"] = json!(node);
    p["status"]["phase"] = json!("Running");
    serde_json::from_value(p).unwrap()
}
