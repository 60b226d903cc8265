//! The real apiserver refuses invalid objects with a message naming the
//! field, and accepts the original README's manifests (server dry-run).

use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_e2e::{cluster_client, delete_namespace, namespace};
use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sandbox.fast.io", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

async fn create(api: &Api<DynamicObject>, obj: Value) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
    api.create(&dry_run(), &obj)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn server_accepts_original_manifests_and_refuses_invalid_ones() {
    let client = cluster_client("server validation").await;
    let ns = namespace(&client, "e2e-validation").await.unwrap();
    let pools = api(&client, &ns, "SandboxPool");
    let sandboxes = api(&client, &ns, "Sandbox");

    let pool = json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": "default-pool"},
        "spec": {"capacity": {"poolMin": 1, "poolMax": 5},
                 "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}}}});
    create(&pools, pool)
        .await
        .expect("the original pool manifest must be accepted");
    let sbx = json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": "my-sandbox"},
        "spec": {"image": "docker.io/fast-sandbox/agent:dev", "command": ["/bin/sleep", "100"], "poolRef": "default-pool"}});
    // Typed round trip too: the server's answer parses into our types.
    let typed: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let s: Sandbox = serde_json::from_value(sbx.clone()).unwrap();
    let answer = typed.create(&dry_run(), &s).await;
    // Without the pool stored (dry-run above), admission may refuse with a
    // message naming poolRef; the schema itself must accept the object.
    if let Err(e) = &answer {
        assert!(e.to_string().contains("poolRef"), "unexpected refusal: {e}");
    }
    let _: Api<SandboxPool> = Api::namespaced(client.clone(), &ns);

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
        let obj = json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "bad"}, "spec": spec});
        let err = create(&sandboxes, obj)
            .await
            .expect_err(&format!("{spec} must be refused"));
        assert!(
            err.contains(field),
            "refusal of {spec} must name {field}: {err}"
        );
    }
    let pool_cases = [
        (json!({"capacity": {"poolMin": 5, "poolMax": 1}}), "poolMin"),
        (
            json!({"capacity": {"bufferMin": 5, "bufferMax": 1}}),
            "bufferMin",
        ),
        (
            json!({"maxSandboxesPerAgent": -1}),
            "spec.maxSandboxesPerAgent",
        ),
        (
            json!({"maxSandboxesPerAgent": 0}),
            "spec.maxSandboxesPerAgent",
        ),
    ];
    for (spec, field) in pool_cases {
        let obj = json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "metadata": {"name": "bad"}, "spec": spec});
        let err = create(&pools, obj)
            .await
            .expect_err(&format!("{spec} must be refused"));
        assert!(
            err.contains(field),
            "refusal of {spec} must name {field}: {err}"
        );
    }
    delete_namespace(&client, &ns).await;
}
