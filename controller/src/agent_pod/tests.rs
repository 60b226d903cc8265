//! Unit tests of agent pod construction: what every agent gets, what a
//! pool may choose, and what its template can never widen.

use fast_sandbox_api::SandboxPoolSpec;
use fast_sandbox_api::policy::AGENT_CONTAINER;
use fast_sandbox_api::pool::SandboxRuntime;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::container::{
    ENV_EGRESS, ENV_EGRESS_DENY, ENV_RUNTIME, ENV_STOCK_EPHEMERAL_STORAGE, ENV_STOCK_IMAGES,
    ENV_STOCK_SIZE, ENV_USER_NAMESPACES,
};
use super::*;

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
    assert_eq!(spec.host_pid, Some(true), "ours, not the template's");
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
    let policy =
        Policy::parse("namespaces:\n  team-a: {maxSandboxResources: {ephemeralStorage: 32Mi}}\n")
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
