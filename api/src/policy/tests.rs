//! Unit tests of the operator policy: parsing, caps and the agent template checks.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use super::*;
use crate::pool::SandboxPoolSpec;
use crate::validation::FieldErrors;
use serde_json::json;

fn policy() -> Policy {
    Policy::parse(
        "agentImages: [fast-sandbox/agent:dev]\nnamespaceDefaults: {maxAgents: 5, maxSlots: 40}\nnamespaces:\n  big: {maxAgents: 100, maxPrestarted: 2}\n",
    )
    .unwrap()
}

fn fields(r: Result<(), FieldErrors>) -> Vec<String> {
    r.err()
        .map(|e| e.0.into_iter().map(|e| e.field).collect())
        .unwrap_or_default()
}

#[test]
fn the_original_manifest_is_allowed() {
    let t = json!({"spec": {"containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}});
    assert_eq!(check_agent_template(&t, &policy()), Ok(()));
    let t = json!({"spec": {"containers": [{"name": "agent", "image": "docker.io/fast-sandbox/agent:dev"}]}});
    assert_eq!(
        check_agent_template(&t, &policy()),
        Ok(()),
        "spellings of one image"
    );
    assert_eq!(check_agent_template(&Value::Null, &policy()), Ok(()));
}

#[test]
fn scheduling_sizing_and_plain_labels_are_allowed() {
    let t = json!({
        "metadata": {"labels": {"team": "a"}, "annotations": {"example.com/x": "y"}},
        "spec": {
            "nodeSelector": {"pool": "fast"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
            "priorityClassName": "high",
            "containers": [{"name": "agent", "resources": {"limits": {"memory": "1Gi"}}}]
        }
    });
    assert_eq!(check_agent_template(&t, &policy()), Ok(()));
}

#[test]
fn every_widening_field_is_refused_by_name() {
    let t = json!({
        "metadata": {"labels": {"app.kubernetes.io/name": "fast-sandbox-webhook"}, "annotations": {"sandbox.fast.io/draining": "x"}},
        "spec": {
            "hostNetwork": true, "hostPID": true, "volumes": [{"name": "root"}],
            "securityContext": {"runAsUser": 0}, "serviceAccountName": "x", "nodeName": "n",
            "initContainers": [{"name": "i"}], "priorityClassName": "system-node-critical",
            "containers": [
                {"name": "evil", "image": "evil/root:1", "command": ["sh"], "args": ["-c"],
                 "securityContext": {"privileged": true}, "volumeMounts": [{"name": "root", "mountPath": "/h"}],
                 "env": [{"name": "FAST_SANDBOX_X", "value": "1"}]},
                {"name": "sidecar"}
            ]
        }
    });
    let got = fields(check_agent_template(&t, &policy()));
    for want in [
        "spec.agentTemplate.metadata.labels[app.kubernetes.io/name]",
        "spec.agentTemplate.metadata.annotations[sandbox.fast.io/draining]",
        "spec.agentTemplate.spec.hostNetwork",
        "spec.agentTemplate.spec.hostPID",
        "spec.agentTemplate.spec.volumes",
        "spec.agentTemplate.spec.securityContext",
        "spec.agentTemplate.spec.serviceAccountName",
        "spec.agentTemplate.spec.nodeName",
        "spec.agentTemplate.spec.initContainers",
        "spec.agentTemplate.spec.priorityClassName",
        "spec.agentTemplate.spec.containers[0].name",
        "spec.agentTemplate.spec.containers[0].image",
        "spec.agentTemplate.spec.containers[0].command",
        "spec.agentTemplate.spec.containers[0].args",
        "spec.agentTemplate.spec.containers[0].securityContext",
        "spec.agentTemplate.spec.containers[0].volumeMounts",
        "spec.agentTemplate.spec.containers[0].env",
        "spec.agentTemplate.spec.containers[1]",
    ] {
        assert!(
            got.iter().any(|g| g == want),
            "{want} not refused; got {got:?}"
        );
    }
}

#[test]
fn the_controller_copies_only_what_is_allowed() {
    let t: PodTemplateSpec = serde_json::from_value(json!({
        "metadata": {"labels": {"team": "a", "app.kubernetes.io/name": "x"}},
        "spec": {"hostNetwork": true, "priorityClassName": "system-node-critical",
                 "containers": [{"name": "agent", "image": "evil/root:1", "command": ["sh"]}]}
    }))
    .unwrap();
    let r = AgentRequest::from_template(Some(&t), &policy());
    assert_eq!(r.image, "fast-sandbox/agent:dev");
    assert_eq!(r.labels, BTreeMap::from([("team".into(), "a".into())]));
    assert_eq!(r.priority_class_name, None);
}

#[test]
fn caps_default_and_override_per_namespace() {
    let p = policy();
    assert_eq!(
        p.caps("team"),
        Caps {
            max_agents: 5,
            max_slots: 40,
            max_prestarted: DEFAULT_MAX_PRESTARTED,
            max_sandbox: Policy::default().caps("x").max_sandbox,
            allow_egress: false,
            allow_host_users: false,
            egress_deny: vec![],
        }
    );
    assert_eq!(
        p.caps("big"),
        Caps {
            max_agents: 100,
            max_slots: 40,
            max_prestarted: 2,
            max_sandbox: Policy::default().caps("x").max_sandbox,
            allow_egress: false,
            allow_host_users: false,
            egress_deny: vec![],
        }
    );
    assert_eq!(
        Policy::default().caps("x"),
        Caps {
            max_agents: DEFAULT_MAX_AGENTS,
            max_slots: DEFAULT_MAX_SLOTS,
            max_prestarted: DEFAULT_MAX_PRESTARTED,
            max_sandbox: Policy::default().caps("x").max_sandbox,
            allow_egress: false,
            allow_host_users: false,
            egress_deny: vec![],
        }
    );
    assert!(Policy::parse("agentImages: [\"not an image\"]").is_err());
    assert!(
        Policy::parse("egressDeny: [10.0.0.1/8]").is_err(),
        "host bits"
    );
    let egress = Policy::parse(
        "namespaceDefaults: {allowEgress: true}\nnamespaces: {closed: {allowEgress: false}}\negressDeny: [10.0.0.0/8]",
    )
    .unwrap();
    assert!(egress.caps("open").allow_egress);
    assert!(!egress.caps("closed").allow_egress);
    assert_eq!(egress.egress_deny[0].to_string(), "10.0.0.0/8");
    assert!(Policy::parse("unknownKey: 1").is_err(), "typos are refused");
}

#[test]
fn sandbox_maximums_merge_field_by_field_and_bound_pool_defaults() {
    let p = Policy::parse(
        "namespaceDefaults: {maxSandboxResources: {cpu: '2', memory: 1Gi}}\nnamespaces: {big: {maxSandboxResources: {memory: 8Gi, pids: 4096}}}",
    )
    .unwrap();
    let big = p.caps("big").max_sandbox;
    assert_eq!(
        (big.cpu.unwrap().0, big.memory.unwrap().0, big.pids),
        ("2".to_string(), "8Gi".to_string(), Some(4096))
    );
    let err = Policy::parse("namespaces: {a: {maxSandboxResources: {memory: lots}}}")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("namespaces.a.maxSandboxResources.memory"),
        "{err}"
    );

    let spec: SandboxPoolSpec =
        serde_json::from_value(serde_json::json!({"sandboxDefaults": {"memory": "2Gi"}})).unwrap();
    let err = check_caps(&spec, &[], &p.caps("team"), "team").unwrap_err();
    assert_eq!(err.0[0].field, "spec.sandboxDefaults.memory");
    assert!(check_caps(&spec, &[], &p.caps("big"), "big").is_ok());
}

#[test]
fn pools_past_their_namespace_cap_are_refused_by_field() {
    let caps = policy().caps("team");
    let mut spec = SandboxPoolSpec::default();
    spec.capacity.pool_min = Some(1000);
    spec.capacity.pool_max = Some(1000);
    let got = fields(check_caps(&spec, &[], &caps, "team"));
    assert!(
        got.contains(&"spec.capacity.poolMin".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"spec.capacity.poolMax".to_string()),
        "{got:?}"
    );
    let mut ok = SandboxPoolSpec {
        max_sandboxes_per_agent: Some(8),
        ..Default::default()
    };
    ok.capacity.pool_min = Some(2);
    assert_eq!(check_caps(&ok, &[], &caps, "team"), Ok(()));
    let mut egress = ok.clone();
    egress.default_network = Some(crate::network::SandboxNetwork {
        mode: crate::network::NetworkMode::Egress,
        ..Default::default()
    });
    assert_eq!(
        fields(check_caps(&egress, &[], &caps, "team")),
        vec!["spec.defaultNetwork.mode"]
    );
    let open = Caps {
        allow_egress: true,
        ..caps.clone()
    };
    assert_eq!(check_caps(&egress, &[], &open, "team"), Ok(()));
    let host = SandboxPoolSpec {
        host_users: Some(true),
        ..ok.clone()
    };
    let refused = check_caps(&host, &[], &caps, "team").unwrap_err();
    assert_eq!(refused.0[0].field, "spec.hostUsers");
    assert!(
        refused.0[0].message.contains("allowHostUsers"),
        "{refused:?}"
    );
    let mapped = SandboxPoolSpec {
        host_users: Some(false),
        ..ok.clone()
    };
    assert_eq!(check_caps(&mapped, &[], &caps, "team"), Ok(()));
    let trusted = Caps {
        allow_host_users: true,
        ..caps.clone()
    };
    assert_eq!(check_caps(&host, &[], &trusted, "team"), Ok(()));
    // Two such pools keep 4 agents of 8 slots: 32 of 40 slots.
    assert_eq!(check_caps(&ok, &[&ok], &caps, "team"), Ok(()));
    let got = fields(check_caps(&ok, &[&ok, &ok], &caps, "team"));
    assert_eq!(got, ["spec.capacity.poolMin"]);
    let wide = SandboxPoolSpec {
        max_sandboxes_per_agent: Some(64),
        ..Default::default()
    };
    assert_eq!(
        fields(check_caps(&wide, &[], &caps, "team")),
        ["spec.maxSandboxesPerAgent"]
    );
}

#[test]
fn prestarted_past_the_namespace_cap_is_refused() {
    let big = policy().caps("big");
    let at = |p: Option<i32>| SandboxPoolSpec {
        prestarted: p,
        ..Default::default()
    };
    for ok in [None, Some(0), Some(2)] {
        assert_eq!(check_caps(&at(ok), &[], &big, "big"), Ok(()), "{ok:?}");
    }
    let err = check_caps(&at(Some(3)), &[], &big, "big").unwrap_err();
    assert_eq!(fields(Err(err.clone())), ["spec.prestarted"]);
    assert!(err.to_string().contains("3 exceeds the 2"), "{err}");
    // Without a cap a pool may ask for what the schema allows.
    let team = policy().caps("team");
    assert_eq!(
        check_caps(&at(Some(MAX_PRESTARTED)), &[], &team, "team"),
        Ok(())
    );
}
