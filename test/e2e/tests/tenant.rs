//! The tenant boundary, tried the way a hostile tenant would: a user with
//! nothing but the built-in `edit` role in one namespace, and a user of
//! another namespace.
//!
//! - A privileged custom agent, an oversized pool, removing finalizers:
//!   refused at admission, naming the field.
//! - Agent pods live in the operator's namespace: the tenant can neither
//!   exec into them nor read their keys, and a look-alike secret in its own
//!   namespace changes nothing.
//! - The webhook answers only the apiserver, agents only the controller
//!   and the access server: a forged AdmissionReview and a direct call to
//!   an agent are refused, with or without a certificate of the right CA.
//! - The positive path: a tenant reads its own sandbox's logs through the
//!   access API, a user of another namespace cannot, and deleting the
//!   namespace leaves no agent behind.

use std::process::{Command, Output};
use std::time::Duration;

use fast_sandbox_api::wellknown::{FINALIZER, POOL_FINALIZER, condition, reason};
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_cli::{LogOptions, logs};
use fast_sandbox_e2e::scenario::{BUSYBOX, SYSTEM_NAMESPACE, agent_pods, agent_selector};
use fast_sandbox_e2e::{
    cluster_client, delete_namespace, editor, namespace, wait_for, wait_for_set,
};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn pool_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
           "metadata": {"name": name}, "spec": spec})
}

