//! Construction of an agent pod from a pool's `agentTemplate`: the template
//! says what the user wants (image, resources, node selectors...), this adds
//! what every agent needs to work.

use std::collections::BTreeMap;
use std::path::Path;

use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::agent::DEFAULT_PORT;
use fast_sandbox_api::wellknown::{ANNOTATION_SLOTS, LABEL_POOL, LABEL_ROLE, ROLE_AGENT};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    ObjectFieldSelector, Pod, PodSpec, Probe, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

/// Name of the secret holding the agent's serving certificate, in the
/// controller's namespace (source) and in every pool's namespace (copy).
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
/// Name of the agent container when the template does not name one `agent`.
pub const AGENT_CONTAINER: &str = "agent";
/// Image of the agent container when the template has no container.
pub const DEFAULT_AGENT_IMAGE: &str = "fast-sandbox/agent:dev";

const VOLUME_SOCKET: &str = "containerd-socket";
const VOLUME_STATE: &str = "agent-state";
const VOLUME_TLS: &str = "agent-tls";
const VOLUME_PROC: &str = "host-proc";
/// Where the host's `/proc` is mounted in the agent: exposed ports are
/// forwarded into sandboxes' network namespaces found there.
pub const HOST_PROC_IN_POD: &str = "/host/proc";
/// Volumes the controller owns in an agent pod.
const OUR_VOLUMES: [&str; 4] = [VOLUME_SOCKET, VOLUME_STATE, VOLUME_TLS, VOLUME_PROC];

/// Node-level settings every agent pod of this controller shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPodSettings {
    /// Host path of containerd's socket.
    pub containerd_socket: String,
    /// Host path of the directory agents keep their state in (one subdir per
    /// agent pod UID).
    pub state_dir: String,
    /// containerd namespace sandboxes run in.
    pub containerd_namespace: String,
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

/// The labels that select a pool's agent pods.
pub fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_POOL.to_string(), pool.to_string()),
        (LABEL_ROLE.to_string(), ROLE_AGENT.to_string()),
    ])
}

