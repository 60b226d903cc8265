//! `kubectl sandbox logs`: a sandbox's stdout or stderr through the cluster.
//!
//! A sandbox's output is kept by its agent, which serves it read-only over
//! plain HTTP on the agent pod's loopback (port [`LOGS_PORT`]). This module
//! finds the sandbox's agent pod from `spec.agentRef`, opens a port-forward
//! to that port through the apiserver (so the caller's RBAC decides: `get`
//! and, from Kubernetes 1.35, `create` on `pods/portforward` in the
//! sandbox's namespace, as the port-forward is a WebSocket upgrade), sends
//! one HTTP/1.1 request over it and copies the body as it arrives.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use fast_sandbox_api::agent::{ApiError, ErrorCode, LOGS_PORT, logs_path};
use fast_sandbox_api::wellknown::condition;
use fast_sandbox_api::{Sandbox, SandboxPhase};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest error body read from the agent.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long a failed exchange waits for the port-forward's own error
/// message, which names the cause (nothing listening, pod gone) better.
const FORWARD_ERROR_WAIT: Duration = Duration::from_secs(2);

/// Which output of a sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// The value of the agent's `stream` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// What to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Which output.
    pub stream: LogStream,
    /// Keep reading new output until the sandbox's process exits.
    pub follow: bool,
}

/// Why the logs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// No Sandbox of that name.
    #[error("sandbox {name} not found in namespace {namespace}")]
    NotFound {
        /// Namespace looked in.
        namespace: String,
        /// Name asked for.
        name: String,
    },
    /// The sandbox is not bound to an agent yet, so it has no output.
    #[error("sandbox {name} is {phase}: not bound to an agent yet, so it has no logs ({why})")]
    NotBound {
        /// Sandbox name.
        name: String,
        /// Its phase.
        phase: SandboxPhase,
        /// Why, from its status.
        why: String,
    },
    /// The sandbox is bound but its container was not created yet.
    #[error(
        "sandbox {name} is {phase} on agent pod {pod}: its container does not exist yet, so it has no logs"
    )]
    NoContainer {
        /// Sandbox name.
        name: String,
        /// Its phase.
        phase: SandboxPhase,
        /// Agent pod it is bound to.
        pod: String,
    },
    /// The Sandbox object has no UID that fits in a request path.
    #[error("sandbox {name} has no usable UID ({uid:?})")]
    InvalidUid {
        /// Sandbox name.
        name: String,
        /// Its `metadata.uid`.
        uid: String,
    },
    /// The agent pod named by `spec.agentRef` does not exist.
    #[error(
        "agent pod {pod} of sandbox {name} does not exist in namespace {namespace} (the sandbox is {phase}); its logs went with it"
    )]
    AgentPodGone {
        /// Namespace.
        namespace: String,
        /// Sandbox name.
        name: String,
        /// Agent pod.
        pod: String,
        /// Phase of the sandbox.
        phase: SandboxPhase,
    },
    /// RBAC refused the port-forward.
    #[error(
        "not allowed to port-forward to agent pod {pod} in namespace {namespace}: {message} \
         (reading sandbox logs needs `get` and `create` on `pods/portforward` in that namespace)"
    )]
    Forbidden {
        /// Namespace.
        namespace: String,
        /// Agent pod.
        pod: String,
        /// The apiserver's message.
        message: String,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[source] kube::Error),
    /// The port-forward to the agent's logs port failed.
    #[error(
        "port-forward to port {LOGS_PORT} of agent pod {pod} failed: {message} \
         (the agent serves no logs API there: it is off with `--logs-listen off` and missing from older agent images)"
    )]
    PortForward {
        /// Agent pod.
        pod: String,
        /// What the apiserver or kubelet said.
        message: String,
    },
    /// HTTP over the port-forward failed.
    #[error("reading logs from agent pod {pod}: {source}")]
    Http {
        /// Agent pod.
        pod: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The agent answered with an error.
    #[error("{}", agent_message(pod, name, uid, error))]
    Agent {
        /// Agent pod.
        pod: String,
        /// Sandbox name.
        name: String,
        /// Sandbox UID.
        uid: String,
        /// The agent's error.
        error: Box<ApiError>,
    },
    /// The agent answered with an error that is not an agent error body.
    #[error("agent pod {pod} answered {status}: {body}")]
    AgentResponse {
        /// Agent pod.
        pod: String,
        /// HTTP status.
        status: StatusCode,
        /// The body, as text.
        body: String,
    },
    /// Writing the output failed (a closed pipe is one).
    #[error("writing the logs: {0}")]
    Write(#[source] std::io::Error),
}

/// The apiserver's own message for an API error, else the whole error.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        e => e.to_string(),
    }
}

