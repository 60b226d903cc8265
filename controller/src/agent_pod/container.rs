//! The agent container of an agent pod: the image and resources the
//! pool's request allows, the privileges, mounts, ports and readiness
//! probe every agent needs, and the environment that configures the agent
//! (slots, runtime, egress, user namespaces, pre-started sandboxes).

use fast_sandbox_api::SandboxPool;
use fast_sandbox_api::agent::DEFAULT_PORT;
use fast_sandbox_api::image::ImageRef;
use fast_sandbox_api::policy::{AGENT_CONTAINER, AgentRequest, Caps};
use fast_sandbox_api::pool::DEFAULT_PRESTARTED;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    AGENT_TLS_DIR, AgentPodSettings, CONTAINERD_SOCKET_DIR_IN_POD, HOST_CGROUP_IN_POD,
    HOST_PROC_IN_POD, OPS_PORT, STATE_DIR_IN_POD, VOLUME_CGROUP, VOLUME_PROC, VOLUME_SOCKET,
    VOLUME_STATE, VOLUME_TLS,
};
use crate::agent_sizing::{agent_resources, default_limits};

/// The agent's setting of its sandboxes' containerd runtime.
pub(super) const ENV_RUNTIME: &str = "FAST_SANDBOX_RUNTIME";
/// The agent's setting of the images it always keeps pre-started.
pub(super) const ENV_STOCK_IMAGES: &str = "FAST_SANDBOX_STOCK_IMAGES";
/// The agent's setting of pre-started sandboxes per warm image.
pub(super) const ENV_STOCK_SIZE: &str = "FAST_SANDBOX_STOCK_SIZE";
/// The agent's switch of egress for its sandboxes.
pub(super) const ENV_EGRESS: &str = "FAST_SANDBOX_EGRESS";
/// Turns on the agent's user namespaces.
pub(super) const ENV_USER_NAMESPACES: &str = "FAST_SANDBOX_USER_NAMESPACES";
/// The operator's ranges no egress sandbox reaches.
pub(super) const ENV_EGRESS_DENY: &str = "FAST_SANDBOX_EGRESS_DENY";
/// The agent's setting of its pre-started sandboxes' writable layer cap.
pub(super) const ENV_STOCK_EPHEMERAL_STORAGE: &str = "FAST_SANDBOX_STOCK_EPHEMERAL_STORAGE";

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

/// The agent container of one agent pod of `pool`.
pub(super) fn agent_container(
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
