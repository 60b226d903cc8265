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
use fast_sandbox_api::agent::DEFAULT_PORT;
use fast_sandbox_api::image::ImageRef;
use fast_sandbox_api::policy::{AGENT_CONTAINER, AgentRequest, Caps, Policy};
use fast_sandbox_api::pool::DEFAULT_PRESTARTED;
use fast_sandbox_api::wellknown::{
    ANNOTATION_SLOTS, LABEL_POOL, LABEL_POOL_NAMESPACE, LABEL_POOL_UID, LABEL_ROLE, ROLE_AGENT,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    ObjectFieldSelector, Pod, PodSpec, Probe, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::agent_sizing::{agent_resources, default_limits};

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
/// The agent's setting of its sandboxes' containerd runtime.
const ENV_RUNTIME: &str = "FAST_SANDBOX_RUNTIME";
/// The agent's setting of the images it always keeps pre-started.
const ENV_STOCK_IMAGES: &str = "FAST_SANDBOX_STOCK_IMAGES";
/// The agent's setting of pre-started sandboxes per warm image.
const ENV_STOCK_SIZE: &str = "FAST_SANDBOX_STOCK_SIZE";
/// The agent's switch of egress for its sandboxes.
const ENV_EGRESS: &str = "FAST_SANDBOX_EGRESS";
/// Turns on the agent's user namespaces.
const ENV_USER_NAMESPACES: &str = "FAST_SANDBOX_USER_NAMESPACES";
/// The operator's ranges no egress sandbox reaches.
const ENV_EGRESS_DENY: &str = "FAST_SANDBOX_EGRESS_DENY";
/// The agent's setting of its pre-started sandboxes' writable layer cap.
const ENV_STOCK_EPHEMERAL_STORAGE: &str = "FAST_SANDBOX_STOCK_EPHEMERAL_STORAGE";

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

/// Pre-started sandboxes per warm image for the agents of `pool`: its
/// `prestarted` within the namespace's cap `max`. None leaves the agent's
/// default, unless the cap is below it (admission refuses a pool past the
/// cap, but the controller enforces it too, whatever reached etcd).
fn stock_size(pool: &SandboxPool, max: u32) -> Option<u32> {
    match pool.spec.prestarted {
        Some(p) => Some((p.max(0) as u32).min(max)),
        None => (max < DEFAULT_PRESTARTED as u32).then_some(max),
    }
}

/// The pool's `warmImages` as the agent reads them (comma separated), so
/// its agents keep them pre-started; None when there are none. Only
/// well-formed references are passed: they cannot hold a comma.
fn stock_images(pool: &SandboxPool) -> Option<String> {
    let images: Vec<&str> = pool
        .spec
        .warm_images
        .iter()
        .map(|i| i.trim())
        .filter(|i| ImageRef::parse(i).is_ok())
        .collect();
    (!images.is_empty()).then(|| images.join(","))
}

fn agent_container(
    pool: &SandboxPool,
    req: &AgentRequest,
    caps: &Caps,
    settings: &AgentPodSettings,
) -> Container {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = |name: &str, v: String| EnvVar {
        name: name.to_string(),
        value: Some(v),
        value_from: None,
    };
    let from = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(field(path)),
    };
    let mut env = vec![
        from("POD_NAME", "metadata.name"),
        from("POD_NAMESPACE", "metadata.namespace"),
        from("POD_UID", "metadata.uid"),
        from("NODE_NAME", "spec.nodeName"),
        from("POD_IP", "status.podIP"),
        from("HOST_IP", "status.hostIP"),
        value("FAST_SANDBOX_HOST_PROC", HOST_PROC_IN_POD.to_string()),
        value("FAST_SANDBOX_CGROUP_ROOT", HOST_CGROUP_IN_POD.to_string()),
        value("SLOTS", pool.spec.slots_per_agent().to_string()),
        value(
            "FAST_SANDBOX_CONTAINERD_NAMESPACE",
            settings.containerd_namespace.clone(),
        ),
        value(
            "CONTAINERD_SOCKET",
            format!("{CONTAINERD_SOCKET_DIR_IN_POD}/{}", settings.socket_file()),
        ),
        value("FAST_SANDBOX_STATE_DIR", STATE_DIR_IN_POD.to_string()),
        value("FAST_SANDBOX_TLS_CERT", format!("{AGENT_TLS_DIR}/tls.crt")),
        value("FAST_SANDBOX_TLS_KEY", format!("{AGENT_TLS_DIR}/tls.key")),
        value("FAST_SANDBOX_CLIENT_CA", format!("{AGENT_TLS_DIR}/ca.crt")),
    ];
    // Agents of namespaces that may not ask for egress leave their pod's
    // network alone.
    if caps.allow_egress {
        env.push(value(ENV_EGRESS, "true".to_string()));
        let deny: Vec<String> = caps.egress_deny.iter().map(|c| c.to_string()).collect();
        env.push(value(ENV_EGRESS_DENY, deny.join(",")));
    }
    if let Some(runtime) = pool.spec.runtime {
        env.push(value(ENV_RUNTIME, runtime.containerd_runtime().to_string()));
    }
    // Every pool's sandboxes run in user namespaces unless it says
    // otherwise (admission has checked the policy allows that).
    if pool.spec.host_users != Some(true) {
        env.push(value(ENV_USER_NAMESPACES, "true".to_string()));
    }
    if let Some(images) = stock_images(pool) {
        env.push(value(ENV_STOCK_IMAGES, images));
    }
    if let Some(n) = stock_size(pool, caps.max_prestarted) {
        env.push(value(ENV_STOCK_SIZE, n.to_string()));
    }
    // Pre-started roots get the cap a sandbox asking for nothing gets, so
    // that common case claims one.
    if let Some(cap) = default_limits(pool, &caps.max_sandbox).ephemeral_storage_bytes {
        env.push(value(ENV_STOCK_EPHEMERAL_STORAGE, cap.to_string()));
    }
    Container {
        name: AGENT_CONTAINER.to_string(),
        image: Some(req.image.clone()),
        image_pull_policy: req.image_pull_policy.clone(),
        resources: Some(agent_resources(
            req.resources.as_ref(),
            pool,
            pool.spec.slots_per_agent(),
            &caps.max_sandbox,
        )),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(VOLUME_SOCKET, CONTAINERD_SOCKET_DIR_IN_POD, false),
            mount(VOLUME_STATE, STATE_DIR_IN_POD, false),
            mount(VOLUME_PROC, HOST_PROC_IN_POD, true),
            mount(VOLUME_CGROUP, HOST_CGROUP_IN_POD, false),
            mount(VOLUME_TLS, AGENT_TLS_DIR, true),
        ]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("api".to_string()),
                container_port: i32::from(DEFAULT_PORT),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("ops".to_string()),
                container_port: i32::from(OPS_PORT),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".to_string()),
                port: IntOrString::Int(i32::from(OPS_PORT)),
                scheme: Some("HTTP".to_string()),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::SandboxPoolSpec;
    use fast_sandbox_api::pool::SandboxRuntime;
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    fn settings() -> AgentPodSettings {
        AgentPodSettings {
            namespace: "fast-sandbox-system".into(),
            containerd_socket: "/var/lib/c/containerd.sock".into(),
            state_dir: "/var/lib/fast-sandbox/agents".into(),
            containerd_namespace: "k8s.io".into(),
            service_account: "fast-sandbox-agent".into(),
            scheduler_name: None,
        }
    }

    fn pool(template: serde_json::Value) -> SandboxPool {
        let mut p = SandboxPool::new(
            "default-pool",
            SandboxPoolSpec {
                max_sandboxes_per_agent: Some(8),
                agent_template: Some(serde_json::from_value::<PodTemplateSpec>(template).unwrap()),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("team-a".into());
        p.metadata.uid = Some("pool-uid".into());
        p
    }

    /// The values of every env var `name` of the agent container.
    fn env_values(pod: &Pod, name: &str) -> Vec<Option<String>> {
        pod.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter(|e| e.name == name)
            .map(|e| e.value.clone())
            .collect()
    }

    fn original() -> SandboxPool {
        pool(serde_json::json!({
            "metadata": {"labels": {"team": "x"}},
            "spec": {"containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}
        }))
    }

    #[test]
    fn agent_pods_live_in_the_operators_namespace_tied_to_their_pool_by_labels() {
        let pod = build(&original(), &Policy::default(), &settings());
        let meta = &pod.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("fast-sandbox-system"));
        assert_eq!(meta.generate_name.as_deref(), Some("default-pool-team-a-"));
        assert!(meta.owner_references.is_none(), "no cross-namespace owner");
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_POOL], "default-pool");
        assert_eq!(labels[LABEL_POOL_NAMESPACE], "team-a");
        assert_eq!(labels[LABEL_POOL_UID], "pool-uid");
        assert_eq!(labels[LABEL_ROLE], ROLE_AGENT);
        assert_eq!(labels["team"], "x");
        assert_eq!(meta.annotations.as_ref().unwrap()[ANNOTATION_SLOTS], "8");
        assert_eq!(
            selector_string(&original()),
            "sandbox.fast.io/pool-uid=pool-uid,sandbox.fast.io/role=agent"
        );
    }

    #[test]
    fn agent_pod_has_everything_an_agent_needs() {
        let pod = build(&original(), &Policy::default(), &settings());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.name, AGENT_CONTAINER);
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
        assert!(mounts.contains(&(VOLUME_CGROUP, HOST_CGROUP_IN_POD)));
        let vols = spec.volumes.as_ref().unwrap();
        let socket = vols.iter().find(|v| v.name == VOLUME_SOCKET).unwrap();
        assert_eq!(socket.host_path.as_ref().unwrap().path, "/var/lib/c");
        let env = c.env.as_ref().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap();
        assert_eq!(
            get("CONTAINERD_SOCKET").value.as_deref(),
            Some("/run/fast-sandbox/containerd/containerd.sock")
        );
        assert_eq!(get("SLOTS").value.as_deref(), Some("8"));
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
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("fast-sandbox-agent")
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_template_cannot_widen_the_pod() {
        let evil = pool(serde_json::json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "fast-sandbox-webhook"}},
            "spec": {
                "hostNetwork": true, "hostPID": true, "nodeName": "n1",
                "serviceAccountName": "fast-sandbox-controller",
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                "initContainers": [{"name": "i", "image": "evil"}],
                "nodeSelector": {"disk": "ssd"},
                "containers": [
                    {"name": "agent", "image": "evil/root:1", "command": ["/bin/sh"],
                     "env": [{"name": "FAST_SANDBOX_ALLOWED_CLIENTS", "value": "anyone"},
                             {"name": "FAST_SANDBOX_STOCK_SIZE", "value": "100000"},
                             {"name": "FAST_SANDBOX_RUNTIME", "value": "io.containerd.evil.v1"},
                             {"name": "FAST_SANDBOX_STOCK_IMAGES", "value": "evil/a,evil/b"},
                             {"name": "FAST_SANDBOX_EGRESS", "value": "true"},
                             {"name": "FAST_SANDBOX_EGRESS_DENY", "value": ""}],
                     "volumeMounts": [{"name": "root", "mountPath": "/host"}],
                     "resources": {"limits": {"memory": "1Gi"}}},
                    {"name": "sidecar", "image": "evil"}
                ]
            }
        }));
        let pod = build(&evil, &Policy::default(), &settings());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.host_network, Some(false));
        assert_eq!(spec.host_pid, None);
        assert_eq!(spec.node_name, None);
        assert!(spec.init_containers.is_none());
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("fast-sandbox-agent")
        );
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("fast-sandbox/agent:dev"));
        assert!(c.command.is_none());
        for name in [
            "FAST_SANDBOX_ALLOWED_CLIENTS",
            ENV_STOCK_SIZE,
            ENV_STOCK_IMAGES,
            ENV_RUNTIME,
            ENV_EGRESS,
            ENV_EGRESS_DENY,
        ] {
            assert!(
                env_values(&pod, name).is_empty(),
                "{name} from the template"
            );
        }
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.name != "root")
        );
        assert!(
            spec.volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.name != "root")
        );
        assert!(
            !pod.metadata
                .labels
                .unwrap()
                .contains_key("app.kubernetes.io/name")
        );
        // What a pool may choose is kept.
        assert_eq!(spec.node_selector.as_ref().unwrap()["disk"], "ssd");
        assert!(c.resources.is_some());
    }

    #[test]
    fn warm_images_and_prestarted_reach_the_agent() {
        let mut p = original();
        let none = build(&p, &Policy::default(), &settings());
        assert!(env_values(&none, ENV_STOCK_IMAGES).is_empty());
        assert!(
            env_values(&none, ENV_STOCK_SIZE).is_empty(),
            "unset: the agent's default"
        );
        p.spec.warm_images = vec!["busybox:1".into(), " docker.io/library/python:3 ".into()];
        p.spec.prestarted = Some(8);
        let pod = build(&p, &Policy::default(), &settings());
        assert_eq!(
            env_values(&pod, ENV_STOCK_IMAGES),
            [Some("busybox:1,docker.io/library/python:3".to_string())]
        );
        assert_eq!(env_values(&pod, ENV_STOCK_SIZE), [Some("8".to_string())]);
        p.spec.prestarted = Some(0);
        let off = build(&p, &Policy::default(), &settings());
        assert_eq!(
            env_values(&off, ENV_STOCK_SIZE),
            [Some("0".to_string())],
            "0 disables"
        );
    }

    #[test]
    fn the_pools_runtime_reaches_the_agent() {
        let mut p = original();
        let none = build(&p, &Policy::default(), &settings());
        assert!(env_values(&none, ENV_RUNTIME).is_empty(), "unset: runc");
        p.spec.runtime = Some(SandboxRuntime::Gvisor);
        let pod = build(&p, &Policy::default(), &settings());
        assert_eq!(
            env_values(&pod, ENV_RUNTIME),
            [Some("io.containerd.runsc.v1".to_string())]
        );
    }

    #[test]
    fn pre_started_roots_get_the_layer_cap_of_a_sandbox_asking_for_none() {
        let mut p = original();
        let none = build(&p, &Policy::default(), &settings());
        assert!(env_values(&none, ENV_STOCK_EPHEMERAL_STORAGE).is_empty());
        p.spec.sandbox_defaults =
            Some(serde_json::from_value(serde_json::json!({"ephemeralStorage": "64Mi"})).unwrap());
        let pod = build(&p, &Policy::default(), &settings());
        assert_eq!(
            env_values(&pod, ENV_STOCK_EPHEMERAL_STORAGE),
            [Some((64u64 << 20).to_string())]
        );
        // The operator's maximum lowers a default above it, and stands in
        // for a missing one.
        let policy = Policy::parse(
            "namespaces:\n  team-a: {maxSandboxResources: {ephemeralStorage: 32Mi}}\n",
        )
        .unwrap();
        let pod = build(&p, &policy, &settings());
        assert_eq!(
            env_values(&pod, ENV_STOCK_EPHEMERAL_STORAGE),
            [Some((32u64 << 20).to_string())]
        );
        p.spec.sandbox_defaults = None;
        let pod = build(&p, &policy, &settings());
        assert_eq!(
            env_values(&pod, ENV_STOCK_EPHEMERAL_STORAGE),
            [Some((32u64 << 20).to_string())]
        );
    }

    #[test]
    fn a_warm_image_that_could_split_the_list_is_not_passed() {
        let mut p = original();
        p.spec.warm_images = vec!["a:1,evil:2".into(), "".into(), "b:1".into()];
        let pod = build(&p, &Policy::default(), &settings());
        assert_eq!(
            env_values(&pod, ENV_STOCK_IMAGES),
            [Some("b:1".to_string())]
        );
        p.spec.warm_images = vec!["a:1,evil:2".into()];
        let pod = build(&p, &Policy::default(), &settings());
        assert!(env_values(&pod, ENV_STOCK_IMAGES).is_empty());
    }

    #[test]
    fn prestarted_stays_within_the_namespace_cap() {
        let policy = Policy::parse("namespaces:\n  team-a: {maxPrestarted: 2}\n").unwrap();
        let mut p = original();
        for (asked, got) in [(Some(8), "2"), (Some(1), "1"), (Some(0), "0"), (None, "2")] {
            p.spec.prestarted = asked;
            let pod = build(&p, &policy, &settings());
            assert_eq!(
                env_values(&pod, ENV_STOCK_SIZE),
                [Some(got.to_string())],
                "{asked:?}"
            );
        }
        // A cap at or above the agent's default leaves an unset pool alone.
        let policy = Policy::parse("namespaces:\n  team-a: {maxPrestarted: 4}\n").unwrap();
        p.spec.prestarted = None;
        assert!(env_values(&build(&p, &policy, &settings()), ENV_STOCK_SIZE).is_empty());
    }

    #[test]
    fn long_names_are_shortened_for_generate_name() {
        let p = name_prefix(&"p".repeat(100), "ns");
        assert!(p.len() <= MAX_GENERATE_NAME, "{p}");
        assert!(p.ends_with('-'));
        assert_eq!(name_prefix("a", "b"), "a-b-");
    }

    #[test]
    fn agents_get_egress_only_where_the_policy_allows_it() {
        let p = pool(serde_json::json!({}));
        let closed = build(&p, &Policy::default(), &settings());
        assert!(env_values(&closed, ENV_EGRESS).is_empty());
        let policy = Policy::parse(
            "namespaceDefaults: {allowEgress: true}\negressDeny: [10.0.0.0/8, 192.168.0.0/16]",
        )
        .unwrap();
        let open = build(&p, &policy, &settings());
        assert_eq!(env_values(&open, ENV_EGRESS), vec![Some("true".into())]);
        assert_eq!(
            env_values(&open, ENV_EGRESS_DENY),
            vec![Some("10.0.0.0/8,192.168.0.0/16".into())]
        );
    }

    #[test]
    fn agents_map_users_unless_the_pool_runs_host_users() {
        let with = |host_users: Option<bool>| {
            let mut p = pool(serde_json::json!({}));
            p.spec.host_users = host_users;
            env_values(
                &build(&p, &Policy::default(), &settings()),
                ENV_USER_NAMESPACES,
            )
        };
        assert_eq!(with(None), vec![Some("true".into())]);
        assert_eq!(with(Some(false)), vec![Some("true".into())]);
        assert!(with(Some(true)).is_empty());
    }
}