fn original_template() -> Value {
    json!({"spec": {"containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}})
}

/// The apiserver's refusal of creating `obj` as the client's user.
async fn refusal(api: &Api<DynamicObject>, obj: Value) -> String {
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!("{} was admitted", obj.metadata.name.unwrap_or_default()),
        Err(kube::Error::Api(s)) => s.message,
        Err(e) => e.to_string(),
    }
}

fn dynamic(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource {
        group: "sandbox.fast.io".into(),
        version: "v1alpha1".into(),
        api_version: "sandbox.fast.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn an_edit_tenant_cannot_get_root_on_a_node() {
    let admin = cluster_client("tenant boundary").await;
    let ns = namespace(&admin, "e2e-tenant").await.unwrap();
    let tenant = editor(&admin, &ns, "e2e-tenant").await;
    let pools = dynamic(&tenant, &ns, "SandboxPool", "sandboxpools");

    // A privileged agent of the tenant's own making.
    let msg = refusal(
        &pools,
        pool_json(
            "evil",
            json!({"agentTemplate": {"spec": {
                "hostPID": true,
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                "serviceAccountName": "fast-sandbox-controller",
                "containers": [{"name": "agent", "image": "docker.io/library/busybox:latest",
                                "command": ["/bin/sh", "-c", "nsenter -t 1 -m -p sh"],
                                "securityContext": {"privileged": true},
                                "volumeMounts": [{"name": "root", "mountPath": "/host"}]},
                               {"name": "sidecar", "image": "docker.io/library/busybox:latest"}]}}}),
        ),
    )
    .await;
    for field in [
        "spec.agentTemplate.spec.hostPID",
        "spec.agentTemplate.spec.volumes",
        "spec.agentTemplate.spec.serviceAccountName",
        "spec.agentTemplate.spec.containers[0].image",
        "spec.agentTemplate.spec.containers[0].command",
        "spec.agentTemplate.spec.containers[0].securityContext",
        "spec.agentTemplate.spec.containers[0].volumeMounts",
        "spec.agentTemplate.spec.containers[1]",
    ] {
        assert!(
            msg.contains(field),
            "{field} not named in the refusal: {msg}"
        );
    }

    // A thousand privileged pods in the operator's namespace.
    let msg = refusal(
        &pools,
        pool_json(
            "huge",
            json!({"capacity": {"poolMin": 1000, "poolMax": 1000}, "agentTemplate": original_template()}),
        ),
    )
    .await;
    assert!(
        msg.contains("spec.capacity.poolMin") && msg.contains("spec.capacity.poolMax"),
        "{msg}"
    );

    // The original README's pool is fine, and its agents are not the
    // tenant's to touch.
    let pool: DynamicObject = serde_json::from_value(pool_json(
        "p",
        json!({"capacity": {"poolMin": 1, "poolMax": 2}, "agentTemplate": original_template()}),
    ))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let typed: Api<SandboxPool> = Api::namespaced(admin.clone(), &ns);
    wait_for(&typed, "p", WAIT, "one ready agent", |p: &SandboxPool| {
        p.status.as_ref().is_some_and(|s| s.ready_agents >= 1)
    })
    .await
    .unwrap();
    let in_tenant_ns: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    assert!(
        in_tenant_ns
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no pod of the pool's lives in the tenant's namespace"
    );
    let agent = agent_pods(&admin, &ns, "p").await.unwrap().remove(0);
    let agent = agent.metadata.name.unwrap();
    let as_tenant = "--as=e2e-tenant".to_string();
    let exec = kubectl(&[
        &as_tenant,
        "-n",
        SYSTEM_NAMESPACE,
        "exec",
        &agent,
        "--",
        "/bin/true",
    ]);
    assert!(
        !exec.status.success() && stderr(&exec).contains("forbidden"),
        "exec into an agent pod must be refused: {}",
        stderr(&exec)
    );
    for what in [
        vec!["get", "secret", "fast-sandbox-agent-tls"],
        vec!["get", "secret", "fast-sandbox-ca"],
        vec!["get", "pods"],
        vec!["delete", "pod", &agent],
    ] {
        let mut args = vec![as_tenant.as_str(), "-n", SYSTEM_NAMESPACE];
        args.extend(what.iter().copied());
        let out = kubectl(&args);
        assert!(
            !out.status.success() && stderr(&out).contains("forbidden"),
            "{what:?} in {SYSTEM_NAMESPACE} must be forbidden: {}",
            stderr(&out)
        );
    }
    // No agent key was copied to the tenant; a look-alike it writes there
    // changes nothing for the agents.
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), &ns);
    assert!(
        secrets
            .get_opt("fast-sandbox-agent-tls")
            .await
            .unwrap()
            .is_none()
    );
    let fake: Secret = serde_json::from_value(json!({
        "metadata": {"name": "fast-sandbox-agent-tls"},
        "stringData": {"tls.crt": "x", "tls.key": "x", "ca.crt": "x"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &fake).await.unwrap();

    // The cleanup finalizers stay the controller's.
    let sandboxes: Api<Sandbox> = Api::namespaced(tenant.clone(), &ns);
    let sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "s"},
        "spec": {"image": BUSYBOX, "command": ["/bin/sleep", "600"], "poolRef": "p"}
    }))
    .unwrap();
    sandboxes.create(&PostParams::default(), &sb).await.unwrap();
    let running = wait_for(&sandboxes, "s", WAIT, "Ready", |s: &Sandbox| {
        s.condition(condition::READY)
            .is_some_and(|c| c.status == "True")
    })
    .await
    .unwrap();
    assert!(
        running
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&FINALIZER.to_string())
    );
    let drop_finalizers = json!({"metadata": {"finalizers": null}});
    let err = sandboxes
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(&drop_finalizers),
        )
        .await
        .expect_err("removing the cleanup finalizer must be refused");
    assert!(err.to_string().contains("metadata.finalizers"), "{err}");
    let tenant_pools: Api<SandboxPool> = Api::namespaced(tenant.clone(), &ns);
    let stored = tenant_pools.get("p").await.unwrap();
    assert!(
        stored
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&POOL_FINALIZER.to_string())
    );
    let err = tenant_pools
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(&drop_finalizers),
        )
        .await
        .expect_err("removing the pool's finalizer must be refused");
    assert!(err.to_string().contains(POOL_FINALIZER), "{err}");

    // The binding is admission's and the controller's: a tenant can neither
    // pick an agent (nor claim its sandbox was placed at admission, which
    // spares the claim a check) nor move or re-mark a bound sandbox.
    let bound = running.spec.agent_ref.clone().expect("bound at admission");
    assert!(bound.at_admission, "admission's binding says so: {bound:?}");
    let chosen: Sandbox = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "chosen"},
        "spec": {"image": BUSYBOX, "command": ["/bin/sleep", "600"], "poolRef": "p",
                 "agentRef": {"podName": bound.pod_name, "nodeName": bound.node_name, "atAdmission": true}}
    }))
    .unwrap();
    let err = sandboxes
        .create(&PostParams::default(), &chosen)
        .await
        .expect_err("a tenant's own agentRef must be refused");
    assert!(err.to_string().contains("spec.agentRef"), "{err}");
    for change in [
        json!({"spec": {"agentRef": {"atAdmission": null}}}),
        json!({"spec": {"agentRef": {"podName": "another-agent"}}}),
    ] {
        let err = sandboxes
            .patch("s", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect_err("a tenant's change of the binding must be refused");
        assert!(err.to_string().contains("spec.agentRef"), "{change}: {err}");
    }
    // Nor forge what records a binding, which the placement index trusts:
    // a reservation naming another sandbox's slot would free it.
    let reservation = "metadata.annotations[sandbox.fast.io/reservation]";
    let forged =
        json!({"metadata": {"annotations": {"sandbox.fast.io/reservation": "another-uid"}}});
    let err = sandboxes
        .patch("s", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .expect_err("a tenant's reservation must be refused");
    assert!(err.to_string().contains(reservation), "{err}");
    let mut forged_create = serde_json::to_value(&chosen).unwrap();
    forged_create["spec"]["agentRef"] = Value::Null;
    forged_create["metadata"]["annotations"] =
        json!({"sandbox.fast.io/reservation": running.metadata.uid.clone().unwrap()});
    let forged_create: Sandbox = serde_json::from_value(forged_create).unwrap();
    let err = sandboxes
        .create(&PostParams::default(), &forged_create)
        .await
        .expect_err("a create carrying a reservation must be refused");
    assert!(err.to_string().contains(reservation), "{err}");
    // A sandbox stays in its pool; its TTL is a time (a TTL past the end
    // of time once took the controller down).
    for (change, field) in [
        (json!({"spec": {"poolRef": "another-pool"}}), "spec.poolRef"),
        (
            json!({"spec": {"ttlSecondsAfterFinished": i64::MAX}}),
            "spec.ttlSecondsAfterFinished",
        ),
    ] {
        let err = sandboxes
            .patch("s", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(field), "{change}: {err}");
    }
    let stranger = fast_sandbox_e2e::impersonating("e2e-tenant-stranger").await;
    let theirs: Api<Sandbox> = Api::namespaced(stranger, &ns);
    let err = theirs
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"agentRef": {"atAdmission": null}}})),
        )
        .await
        .expect_err("a user of another namespace changes nothing here");
    assert!(err.to_string().contains("forbidden"), "{err}");
    let unchanged = sandboxes.get("s").await.unwrap().spec.agent_ref;
    assert_eq!(unchanged, Some(bound), "the binding after the refusals");

    // The tenant's UPDATEs above reached the webhook; the controller's own
    // (its finalizer removal once the container is gone) skip it, which the
    // apiserver counts as a match-condition exclusion.
    let before = webhook_exclusions(&admin).await;
    sandboxes
        .delete("s", &Default::default())
        .await
        .expect("the tenant deletes its sandbox");
    fast_sandbox_e2e::wait_gone(&sandboxes, "s", WAIT)
        .await
        .expect("the controller removes its finalizer");
    let after = webhook_exclusions(&admin).await;
    assert!(
        after > before,
        "the controller's finalizer removal skipped the webhook: exclusions {before} -> {after}"
    );

    delete_namespace(&admin, &ns).await;
}