/// A clear message for an error the agent answered.
fn agent_message(pod: &str, name: &str, uid: &str, e: &ApiError) -> String {
    match e.code {
        ErrorCode::NotFound => format!(
            "agent pod {pod} does not hold sandbox {name} (uid {uid}): it was deleted or re-placed \
             since it was read; try again ({})",
            e.message
        ),
        ErrorCode::InvalidArgument => format!(
            "agent pod {pod} refused the request{}: {}",
            e.field
                .as_deref()
                .map(|f| format!(" (parameter {f})"))
                .unwrap_or_default(),
            e.message
        ),
        ErrorCode::Unavailable => format!(
            "agent pod {pod} is not ready: {}; try again shortly",
            e.message
        ),
        code => format!(
            "agent pod {pod} failed to serve the logs ({code:?}): {}",
            e.message
        ),
    }
}

/// The agent's path and query for `uid`'s logs.
pub fn request_path(uid: &str, opts: LogOptions) -> String {
    format!(
        "{}?stream={}&follow={}",
        logs_path(uid),
        opts.stream.as_str(),
        opts.follow
    )
}

/// Where a sandbox's logs are.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    uid: String,
    pod: String,
    phase: SandboxPhase,
}

/// The phase in the status; before the controller wrote one, Bound once
/// admission bound it, else Pending.
fn phase(sbx: &Sandbox) -> SandboxPhase {
    sbx.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(if sbx.spec.agent_ref.is_some() {
            SandboxPhase::Bound
        } else {
            SandboxPhase::Pending
        })
}

/// Why an unbound sandbox is unbound, from its status.
fn unbound_why(sbx: &Sandbox) -> String {
    let Some(status) = sbx.status.as_ref() else {
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

/// The agent pod and UID of a sandbox, or why its logs cannot be read.
fn target(sbx: &Sandbox, name: &str) -> Result<Target, LogsError> {
    let phase = phase(sbx);
    let Some(agent) = sbx
        .spec
        .agent_ref
        .as_ref()
        .filter(|a| !a.pod_name.is_empty())
    else {
        return Err(LogsError::NotBound {
            name: name.to_string(),
            phase,
            why: unbound_why(sbx),
        });
    };
    let has_container = sbx
        .status
        .as_ref()
        .and_then(|s| s.container_id.as_deref())
        .is_some_and(|id| !id.is_empty());
    if !has_container {
        return Err(LogsError::NoContainer {
            name: name.to_string(),
            phase,
            pod: agent.pod_name.clone(),
        });
    }
    let uid = sbx.metadata.uid.clone().unwrap_or_default();
    let usable = !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !usable {
        return Err(LogsError::InvalidUid {
            name: name.to_string(),
            uid,
        });
    }
    Ok(Target {
        uid,
        pod: agent.pod_name.clone(),
        phase,
    })
}

/// Writes the logs of sandbox `name` in `namespace` to `out` as they
/// arrive. With `opts.follow`, returns once the sandbox's process exited
/// and its output was written; without, once the output so far was.
pub async fn logs(
    client: kube::Client,
    namespace: &str,
    name: &str,
    opts: LogOptions,
    mut out: impl AsyncWrite + Unpin,
) -> Result<(), LogsError> {
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), namespace);
    let sbx = sandboxes
        .get_opt(name)
        .await
        .map_err(LogsError::Kube)?
        .ok_or_else(|| LogsError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    let t = target(&sbx, name)?;

    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut forward = pods
        .portforward(&t.pod, &[LOGS_PORT])
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => LogsError::AgentPodGone {
                namespace: namespace.to_string(),
                name: name.to_string(),
                pod: t.pod.clone(),
                phase: t.phase,
            },
            kube::Error::Api(s) if s.code == 403 => LogsError::Forbidden {
                namespace: namespace.to_string(),
                pod: t.pod.clone(),
                message: s.message.clone(),
            },
            e => LogsError::Kube(e),
        })?;
    let (Some(stream), Some(forward_error)) = (
        forward.take_stream(LOGS_PORT),
        forward.take_error(LOGS_PORT),
    ) else {
        forward.abort();
        return Err(LogsError::PortForward {
            pod: t.pod,
            message: "the port-forward has no stream for the port".to_string(),
        });
    };
    let result = exchange(stream, forward_error, &t, name, opts, &mut out).await;
    forward.abort();
    result
}

