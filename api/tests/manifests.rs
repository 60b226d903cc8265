//! The manifests of the original README still work unchanged, the
//! checked-in CRDs match the Rust types, and invalid objects are refused
//! both by the generated OpenAPI schema and by the shared validation.

use fast_sandbox_api::policy::{DEFAULT_MAX_PRESTARTED, POLICY_KEY, Policy};
use fast_sandbox_api::pool::MAX_PRESTARTED;
use fast_sandbox_api::validation::{validate_pool_spec, validate_sandbox_spec};
use fast_sandbox_api::{Sandbox, SandboxPool};
use kube::CustomResourceExt;
use serde_json::{Value, json};

const ORIGINAL_POOL: &str = r#"
apiVersion: sandbox.fast.io/v1alpha1
kind: SandboxPool
metadata: {name: default-pool}
spec:
  capacity: {poolMin: 1, poolMax: 5}
  agentTemplate:
    spec:
      containers: [{name: agent, image: fast-sandbox/agent:dev}]
"#;

const ORIGINAL_SANDBOX: &str = r#"
apiVersion: sandbox.fast.io/v1alpha1
kind: Sandbox
metadata: {name: my-sandbox}
spec:
  image: docker.io/fast-sandbox/agent:dev
  command: ["/bin/sleep", "100"]
  poolRef: default-pool
"#;

#[test]
fn original_manifests_deserialise_unchanged() {
    let pool: SandboxPool = serde_yaml::from_str(ORIGINAL_POOL).unwrap();
    assert_eq!(pool.metadata.name.as_deref(), Some("default-pool"));
    assert_eq!(pool.spec.capacity.pool_min, Some(1));
    assert_eq!(pool.spec.capacity.pool_max, Some(5));
    let tmpl = pool.spec.agent_template.as_ref().unwrap();
    let containers = &tmpl.spec.as_ref().unwrap().containers;
    assert_eq!(
        containers[0].image.as_deref(),
        Some("fast-sandbox/agent:dev")
    );
    assert_eq!(validate_pool_spec(&pool.spec), Ok(()));

    let sbx: Sandbox = serde_yaml::from_str(ORIGINAL_SANDBOX).unwrap();
    assert_eq!(sbx.spec.image, "docker.io/fast-sandbox/agent:dev");
    assert_eq!(sbx.spec.command, ["/bin/sleep", "100"]);
    assert_eq!(sbx.spec.pool_ref, "default-pool");
    assert_eq!(sbx.spec.agent_ref, None);
    assert_eq!(validate_sandbox_spec(&sbx.spec), Ok(()));

    // And both pass the generated schema.
    assert_eq!(
        schema_errors(&SandboxPool::crd(), &yaml_json(ORIGINAL_POOL)),
        Vec::<String>::new()
    );
    assert_eq!(
        schema_errors(&Sandbox::crd(), &yaml_json(ORIGINAL_SANDBOX)),
        Vec::<String>::new()
    );
}

#[test]
fn checked_in_crds_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (name, yaml) in fast_sandbox_api::crd::documents().unwrap() {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "deploy/crds/{name} is stale: run `cargo run -p fast-sandbox-api --bin crdgen` and commit the result"
        );
    }
}

#[test]
fn the_shipped_policy_parses_and_spells_out_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml");
    let cm: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let doc = cm["data"][POLICY_KEY].as_str().unwrap();
    let policy = Policy::parse(doc).unwrap();
    let caps = policy.caps("any");
    // Egress is the one choice the shipped policy makes for the operator:
    // tenants may ask for it, never into the private ranges.
    assert!(caps.allow_egress);
    assert_eq!(
        caps.egress_deny
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10"
        ]
    );
    let defaults = Policy::default().caps("any");
    assert_eq!(
        fast_sandbox_api::policy::Caps {
            allow_egress: defaults.allow_egress,
            egress_deny: defaults.egress_deny.clone(),
            ..caps
        },
        defaults
    );
    assert_eq!(
        policy.namespace_defaults.max_prestarted,
        Some(DEFAULT_MAX_PRESTARTED)
    );
}

#[test]
fn crd_names_columns_and_subresources() {
    let crd = Sandbox::crd();
    assert_eq!(crd.spec.group, "sandbox.fast.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["sbx".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["fast-sandbox".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    let cols: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Phase", "Agent", "Node", "Image", "Age"]);
    assert!(v.subresources.as_ref().unwrap().status.is_some());

    let crd = SandboxPool::crd();
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["sbp".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["fast-sandbox".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    let sub = v.subresources.as_ref().unwrap();
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.agents");
    let cols: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        ["Agents", "Ready", "Slots Used", "Slots Total", "Age"]
    );
}

fn sandbox(spec: Value) -> Value {
    json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "x"}, "spec": spec})
}

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "metadata": {"name": "p"}, "spec": spec})
}

