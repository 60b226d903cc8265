//! What the confinement tests share: a namespace with its `edit` tenant
//! and a user of another namespace, a pool and sandboxes made as the
//! tenant, and commands run in a sandbox through the access API.
#![allow(dead_code)]

use std::io::Cursor;
use std::time::Duration;

use fast_sandbox_api::wellknown::condition;
use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_cli::exec::{ExecOptions, Streams, exec};
use fast_sandbox_e2e::scenario::AGENT_IMAGE;
use fast_sandbox_e2e::{cluster_client, delete_namespace, editor, namespace, wait_for};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(120);

pub fn pool(name: &str, image: &str, defaults: Option<Value>) -> SandboxPool {
    let mut spec = json!({
        "capacity": {"poolMin": 1, "poolMax": 1}, "maxSandboxesPerAgent": 8,
        "warmImages": [image],
        "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": AGENT_IMAGE}]}}
    });
    if let Some(d) = defaults {
        spec["sandboxDefaults"] = d;
    }
    serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

pub fn sandbox(name: &str, image: &str, command: &[&str], resources: Option<Value>) -> Sandbox {
    let mut spec = json!({"image": image, "command": command, "poolRef": "p"});
    if let Some(r) = resources {
        spec["resources"] = r;
    }
    serde_json::from_value(json!({
        "apiVersion": "sandbox.fast.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Creates the pool as `who` and waits for its agent.
pub async fn ready(who: &Client, admin: &Client, ns: &str, p: SandboxPool) {
    let mine: Api<SandboxPool> = Api::namespaced(who.clone(), ns);
    mine.create(&PostParams::default(), &p).await.unwrap();
    let pools: Api<SandboxPool> = Api::namespaced(admin.clone(), ns);
    wait_for(&pools, "p", WAIT, "1 ready agent", |p: &SandboxPool| {
        p.status.as_ref().is_some_and(|s| s.ready_agents >= 1)
    })
    .await
    .unwrap();
}

pub async fn running(sbx: &Api<Sandbox>, name: &str) -> Sandbox {
    wait_for(sbx, name, WAIT, "Ready", |s: &Sandbox| {
        s.condition(condition::READY)
            .is_some_and(|c| c.status == "True")
    })
    .await
    .unwrap()
}

/// Runs `command` in the sandbox; returns (exit code, stdout).
pub async fn run(client: &Client, ns: &str, name: &str, command: &[&str]) -> (i32, String) {
    try_run(client, ns, name, command)
        .await
        .unwrap_or_else(|e| panic!("exec {command:?} in {ns}/{name}: {e}"))
}

pub async fn try_run(
    client: &Client,
    ns: &str,
    name: &str,
    command: &[&str],
) -> Result<(i32, String), fast_sandbox_cli::AccessError> {
    let (code, out, _) = try_run_with(client, ns, name, command, None).await?;
    Ok((code, out))
}

/// Runs `command` in the sandbox with `stdin` when given; returns (exit
/// code, stdout, stderr).
pub async fn try_run_with(
    client: &Client,
    ns: &str,
    name: &str,
    command: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<(i32, String, String), fast_sandbox_cli::AccessError> {
    let opts = ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.is_some(),
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = Streams {
        stdin: Cursor::new(stdin.unwrap_or_default()),
        stdout: &mut out,
        stderr: &mut err,
        resize: None,
    };
    let code = exec(client.clone(), ns, name, &opts, io).await?;
    Ok((
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

/// A namespace with its `edit` tenant, and another namespace's user.
pub struct Cast {
    pub admin: Client,
    pub ns: String,
    pub other: String,
    pub tenant: Client,
    pub stranger: Client,
}

impl Cast {
    /// Namespaces `<prefix>-…` and `<prefix>-other-…` and their users.
    pub async fn new(what: &str, prefix: &str) -> Self {
        let admin = cluster_client(what).await;
        let ns = namespace(&admin, prefix).await.unwrap();
        let other = namespace(&admin, &format!("{prefix}-other")).await.unwrap();
        let tenant = editor(&admin, &ns, &format!("{prefix}-editor")).await;
        let stranger = editor(&admin, &other, &format!("{prefix}-stranger")).await;
        Self {
            admin,
            ns,
            other,
            tenant,
            stranger,
        }
    }

    pub async fn finish(self) {
        delete_namespace(&self.admin, &self.ns).await;
        delete_namespace(&self.admin, &self.other).await;
    }
}

/// The message of an API refusal.
pub fn refusal(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => panic!("expected a refusal, got {other}"),
    }
}