/// One request over the forwarded stream; the body is copied to `out`.
async fn exchange(
    stream: tokio::io::DuplexStream,
    forward_error: impl Future<Output = Option<String>>,
    t: &Target,
    name: &str,
    opts: LogOptions,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), LogsError> {
    let http = |source| LogsError::Http {
        pod: t.pod.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let req = Request::get(request_path(&t.uid, opts))
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|_| LogsError::InvalidUid {
            name: name.to_string(),
            uid: t.uid.clone(),
        })?;
    let copy = async {
        let resp = sender.send_request(req).await.map_err(http)?;
        copy_body(resp, t, name, out).await
    };
    let mut copy = pin!(copy);
    let mut conn = pin!(conn);
    let mut forward_error = pin!(forward_error);
    let mut conn_done = false;
    let mut forward_done = false;
    let result = loop {
        tokio::select! {
            r = &mut copy => break r,
            // A connection error also fails the request, which says more.
            _ = &mut conn, if !conn_done => conn_done = true,
            e = &mut forward_error, if !forward_done => {
                forward_done = true;
                if let Some(message) = e {
                    return Err(LogsError::PortForward { pod: t.pod.clone(), message });
                }
            }
        }
    };
    match result {
        // The port-forward's own error names the cause better than the
        // closed connection it leads to.
        Err(LogsError::Http { .. }) if !forward_done => {
            match tokio::time::timeout(FORWARD_ERROR_WAIT, forward_error).await {
                Ok(Some(message)) => Err(LogsError::PortForward {
                    pod: t.pod.clone(),
                    message,
                }),
                _ => result,
            }
        }
        r => r,
    }
}

/// Copies a logs response to `out` chunk by chunk, or maps its error.
async fn copy_body(
    resp: http::Response<Incoming>,
    t: &Target,
    name: &str,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), LogsError> {
    let status = resp.status();
    if !status.is_success() {
        let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(error_from_body(t, name, status, &body));
    }
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| LogsError::Http {
            pod: t.pod.clone(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await.map_err(LogsError::Write)?;
            out.flush().await.map_err(LogsError::Write)?;
        }
    }
    Ok(())
}