#[test]
fn invalid_sandboxes_are_refused_naming_the_field() {
    let crd = Sandbox::crd();
    let cases = [
        (json!({"image": "", "poolRef": "p"}), "spec.image"),
        (json!({"image": "busybox"}), "spec.poolRef"),
        (
            json!({"image": "busybox", "poolRef": "p", "exposedPorts": [{"port": 0}]}),
            "spec.exposedPorts[0].port",
        ),
        (
            json!({"image": "busybox", "poolRef": "p", "exposedPorts": [{"port": 70000}]}),
            "spec.exposedPorts[0].port",
        ),
        (
            json!({"image": "busybox", "poolRef": "p", "resources": {"memory": "lots"}}),
            "spec.resources.memory",
        ),
    ];
    for (spec, field) in cases {
        let obj = sandbox(spec.clone());
        let errs = schema_errors(&crd, &obj);
        assert!(
            errs.iter().any(|e| e.starts_with(field)),
            "schema must refuse {spec} at {field}: {errs:?}"
        );
        // The shared validation (used at admission and by the agent) agrees,
        // where the object can be typed at all.
        if let Ok(s) = serde_json::from_value::<Sandbox>(obj) {
            let v = validate_sandbox_spec(&s.spec).unwrap_err();
            assert_eq!(v.first().unwrap().field, field, "{v}");
        } else {
            assert_eq!(
                field, "spec.poolRef",
                "only a missing required field fails to deserialise"
            );
        }
    }
}

#[test]
fn invalid_pools_are_refused_naming_the_field() {
    let crd = SandboxPool::crd();
    let v = serde_json::to_value(&crd).unwrap();
    let rules = v.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/capacity/x-kubernetes-validations").unwrap();
    assert!(
        rules.to_string().contains("self.poolMin <= self.poolMax"),
        "{rules}"
    );
    assert!(
        rules
            .to_string()
            .contains("self.bufferMin <= self.bufferMax"),
        "{rules}"
    );

    let bad_bounds: SandboxPool =
        serde_json::from_value(pool(json!({"capacity": {"poolMin": 5, "poolMax": 1}}))).unwrap();
    assert_eq!(
        validate_pool_spec(&bad_bounds.spec)
            .unwrap_err()
            .first()
            .unwrap()
            .field,
        "spec.capacity.poolMin"
    );

    let obj = pool(json!({"maxSandboxesPerAgent": -1}));
    let errs = schema_errors(&crd, &obj);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.maxSandboxesPerAgent")),
        "{errs:?}"
    );
    let negative: SandboxPool = serde_json::from_value(obj).unwrap();
    assert_eq!(
        validate_pool_spec(&negative.spec)
            .unwrap_err()
            .first()
            .unwrap()
            .field,
        "spec.maxSandboxesPerAgent"
    );
    let errs = schema_errors(&crd, &pool(json!({"maxSandboxesPerAgent": 0})));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.maxSandboxesPerAgent")),
        "{errs:?}"
    );

    for ok in [0, MAX_PRESTARTED] {
        let obj = pool(json!({"prestarted": ok}));
        assert_eq!(schema_errors(&crd, &obj), Vec::<String>::new(), "{ok}");
        let p: SandboxPool = serde_json::from_value(obj).unwrap();
        assert_eq!(validate_pool_spec(&p.spec), Ok(()), "{ok}");
    }
    for bad in [-1, MAX_PRESTARTED + 1] {
        let obj = pool(json!({"prestarted": bad}));
        let errs = schema_errors(&crd, &obj);
        assert!(
            errs.iter().any(|e| e.starts_with("spec.prestarted")),
            "schema must refuse {bad}: {errs:?}"
        );
        let p: SandboxPool = serde_json::from_value(obj).unwrap();
        assert_eq!(
            validate_pool_spec(&p.spec)
                .unwrap_err()
                .first()
                .unwrap()
                .field,
            "spec.prestarted"
        );
    }
}

fn yaml_json(s: &str) -> Value {
    serde_yaml::from_str(s).unwrap()
}

/// The subset of OpenAPI v3 validation the apiserver applies that our CRDs
/// use: type, required, minLength/maxLength, minimum/maximum, pattern-free
/// anyOf for int-or-string. CEL rules are checked by the real apiserver in
/// the cluster tests.
fn schema_errors<K: serde::Serialize>(crd: &K, obj: &Value) -> Vec<String> {
    let crd = serde_json::to_value(crd).unwrap();
    let schema = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .unwrap()
        .clone();
    let mut errs = Vec::new();
    let mut root = obj.clone();
    if let Some(m) = root.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        m.remove("metadata");
    }
    check(&schema, &root, "", &mut errs);
    errs
}

fn check(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let ok = any.iter().any(|s| {
            let mut e = Vec::new();
            check(s, v, path, &mut e);
            e.is_empty()
        });
        if !ok {
            errs.push(format!("{path}: matches none of the allowed forms"));
        }
        if schema.get("type").is_none() {
            return;
        }
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errs.push(format!("{path}: expected {}", ty.unwrap_or("?")));
        return;
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errs.push(format!("{path}: shorter than minLength"));
        }
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errs.push(format!("{path}: longer than maxLength"));
        }
        if schema.get("pattern").is_some()
            && path.ends_with("memory")
            && !s.chars().next().is_some_and(|c| c.is_ascii_digit())
        {
            errs.push(format!("{path}: does not match the quantity pattern"));
        }
    }
    if let Some(n) = v.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{path}: below minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{path}: above maximum"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                errs.push(format!("{}: Required value", join(path, r)));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, child) in obj {
                if let Some(s) = props.get(k) {
                    check(s, child, &join(path, k), errs);
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, child) in arr.iter().enumerate() {
            check(items, child, &format!("{path}[{i}]"), errs);
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