/// How many UPDATEs the apiserver did not send to the sandbox webhook
/// because of its match condition (the controller's own).
async fn webhook_exclusions(admin: &Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin
        .request_text(req)
        .await
        .expect("the apiserver's /metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_admission_match_condition_exclusions_total{")
                && l.contains("name=\"bind.sandboxes.sandbox.fast.io\"")
                && l.contains("operation=\"UPDATE\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A template the apiserver refuses (here a node selector key no label can
/// have) is the tenant's to fix: the pool says why on its Scaling
/// condition, and grows once the template is mended.
#[tokio::test]
async fn a_pool_whose_agent_pod_is_refused_says_why_until_mended() {
    let admin = cluster_client("refused template").await;
    let ns = namespace(&admin, "e2e-template").await.unwrap();
    let tenant = editor(&admin, &ns, "e2e-template-tenant").await;
    let pools: Api<SandboxPool> = Api::namespaced(tenant.clone(), &ns);
    let mut template = original_template();
    template["spec"]["nodeSelector"] = json!({"bad key!": "x"});
    let pool: SandboxPool = serde_json::from_value(pool_json(
        "p",
        json!({"capacity": {"poolMin": 1, "poolMax": 1}, "agentTemplate": template}),
    ))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let refused = wait_for(&pools, "p", WAIT, "Scaling: AgentPodRefused", |p| {
        pool_condition(p, condition::SCALING).is_some_and(|c| c.reason == reason::AGENT_POD_REFUSED)
    })
    .await
    .unwrap();
    let message = &pool_condition(&refused, condition::SCALING)
        .unwrap()
        .message;
    assert!(
        message.contains("spec.agentTemplate") && message.contains("nodeSelector"),
        "{message}"
    );
    pools
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"agentTemplate": {"spec": {"nodeSelector": null}}}})),
        )
        .await
        .unwrap();
    wait_for(&pools, "p", WAIT, "one ready agent", |p| {
        p.status.as_ref().is_some_and(|s| s.ready_agents == 1)
            && pool_condition(p, condition::SCALING)
                .is_some_and(|c| c.reason != reason::AGENT_POD_REFUSED)
    })
    .await
    .unwrap();
    delete_namespace(&admin, &ns).await;
}