/// The error of a non-2xx answer of the agent.
fn error_from_body(t: &Target, name: &str, status: StatusCode, body: &[u8]) -> LogsError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => LogsError::Agent {
            pod: t.pod.clone(),
            name: name.to_string(),
            uid: t.uid.clone(),
            error: Box::new(error),
        },
        Err(_) => LogsError::AgentResponse {
            pod: t.pod.clone(),
            status,
            body: String::from_utf8_lossy(body).trim().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::{AgentRef, SandboxSpec, SandboxStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn sandbox(agent: Option<&str>, status: Option<SandboxStatus>) -> Sandbox {
        let mut s = Sandbox::new(
            "my-sandbox",
            SandboxSpec {
                image: "busybox".into(),
                pool_ref: "default-pool".into(),
                agent_ref: agent.map(|p| AgentRef {
                    pod_name: p.into(),
                    node_name: "node1".into(),
                }),
                ..Default::default()
            },
        );
        s.metadata.uid = Some("u-1".into());
        s.status = status;
        s
    }

    fn target_of(t: &Target) -> (&str, &str) {
        (&t.uid, &t.pod)
    }

    #[test]
    fn the_request_names_stream_and_follow() {
        assert_eq!(
            request_path("u-1", LogOptions::default()),
            "/v1/sandboxes/u-1/logs?stream=stdout&follow=false"
        );
        let opts = LogOptions {
            stream: LogStream::Stderr,
            follow: true,
        };
        assert_eq!(
            request_path("u-1", opts),
            "/v1/sandboxes/u-1/logs?stream=stderr&follow=true"
        );
    }

    #[test]
    fn an_unbound_sandbox_says_why_from_its_status() {
        let status = SandboxStatus {
            phase: Some(SandboxPhase::Pending),
            reason: Some("NoCapacity".into()),
            message: Some("no ready agent of pool default-pool has a free slot".into()),
            ..Default::default()
        };
        let e = target(&sandbox(None, Some(status)), "my-sandbox").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sandbox my-sandbox is Pending: not bound to an agent yet, so it has no logs \
             (NoCapacity: no ready agent of pool default-pool has a free slot)"
        );
    }

    #[test]
    fn an_unbound_sandbox_falls_back_to_its_scheduled_condition() {
        let status = SandboxStatus {
            conditions: vec![
                serde_json::from_value::<Condition>(serde_json::json!({
                    "type": condition::SCHEDULED,
                    "status": "False",
                    "reason": "PoolNotFound",
                    "message": "SandboxPool p does not exist",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }))
                .unwrap(),
            ],
            ..Default::default()
        };
        let e = target(&sandbox(None, Some(status)), "my-sandbox").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("(PoolNotFound: SandboxPool p does not exist)"),
            "{e}"
        );
        let e = target(&sandbox(None, None), "my-sandbox").unwrap_err();
        assert!(e.to_string().contains("is Pending"), "{e}");
        assert!(e.to_string().contains("has not looked at it yet"), "{e}");
    }

    #[test]
    fn a_bound_sandbox_without_container_has_no_logs_yet() {
        let status = SandboxStatus {
            phase: Some(SandboxPhase::Bound),
            ..Default::default()
        };
        let e = target(&sandbox(Some("agent-a"), Some(status)), "my-sandbox").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sandbox my-sandbox is Bound on agent pod agent-a: its container does not exist yet, \
             so it has no logs"
        );
    }

    #[test]
    fn a_sandbox_bound_at_admission_without_status_is_bound() {
        let e = target(&sandbox(Some("agent-a"), None), "my-sandbox").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("sandbox my-sandbox is Bound on agent pod agent-a:"),
            "{e}"
        );
    }

    #[test]
    fn a_started_sandbox_is_read_from_its_agent_by_uid() {
        let status = SandboxStatus {
            phase: Some(SandboxPhase::Succeeded),
            container_id: Some("sandbox-u-1".into()),
            ..Default::default()
        };
        let sbx = sandbox(Some("agent-a"), Some(status));
        let t = target(&sbx, "my-sandbox").unwrap();
        assert_eq!(target_of(&t), ("u-1", "agent-a"));
        assert_eq!(t.phase, SandboxPhase::Succeeded);
        for bad in [None, Some(""), Some("a/b"), Some("a?b")] {
            let mut sbx = sbx.clone();
            sbx.metadata.uid = bad.map(str::to_string);
            let e = target(&sbx, "my-sandbox").unwrap_err();
            assert!(matches!(e, LogsError::InvalidUid { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn agent_errors_become_clear_messages() {
        let t = Target {
            uid: "u-1".into(),
            pod: "agent-a".into(),
            phase: SandboxPhase::Running,
        };
        let body = br#"{"code":"NotFound","message":"sandbox u-1 not found"}"#;
        let e = error_from_body(&t, "my-sandbox", StatusCode::NOT_FOUND, body);
        assert!(matches!(&e, LogsError::Agent { error, .. } if error.code == ErrorCode::NotFound));
        assert_eq!(
            e.to_string(),
            "agent pod agent-a does not hold sandbox my-sandbox (uid u-1): it was deleted or \
             re-placed since it was read; try again (sandbox u-1 not found)"
        );
        let body = br#"{"code":"InvalidArgument","message":"\"x\" is neither stdout nor stderr","field":"stream"}"#;
        let e = error_from_body(&t, "my-sandbox", StatusCode::BAD_REQUEST, body);
        assert_eq!(
            e.to_string(),
            "agent pod agent-a refused the request (parameter stream): \"x\" is neither stdout nor stderr"
        );
        let e = error_from_body(
            &t,
            "my-sandbox",
            StatusCode::BAD_GATEWAY,
            b"upstream down\n",
        );
        assert_eq!(
            e.to_string(),
            "agent pod agent-a answered 502 Bad Gateway: upstream down"
        );
    }
}
