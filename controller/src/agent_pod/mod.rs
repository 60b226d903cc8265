//! Construction of an agent pod. Agent pods are privileged and live in the
//! operator's namespace, built from the operator's own template (below);
//! from a pool they take only what [`AgentRequest`] allows: scheduling,
//! sizing, an agent image the operator lists, and plain labels and
//! annotations; from the rest of its spec the slots, the warm images and
//! the pre-started sandboxes (within the namespace's cap), and requests
//! that count its sandboxes (see [`crate::agent_sizing`]). No owner
//! reference can cross namespaces, so the pool's labels (namespace, name
//! and UID) tie an agent to its pool, and a finalizer on the pool removes
//! its agents.

use std::collections::BTreeMap;
use std::path::Path;

use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::policy::{AgentRequest, Policy};
use fast_sandbox_api::wellknown::{
    ANNOTATION_SLOTS, LABEL_POOL, LABEL_POOL_NAMESPACE, LABEL_POOL_UID, LABEL_ROLE, ROLE_AGENT,
};
use k8s_openapi::api::core::v1::{HostPathVolumeSource, Pod, PodSpec, SecretVolumeSource, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use container::agent_container;

mod container;
#[cfg(test)]
mod tests;

/// Name of the secret holding the agent's serving certificate, in the
/// operator's namespace next to the agent pods that mount it.
pub const AGENT_TLS_SECRET: &str = "fast-sandbox-agent-tls";
/// Where the agent's certificate is mounted.
pub const AGENT_TLS_DIR: &str = "/etc/fast-sandbox/tls";
/// Where the directory of the host's containerd socket is mounted in the
/// agent. The directory, not the socket file: containerd recreates its
/// socket when it restarts, and a bind mount of the old file would keep
/// refusing connections for the life of the pod.
pub const CONTAINERD_SOCKET_DIR_IN_POD: &str = "/run/fast-sandbox/containerd";
/// Where the host's agent state directory is mounted in the agent.
pub const STATE_DIR_IN_POD: &str = "/var/lib/fast-sandbox/agents";
/// Plain-HTTP port of the agent's `/healthz`, `/readyz` and `/metrics`.
pub const OPS_PORT: u16 = 9090;
/// Longest prefix of a generated pod name (Kubernetes adds 5 characters).
const MAX_GENERATE_NAME: usize = 58;

const VOLUME_SOCKET: &str = "containerd-socket";
const VOLUME_STATE: &str = "agent-state";
const VOLUME_TLS: &str = "agent-tls";
const VOLUME_PROC: &str = "host-proc";
/// Where the host's `/proc` is mounted in the agent: exposed ports are
/// forwarded into sandboxes' network namespaces found there.
pub const HOST_PROC_IN_POD: &str = "/host/proc";
const VOLUME_CGROUP: &str = "host-cgroup";
/// Where the host's cgroup filesystem is mounted in the agent: a claim of a
/// pre-started sandbox writes its limits to its cgroup, which the pod's own
/// `/sys/fs/cgroup` (its own subtree only) does not show.
pub const HOST_CGROUP_IN_POD: &str = "/host/sys/fs/cgroup";

/// Node-level settings every agent pod of this controller shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPodSettings {
    /// Namespace agent pods are created in (the operator's).
    pub namespace: String,
    /// Host path of containerd's socket.
    pub containerd_socket: String,
    /// Host path of the directory agents keep their state in (one subdir per
    /// agent pod UID).
    pub state_dir: String,
    /// containerd namespace sandboxes run in.
    pub containerd_namespace: String,
    /// Service account of agent pods (it needs no API access).
    pub service_account: String,
    /// Scheduler of agent pods (a second profile with the extender);
    /// the cluster's default when unset.
    pub scheduler_name: Option<String>,
}

impl AgentPodSettings {
    /// Host directory holding containerd's socket.
    fn socket_dir(&self) -> String {
        match Path::new(&self.containerd_socket).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
            _ => "/".to_string(),
        }
    }

    /// File name of containerd's socket in that directory.
    fn socket_file(&self) -> String {
        Path::new(&self.containerd_socket)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "containerd.sock".to_string())
    }
}

/// The labels that select the agent pods of the pool with this UID.
pub fn selector_labels(pool: &SandboxPool) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_ROLE.to_string(), ROLE_AGENT.to_string()),
        (
            LABEL_POOL_UID.to_string(),
            pool.metadata.uid.clone().unwrap_or_default(),
        ),
    ])
}

/// The `/scale` label selector string of a pool (its agents live in the
/// operator's namespace).
pub fn selector_string(pool: &SandboxPool) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The prefix of an agent pod's generated name: `<pool>-<namespace>-`,
/// shortened to what Kubernetes accepts.
fn name_prefix(pool: &str, namespace: &str) -> String {
    let mut p = format!("{pool}-{namespace}");
    p.truncate(MAX_GENERATE_NAME - 1);
    let p = p.trim_end_matches(['-', '.']);
    format!("{p}-")
}

/// Builds one agent pod of `pool` (named by `generateName`).
pub fn build(pool: &SandboxPool, policy: &Policy, settings: &AgentPodSettings) -> Pod {
    let pool_name = pool.name_any();
    let pool_ns = pool.namespace().unwrap_or_default();
    let req = AgentRequest::from_template(pool.spec.agent_template.as_ref(), policy);

    let mut labels = req.labels.clone();
    labels.extend(selector_labels(pool));
    labels.insert(LABEL_POOL.to_string(), pool_name.clone());
    labels.insert(LABEL_POOL_NAMESPACE.to_string(), pool_ns.clone());
    let mut annotations = req.annotations.clone();
    annotations.insert(
        ANNOTATION_SLOTS.to_string(),
        pool.spec.slots_per_agent().to_string(),
    );

    let spec = PodSpec {
        // Agents need a network namespace of their own: two agents of a
        // node would fight over the same ports.
        host_network: Some(false),
        // The host's PID namespace: when an exec is ended, the agent stops
        // and kills every process it started, by host PIDs that only name
        // them there (it already sees them through the host's /proc).
        host_pid: Some(true),
        service_account_name: Some(settings.service_account.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        node_selector: req.node_selector.clone(),
        affinity: req.affinity.clone(),
        tolerations: req.tolerations.clone(),
        topology_spread_constraints: req.topology_spread_constraints.clone(),
        priority_class_name: req.priority_class_name.clone(),
        scheduler_name: settings.scheduler_name.clone(),
        // Agents are replaced by the pool controller, never restarted in
        // place onto a different identity; the kubelet may restart the
        // container.
        restart_policy: Some("Always".to_string()),
        containers: vec![agent_container(
            pool,
            &req,
            &policy.caps(&pool_ns),
            settings,
        )],
        volumes: Some(volumes(settings)),
        ..Default::default()
    };

    Pod {
        metadata: ObjectMeta {
            generate_name: Some(name_prefix(&pool_name, &pool_ns)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn volumes(settings: &AgentPodSettings) -> Vec<Volume> {
    let host = |name: &str, path: String, type_: &str| Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path,
            type_: Some(type_.to_string()),
        }),
        ..Default::default()
    };
    vec![
        host(VOLUME_SOCKET, settings.socket_dir(), "Directory"),
        host(VOLUME_PROC, "/proc".to_string(), "Directory"),
        host(VOLUME_CGROUP, "/sys/fs/cgroup".to_string(), "Directory"),
        host(
            VOLUME_STATE,
            settings.state_dir.clone(),
            "DirectoryOrCreate",
        ),
        Volume {
            name: VOLUME_TLS.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(AGENT_TLS_SECRET.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}