fn pool_condition<'a>(
    pool: &'a SandboxPool,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn state_dir() -> String {
    std::env::var("FAST_SANDBOX_STATE").unwrap_or_else(|_| "/var/lib/fast-sandbox-cluster".into())
}

/// `curl -sk` to `url` with `body`, presenting `identity` (cert, key) if
/// given: the HTTP status, or `None` when TLS refused the caller.
fn curl(url: &str, body: &str, identity: Option<(&str, &str)>) -> (Option<u16>, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "--max-time",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
    ])
    .args(["-H", "content-type: application/json", "-d", body, url]);
    if let Some((cert, key)) = identity {
        cmd.args(["--cert", cert, "--key", key]);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse::<u16>().ok().filter(|c| *c != 0);
    (
        if out.status.success() { code } else { None },
        body.to_string(),
    )
}

#[tokio::test]
async fn internal_endpoints_answer_only_their_named_callers() {
    let admin = cluster_client("named callers").await;
    let ns = namespace(&admin, "e2e-callers").await.unwrap();
    // One agent with one slot: a reservation made for a forgery would
    // leave the real sandbox below unbound.
    fast_sandbox_e2e::scenario::ready_pool(&admin, &ns, "p", (1, 1), 1, WAIT)
        .await
        .unwrap();

    // A forged AdmissionReview at the webhook's Service.
    let services: Api<Service> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let webhook_ip = services
        .get("fast-sandbox-webhook")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the webhook Service has a ClusterIP");
    let review = json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {"uid": "forged", "kind": {"group": "sandbox.fast.io", "version": "v1alpha1", "kind": "Sandbox"},
                    "resource": {"group": "sandbox.fast.io", "version": "v1alpha1", "resource": "sandboxes"},
                    "namespace": ns, "operation": "CREATE", "userInfo": {"username": "mallory"},
                    "object": {"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
                               "metadata": {"name": "forged", "namespace": ns},
                               "spec": {"image": BUSYBOX, "poolRef": "p"}}}})
    .to_string();
    let url = format!("https://{webhook_ip}:443/mutate-sandbox");
    let (code, _) = curl(&url, &review, None);
    assert_eq!(
        code, None,
        "a caller without a client certificate gets no answer"
    );
    // A certificate of the cluster's CA, but not the apiserver's name.
    let pki = format!("{}/pki", state_dir());
    let (cert, key) = (format!("{pki}/admin.crt"), format!("{pki}/admin.key"));
    let (code, body) = curl(&url, &review, Some((&cert, &key)));
    assert_eq!(code, Some(403), "{body}");
    assert!(body.contains("kube-apiserver-webhook-client"), "{body}");
    // The forgery reserved nothing: the pool's only slot is still free.
    let sandboxes: Api<Sandbox> = Api::namespaced(admin.clone(), &ns);
    let sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "real"},
        "spec": {"image": BUSYBOX, "command": ["/bin/sleep", "600"], "poolRef": "p"}
    }))
    .unwrap();
    let made = sandboxes.create(&PostParams::default(), &sb).await.unwrap();
    assert!(made.spec.agent_ref.is_some(), "admission still binds");

    // An agent called directly, as from any pod.
    let agent = agent_pods(&admin, &ns, "p").await.unwrap().remove(0);
    let ip = agent
        .status
        .and_then(|s| s.pod_ip)
        .expect("the agent has an IP");
    let url = format!("https://{ip}:9443/v1/sandboxes");
    let (code, _) = curl(&url, "", None);
    assert_eq!(code, None, "an agent refuses callers without a certificate");
    // A certificate of the Fast Sandbox CA with another name, as anyone who
    // got hold of the CA (or of another component's key) could make.
    let ca: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let ca = ca
        .get("fast-sandbox-ca")
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    std::fs::write(path("ca.crt"), &ca["ca.crt"].0).unwrap();
    std::fs::write(path("ca.key"), &ca["ca.key"].0).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    // An X.509 v3 client certificate (without extensions `openssl x509
    // -req` makes a v1 one, which TLS refuses before any name is checked).
    std::fs::write(
        path("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=intruder",
        "-keyout",
        &path("i.key"),
        "-out",
        &path("i.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("i.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &path("i.crt"),
    ]);
    let (code, body) = curl(&url, "", Some((&path("i.crt"), &path("i.key"))));
    assert_eq!(code, Some(401), "{body}");
    assert!(
        body.contains("intruder") && body.contains("fast-sandbox-controller"),
        "{body}"
    );

    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn logs_are_the_tenants_and_agents_go_with_their_namespace() {
    let admin = cluster_client("tenant logs").await;
    let ns = namespace(&admin, "e2e-owner").await.unwrap();
    let other = namespace(&admin, "e2e-other").await.unwrap();
    let owner = editor(&admin, &ns, "e2e-owner").await;
    let stranger = editor(&admin, &other, "e2e-other-ns").await;
    fast_sandbox_e2e::scenario::ready_pool(&owner, &ns, "p", (1, 2), 4, WAIT)
        .await
        .unwrap();
    let sandboxes: Api<Sandbox> = Api::namespaced(owner.clone(), &ns);
    let sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "talker"},
        "spec": {"image": BUSYBOX, "command": ["/bin/sh", "-c", "echo secret-output; sleep 600"], "poolRef": "p"}
    }))
    .unwrap();
    sandboxes.create(&PostParams::default(), &sb).await.unwrap();
    wait_for(&sandboxes, "talker", WAIT, "Ready", |s: &Sandbox| {
        s.condition(condition::READY)
            .is_some_and(|c| c.status == "True")
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("secret-output") {
        assert!(tokio::time::Instant::now() < deadline, "no output in 30 s");
        out.clear();
        logs(
            owner.clone(),
            &ns,
            "talker",
            LogOptions::default(),
            &mut out,
        )
        .await
        .expect("the owner reads its sandbox's logs");
    }
    let refused = logs(
        stranger,
        &ns,
        "talker",
        LogOptions::default(),
        &mut Vec::new(),
    )
    .await
    .expect_err("a user of another namespace reads nothing");
    assert!(
        refused.to_string().contains("forbidden") && refused.to_string().contains("sandboxes/log"),
        "{refused}"
    );

    // Deleting the namespace removes the pool's agents; none is orphaned.
    let before = agent_pods(&admin, &ns, "p").await.unwrap();
    assert!(!before.is_empty());
    delete_namespace(&admin, &ns).await;
    let system: Api<Pod> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    wait_for_set(
        &system,
        &agent_selector(&ns, "p"),
        WAIT,
        "the deleted namespace's agents gone",
        |set| set.is_empty(),
    )
    .await
    .unwrap();
    delete_namespace(&admin, &other).await;
}
