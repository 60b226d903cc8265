//! From a sandbox's name to the agent that holds it: the Sandbox (from a
//! watch-fed cache, read from the API when the cache has not seen it yet),
//! its binding, the agent pod's address, and one warm HTTP/2 connection per
//! agent, kept across requests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use fast_sandbox_agent_client::{AgentClient, ClientTls};
use fast_sandbox_api::wellknown::condition;
use fast_sandbox_api::{Sandbox, SandboxPhase};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::status::GatewayError;

/// A sandbox and the agent to ask about it.
pub struct Resolved {
    /// The Sandbox object.
    pub sandbox: Arc<Sandbox>,
    /// Its UID, the agent's key.
    pub uid: String,
    /// A client of its agent.
    pub agent: Arc<AgentClient>,
    /// The agent pod's name.
    pub agent_pod: String,
}

/// Finds sandboxes' agents.
pub struct Resolver {
    client: Client,
    sandboxes: Store<Sandbox>,
    pods: Store<Pod>,
    agent_namespace: String,
    tls: ClientTls,
    port: u16,
    clients: Mutex<HashMap<String, Arc<AgentClient>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("agent_namespace", &self.agent_namespace)
            .finish_non_exhaustive()
    }
}

/// The phase in the status; before the controller wrote one, Bound once
/// admission bound it, else Pending.
fn phase(sb: &Sandbox) -> SandboxPhase {
    sb.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(if sb.spec.agent_ref.is_some() {
            SandboxPhase::Bound
        } else {
            SandboxPhase::Pending
        })
}

/// Why an unbound sandbox is unbound, from its status.
fn unbound_why(sb: &Sandbox) -> String {
    let Some(status) = sb.status.as_ref() else {
        return "the controller has not looked at it yet".to_string();
    };
    let scheduled = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::SCHEDULED && c.status == "False");
    let reason = status
        .reason
        .as_deref()
        .or(scheduled.map(|c| c.reason.as_str()))
        .filter(|r| !r.is_empty());
    let message = status
        .message
        .as_deref()
        .or(scheduled.map(|c| c.message.as_str()))
        .filter(|m| !m.is_empty());
    match (reason, message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => "no reason reported yet".to_string(),
    }
}

/// Why a sandbox is in no state to answer, in the user's terms.
fn not_ready(sb: &Sandbox, name: &str) -> Option<GatewayError> {
    let phase = phase(sb);
    let Some(agent) = sb
        .spec
        .agent_ref
        .as_ref()
        .filter(|a| !a.pod_name.is_empty())
    else {
        return Some(GatewayError::Conflict(format!(
            "sandbox {name} is {phase}: not bound to an agent yet ({})",
            unbound_why(sb)
        )));
    };
    let has_container = sb
        .status
        .as_ref()
        .and_then(|s| s.container_id.as_deref())
        .is_some_and(|id| !id.is_empty());
    if !has_container {
        return Some(GatewayError::Conflict(format!(
            "sandbox {name} is {phase} on agent {}: its container does not exist yet",
            agent.pod_name
        )));
    }
    let uid = sb.metadata.uid.as_deref().unwrap_or_default();
    let usable = !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !usable {
        return Some(GatewayError::Internal(format!(
            "sandbox {name} has no usable UID ({uid:?})"
        )));
    }
    None
}