/// The `/scale` label selector string of a pool.
pub fn selector_string(pool: &str) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds one agent pod of `pool` (named by `generateName`).
pub fn build(pool: &SandboxPool, settings: &AgentPodSettings) -> Pod {
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let template = pool.spec.agent_template.clone().unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut spec: PodSpec = template.spec.unwrap_or_default();

    let mut labels = tmeta.labels.unwrap_or_default();
    labels.extend(selector_labels(&pool_name));
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        ANNOTATION_SLOTS.to_string(),
        pool.spec.slots_per_agent().to_string(),
    );

    let owner = OwnerReference {
        api_version: SandboxPool::api_version(&()).to_string(),
        kind: SandboxPool::kind(&()).to_string(),
        name: pool_name.clone(),
        uid: pool.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    // Agents need a network namespace of their own: their logs API listens
    // on the pod's loopback, which on the host network any host-network pod
    // of the node could reach, and two agents of a node would fight over
    // the same ports.
    spec.host_network = Some(false);

    if spec.containers.is_empty() {
        spec.containers.push(Container {
            name: AGENT_CONTAINER.to_string(),
            image: Some(DEFAULT_AGENT_IMAGE.to_string()),
            ..Default::default()
        });
    }
    let idx = spec
        .containers
        .iter()
        .position(|c| c.name == AGENT_CONTAINER)
        .unwrap_or(0);
    equip_agent_container(&mut spec.containers[idx], pool, settings);

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| !OUR_VOLUMES.contains(&v.name.as_str()));
    volumes.push(Volume {
        name: VOLUME_SOCKET.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: settings.socket_dir(),
            type_: Some("Directory".to_string()),
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: VOLUME_PROC.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: "/proc".to_string(),
            type_: Some("Directory".to_string()),
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: VOLUME_STATE.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: settings.state_dir.clone(),
            type_: Some("DirectoryOrCreate".to_string()),
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: VOLUME_TLS.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(AGENT_TLS_SECRET.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Agents are replaced by the pool controller, never restarted in place
    // onto a different identity; the kubelet may restart the container.
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("Always".to_string());
    }

    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{pool_name}-agent-")),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn equip_agent_container(c: &mut Container, pool: &SandboxPool, settings: &AgentPodSettings) {
    if c.image.is_none() {
        c.image = Some(DEFAULT_AGENT_IMAGE.to_string());
    }
    let sc = c
        .security_context
        .get_or_insert_with(SecurityContext::default);
    sc.privileged = Some(true);

    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| !OUR_VOLUMES.contains(&m.name.as_str()));
    mounts.push(VolumeMount {
        name: VOLUME_SOCKET.to_string(),
        mount_path: CONTAINERD_SOCKET_DIR_IN_POD.to_string(),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: VOLUME_STATE.to_string(),
        mount_path: STATE_DIR_IN_POD.to_string(),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: VOLUME_PROC.to_string(),
        mount_path: HOST_PROC_IN_POD.to_string(),
        read_only: Some(true),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: VOLUME_TLS.to_string(),
        mount_path: AGENT_TLS_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    });

    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ours = [
        ("POD_NAME", None, Some(field("metadata.name"))),
        ("POD_NAMESPACE", None, Some(field("metadata.namespace"))),
        ("POD_UID", None, Some(field("metadata.uid"))),
        ("NODE_NAME", None, Some(field("spec.nodeName"))),
        ("POD_IP", None, Some(field("status.podIP"))),
        (
            "FAST_SANDBOX_HOST_PROC",
            Some(HOST_PROC_IN_POD.to_string()),
            None,
        ),
        ("SLOTS", Some(pool.spec.slots_per_agent().to_string()), None),
        (
            "FAST_SANDBOX_CONTAINERD_NAMESPACE",
            Some(settings.containerd_namespace.clone()),
            None,
        ),
        (
            "CONTAINERD_SOCKET",
            Some(format!(
                "{CONTAINERD_SOCKET_DIR_IN_POD}/{}",
                settings.socket_file()
            )),
            None,
        ),
        (
            "FAST_SANDBOX_STATE_DIR",
            Some(STATE_DIR_IN_POD.to_string()),
            None,
        ),
        (
            "FAST_SANDBOX_TLS_CERT",
            Some(format!("{AGENT_TLS_DIR}/tls.crt")),
            None,
        ),
        (
            "FAST_SANDBOX_TLS_KEY",
            Some(format!("{AGENT_TLS_DIR}/tls.key")),
            None,
        ),
        (
            "FAST_SANDBOX_CLIENT_CA",
            Some(format!("{AGENT_TLS_DIR}/ca.crt")),
            None,
        ),
    ];
    let env = c.env.get_or_insert_with(Vec::new);
    env.retain(|e| !ours.iter().any(|(n, _, _)| *n == e.name));
    env.extend(ours.into_iter().map(|(name, value, value_from)| EnvVar {
        name: name.to_string(),
        value,
        value_from,
    }));

    let ports = c.ports.get_or_insert_with(Vec::new);
    for (name, port) in [
        ("api", i32::from(DEFAULT_PORT)),
        ("ops", i32::from(OPS_PORT)),
    ] {
        if !ports.iter().any(|p| p.container_port == port) {
            ports.push(ContainerPort {
                name: Some(name.to_string()),
                container_port: port,
                protocol: Some("TCP".to_string()),
                ..Default::default()
            });
        }
    }

    c.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz".to_string()),
            port: IntOrString::Int(i32::from(OPS_PORT)),
            scheme: Some("HTTP".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(3),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::SandboxPoolSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    fn settings() -> AgentPodSettings {
        AgentPodSettings {
            containerd_socket: "/var/lib/c/containerd.sock".into(),
            state_dir: "/var/lib/fast-sandbox/agents".into(),
            containerd_namespace: "k8s.io".into(),
        }
    }

    fn pool() -> SandboxPool {
        let mut p = SandboxPool::new(
            "default-pool",
            SandboxPoolSpec {
                max_sandboxes_per_agent: Some(8),
                agent_template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([("team".into(), "x".into())])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "agent".into(),
                            image: Some("fast-sandbox/agent:dev".into()),
                            env: Some(vec![EnvVar {
                                name: "RUST_LOG".into(),
                                value: Some("debug".into()),
                                value_from: None,
                            }]),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("team-a".into());
        p.metadata.uid = Some("pool-uid".into());
        p
    }

    #[test]
    fn agent_pod_has_everything_an_agent_needs() {
        let pod = build(&pool(), &settings());
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("default-pool-agent-"));
        assert_eq!(meta.namespace.as_deref(), Some("team-a"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_POOL], "default-pool");
        assert_eq!(labels[LABEL_ROLE], ROLE_AGENT);
        assert_eq!(labels["team"], "x");
        assert_eq!(meta.annotations.as_ref().unwrap()[ANNOTATION_SLOTS], "8");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "SandboxPool");
        assert_eq!(owner.api_version, "sandbox.fast.io/v1alpha1");
        assert_eq!(owner.uid, "pool-uid");
        assert_eq!(owner.controller, Some(true));

        let spec = pod.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        let mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert!(mounts.contains(&(VOLUME_SOCKET, CONTAINERD_SOCKET_DIR_IN_POD)));
        assert!(mounts.contains(&(VOLUME_STATE, STATE_DIR_IN_POD)));
        assert!(mounts.contains(&(VOLUME_TLS, AGENT_TLS_DIR)));
        let vols = spec.volumes.as_ref().unwrap();
        let socket = vols.iter().find(|v| v.name == VOLUME_SOCKET).unwrap();
        assert_eq!(socket.host_path.as_ref().unwrap().path, "/var/lib/c");
        let env = c.env.as_ref().unwrap();
        let sock = env.iter().find(|e| e.name == "CONTAINERD_SOCKET").unwrap();
        assert_eq!(
            sock.value.as_deref(),
            Some("/run/fast-sandbox/containerd/containerd.sock")
        );
        let tls = vols.iter().find(|v| v.name == VOLUME_TLS).unwrap();
        assert_eq!(
            tls.secret.as_ref().unwrap().secret_name.as_deref(),
            Some(AGENT_TLS_SECRET)
        );

        let env = c.env.as_ref().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("RUST_LOG").value.as_deref(), Some("debug"));
        assert_eq!(get("SLOTS").value.as_deref(), Some("8"));
        assert_eq!(
            get("FAST_SANDBOX_CONTAINERD_NAMESPACE").value.as_deref(),
            Some("k8s.io")
        );
        for (name, path) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_UID", "metadata.uid"),
            ("NODE_NAME", "spec.nodeName"),
        ] {
            let f = get(name)
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap();
            assert_eq!(f.field_path, path);
        }
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(probe.port, IntOrString::Int(9090));
        assert!(
            c.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.container_port == 9443)
        );
    }

    #[test]
    fn empty_template_still_makes_a_working_agent() {
        let mut p = pool();
        p.spec.agent_template = None;
        let pod = build(&p, &settings());
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.name, AGENT_CONTAINER);
        assert_eq!(c.image.as_deref(), Some(DEFAULT_AGENT_IMAGE));
    }

    #[test]
    fn host_network_in_the_template_is_turned_off() {
        let mut p = pool();
        if let Some(spec) = p.spec.agent_template.as_mut().and_then(|t| t.spec.as_mut()) {
            spec.host_network = Some(true);
        }
        let pod = build(&p, &settings());
        assert_eq!(pod.spec.unwrap().host_network, Some(false));
    }

    #[test]
    fn selector_string_is_stable() {
        assert_eq!(
            selector_string("p"),
            "sandbox.fast.io/pool=p,sandbox.fast.io/role=agent"
        );
    }
}