impl Resolver {
    /// Resolves through `sandboxes` and `pods` (agent pods of
    /// `agent_namespace`), reading a sandbox the cache has not seen with
    /// `client`, and calls agents on `port` as the identity in `tls`.
    pub fn new(
        client: Client,
        sandboxes: Store<Sandbox>,
        pods: Store<Pod>,
        agent_namespace: String,
        tls: ClientTls,
        port: u16,
    ) -> Self {
        Self {
            client,
            sandboxes,
            pods,
            agent_namespace,
            tls,
            port,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The sandbox as the cache has it when it is ready to be used, else as
    /// the API has it now: the watch may not have brought it yet (created
    /// a moment ago), or only an older state of it (a client that just saw
    /// it Ready must not be told it has no container).
    async fn sandbox(&self, namespace: &str, name: &str) -> Result<Arc<Sandbox>, GatewayError> {
        if let Some(sb) = self.sandboxes.get(&ObjectRef::new(name).within(namespace))
            && not_ready(&sb, name).is_none()
        {
            return Ok(sb);
        }
        let api: Api<Sandbox> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(sb)) => Ok(Arc::new(sb)),
            Ok(None) => Err(GatewayError::SandboxNotFound {
                name: name.to_string(),
            }),
            Err(e) => Err(GatewayError::Unavailable(format!(
                "reading sandbox {namespace}/{name}: {e}"
            ))),
        }
    }

    /// The sandbox `namespace/name` and its agent.
    pub async fn resolve(&self, namespace: &str, name: &str) -> Result<Resolved, GatewayError> {
        let sandbox = self.sandbox(namespace, name).await?;
        if let Some(e) = not_ready(&sandbox, name) {
            return Err(e);
        }
        let uid = sandbox.uid().unwrap_or_default();
        let pod_name = sandbox
            .spec
            .agent_ref
            .as_ref()
            .map(|r| r.pod_name.clone())
            .unwrap_or_default();
        let pod = self
            .pods
            .get(&ObjectRef::new(&pod_name).within(&self.agent_namespace))
            .ok_or_else(|| {
                GatewayError::Conflict(format!(
                    "sandbox {name} is {}: its agent {pod_name} is gone, and its output with it",
                    phase(&sandbox)
                ))
            })?;
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                GatewayError::Unavailable(format!(
                    "agent {pod_name} of sandbox {name} has no address yet"
                ))
            })?;
        let addr = SocketAddr::new(ip, self.port);
        let agent = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            // Clients of agents that went away are dropped with their pods.
            if clients.len() > self.pods.state().len() * 2 + 16 {
                let live: std::collections::HashSet<String> =
                    self.pods.state().iter().map(|p| p.name_any()).collect();
                clients.retain(|k, _| live.contains(k));
            }
            match clients.get(&pod_name) {
                Some(c) if c.addr() == addr => c.clone(),
                _ => {
                    let c = Arc::new(AgentClient::new(addr, self.tls.clone()));
                    clients.insert(pod_name.clone(), c.clone());
                    c
                }
            }
        };
        Ok(Resolved {
            sandbox,
            uid,
            agent,
            agent_pod: pod_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::{AgentRef, SandboxSpec, SandboxStatus};

    #[test]
    fn unbound_and_creating_sandboxes_say_why() {
        let mut sb = Sandbox::new("sb", SandboxSpec::default());
        let e = not_ready(&sb, "sb").unwrap();
        assert!(
            e.to_string()
                .contains("is Pending: not bound to an agent yet (the controller has not looked"),
            "{e}"
        );
        sb.status = Some(SandboxStatus {
            phase: Some(SandboxPhase::Pending),
            reason: Some("NoCapacity".into()),
            message: Some("no ready agent".into()),
            ..Default::default()
        });
        let e = not_ready(&sb, "sb").unwrap();
        assert!(
            e.to_string().contains("(NoCapacity: no ready agent)"),
            "{e}"
        );
        sb.status = None;
        sb.spec.agent_ref = Some(AgentRef {
            pod_name: "a-1".into(),
            node_name: "n".into(),
            ..Default::default()
        });
        let e = not_ready(&sb, "sb").unwrap();
        assert!(
            e.to_string().contains("container does not exist yet"),
            "{e}"
        );
        sb.status = Some(SandboxStatus {
            phase: Some(SandboxPhase::Running),
            container_id: Some("c".into()),
            ..Default::default()
        });
        sb.metadata.uid = Some("../etc".into());
        assert!(not_ready(&sb, "sb").is_some(), "a UID must fit a path");
        sb.metadata.uid = Some("5f1c-aa".into());
        assert!(not_ready(&sb, "sb").is_none());
    }
}
